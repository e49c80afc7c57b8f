"""fdq-deploy and fdq-profile against a real OpenSSH server on 127.0.0.1 (``sshd`` in conftest.py)
and the local target."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fdq.device.bundle import sha256_file
from fdq.host.cli import deploy_main, profile_main
from fdq.host.provision import RUNNER_PACKAGES
from terminal import run_on_terminal


@pytest.fixture
def bundle(slim_fp32_bundle):
    return slim_fp32_bundle


def _profile(tmp_path: Path, **fields) -> Path:
    path = tmp_path / "board.yaml"
    path.write_text(yaml.safe_dump(fields))
    return path


@pytest.fixture
def board(sshd, tmp_path, monkeypatch):
    monkeypatch.setenv("FDQ_HOME", str(tmp_path / "fdq-home"))  # known_hosts of this test only
    workdir = tmp_path / "on-board"
    profile = _profile(tmp_path, name="loopback-board", transport="ssh", host="127.0.0.1", port=sshd["port"],
                       user="root", key=str(sshd["key"]), python=sys.executable, workdir=str(workdir), threads=1,
                       runtimes=["torchscript", "onnxruntime", "ncnn"])
    return {"profile": profile, "workdir": workdir}


def test_deploy_sends_runner_and_bundle_then_only_what_changed(board, bundle, capsys):
    assert deploy_main(["--target", str(board["profile"]), str(bundle)]) == 0
    out, err = capsys.readouterr()
    remote = Path(out.split(" -> ")[1].strip())
    assert remote.parent == board["workdir"] / "bundles"
    for f in bundle.iterdir():
        assert sha256_file(remote / f.name) == sha256_file(f)
    runner = board["workdir"] / "lib" / "fdq" / "device"
    assert (runner / "run.py").is_file() and (runner / "csrc" / "fdq_kernels.c").is_file()
    assert not any(runner.rglob("*.part")) and not (board["workdir"] / "lib" / "fdq" / "host").exists()
    assert "sending" not in err and "\x1b[" not in err  # no terminal: no progress line (see the test below)
    sent = int(err.split(" file(s) sent")[0].rsplit(" ", 1)[1])
    shipped = [p for p in runner.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert sent == len(shipped) + len(list(bundle.iterdir()))

    (runner / "run.py").write_text("# damaged\n")         # a file that differs travels again
    (runner / "left_over.py").write_text("import os\n")    # an old module is removed
    assert deploy_main(["--target", str(board["profile"]), str(bundle)]) == 0
    err = capsys.readouterr().err
    assert ": 1 file(s) sent" in err and "1 removed" in err
    assert sha256_file(runner / "run.py") == sha256_file(Path(__file__).parents[1] / "device" / "run.py")
    assert not (runner / "left_over.py").exists()


def test_profile_runs_the_bundle_there_and_fetches_the_result(board, bundle, tmp_path, capsys):
    out = tmp_path / "result.json"
    assert profile_main(["--target", str(board["profile"]), "--bundle", str(bundle), "--frames", "3",
                         "--warmup", "1", "--out", str(out), "--runs", str(tmp_path / "runs")]) == 0
    doc = json.loads(out.read_text())
    assert doc["schema"] == "fdq.run/1" and doc["settings"]["frames"] == 3
    assert len(doc["latency_ms"]["total"]["frames"]) == 3 and doc["fps"] > 0
    assert doc["bundle"]["path"].startswith(str(board["workdir"] / "bundles"))
    assert list((board["workdir"] / "results").glob("*.json"))
    out, err = capsys.readouterr()
    assert "loopback-board" in out  # the target column of the run table
    assert "measuring" not in err and "fdq-run: frame" not in err and "\x1b[" not in err, err  # no terminal
    assert "--progress" not in doc["command"]  # nobody watched: the runner streamed no frames


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def test_deploy_bytes_and_profile_frames_show_on_a_terminal(board, bundle, tmp_path):
    """On a terminal fdq-deploy shows the bytes it sends, and fdq-profile the frames the runner streams
    from the board while it runs (done/total, FPS); the runner's lines themselves never show, and the
    result is the same document."""
    status, out, seen = run_on_terminal([sys.executable, "-m", "fdq.host.cli", "deploy", "--target",
                                         str(board["profile"]), str(bundle)], dict(os.environ))
    plain = _plain(seen)
    assert status == 0 and " -> " in out, plain[-2000:]
    assert re.search(r"loopback-board: sending \d+ file\(s\)", plain), plain[-2000:]
    assert re.search(r"\d+(\.\d+)?/\d+(\.\d+)? (kB|MB)", plain), plain[-2000:]  # bytes sent of the total
    result = tmp_path / "result.json"
    status, out, seen = run_on_terminal([sys.executable, "-m", "fdq.host.cli", "profile", "--target",
                                         str(board["profile"]), "--bundle", str(bundle), "--frames", "40",
                                         "--warmup", "1", "--out", str(result), "--runs", str(tmp_path / "runs")],
                                        dict(os.environ))
    plain = _plain(seen)
    assert status == 0, plain[-2000:]
    assert "1 thread(s): measuring on the target" in plain and re.search(r"\b\d+/40\b", plain), plain[-2000:]
    assert re.search(r"\d+\.\d FPS", plain) and "fdq-run: frame" not in plain, plain[-2000:]
    doc = json.loads(result.read_text())
    assert doc["settings"]["frames"] == 40 and "--progress" in doc["command"]


def test_a_file_damaged_on_the_board_travels_again(board, bundle, tmp_path, capsys):
    damaged = tmp_path / "damaged"
    shutil.copytree(bundle, damaged)
    assert deploy_main(["--target", str(board["profile"]), str(damaged)]) == 0
    remote = Path(capsys.readouterr().out.split(" -> ")[1].strip())
    (remote / "model.pt").write_bytes(b"not a model")
    assert profile_main(["--target", str(board["profile"]), "--bundle", str(damaged), "--frames", "1",
                         "--out", str(tmp_path / "r.json"), "--runs", str(tmp_path / "runs")]) == 0
    # profile deploys first: the target's sha256 differed, so the good file went again
    assert sha256_file(remote / "model.pt") == sha256_file(bundle / "model.pt")


@pytest.mark.parametrize("case, needle", [
    ("wrong-key", "authentication failed for root@127.0.0.1"),
    ("closed-port", "connection refused: nothing listens on 127.0.0.1:"),
    ("missing-key", "key file"),
    ("bad-python", "does not run there"),
])
def test_target_problems_are_one_clear_line(case, needle, board, sshd, bundle, tmp_path, capsys, free_port):
    args = ["--target", str(board["profile"]), str(bundle)]
    if case == "wrong-key":
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
        args += ["--key", str(tmp_path / "other")]
    elif case == "closed-port":
        args += ["--port", str(free_port())]
    elif case == "missing-key":
        args += ["--key", str(tmp_path / "nope")]
    else:
        args += ["--python", "/no/such/python"]
    assert deploy_main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("fdq-deploy")]  # besides "first connection ..."
    assert len(errors) == 1 and errors[0] == err[-1], err
    assert errors[0].startswith("fdq-deploy: error: ") and needle in errors[0], err


def test_a_bundle_for_an_engine_the_target_lacks_is_refused_at_deploy(board, bundle, tmp_path, capsys):
    other = tmp_path / "slim_other_engine"
    shutil.copytree(bundle, other)
    manifest = yaml.safe_load((other / "manifest.yaml").read_text())
    manifest["backend"]["engine"] = "no_such_engine"  # the manifest is the bundle's root of trust: still loadable
    (other / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    assert deploy_main(["--target", str(board["profile"]), str(other)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("fdq-deploy: error: loopback-board: refused before sending: ")
    assert f"{other.name} needs the no_such_engine engine; torch " in err and " has " in err
    assert not (board["workdir"] / "bundles").exists()  # refused before any byte of it travelled


def test_changed_host_key_is_refused(board, sshd, bundle, tmp_path, capsys):
    known = tmp_path / "fdq-home" / "known_hosts"
    assert deploy_main(["--target", str(board["profile"]), str(bundle)]) == 0
    line = known.read_text().split()
    forged = tmp_path / "forged"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(forged)], check=True)
    known.write_text(f"{line[0]} {' '.join(Path(str(forged) + '.pub').read_text().split()[:2])}\n")
    capsys.readouterr()
    assert deploy_main(["--target", str(board["profile"]), str(bundle)]) == 1
    assert "host key of 127.0.0.1" in capsys.readouterr().err


def test_unknown_target_and_bad_profiles(tmp_path, bundle, capsys):
    assert deploy_main(["--target", "no-such-board", str(bundle)]) == 1
    assert "unknown target 'no-such-board'" in capsys.readouterr().err
    typo = _profile(tmp_path, name="x", transport="ssh", host="127.0.0.1", user="pi", python="python3",
                    workdir="~/fdq", prot=22)
    assert deploy_main(["--target", str(typo), str(bundle)]) == 1
    assert "unknown field(s) prot" in capsys.readouterr().err


def test_local_target_needs_no_network(tmp_path, bundle, capsys):
    profile = _profile(tmp_path, name="here", transport="local", python=sys.executable,
                       workdir=str(tmp_path / "work"), threads=1)
    out = tmp_path / "r.json"
    assert profile_main(["--target", str(profile), "--bundle", str(bundle), "--frames", "2", "--warmup", "0",
                         "--out", str(out), "--runs", str(tmp_path / "runs")]) == 0
    assert json.loads(out.read_text())["settings"]["frames"] == 2


def test_shipped_profiles_load():
    from fdq.host.targets import load_target, shipped_profiles

    assert {"rpi4", "local"} <= set(shipped_profiles())
    rpi4 = load_target("rpi4")
    assert rpi4.transport == "ssh" and rpi4.host == "127.0.0.1" and rpi4.engine == "qnnpack"
    assert load_target("rpi4", port=2200).port == 2200


def _errors(err: str):
    """stderr's lines but the one that records a first-seen host key."""
    return [ln for ln in err.strip().splitlines() if not ln.startswith("fdq: first connection to ")]


def _known_host_fingerprint(sshd, tmp_path: Path) -> str:
    """The board's host key fingerprint as OpenSSH prints it (``ssh-keygen -l``)."""
    line = (sshd["home"] / "known_hosts").read_text().splitlines()[0].split()
    pub = tmp_path / "board_host_key.pub"
    pub.write_text(f"{line[1]} {line[2]}\n")
    return subprocess.run(["ssh-keygen", "-l", "-f", str(pub)], capture_output=True, text=True,
                          check=True).stdout.split()[1]


def test_host_key_is_recorded_only_after_login_with_its_fingerprint(board, sshd, bundle, tmp_path, capsys):
    known = tmp_path / "fdq-home" / "known_hosts"
    assert deploy_main(["--target", str(board["profile"]), "--user", "nobody", str(bundle)]) == 1
    err = capsys.readouterr().err
    assert "authentication failed for nobody@127.0.0.1" in err and str(sshd["key"]) in err
    assert not known.exists() and "first connection" not in err  # a failed login pins nothing
    assert deploy_main(["--target", str(board["profile"]), str(bundle)]) == 0
    first = [ln for ln in capsys.readouterr().err.splitlines() if "first connection" in ln]
    fingerprint = _known_host_fingerprint(sshd, tmp_path)
    assert fingerprint.startswith("SHA256:") and not fingerprint.endswith("=")
    assert len(first) == 1 and fingerprint in first[0] and str(known) in first[0]
    assert known.read_text().startswith(f"[127.0.0.1]:{sshd['port']} ssh-ed25519 ")


def test_strict_host_keys_refuse_an_unknown_host(board, sshd, bundle, tmp_path, capsys):
    args = ["--target", str(board["profile"]), str(bundle)]
    assert deploy_main(args + ["--strict-host-keys"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not in" in err[0] and "--strict-host-keys" in err[0]
    assert _known_host_fingerprint(sshd, tmp_path) in err[0]
    assert not (board["workdir"]).exists() and not (tmp_path / "fdq-home" / "known_hosts").exists()
    assert deploy_main(args) == 0  # first contact without strictness records it ...
    strict = _profile(tmp_path, **{**yaml.safe_load(board["profile"].read_text()), "strict_host_keys": True})
    capsys.readouterr()
    assert deploy_main(["--target", str(strict), str(bundle)]) == 0  # ... then strict is satisfied
    assert "first connection" not in capsys.readouterr().err


def test_remote_arguments_are_quoted(board, bundle, tmp_path, capsys):
    odd = tmp_path / "it's a bundle" / "slim fp32 'q'"
    shutil.copytree(bundle, odd)
    workdir = tmp_path / "work dir" / "it's here; $(touch pwned)"
    assert deploy_main(["--target", str(board["profile"]), "--workdir", str(workdir), str(odd)]) == 0
    remote = Path(capsys.readouterr().out.split(" -> ")[1].strip())
    assert remote.parent == workdir / "bundles" and remote.name.startswith("slim fp32 'q'-")
    assert sha256_file(remote / "model.pt") == sha256_file(bundle / "model.pt")
    assert not list(tmp_path.rglob("pwned")) and not Path("pwned").exists()


def _with_manifest(bundle: Path, folder: Path, **backend) -> Path:
    shutil.copytree(bundle, folder)
    manifest = yaml.safe_load((folder / "manifest.yaml").read_text())
    manifest["backend"].update(backend)  # the manifest is the bundle's root of trust: still loadable
    (folder / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    return folder


def test_an_x86_bundle_is_refused_on_a_qnnpack_board_before_sending(board, bundle, tmp_path, capsys):
    x86 = _with_manifest(bundle, tmp_path / "slim_x86", engine="x86")
    arm = _profile(tmp_path, **{**yaml.safe_load(board["profile"].read_text()), "engine": "qnnpack"})
    assert deploy_main(["--target", str(arm), str(x86)]) == 1
    err = _errors(capsys.readouterr().err)
    assert err == ["fdq-deploy: error: loopback-board: refused before sending: slim_x86 is for the x86 engine; "
                   "loopback-board runs int8 on qnnpack (its profile)"]
    assert not (board["workdir"] / "bundles").exists() and not (board["workdir"] / "lib").exists()


def _python_without_onnxruntime(tmp_path: Path) -> Path:
    """A venv (no system site packages) holding only what the runner itself needs."""
    import importlib.util
    import venv

    venv.EnvBuilder(with_pip=False).create(tmp_path / "venv")
    site = next((tmp_path / "venv" / "lib").glob("python3*/site-packages"))
    for module in (*RUNNER_PACKAGES, "_yaml"):
        spec = importlib.util.find_spec(module)
        if spec is None:
            continue
        source = Path(spec.origin).parent if spec.submodule_search_locations else Path(spec.origin)
        (site / source.name).symlink_to(source)
    for libs in source.parent.glob("*.libs"):  # the shared libraries of manylinux wheels
        (site / libs.name).symlink_to(libs)
    python = tmp_path / "venv" / "bin" / "python"
    check = subprocess.run([str(python), "-c", f"import {', '.join(RUNNER_PACKAGES)}, importlib.util as u; "
                            "assert u.find_spec('onnxruntime') is None"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    return python


def test_an_onnx_bundle_is_refused_where_onnxruntime_is_missing(board, slim_onnx_bundle, tmp_path, capsys):
    python = _python_without_onnxruntime(tmp_path)
    assert deploy_main(["--target", str(board["profile"]), "--python", str(python), str(slim_onnx_bundle)]) == 1
    err = _errors(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("fdq-deploy: error: loopback-board: refused before sending: ")
    assert "lacks onnxruntime, which slim_onnx needs (install it there, or deploy with --setup)" in err[0]
    assert f"{python} there (x86_64, Python " in err[0]
    assert not (board["workdir"] / "bundles").exists()


def test_the_profile_runtimes_take_part(board, slim_onnx_bundle, tmp_path, capsys):
    fields = {**yaml.safe_load(board["profile"].read_text()), "runtimes": ["torchscript"]}
    assert deploy_main(["--target", str(_profile(tmp_path, **fields)), str(slim_onnx_bundle)]) == 1
    assert capsys.readouterr().err.strip().endswith(
        "slim_onnx is a bundle for onnxruntime; the profile of loopback-board lists runtimes torchscript")
    fields["runtimes"] = ["torchscript", "onnxruntime"]
    assert deploy_main(["--target", str(_profile(tmp_path, **fields)), str(slim_onnx_bundle)]) == 0


def test_prune_removes_what_this_deploy_does_not_name(board, bundle, tmp_path, capsys):
    other = _with_manifest(bundle, tmp_path / "slim_other", dtype="fp32")  # same files, another bundle id
    (other / "manifest.yaml").write_text((other / "manifest.yaml").read_text() + "# another build\n")
    target = ["--target", str(board["profile"])]
    assert deploy_main(target + [str(bundle)]) == 0
    first = Path(capsys.readouterr().out.split(" -> ")[1].strip())
    results = board["workdir"] / "results"
    results.mkdir()
    (results / f"{first.name}-20261201T000000000000.json").write_text("{}")
    (results / "notes.txt").write_text("not named by any deploy")
    assert deploy_main(target + ["--prune-older-than", "1d", str(other)]) == 0
    assert first.is_dir() and len(list(results.iterdir())) == 2  # all of it is younger than a day
    assert deploy_main(target + ["--prune", str(other)]) == 0
    out, err = capsys.readouterr()
    second = Path(out.strip().splitlines()[-1].split(" -> ")[1])
    assert not first.exists() and second.is_dir() and not list(results.iterdir())
    assert "pruned 3 bundle(s) and result(s)" in err
    with pytest.raises(SystemExit) as stop:
        deploy_main(target + ["--prune-older-than", "soon", str(other)])
    assert stop.value.code == 2
    assert "--prune-older-than takes an age such as 30m, 12h or 7d" in capsys.readouterr().err


def test_missing_target_file_and_local_workdir_under_fdq_home(tmp_path, monkeypatch, bundle, capsys):
    from fdq.host.targets import load_target

    missing = tmp_path / "boards" / "pi.yaml"
    assert deploy_main(["--target", str(missing), str(bundle)]) == 1
    assert capsys.readouterr().err.strip() == f"fdq-deploy: error: target file {missing} does not exist"
    monkeypatch.setenv("FDQ_HOME", str(tmp_path / "home"))
    assert load_target("local").workdir == str(tmp_path / "home" / "local-target")


def test_extra_files_travel_like_bundle_files(board, bundle, tmp_path):
    from fdq.host.deploy import deploy
    from fdq.host.remote import connect
    from fdq.host.targets import load_target

    local = tmp_path / "truth.json"
    local.write_text('{"faces": 1}')
    conn = connect(load_target(str(board["profile"])))
    try:
        first = deploy(conn, [str(bundle)], {"data/set-1/truth.json": local})
        again = deploy(conn, [str(bundle)], {"data/set-1/truth.json": local})
    finally:
        conn.close()
    assert "data/set-1/truth.json" in first.uploaded and again.uploaded == []
    assert (board["workdir"] / "data" / "set-1" / "truth.json").read_text() == '{"faces": 1}'


def test_the_shipped_local_target_takes_bundles_of_every_engine_its_torch_has(bundle, tmp_path, monkeypatch,
                                                                               capsys):
    """The README's main job profiles qnnpack and x86 bundles on this machine: neither is refused."""
    import torch

    monkeypatch.setenv("FDQ_HOME", str(tmp_path / "fdq-home"))
    for engine in ("qnnpack", "x86"):
        assert engine in torch.backends.quantized.supported_engines
        assert deploy_main(["--target", "local", "--python", sys.executable,
                            str(_with_manifest(bundle, tmp_path / engine, engine=engine))]) == 0
    assert "error" not in capsys.readouterr().err

"""fdq-deploy and fdq-profile against a real OpenSSH server on 127.0.0.1 (``sshd`` in conftest.py)
and the local target."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fdq.device.bundle import sha256_file
from fdq.host.cli import deploy_main, profile_main


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
                       user="root", key=str(sshd["key"]), python=sys.executable, workdir=str(workdir), threads=1)
    return {"profile": profile, "workdir": workdir}


def test_deploy_sends_runner_and_bundle_then_only_what_changed(board, bundle, capsys):
    assert deploy_main(["--target", str(board["profile"]), str(bundle)]) == 0
    out, err = capsys.readouterr()
    remote = Path(out.split(" -> ")[1].strip())
    assert remote.parent == board["workdir"] / "bundles"
    for f in bundle.iterdir():
        assert sha256_file(remote / f.name) == sha256_file(f)
    runner = board["workdir"] / "lib" / "fdq" / "device"
    assert (runner / "run.py").is_file() and (runner / "kernels" / "fdq_kernels.c").is_file()
    assert not any(runner.rglob("*.part")) and not (board["workdir"] / "lib" / "fdq" / "host").exists()
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
                         "--warmup", "1", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["schema"] == "fdq.run/1" and doc["settings"]["frames"] == 3
    assert len(doc["latency_ms"]["total"]["frames"]) == 3 and doc["fps"] > 0
    assert doc["bundle"]["path"].startswith(str(board["workdir"] / "bundles"))
    assert list((board["workdir"] / "results").glob("*.json"))
    assert "loopback-board: " in capsys.readouterr().out


def test_a_file_damaged_on_the_board_travels_again(board, bundle, tmp_path, capsys):
    damaged = tmp_path / "damaged"
    shutil.copytree(bundle, damaged)
    assert deploy_main(["--target", str(board["profile"]), str(damaged)]) == 0
    remote = Path(capsys.readouterr().out.split(" -> ")[1].strip())
    (remote / "model.pt").write_bytes(b"not a model")
    assert profile_main(["--target", str(board["profile"]), "--bundle", str(damaged), "--frames", "1",
                         "--out", str(tmp_path / "r.json")]) == 0
    # profile deploys first: the target's sha256 differed, so the good file went again
    assert sha256_file(remote / "model.pt") == sha256_file(bundle / "model.pt")


@pytest.mark.parametrize("case, needle", [
    ("wrong-key", "refused the key"),
    ("closed-port", "cannot connect to 127.0.0.1"),
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
    assert err.startswith("fdq-deploy: error: loopback-board: a deployed bundle does not run there: ")
    assert f"{other.name}-" in err and "needs the no_such_engine engine; this torch has " in err


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
                         "--out", str(out)]) == 0
    assert json.loads(out.read_text())["settings"]["frames"] == 2


def test_shipped_profiles_load():
    from fdq.host.targets import load_target, shipped_profiles

    assert {"rpi4", "local"} <= set(shipped_profiles())
    rpi4 = load_target("rpi4")
    assert rpi4.transport == "ssh" and rpi4.host == "127.0.0.1" and rpi4.engine == "qnnpack"
    assert load_target("rpi4", port=2200).port == 2200

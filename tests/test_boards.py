"""End to end on the shipped test boards (``scripts/testboard.sh``, fixtures in conftest.py): this
machine behind its own sshd, and the emulated Raspberry Pi 4 (the arm64 root under qemu-user as a
Cortex-A72). Each: deploy an int8 bundle for its engine, profile it there, deploy again and nothing
travels. Emulation is about 40x slower than this machine: the ARM runs measure a few frames."""
from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Dict, List

import pytest
import yaml

from conftest import level2_bundle
from fdq.host.cli import deploy_main, profile_main
from fdq.host.deploy import FACTS_SCRIPT
from fdq.host.remote import connect
from fdq.host.targets import load_target

# What a Cortex-A72 (ARMv8.0-A) lacks and qemu's default CPU ("max") advertises: int8 and fp16
# kernels are chosen by exactly these bits.
NOT_ON_A72 = ("asimddp", "sve", "i8mm", "fphp", "asimdhp")


@pytest.fixture(scope="module")
def x86_bundle(shared_dir, tmp_path_factory) -> Path:
    return level2_bundle(shared_dir, tmp_path_factory.mktemp("x86"), "x86")


def _sent(err: str) -> int:
    return int(err.split(" file(s) sent")[0].rsplit(" ", 1)[1])


def _deploy_profile_redeploy(profile: Path, bundle: Path, out: Path, frames: int, capsys) -> Dict:
    """The board loop: deploy (everything travels), profile there, deploy again (nothing travels)."""
    assert deploy_main(["--target", str(profile), str(bundle)]) == 0
    assert _sent(capsys.readouterr().err) > 0
    assert profile_main(["--target", str(profile), "--bundle", str(bundle), "--frames", str(frames),
                         "--warmup", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    assert deploy_main(["--target", str(profile), str(bundle)]) == 0
    err = capsys.readouterr().err
    assert _sent(err) == 0 and " 0 removed" in err, err
    doc = json.loads(out.read_text())
    assert doc["schema"] == "fdq.run/1" and len(doc["latency_ms"]["total"]["frames"]) == frames
    return doc


def _board_run(profile: Path, command: str) -> str:
    """``command`` on the board over SSH (its exit status must be 0); its stdout."""
    conn = connect(load_target(str(profile)))
    try:
        done = conn.run(command, timeout=300)
    finally:
        conn.close()
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_native_board_runs_the_x86_bundle(sshd, x86_bundle, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FDQ_HOME", str(tmp_path / "fdq-home"))
    doc = _deploy_profile_redeploy(sshd["profile"], x86_bundle, tmp_path / "native.json", 3, capsys)
    device = doc["device"]
    assert device["machine"]["arch"] == "x86_64" and device["engine"] == "x86" and device["kernels"] == "c"
    assert device["emulation"]["emulated"] is False
    assert "sse2" in device["cpu_features"]  # the cpuid flags of /proc/cpuinfo on x86


def _features(profile: Path, workdir: str, python: str, env: str = "") -> List[str]:
    code = "import json; from fdq.device.sysinfo import cpu_features; print(json.dumps(cpu_features()))"
    return json.loads(_board_run(profile, f"cd {workdir} && {env} PYTHONPATH=lib {python} -c '{code}'"))


def _facts(profile: Path, workdir: str, python: str, env: str = "") -> Dict:
    return json.loads(_board_run(profile, f"cd {workdir} && {env} {python} -c {shlex.quote(FACTS_SCRIPT)} . 0"))


def test_arm64_board_is_a_cortex_a72_running_qnnpack(arm64_board, slim_qnnpack_bundle, tmp_path, monkeypatch,
                                                      capsys):
    monkeypatch.setenv("FDQ_HOME", str(tmp_path / "fdq-home"))
    doc = _deploy_profile_redeploy(arm64_board["profile"], slim_qnnpack_bundle, tmp_path / "arm64.json", 2, capsys)
    device = doc["device"]
    assert device["machine"]["arch"] == "aarch64" and device["engine"] == "qnnpack"
    assert device["emulation"]["emulated"] is True
    features = device["cpu_features"]
    assert "asimd" in features and not set(NOT_ON_A72) & set(features), features
    # the C kernels were compiled there, by the board's compiler, for aarch64
    assert device["kernels"] == "c"
    built = list((arm64_board["root"] / "root" / ".cache" / "fdq" / "kernels").glob("fdq_kernels-aarch64-*.so"))
    assert built and all(p.read_bytes()[18:20] == b"\xb7\x00" for p in built)  # ELF e_machine EM_AARCH64

    # The same Python without QEMU_CPU runs on qemu's default CPU, which has them all: the check can fail.
    workdir = doc["bundle"]["path"].split("/bundles/")[0]
    python = arm64_board["fields"]["python"]
    assert set(NOT_ON_A72) <= set(_features(arm64_board["profile"], workdir, python, "env -u QEMU_CPU"))
    assert _features(arm64_board["profile"], workdir, python) == features
    # deploy's facts read the dot-product bit an int8 ExecuTorch program needs there the same way
    assert [_facts(arm64_board["profile"], workdir, python, env)["dotprod"] for env in ("", "env -u QEMU_CPU")] \
        == [False, True]


def test_setup_makes_a_bare_pi_a_board(arm64_board, slim_onnx_bundle, tmp_path, monkeypatch, capsys):
    """The board's stock python3 (Debian's, nothing installed; /opt/fdq left alone): refused in one
    line naming --setup; --setup installs the runner's packages and onnxruntime (the profile's
    runtimes) offline into a venv of its own work directory; the bundle runs there."""
    monkeypatch.setenv("FDQ_HOME", str(tmp_path / "fdq-home"))  # an empty wheel cache: every wheel is fetched
    # onnxruntime 1.32 dies at import (SIGSEGV) under this qemu-user (Debian's 7.2), as a Cortex-A72 and as qemu's
    # max CPU alike; 1.19.2 runs there.
    fields = {**arm64_board["fields"], "python": "/usr/bin/python3", "workdir": "~/bare", "runtimes": ["onnxruntime"],
              "onnxruntime": "1.19.2"}
    profile = tmp_path / "bare.yaml"
    profile.write_text(yaml.safe_dump(fields))
    assert deploy_main(["--target", str(profile), str(slim_onnx_bundle)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 or err[-2].startswith("fdq: first connection"), err
    assert err[-1].startswith("fdq-deploy: error: ") and "lacks" in err[-1] and "--setup" in err[-1]
    assert "yaml (from pyyaml)" in err[-1] and "numpy" in err[-1]

    assert deploy_main(["--target", str(profile), "--setup", str(slim_onnx_bundle)]) == 0
    err = capsys.readouterr().err
    assert "--setup for aarch64, Python 3.11, glibc" in err and "onnxruntime==1.19.2" in err
    out = tmp_path / "bare.json"
    assert profile_main(["--target", str(profile), "--bundle", str(slim_onnx_bundle), "--frames", "2",
                         "--warmup", "1", "--out", str(out)]) == 0
    device = json.loads(out.read_text())["device"]
    assert device["machine"]["arch"] == "aarch64" and device["runtime"] == "onnxruntime"
    assert device["runtime_versions"]["onnxruntime"] and "asimd" in device["cpu_features"]
    assert "asimddp" not in device["cpu_features"]
    # a second --setup finds everything in place: no wheel travels again
    assert deploy_main(["--target", str(profile), "--setup", str(slim_onnx_bundle)]) == 0
    assert " 0 of " in capsys.readouterr().err

"""Every runtime on the emulated Raspberry Pi 4 (``arm64_board``, a Cortex-A72 under qemu-user):
``fdq-deploy --setup`` installs them all from the profile's ``runtimes`` into a venv of the board's work
directory (with no torch pin: the newest CPU-only torch with an executorch build, 2.9.1 with executorch
1.0.1, since PyPI's newer aarch64 torch wheels are CUDA builds), then one
``fdq-profile`` runs every float and int8 bundle there on a few val images and one runs them here: AP
within 1 point of this machine's for the same bundle; YuNet-n imported by ``fdq import`` (float and
onnx-int8) among them when FDQ_SHARED has it. The ExecuTorch int8 program, which executorch 1.0.1
runs with the dot product the A72 lacks (SIGILL), is refused at deploy in one line. Frames are few and
small: emulation is about 40x slower than this machine.

It takes about 15 minutes on two cores (``--setup`` installs torch under emulation, ExecuTorch lowers two
programs), the longest module of the suite; ``FDQ_BOARD_RUNTIMES=0`` leaves it out of a run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest
import yaml

from conftest import copy_calib_images
from fdq.host.cli import deploy_main, main, profile_main

EVENTS = ("0--Parade", "12--Group")  # two val images each
AP_POINTS = 1.0
pytestmark = [pytest.mark.slow,  # about 15 minutes (README)
              pytest.mark.skipif(os.environ.get("FDQ_BOARD_RUNTIMES") == "0",
                                 reason="every runtime on the emulated Pi: left out by FDQ_BOARD_RUNTIMES=0")]


@pytest.fixture(scope="module")
def few(tmp_path_factory, shared_dir) -> Dict[str, Path]:
    """Calibration images, and four val images (links) with their ground truth as JSON (the board has no scipy)."""
    from fdq.calibration.labels import subset_ground_truth
    from fdq.device.evaluation import load_ground_truth, save_ground_truth_json

    data = shared_dir / "data" / "widerface_val_subset"
    root = tmp_path_factory.mktemp("few")
    copy_calib_images(shared_dir, root / "calib")
    keys = []
    for event in EVENTS:
        (root / "images" / event).mkdir(parents=True)
        for image in sorted((data / "val" / "images" / event).glob("*.jpg"))[:2]:
            (root / "images" / event / image.name).symlink_to(image)
            keys.append(f"{event}/{image.stem}")
    save_ground_truth_json(subset_ground_truth(load_ground_truth(data / "val" / "ground_truth"), keys),
                           root / "gt.json")
    return {"calib": root / "calib", "images": root / "images", "gt": root / "gt.json", "root": root}


@pytest.fixture(scope="module")
def bundles(few, shared_dir, slim_fp32_bundle, slim_qnnpack_bundle, slim_onnx_bundle) -> Dict[str, Path]:
    """Every runtime's float and int8 bundle of slim, made as a user makes them (the CLI); the qnnpack
    and ONNX ones are the session's (conftest)."""
    root, calib, weights = few["root"], str(few["calib"]), str(shared_dir / "weights" / "slim_Final.pth")
    made = {"torchscript-int8": slim_qnnpack_bundle, "onnx": slim_onnx_bundle, "executorch-int8": root / "pte-int8"}
    assert main(["quantize", "--model", "slim", "--weights", weights, "--level", "2", "--backend", "xnnpack",
                 "--calib", calib, "--out", str(made["executorch-int8"])]) == 0
    for key, source, fmt, extra in (("onnx-int8", made["torchscript-int8"], "onnx-int8", []),
                                    ("ncnn", slim_fp32_bundle, "ncnn", []),
                                    ("ncnn-int8", made["torchscript-int8"], "ncnn-int8", []),
                                    ("mnn", slim_fp32_bundle, "mnn", []),
                                    ("mnn-int8", slim_fp32_bundle, "mnn-int8", ["--calib", calib]),
                                    ("executorch", slim_fp32_bundle, "executorch", [])):
        made[key] = root / key
        # `fdq export` in a process of its own, as a user runs it: an MNN int8 calibration leaves MNN's
        # converter unusable in its process, which would refuse the later tests' conversions here
        proc = subprocess.run([sys.executable, "-m", "fdq.host.cli", "export", str(source), "--format", fmt,
                               "--out", str(made[key]), *extra], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
    yunet = shared_dir / "peers" / "yunet_n_dynamic.onnx"  # an imported model runs there too, float and int8
    if yunet.is_file():
        made["yunet"], made["yunet-onnx-int8"] = root / "yunet", root / "yunet-onnx-int8"
        assert main(["import", str(yunet), "--decoder", "yunet", "--nms-iou", "0.3", "--out", str(made["yunet"])]) == 0
        assert main(["export", str(made["yunet"]), "--format", "onnx-int8", "--calib", calib,
                     "--out", str(made["yunet-onnx-int8"])]) == 0
    return made


@pytest.fixture(scope="module")
def board(arm64_board, bundles, tmp_path_factory) -> Dict[str, Path]:
    """The emulated Pi with every runtime, installed once by ``--setup`` into ``~/runtimes/venv``."""
    folder = tmp_path_factory.mktemp("board")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FDQ_HOME", str(folder / "fdq-home"))
        # no `torch:` pin: --setup takes the newest CPU-only torch executorch has a build for (PyPI's newer
        # aarch64 wheels are CUDA builds, known by their dependencies)
        fields = {**arm64_board["fields"], "workdir": "~/runtimes", "onnxruntime": "1.19.2",
                  "runtimes": ["torchscript", "onnxruntime", "ncnn", "mnn", "executorch"]}
        profile = folder / "pi.yaml"
        profile.write_text(yaml.safe_dump(fields))
        assert deploy_main(["--target", str(profile), "--setup", str(bundles["executorch"])]) == 0
        yield {"profile": profile, "home": folder / "fdq-home"}


def _profile(target: str, paths, few, runs: Path) -> Dict[str, Dict]:
    """One fdq-profile over ``paths`` on ``target`` (2 frames each); run documents by manifest sha256."""
    argv = ["--target", target, "--frames", str(len(list(few["images"].rglob("*.jpg")))), "--warmup", "1",
            "--images", str(few["images"]), "--gt", str(few["gt"]), "--runs", str(runs)]
    for path in paths:
        argv += ["--bundle", str(path)]
    assert profile_main(argv) == 0
    docs = [json.loads(p.read_text()) for p in runs.glob("[!.]*.json")]
    return {d["bundle"]["manifest_sha256"]: d for d in docs}


def test_every_runtime_runs_on_the_emulated_pi_with_the_hosts_ap(board, bundles, few, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FDQ_HOME", str(board["home"]))
    runnable = [p for k, p in bundles.items() if k != "executorch-int8"]
    on_board = _profile(str(board["profile"]), runnable, few, tmp_path / "board-runs")
    host = tmp_path / "here.yaml"
    host.write_text(yaml.safe_dump({"name": "here", "transport": "local", "python": sys.executable,
                                    "workdir": str(tmp_path / "here"), "threads": 1,
                                    "runtimes": ["torchscript", "onnxruntime", "ncnn", "mnn", "executorch"]}))
    here = _profile(str(host), runnable, few, tmp_path / "host-runs")
    assert len(on_board) == len(here) == len(runnable) >= 8
    for sha, doc in on_board.items():
        device, bundle = doc["device"], doc["bundle"]
        assert device["machine"]["arch"] == "aarch64" and device["emulation"]["emulated"] is True, bundle
        assert "asimddp" not in device["cpu_features"]  # the A72, not qemu's max CPU
        host = here[sha]["accuracy"]
        for setting in ("easy", "medium", "hard"):
            assert abs(doc["accuracy"][setting] - host[setting]) * 100 <= AP_POINTS, (bundle["path"], setting)
    assert {(d["bundle"]["runtime"], d["bundle"]["dtype"]) for d in on_board.values()} >= {
        ("torchscript", "int8"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("ncnn", "fp32"), ("ncnn", "int8"),
        ("mnn", "fp32"), ("mnn", "int8"), ("executorch", "fp32")}
    if "yunet" in bundles:
        assert sum(d["bundle"]["model"] == "yunet_n_dynamic" for d in on_board.values()) == 2
    versions = {d["bundle"]["runtime"]: d["device"]["runtime_versions"] for d in on_board.values()}
    assert versions["executorch"]["executorch"] == "1.0.1" and versions["executorch"]["torch"].startswith("2.9.1")
    capsys.readouterr()


def test_an_int8_executorch_program_is_one_line_at_deploy(board, bundles, monkeypatch, capsys):
    monkeypatch.setenv("FDQ_HOME", str(board["home"]))
    capsys.readouterr()
    assert deploy_main(["--target", str(board["profile"]), str(bundles["executorch-int8"])]) == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("fdq-deploy: error: ") and "refused before sending" in err[0], err
    assert "executorch 1.0.1 there (aarch64, Python 3.11" in err[0] and "SDOT, which that CPU lacks" in err[0]

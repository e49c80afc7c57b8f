"""MNN and ExecuTorch bundles (float and int8) in the runner, and the device path's uint8 resize.

Real bundles of the slim model on real images: AP on the 64-image WIDER FACE validation subset at long
side 320 through ``bundle_detector`` (the runner's pipeline), against the float TorchScript bundle of
the same weights. Tolerances, in AP points on each of easy / medium / hard:

* float runtimes: 0.05. Their outputs differ from PyTorch's by about 1e-5 (float rounding order), which
  can only flip a detection sitting exactly at the score threshold or an NMS tie; measured: 0.000.
* ExecuTorch int8 (PT2E, XNNPACK's symmetric configuration with percentile activation ranges and
  float-eps weight scales): the project's int8 bar, 1.0; measured 0.51 (easy), 0.34 (medium), 0.00
  (hard) with the 32 calibration images. XNNPACK's stock configuration (histogram ranges, every scale
  floored at 2**-12) lost 2.04 / 1.38 / 0.50 through the same PT2E model (docs/ACCURACY.md).
* MNN int8 (MNN's ADMM calibration on the 32 calibration images and their mirrors, the first
  convolution, the heads and the convolutions the heads read in float): the project's int8 bar, 1.0;
  measured 0.74 (easy), 0.78 (medium), 0.24 (hard) on slim at 320 (scripts/bench_mnn_int8.py; without
  the mirrors and the pre-head convolutions it lost 1.02 on medium, MNN's EMA 1.1, docs/ACCURACY.md).
* uint8 vs float resize (same float model): 0.2; the two resized images differ by rounding (at most one
  grey level a pixel), measured 0.09.

The ExecuTorch bundles take minutes to lower on this 2-core machine; they are built once per module.
"""
from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fdq.device.bundle import BundleError, load_bundle, sha256_file
from fdq.device.evaluation import load_ground_truth
from fdq.device.images import list_images, read_image

LONG_SIDE = 320
SETTINGS = ("easy", "medium", "hard")


def _missing(*modules):
    return [m for m in modules if importlib.util.find_spec(m) is None]


def _require(*modules):
    missing = _missing(*modules)
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must install {', '.join(missing)} (scripts/install_runtimes.sh)")
        pytest.skip(f"needs {', '.join(missing)} (scripts/install_runtimes.sh)")


@pytest.fixture(scope="module")
def data(shared_dir):
    root = shared_dir / "data" / "widerface_val_subset"
    if not (root / "val" / "images").is_dir():
        pytest.skip(f"WIDER FACE subset not found under {root}")
    return {"images": root / "val" / "images", "gt": load_ground_truth(root / "val" / "ground_truth"),
            "calib": root / "calib" / "images", "weights": shared_dir / "weights" / "slim_Final.pth"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("runtimes")


@pytest.fixture(scope="module")
def float_bundle(slim_weighted_bundle):
    """slim fp32 at LONG_SIDE recording its weights: the session's (conftest)."""
    return slim_weighted_bundle


def _ap(bundle_dir, data, **options):
    from fdq.device.runtimes import bundle_detector
    from fdq.host.evaluate import evaluate_detector

    detector = bundle_detector(load_bundle(str(bundle_dir)), 1, **options)
    result = evaluate_detector(detector, str(data["images"]), data["gt"])
    return {s: 100 * result[s] for s in SETTINGS}


@pytest.fixture(scope="module")
def float_ap(float_bundle, data):
    return _ap(float_bundle, data)


def _within(got, ref, tolerance):
    return {s: round(got[s] - ref[s], 3) for s in SETTINGS if abs(got[s] - ref[s]) > tolerance}


# --------------------------------------------------------------------------------------------------
# MNN
# --------------------------------------------------------------------------------------------------


class _Forbidden(AssertionError):
    pass


def _forbid(*_args, **_kwargs):
    raise _Forbidden("an MNN export tried to open a connection or start a process")


@pytest.fixture(scope="module")
def mnn_bundles(float_bundle, data, workdir):
    """The float and int8 MNN exports, made with every way out of this process blocked."""
    _require("MNN")
    from fdq.host.export import export_bundle

    with pytest.MonkeyPatch.context() as mp:
        for name in ("connect", "connect_ex", "sendto"):
            mp.setattr(socket.socket, name, _forbid)
        mp.setattr(socket, "create_connection", _forbid)
        mp.setattr(subprocess.Popen, "__init__", _forbid)
        for name in ("system", "popen", "posix_spawn", "posix_spawnp", "fork", "execv", "execve"):
            if hasattr(os, name):
                mp.setattr(os, name, _forbid)
        return {"fp32": export_bundle(float_bundle, "mnn", workdir / "slim_mnn"),
                "int8": export_bundle(float_bundle, "mnn-int8", workdir / "slim_mnn_int8", calib_dir=data["calib"])}


def test_the_block_is_real(workdir):
    """The patches the MNN fixture uses do stop a connection and a process (so its passing means something)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _forbid)
        mp.setattr(subprocess.Popen, "__init__", _forbid)
        with pytest.raises(_Forbidden):
            socket.create_connection(("127.0.0.1", 9))
        with pytest.raises(_Forbidden):
            subprocess.run(["true"])


def test_mnn_float_roles_are_found_in_the_graph(workdir, data):
    """The first convolution, the last convolutions of the heads (and the ops after them) and the
    convolutions those read (the depthwise halves of the separable heads, conv14's last) of slim.
    Before the MNN bundles are made: after their ADMM calibration this process cannot convert again."""
    _require("MNN")
    from fdq.host.export.mnn import convert_onnx, graph_ops, sensitive_ops
    from fdq.host.export.onnx import export_onnx_float
    from fdq.models import load_model

    onnx_path, mnn_path = workdir / "roles.onnx", workdir / "roles.mnn"
    export_onnx_float(load_model("slim", data["weights"]), onnx_path, LONG_SIDE)
    convert_onnx(onnx_path, mnn_path)
    ops = graph_ops(mnn_path)
    assert sensitive_ops(ops, ("first",)) == ["/conv1/conv1.0/Conv_output_0"]
    types = {op["name"]: op["type"] for op in ops}
    heads = sensitive_ops(ops, ("heads",))
    head_convs = sorted(n for n in heads if types[n].startswith("Convolution"))
    expected = [f"/{h}.{i}/{h}.{i}.2/Conv_output_0" for h in ("conf", "loc", "landm") for i in range(3)]
    assert head_convs == sorted(expected + [f"/{h}.3/Conv_output_0" for h in ("conf", "loc", "landm")])
    assert "conf" in heads and not any(n.startswith("/conv") for n in heads)
    expected = [f"/{h}.{i}/{h}.{i}.0/Conv_output_0" for h in ("conf", "loc", "landm") for i in range(3)]
    assert sensitive_ops(ops, ("preheads",)) == sorted(expected + ["/conv14/conv14.2/conv14.2.2/Conv_output_0"])


def test_mnn_manifests(mnn_bundles, data):
    fp32, int8 = (load_bundle(str(mnn_bundles[k])).manifest for k in ("fp32", "int8"))
    for manifest, dtype in ((fp32, "fp32"), (int8, "int8")):
        assert manifest["runtime"] == "mnn" and manifest["backend"]["dtype"] == dtype
        assert manifest["input"]["dynamic_hw"] is True and manifest["entry"]["model"] == "model.mnn"
        assert manifest["exported_from"]["manifest_sha256"]
    assert max(fp32["export"]["verification"]["max_abs_diff_vs_torch"].values()) < 1e-3
    q = int8["quantization"]
    assert (q["feature_quantize_method"], q["weight_quantize_method"]) == ("ADMM", "ADMM")
    assert q["float_roles"] == ["first", "heads", "preheads"] and q["float_ops"] > 22 and q["mirrored"] is True
    assert int8["quantization"]["weights"]["sha256"] == sha256_file(data["weights"])
    assert int8["calibration"]["images"] == 32 and "as the runner" in int8["calibration"]["preprocess"]


def test_mnn_float_matches_torch(mnn_bundles, float_ap, data):
    assert _within(_ap(mnn_bundles["fp32"], data), float_ap, 0.05) == {}


def test_mnn_int8_close_to_float(mnn_bundles, float_ap, data):
    assert _within(_ap(mnn_bundles["int8"], data), float_ap, 1.0) == {}


def test_mnn_ema_refuses_float_ops(workdir):
    _require("MNN")
    from fdq.host.export.mnn import quantize_mnn

    with pytest.raises(ValueError, match="EMA calibration quantizes every convolution"):
        quantize_mnn(workdir / "roles.mnn", workdir / "never.mnn", [], settings={"feature_quantize_method": "EMA",
                                                                              "skip": ("heads",)})
    assert not (workdir / "never.mnn").exists()


def test_mnn_converter_refuses_after_admm_calibration(mnn_bundles, workdir):
    """After the int8 export's ADMM calibration a conversion in this process is one error, not a hang."""
    from fdq.host.export.mnn import convert_onnx

    with pytest.raises(RuntimeError, match="cannot run after its ADMM calibration in the same process"):
        convert_onnx(workdir / "roles.onnx", workdir / "again.mnn")
    assert not (workdir / "again.mnn").exists()


def test_mnn_int8_export_needs_images(float_bundle, workdir):
    _require("MNN")
    from fdq.host.export import export_bundle

    with pytest.raises(ValueError, match="mnn-int8 export needs --calib DIR"):
        export_bundle(float_bundle, "mnn-int8", workdir / "x")
    assert not (workdir / "x").exists()


# --------------------------------------------------------------------------------------------------
# ExecuTorch (XNNPACK), float by export and int8 by PT2E
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def executorch_bundles(float_bundle, data, workdir):
    """PT2E int8 and float ExecuTorch programs of slim: minutes of quantization and lowering, so the
    tests that take them are marked slow."""
    _require("executorch", "torchao")
    from fdq.host.cli import main
    from fdq.host.export import export_bundle

    int8 = workdir / "slim_et_int8"
    rc = main(["quantize", "--model", "slim", "--weights", str(data["weights"]), "--level", "2",
               "--backend", "xnnpack", "--calib", str(data["calib"]), "--out", str(int8)])
    assert rc == 0
    return {"fp32": export_bundle(float_bundle, "executorch", workdir / "slim_et"), "int8": int8}


@pytest.mark.slow
def test_executorch_manifests(executorch_bundles):
    fp32, int8 = (load_bundle(str(executorch_bundles[k])).manifest for k in ("fp32", "int8"))
    for manifest, dtype in ((fp32, "fp32"), (int8, "int8")):
        assert manifest["runtime"] == "executorch" and manifest["backend"] == {"engine": "xnnpack", "dtype": dtype}
        assert manifest["input"]["min_hw"] == 65 and manifest["input"]["max_hw"] == 2 * LONG_SIDE
        assert manifest["export"]["executorch_version"]
    assert max(fp32["export"]["verification"]["max_abs_diff_vs_torch"].values()) < 1e-3
    q = int8["quantization"]
    assert (q["method"], q["quantizer"], q["per_channel"], q["cle"]) == ("ptq-pt2e", "XNNPACKQuantizer", True, True)
    assert int8["calibration"]["images"] == 32 and int8["calibration"]["held_back_images"] == 8
    # the program computes what the PT2E model it was lowered from computes (one int8 step of a box
    # offset is about 0.05 here)
    assert max(int8["export"]["verification"]["max_abs_diff_vs_torch"].values()) < 0.5
    report = json.loads((Path(executorch_bundles["int8"]) / "report.json").read_text(encoding="utf-8"))
    assert report["calibration_report"]["images"] == 8


@pytest.mark.slow
def test_executorch_float_matches_torch(executorch_bundles, float_ap, data):
    assert _within(_ap(executorch_bundles["fp32"], data), float_ap, 0.05) == {}


@pytest.mark.slow
def test_executorch_int8_close_to_float(executorch_bundles, float_ap, data):
    """PT2E int8, percentile activation ranges and float-eps weight scales: the project's 1-point bar."""
    assert _within(_ap(executorch_bundles["int8"], data), float_ap, 1.0) == {}


@pytest.mark.slow
def test_an_int8_program_is_refused_at_deploy_only_where_the_board_lacks_the_dot_product(executorch_bundles):
    """executorch 1.0.1 runs XNNPACK int8 with SDOT whatever the CPU: a board without asimddp (a Pi 4) is one
    line at deploy; a board with it (ARMv8.2+), and the float program anywhere, go through."""
    from fdq.host.deploy import refusal

    int8, fp32 = (load_bundle(str(executorch_bundles[k])) for k in ("int8", "fp32"))
    pi4 = {"machine": "aarch64", "python": "3.11.2", "dotprod": False,
           "modules": {"torch": "2.9.1", "executorch": "1.0.1"}}
    why = refusal("pi", "python3", int8, pi4, ["executorch"], None)
    assert why.startswith("slim_et_int8 is an XNNPACK int8 program; executorch 1.0.1 there (aarch64, Python "
                          "3.11.2) runs it with the dot-product instruction SDOT, which that CPU lacks"), why
    assert "SIGILL" in why and "\n" not in why
    assert refusal("pi5", "python3", int8, {**pi4, "dotprod": True}, ["executorch"], None) is None
    assert refusal("pi", "python3", fp32, pi4, ["executorch"], None) is None


@pytest.mark.slow
def test_executorch_refuses_sizes_it_was_not_exported_for(executorch_bundles):
    from fdq.device.runtimes import load_inference

    infer = load_inference(load_bundle(str(executorch_bundles["fp32"])))
    with pytest.raises(BundleError, match="takes inputs from 65 to 640 pixels a side, got 700x240"):
        infer(np.zeros((1, 3, 240, 700), dtype=np.float32))


@pytest.mark.slow
def test_executorch_keeps_torch_to_the_threads_of_the_run(executorch_bundles):
    """The bindings copy through libtorch: its OpenMP pool would spin beside a 1-thread XNNPACK run."""
    import torch

    from fdq.device.runtimes import load_inference

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        infer = load_inference(load_bundle(str(executorch_bundles["int8"])), threads=1)
        assert torch.get_num_threads() == 1
        assert infer(np.zeros((1, 3, 240, 320), dtype=np.float32))[0].shape[-1] == 4
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("runtime, bundles, engine", [
    ("mnn", "mnn_bundles", None),
    pytest.param("executorch", "executorch_bundles", "xnnpack", marks=pytest.mark.slow)])
def test_the_runner_runs_an_int8_bundle_of_each_new_runtime(runtime, bundles, engine, request, workdir):
    out = workdir / f"{runtime}_run.json"
    proc = subprocess.run([sys.executable, "-m", "fdq.device.run", "--bundle",
                           str(request.getfixturevalue(bundles)["int8"]), "--frames", "5", "--warmup", "1",
                           "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text(encoding="utf-8"))
    version = {"mnn": "MNN", "executorch": "executorch"}[runtime]
    assert doc["device"]["runtime"] == runtime and doc["device"]["runtime_versions"][version]
    assert doc["bundle"]["dtype"] == "int8" and len(doc["latency_ms"]["inference"]["frames"]) == 5
    if engine:
        assert doc["bundle"]["engine"] == engine


@pytest.mark.parametrize("extra, needle", [
    (["--level", "1"], "--backend xnnpack quantizes through PT2E at level 2 only"),
    (["--level", "2", "--calib", "{calib}", "--observer", "moving-minmax"],
     "--backend xnnpack (PT2E) takes --observer percentile|histogram|minmax, not moving-minmax"),
    (["--level", "2", "--calib", "{calib}", "--reduce-range"], "--[no-]reduce-range apply to the eager backends"),
])
def test_xnnpack_options_are_checked_first(extra, needle, data, workdir):
    _require("executorch", "torchao")
    out = workdir / "never"
    args = [a.format(calib=data["calib"]) for a in extra]
    proc = subprocess.run([sys.executable, "-m", "fdq.host.cli", "quantize", "--model", "slim", "--backend", "xnnpack",
                           *args, "--out", str(out)], capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and lines[-1].startswith("fdq: error:") and needle in lines[-1], proc.stderr
    assert not out.exists()


# --------------------------------------------------------------------------------------------------
# The device path's uint8 resize
# --------------------------------------------------------------------------------------------------


def test_uint8_resize_keeps_size_and_stays_within_one_level(data):
    from fdq.device.preprocess import resize_image, resize_uint8

    for _, path in list_images(str(data["images"]))[:8]:
        image = read_image(path)
        ref, ratio = resize_image(image, LONG_SIDE)
        got, got_ratio = resize_uint8(image, LONG_SIDE)
        assert got.dtype == np.uint8 and got.shape == ref.shape and got_ratio == ratio
        assert np.abs(got.astype(np.float32) - ref).max() <= 1.0


def test_bundle_detectors_resize_in_uint8(float_bundle, data):
    """The device path never makes a float32 copy of the frame: normalize receives the uint8 resize."""
    from fdq.device.kernels import normalize_c
    from fdq.device.runtimes import bundle_detector

    seen = []

    def spy(resized, mean):
        seen.append(resized.dtype)
        return normalize_c(resized, mean)

    image = read_image(list_images(str(data["images"]))[0][1])
    bundle = load_bundle(str(float_bundle))
    bundle_detector(bundle, 1, normalize=spy).detect(image)
    bundle_detector(bundle, 1, normalize=spy, resize="reference").detect(image)
    assert seen == [np.uint8, np.float32]


def test_uint8_resize_ap_close_to_reference(float_bundle, float_ap, data):
    assert _within(_ap(float_bundle, data, resize="reference"), float_ap, 0.2) == {}

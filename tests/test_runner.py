"""The board runner (`python -m fdq.device.run`), its runtimes, and the ONNX / NCNN exports.

Everything runs on the slim model at long side 320 with one thread, on the 64-image WIDER FACE
validation subset in the shared folder, so the whole file stays well under two minutes on 2 cores.
"""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fdq.device.bundle import Bundle, BundleError, load_bundle, sha256_file
from fdq.device.evaluation import evaluate, load_ground_truth
from fdq.device.images import list_images, read_image

LONG_SIDE = 320
STAGES = ("preprocess", "inference", "postprocess", "total")
STAT_KEYS = ("mean", "p50", "p90", "p99", "min", "max", "frames")
# An image of the subset with 14 faces scored >= 0.5 at long side 320, several near the threshold.
CROWD = "0--Parade/0_Parade_Parade_0_873"


def _run(args, timeout=120):
    return subprocess.run([sys.executable, "-m", "fdq.device.run", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def data(shared_dir):
    root = shared_dir / "data" / "widerface_val_subset" / "val"
    if not (root / "images").is_dir():
        pytest.skip(f"WIDER FACE subset not found under {root}")
    return {"images": root / "images", "gt": root / "ground_truth", "weights": shared_dir / "weights" / "slim_Final.pth"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("runner")


@pytest.fixture(scope="module")
def eager(data):
    from fdq.models import load_model

    return load_model("slim", data["weights"])


@pytest.fixture(scope="module")
def ts_bundle(slim_weighted_bundle):
    """slim fp32 at LONG_SIDE recording its weights: the session's (conftest)."""
    return slim_weighted_bundle


@pytest.fixture(scope="module")
def gt_run(ts_bundle, data, workdir):
    """One subprocess run over the whole subset with ground truth: (document, completed process)."""
    out = workdir / "gt_run.json"
    proc = _run(["--bundle", ts_bundle, "--source", data["images"], "--gt", data["gt"], "--warmup", 1,
                 "--threads", 1, "--json", out])
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text(encoding="utf-8")), proc


# --------------------------------------------------------------------------------------------------
# The JSON document
# --------------------------------------------------------------------------------------------------


def test_schema(gt_run, ts_bundle):
    doc, proc = gt_run
    assert doc["schema"] == "fdq.run/1"
    b = doc["bundle"]
    assert b["path"] == str(Path(ts_bundle).resolve())
    assert (b["model"], b["runtime"], b["engine"], b["dtype"], b["quantization"]) == \
        ("slim", "torchscript", None, "fp32", "float")
    assert b["manifest_sha256"] == sha256_file(Path(ts_bundle) / "manifest.yaml")
    d = doc["device"]
    for key in ("machine", "cpu", "os", "python", "emulation", "runtime", "runtime_versions", "engine",
                "threads", "kernels"):
        assert key in d, key
    assert d["runtime"] == "torchscript" and d["threads"] == 1 and d["runtime_versions"]["torch"]
    assert isinstance(d["emulation"]["emulated"], bool) and d["emulation"]["how"]
    assert d["cpu"]["cores"] >= 1
    assert doc["source"]["kind"] == "images" and doc["source"]["images"] == 64
    assert doc["settings"]["frames"] == 64 and doc["settings"]["long_side"] == LONG_SIDE
    assert doc["memory"]["peak_rss_mib"] > 10
    assert set(doc["thermal"]) == {"start_c", "end_c", "throttled_start", "throttled_end", "zone",
                                   "throttled_during_run"}
    det = doc["detections"]
    assert len(det["per_frame"]) == 64 and len(det["candidates_per_frame"]) == 64
    assert all(0 <= f <= c for f, c in zip(det["per_frame"], det["candidates_per_frame"]))
    assert det["faces_total"] == sum(det["per_frame"]) > 0
    acc = doc["accuracy"]
    assert acc["images"] == 64 and acc["missing_images"] == 0
    assert 0.5 < acc["easy"] <= 1 and 0 < acc["hard"] < acc["medium"] < acc["easy"]
    assert "wrote" in proc.stdout and proc.stderr == ""


def test_latency_stats_are_consistent(gt_run):
    doc, _ = gt_run
    lat = doc["latency_ms"]
    assert set(lat) == set(STAGES)
    for stage in STAGES:
        s = lat[stage]
        assert set(s) == set(STAT_KEYS)
        assert len(s["frames"]) == doc["settings"]["frames"] == 64
        assert s["min"] <= s["p50"] <= s["p90"] <= s["p99"] <= s["max"]
        assert s["min"] <= s["mean"] <= s["max"] and s["min"] > 0
        assert s["min"] == min(s["frames"]) and s["max"] == max(s["frames"])
        assert s["mean"] == pytest.approx(float(np.mean(s["frames"])), rel=1e-9)
    parts = np.sum([lat[s]["frames"] for s in STAGES[:3]], axis=0)
    assert np.all(parts <= np.asarray(lat["total"]["frames"]) + 1e-6)
    assert doc["fps"] == pytest.approx(1000.0 / lat["total"]["mean"])


def test_accuracy_matches_in_process_runner_and_eager_model(gt_run, ts_bundle, data, eager):
    from fdq.device.detector import FaceDetector
    from fdq.device.run import build_parser, run
    from fdq.host.evaluate import predict_folder
    from fdq.host.torch_inference import torch_inference
    from fdq.models import SPECS

    doc, _ = gt_run
    args = build_parser().parse_args(["--bundle", str(ts_bundle), "--source", str(data["images"]), "--gt",
                                      str(data["gt"]), "--warmup", "0", "--json", "unused.json"])
    same = run(args)["accuracy"]
    for setting in ("easy", "medium", "hard"):
        assert doc["accuracy"][setting] == pytest.approx(same[setting], abs=1e-6)
    # The eager model differs from the frozen trace only in float rounding.
    gt = load_ground_truth(data["gt"])
    eager_detector = FaceDetector(torch_inference(eager), SPECS["slim"], LONG_SIDE)
    ref = evaluate(predict_folder(eager_detector, str(data["images"])), gt)
    for setting in ("easy", "medium", "hard"):
        assert doc["accuracy"][setting] == pytest.approx(ref[setting], abs=0.005)


def test_synthetic_source(ts_bundle, workdir):
    out = workdir / "synthetic.json"
    proc = _run(["--bundle", ts_bundle, "--frames", 3, "--warmup", 1, "--json", out])
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["source"]["kind"] == "synthetic" and doc["source"]["seed"] == 0
    assert doc["source"]["width"] * 3 == doc["source"]["height"] * 4
    assert doc["settings"]["frames"] == 3 and len(doc["latency_ms"]["total"]["frames"]) == 3
    assert "accuracy" not in doc
    assert "fdq-run: frame" not in proc.stderr  # progress lines only with --progress


def test_progress_streams_frame_lines_on_stderr(ts_bundle, workdir):
    """--progress (fdq-profile's, on a terminal): a plain line per frame done on stderr, the first at once
    and the last at the end; stdout and the document are those of a run without it."""
    out = workdir / "progress.json"
    proc = _run(["--bundle", ts_bundle, "--frames", 5, "--warmup", 1, "--progress", "--json", out])
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("fdq-run: frame")]
    assert all(re.fullmatch(r"fdq-run: frame [1-5]/5, \d+\.\d FPS", ln) for ln in lines), lines
    assert lines[0].startswith("fdq-run: frame 1/5,") and lines[-1].startswith("fdq-run: frame 5/5,"), lines
    assert "frame" not in proc.stdout.replace("5 frames", "")  # stdout: the header and the summary only
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["settings"]["frames"] == 5 and len(doc["latency_ms"]["total"]["frames"]) == 5


def test_image_folder_loops_when_more_frames_are_asked(ts_bundle, data, workdir):
    folder = data["images"] / "5--Car_Accident"  # two images
    out = workdir / "loop.json"
    proc = _run(["--bundle", ts_bundle, "--source", folder, "--frames", 5, "--warmup", 0, "--json", out])
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text(encoding="utf-8"))
    per_frame = doc["detections"]["candidates_per_frame"]
    assert len(per_frame) == 5 and per_frame[0] == per_frame[2] == per_frame[4] and per_frame[1] == per_frame[3]


# --------------------------------------------------------------------------------------------------
# Bad input and interruption: one line on stderr, no JSON
# --------------------------------------------------------------------------------------------------


def _assert_one_line_error(proc, out, needle):
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fdq-run: error: "), proc.stderr
    assert needle in lines[0]
    assert "Traceback" not in proc.stderr
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.*")), "temporary file left behind"


def test_tampered_bundle(ts_bundle, workdir):
    bad = workdir / "tampered"
    shutil.copytree(ts_bundle, bad)
    model = bad / "model.pt"
    raw = bytearray(model.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    model.write_bytes(bytes(raw))
    out = workdir / "tampered.json"
    _assert_one_line_error(_run(["--bundle", bad, "--frames", 1, "--json", out]), out, "tampered")


@pytest.mark.parametrize("case", ["missing_bundle", "missing_source", "empty_folder", "gt_wrong_folder",
                                  "gt_split_root"])
def test_bad_input(case, ts_bundle, data, workdir):
    out = workdir / f"{case}.json"
    empty = workdir / "empty"
    empty.mkdir(exist_ok=True)
    args, needle = {
        "missing_bundle": (["--bundle", workdir / "no_such_bundle"], "bundle not found"),
        "missing_source": (["--bundle", ts_bundle, "--source", workdir / "nothing_here"], "source not found"),
        "empty_folder": (["--bundle", ts_bundle, "--source", empty], "no images"),
        "gt_wrong_folder": (["--bundle", ts_bundle, "--source", data["images"] / "0--Parade", "--gt", data["gt"]],
                            "not the ground truth's image folder"),
        "gt_split_root": (["--bundle", ts_bundle, "--source", data["images"].parent, "--gt", data["gt"]],
                          f"; give {data['images']}, one folder down"),
    }[case]
    _assert_one_line_error(_run([*args, "--json", out]), out, needle)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_run_writes_nothing(sig, ts_bundle, workdir):
    out = workdir / f"signal_{sig.name}.json"
    proc = subprocess.Popen([sys.executable, "-m", "fdq.device.run", "--bundle", str(ts_bundle), "--frames",
                             "100000", "--warmup", "1", "--json", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()  # printed once the model is loaded, right before warm-up
        assert first.startswith("fdq-run:"), first
        time.sleep(1.0)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + sig.value, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and sig.name in lines[0] and "no results written" in lines[0]
    assert not out.exists() and not list(workdir.glob(f".{out.name}.*"))


def test_device_package_imports_nothing_from_the_host():
    code = ("import sys, fdq.device.run, fdq.device.runtimes, fdq.device.sysinfo, fdq.device.evaluation\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('paramiko', 'rich') "
            "or m == 'fdq.host' or m.startswith('fdq.host.'))\n"
            "assert not bad, bad\n"
            "assert 'torch' not in sys.modules, 'fdq.device.run must import its runtime lazily'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_unsupported_quantized_engine_is_a_clear_error(ts_bundle):
    from fdq.device.runtimes import load_inference

    bundle = load_bundle(str(ts_bundle))
    manifest = dict(bundle.manifest, backend={"engine": "no_such_engine", "dtype": "int8"})
    with pytest.raises(BundleError, match="bundle needs engine no_such_engine, this torch supports: "):
        load_inference(Bundle(bundle.path, manifest))


def test_qnnpack_that_cannot_see_the_cpu_says_what_to_mount(ts_bundle, monkeypatch):
    """A chroot without /sys (the emulated board, set up by hand) makes torch's QNNPACK fail with
    'failed to initialize QNNPACK' on ARM; x86 QNNPACK reads the CPU through cpuid and cannot be made
    to fail that way, so the loader's own error is injected here."""
    import torch

    from fdq.device.runtimes import load_inference

    def qnnpack_without_sys(*args, **kwargs):
        raise RuntimeError("failed to initialize QNNPACK\nException raised from qnnpack_prepack")

    monkeypatch.setattr(torch.jit, "load", qnnpack_without_sys)
    with pytest.raises(BundleError) as caught:
        load_inference(load_bundle(str(ts_bundle)))
    message = str(caught.value)
    assert "failed to initialize QNNPACK" in message and "mount /proc and /sys" in message
    assert "\n" not in message and "Exception raised from" not in message


def test_sysinfo_is_plain_json():
    from fdq.device import sysinfo

    info = sysinfo.system_info()
    json.dumps(info)
    assert info["python"].count(".") == 2 and set(info["emulation"]) == {"emulated", "how"}
    assert sysinfo.peak_rss_mib() > 1
    temp = sysinfo.cpu_temperature_c()
    assert temp is None or -40 < temp < 150


# --------------------------------------------------------------------------------------------------
# Exports and cross-runtime agreement
# --------------------------------------------------------------------------------------------------


def _have(*modules):
    return [m for m in modules if importlib.util.find_spec(m) is None]


@pytest.fixture(scope="module")
def exported(ts_bundle, data, workdir):
    """ONNX fp32, ONNX int8 QDQ and NCNN fp32 bundles of the same float model (what is importable)."""
    from fdq.host.export import export_bundle

    out = {}
    if not _have("onnx", "onnxruntime"):
        out["onnx"] = export_bundle(ts_bundle, "onnx", workdir / "slim_onnx")
        out["onnx-int8"] = export_bundle(ts_bundle, "onnx-int8", workdir / "slim_onnx_int8",
                                         calib_dir=data["images"] / "0--Parade", calib_limit=4)
    if not _have("ncnn", "pnnx"):
        out["ncnn"] = export_bundle(ts_bundle, "ncnn", workdir / "slim_ncnn")
    return out


def _iou(a, b):
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def _match(ref, other, min_score, min_iou, score_tol):
    """Faces of ``ref`` with score >= min_score that have no detection of ``other`` within tolerance."""
    faces = ref.above(min_score)
    if len(faces) == 0:
        return []
    if len(other) == 0:
        return list(range(len(faces)))
    iou = _iou(faces.boxes, other.boxes)
    best = iou.argmax(1)
    return [i for i in range(len(faces))
            if iou[i, best[i]] < min_iou or abs(float(faces.scores[i]) - float(other.scores[best[i]])) > score_tol]


def _detect(bundle_dir, image):
    from fdq.device.run import build_detector

    bundle = load_bundle(str(bundle_dir))
    return build_detector(bundle, threads=1).detect(image)


@pytest.mark.parametrize("fmt", ["onnx", "ncnn"])
def test_same_boxes_in_every_float_runtime(fmt, exported, ts_bundle, data):
    if fmt not in exported:
        pytest.skip(f"{fmt} export needs {', '.join(_have(*(('onnx', 'onnxruntime') if fmt == 'onnx' else ('ncnn', 'pnnx'))))}")
    manifest = load_bundle(str(exported[fmt])).manifest
    assert manifest["runtime"] == {"onnx": "onnxruntime", "ncnn": "ncnn"}[fmt]
    assert manifest["backend"]["dtype"] == "fp32" and manifest["input"].get("dynamic_hw") is True
    assert manifest["quantization"]["params_from"] is None
    assert manifest["export"]["summary"].startswith(f"{manifest['runtime']} fp32: the float model of fp32 ")
    image = read_image(dict(list_images(str(data["images"])))[CROWD])
    ref, other = _detect(ts_bundle, image), _detect(exported[fmt], image)
    assert len(ref.above(0.5)) >= 10
    # Both directions: a face one runtime finds, the other finds too (same box, same score).
    assert _match(ref, other, 0.5, 0.9, 0.02) == []
    assert _match(other, ref, 0.5, 0.9, 0.02) == []


def test_onnx_int8_detections_overlap_float(exported, ts_bundle, data):
    """Tolerance: every float face (score > 0.5) on three images has an int8 detection with IoU >= 0.7
    and a score within 0.15; the int8 face count (score > 0.5) is within 25 % of the float one."""
    if "onnx-int8" not in exported:
        pytest.skip(f"onnx export needs {', '.join(_have('onnx', 'onnxruntime'))}")
    manifest = load_bundle(str(exported["onnx-int8"])).manifest
    assert manifest["backend"]["dtype"] == "int8" and manifest["runtime"] == "onnxruntime"
    calib = manifest["calibration"]
    assert calib["images"] == 4 and len(calib["list_sha256"]) == 64
    assert manifest["quantization"]["params_from"] == "onnxruntime calibration"
    assert manifest["export"]["summary"].startswith("onnxruntime int8: recalibrated by ONNX Runtime (MinMax) on 4 "
                                                    f"images of {calib['dir']} (list sha256 {calib['list_sha256'][:16]})")
    images = dict(list_images(str(data["images"])))
    keys = [CROWD, "0--Parade/0_Parade_Parade_0_194", "7--Cheering/" + next(
        Path(k).name for k in images if k.startswith("7--Cheering/"))]
    n_float = n_int8 = 0
    for key in keys:
        image = read_image(images[key])
        ref, q = _detect(ts_bundle, image), _detect(exported["onnx-int8"], image)
        assert _match(ref, q, 0.5, 0.7, 0.15) == [], key
        n_float += len(ref.above(0.5))
        n_int8 += len(q.above(0.5))
    assert n_float > 0 and abs(n_int8 - n_float) <= 0.25 * n_float


def test_export_rejects_bad_input(ts_bundle, workdir, data):
    from fdq.host.export import export_bundle

    with pytest.raises(ValueError, match="unknown export format 'tflite'"):
        export_bundle(ts_bundle, "tflite", workdir / "x")
    with pytest.raises(ValueError, match="needs --calib DIR"):
        export_bundle(ts_bundle, "onnx-int8", workdir / "x")
    with pytest.raises(ValueError, match="bundle not found"):
        export_bundle(workdir / "nope", "onnx", workdir / "x")
    with pytest.raises(ValueError, match="calibration: no images"):
        empty = workdir / "empty_calib"
        empty.mkdir(exist_ok=True)
        export_bundle(ts_bundle, "onnx-int8", workdir / "x", calib_dir=empty)
    assert not (workdir / "x").exists()


def test_torchscript_reexport_is_a_verified_copy(ts_bundle, workdir):
    from fdq.host.export import export_bundle

    copy = load_bundle(str(export_bundle(ts_bundle, "torchscript", workdir / "slim_ts_copy")))
    original = load_bundle(str(ts_bundle))
    assert copy.manifest["files"] == original.manifest["files"]
    assert copy.manifest["exported_from"]["manifest_sha256"] == sha256_file(Path(ts_bundle) / "manifest.yaml")
    assert copy.manifest["export"]["summary"].startswith("torchscript fp32: a verified copy of fp32 ")


# --------------------------------------------------------------------------------------------------
# Exports of an int8 bundle: the same int8 model, or a float model only when asked, and said so
# --------------------------------------------------------------------------------------------------


def _fdq(*args):
    """``fdq ARGS`` in a subprocess: (exit status, stdout, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "fdq.host.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)
    return proc.returncode, proc.stdout, proc.stderr


def _one_error_line(stderr):
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fdq: error: "), stderr
    return lines[0]


@pytest.fixture(scope="module")
def int8_bundle(data, workdir):
    """slim, level 2, qnnpack, calibrated on the 8 images of one event of the calibration split."""
    calib = workdir / "calib_parade" / "0--Parade"
    calib.mkdir(parents=True)
    for image in sorted((data["images"].parent.parent / "calib" / "images" / calib.name).glob("*.jpg")):
        (calib / image.name).symlink_to(image)
    calib = calib.parent
    out = workdir / "slim_int8"
    rc, _, stderr = _fdq("quantize", "--model", "slim", "--level", 2, "--backend", "qnnpack", "--calib", calib,
                         "--weights", data["weights"], "--out", out)
    assert rc == 0, stderr
    return out


@pytest.fixture(scope="module")
def int8_onnx(int8_bundle, workdir):
    """``fdq export --format onnx-int8`` of the int8 bundle: (bundle path, the line it printed)."""
    if _have("onnx", "onnxruntime"):
        pytest.skip(f"onnx export needs {', '.join(_have('onnx', 'onnxruntime'))}")
    out = workdir / "slim_int8_onnx"
    rc, stdout, stderr = _fdq("export", int8_bundle, "--format", "onnx-int8", "--out", out)
    assert rc == 0, stderr
    return out, stdout.strip()


@pytest.mark.parametrize("fmt", ["onnx", "ncnn"])
def test_int8_bundle_to_a_float_format_is_refused_without_float(fmt, int8_bundle, workdir):
    out = workdir / f"refused_{fmt}"
    rc, stdout, stderr = _fdq("export", int8_bundle, "--format", fmt, "--out", out)
    line = _one_error_line(stderr)
    assert rc == 1 and stdout == "" and not out.exists()
    assert f"is int8: --format {fmt} writes an fp32 model" in line and "--float" in line and "onnx-int8" in line


def test_int8_bundle_to_onnx_with_float_is_its_float_model_and_says_so(int8_bundle, ts_bundle, workdir, data):
    if _have("onnx", "onnxruntime"):
        pytest.skip(f"onnx export needs {', '.join(_have('onnx', 'onnxruntime'))}")
    out = workdir / "slim_int8_as_float_onnx"
    rc, stdout, stderr = _fdq("export", int8_bundle, "--format", "onnx", "--float", "--weights", data["weights"],
                              "--out", out)
    assert rc == 0, stderr
    manifest = load_bundle(str(out)).manifest
    summary = manifest["export"]["summary"]
    assert stdout.strip() == f"wrote {out.resolve()}: {summary}"
    assert summary.startswith("onnxruntime fp32: float model of int8 torchscript bundle ") and "(qnnpack)" in summary
    assert manifest["backend"]["dtype"] == "fp32" and manifest["quantization"]["params_from"] is None
    assert manifest["exported_from"]["dtype"] == "int8"
    # It is the float model indeed: the same faces as the fp32 TorchScript bundle, to float rounding.
    image = read_image(dict(list_images(str(data["images"])))[CROWD])
    ref, other = _detect(ts_bundle, image), _detect(out, image)
    assert _match(ref, other, 0.5, 0.9, 0.02) == [] and _match(other, ref, 0.5, 0.9, 0.02) == []


def test_onnx_int8_of_an_int8_bundle_carries_its_scales(int8_bundle, int8_onnx):
    import onnx
    import torch

    out, line = int8_onnx
    manifest, source = load_bundle(str(out)).manifest, load_bundle(str(int8_bundle)).manifest
    assert line == f"wrote {out.resolve()}: {manifest['export']['summary']}"
    assert line.startswith(f"wrote {out.resolve()}: onnxruntime int8: the int8 model of int8 torchscript bundle ")
    assert "(qnnpack), with its own scales and zero points" in line
    assert manifest["runtime"] == "onnxruntime" and manifest["backend"]["dtype"] == "int8"
    assert manifest["quantization"]["params_from"] == "source bundle"
    assert manifest["quantization"]["source"] == source["quantization"]
    assert manifest["calibration"] == source["calibration"] and manifest["calibration"]["images"] == 8
    assert manifest["exported_from"]["manifest_sha256"] == sha256_file(Path(int8_bundle) / "manifest.yaml")
    # Every activation scale of the torch int8 model (each quantized op's output, and the input's) is a
    # QuantizeLinear scale of the ONNX model, and the ONNX model has no other.
    torch.backends.quantized.engine = "qnnpack"
    graph = torch.jit.load(str(Path(int8_bundle) / "model.pt")).graph
    torch_scales = {float(np.float32(list(n.inputs())[2].toIValue())) for n in graph.nodes()
                    if n.kind().startswith("quantized::conv2d")}
    torch_scales.add(float(np.float32(source["input"]["quantized"]["scale"])))
    model = onnx.load(str(out / "model.onnx"))
    init = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    onnx_scales = {float(init[n.input[1]]) for n in model.graph.node if n.op_type == "QuantizeLinear"}
    assert onnx_scales == torch_scales and len(torch_scales) > 20


def test_onnx_int8_detections_agree_with_the_torch_int8_bundle(int8_bundle, int8_onnx, data):
    """On all 64 val images, every face (score >= 0.5) of either has the other's detection with IoU >= 0.9
    and a score within 0.05. Tolerance: both compute the same integers, but QNNPACK and ONNX Runtime
    requantize in float32 with multipliers rounded differently, so a value within ~1e-6 of a rounding
    tie goes one step up in one and down in the other (measured here: one activation of 34,560 in one
    layer, e.g. 11.4999995 -> 12 vs 11); propagated, that moves face scores by up to 0.025 and boxes by
    a fraction of a pixel on these images, half of which come out bit-identical. A model with other
    scales (ONNX Runtime's own calibration) needs 0.15 (test_onnx_int8_detections_overlap_float)."""
    from fdq.device.run import build_detector

    torch_int8 = build_detector(load_bundle(str(int8_bundle)), threads=1)
    onnx_int8 = build_detector(load_bundle(str(int8_onnx[0])), threads=1)
    faces = 0
    for key, path in list_images(str(data["images"])):
        image = read_image(path)
        ref, got = torch_int8.detect(image), onnx_int8.detect(image)
        assert _match(ref, got, 0.5, 0.9, 0.05) == [] and _match(got, ref, 0.5, 0.9, 0.05) == [], key
        faces += len(ref.above(0.5))
    assert faces > 100


def test_onnx_int8_of_an_int8_bundle_refuses_calib(int8_bundle, workdir, data):
    out = workdir / "refused_calib"
    rc, _, stderr = _fdq("export", int8_bundle, "--format", "onnx-int8", "--calib", data["images"], "--out", out)
    assert rc == 1 and "drop --calib (nothing is recalibrated)" in _one_error_line(stderr) and not out.exists()


def test_torchscript_copy_of_an_int8_bundle_says_int8(int8_bundle, workdir):
    from fdq.host.export import export_bundle, summary

    out = export_bundle(int8_bundle, "torchscript", workdir / "slim_int8_copy")
    assert summary(out).startswith("torchscript int8: a verified copy of int8 torchscript bundle ")
    assert load_bundle(str(out)).manifest["quantization"]["params_from"] == "source bundle"


def test_export_help_describes_every_argument():
    import argparse

    from fdq.host.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["export"]
    assert all(action.help for action in sub._actions), [a.dest for a in sub._actions if not a.help]
    text = " ".join(sub.format_help().split())
    assert text.count("(required)") == 2 and text.count("(default: off)") == 3  # --force, --float, --quiet
    assert "the fdq bundle folder to export" in text and "(default: the model's zoo weights)" in text

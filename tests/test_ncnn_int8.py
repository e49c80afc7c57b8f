"""ncnn int8 bundles (``fdq export --format ncnn-int8``): real slim weights, real WIDER FACE images.

* The int8 arithmetic ncnn runs for an exported layer is the one the manifest and the .bin describe,
  checked against a numpy simulation: the first convolution (input quantized with its bottom scale,
  output requantized with its top scale) and a head convolution (int8 input from a requantizing layer,
  output dequantized with the scales, plus the bias).
* Exports from an int8 bundle (its own int8 weights, scales converted) and from a float one (``--calib``);
  ``--keep-float`` leaves the named layer fp32 in the .param and the .bin.
* AP on 12 val images (every fifth): an int8 export loses at most 1 point on each setting against the
  fp32 ncnn export of the same weights. On so few images int8 noise moves AP by up to 3-4 points either
  way (here the int8 bundle's export gains 3.2 / 1.0 / 0.0 and the calibrated one 4.4 / 1.7 / 0.5; on 16
  images, every fourth, both lose 3.0 on easy), so only a loss is checked: a broken model loses tens of
  points. On all 64 val images they lose 1.3 / 1.5 / 0.7 and 0.7 / 0.7 / 0.3 (docs/ACCURACY.md, "ncnn int8").
* ncnn2table's KL threshold (:class:`fdq.calibration.quant_api.KLThreshold`, the calibrated export's
  alternative observer): clips a lone outlier, keeps a range without a tail, ignores zeros; its export
  records it and loses at most a point on the 12 val images.
* Each bad input is one line.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fdq.device.bundle import BundleError, load_bundle
from fdq.host.cli import main, profile_main

LONG_SIDE = 320
SETTINGS = ("easy", "medium", "hard")
AP_POINTS = 1.0
VAL_IMAGES, VAL_STEP = 12, 5


@pytest.fixture(scope="module")
def data(shared_dir, tmp_path_factory):
    """The calibration images, and 12 val images (links) with their ground truth."""
    from fdq.calibration.labels import subset_ground_truth
    from fdq.device.evaluation import load_ground_truth

    root = shared_dir / "data" / "widerface_val_subset"
    if not (root / "val" / "images").is_dir():
        pytest.skip(f"WIDER FACE subset not found under {root}")
    few = tmp_path_factory.mktemp("val12")
    keys = []
    for image in sorted((root / "val" / "images").rglob("*.jpg"))[::VAL_STEP][:VAL_IMAGES]:
        (few / image.parent.name).mkdir(exist_ok=True)
        (few / image.parent.name / image.name).symlink_to(image)
        keys.append(f"{image.parent.name}/{image.stem}")
    return {"calib": root / "calib" / "images", "images": few,
            "gt": subset_ground_truth(load_ground_truth(root / "val" / "ground_truth"), keys)}


def _fdq(*argv) -> None:
    assert main([str(a) for a in argv]) == 0, argv


@pytest.fixture(scope="module")
def bundles(home, data, slim_fp32_bundle, tmp_path_factory):
    """slim's qnnpack int8 bundle and, made with the CLI: the fp32 ncnn export, the ncnn-int8 exports of the
    int8 bundle (with and without --keep-float) and of the float bundle (--calib)."""
    root = tmp_path_factory.mktemp("ncnn_int8")
    made = {"float": Path(slim_fp32_bundle), "int8": root / "slim_qnnpack"}
    _fdq("quantize", "--model", "slim", "--level", "2", "--backend", "qnnpack", "--calib", data["calib"],
         "--out", made["int8"])
    for name, source, extra in (("ncnn", "float", ()), ("from_int8", "int8", ()),
                                ("from_float", "float", ("--calib", data["calib"])),
                                ("kept", "int8", ("--keep-float", f"convrelu_0,{KEPT_UNIT}"))):
        made[name] = root / name
        _fdq("export", made[source], "--format", "ncnn-int8" if name != "ncnn" else "ncnn", "--out", made[name],
             *extra)
    return made


KEPT_UNIT = "conv13.0"  # a PyTorch unit name: --keep-float takes either kind


def _int8_layers(bundle_dir: Path):
    """The bundle's layers, int8 payloads (weights, scales) read back from the .bin."""
    from fdq.host.export.ncnn_model import read_model

    return read_model(bundle_dir / "model.ncnn.param", bundle_dir / "model.ncnn.bin")


def _simulate(layer, x: np.ndarray, quantize_input: bool) -> np.ndarray:
    """The int8 arithmetic of one ncnn convolution in numpy (int32 sums computed exactly in float64)."""
    q = np.clip(np.round(x * layer.int8.bottom_scale), -127, 127) if quantize_input else x
    (out, per_group, kh, kw), groups = layer.weight_shape(), layer.groups
    weight = layer.int8.weight.reshape(out, per_group, kh, kw).astype(np.float64)
    pad = (layer.get(14, layer.get(4)), layer.get(4))
    acc = torch.nn.functional.conv2d(torch.from_numpy(q[None].astype(np.float64)), torch.from_numpy(weight),
                                     stride=layer.stride, padding=pad, dilation=layer.dilation, groups=groups)
    acc = acc[0].numpy()
    assert np.array_equal(acc, np.round(acc))  # integer sums, as ncnn's int32 accumulator holds them
    scales = np.repeat(layer.int8.weight_scales, out // len(layer.int8.weight_scales)).astype(np.float64)
    value = acc / (layer.int8.bottom_scale * scales)[:, None, None] + layer.bias[:, None, None]
    if layer.get(9) == 1:
        value = np.maximum(value, 0)
    if layer.int8.top_scale is not None:
        value = np.clip(np.round(value * layer.int8.top_scale), -127, 127)
    return value


def test_the_int8_arithmetic_of_exported_layers_equals_a_numpy_simulation(bundles, data):
    from fdq.device.images import list_images, read_image
    from fdq.device.preprocess import normalize, resize_image
    from fdq.device.runtimes import open_ncnn, run_ncnn

    folder = bundles["from_int8"]
    model = _int8_layers(folder)
    first = next(layer for layer in model.layers if layer.int8 is not None)
    producers = {layer.tops[0]: layer for layer in model.layers if layer.tops}
    head = next(layer for layer in model.layers if layer.int8 is not None and layer.int8.top_scale is None
                and producers[layer.bottoms[0]].int8 is not None
                and producers[layer.bottoms[0]].int8.top_scale is not None)
    assert first.bottoms == ["in0"] and first.int8.top_scale is not None
    image = read_image(list_images(str(data["images"]))[0][1])
    blob = normalize(resize_image(image, LONG_SIDE)[0], load_bundle(str(folder)).spec.mean_bgr)
    net = open_ncnn(str(folder / "model.ncnn.param"), str(folder / "model.ncnn.bin"), 1, True, int8=True)
    net.opt.lightmode = False
    got_first, head_in, got_head = run_ncnn(net, "in0", [first.tops[0], head.bottoms[0], head.tops[0]], blob)

    want = _simulate(first, blob[0].astype(np.float64), quantize_input=True)
    assert got_first.shape == want.shape
    off = np.abs(got_first - want)
    assert off.max() <= 1 and (off > 0).mean() < 1e-3, (off.max(), (off > 0).mean())  # ties may round apart

    assert np.array_equal(head_in, np.round(head_in)) and np.abs(head_in).max() <= 127  # int8 values
    want = _simulate(head, head_in.astype(np.float64), quantize_input=False)
    np.testing.assert_allclose(got_head, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_an_int8_bundle_exports_its_own_weights_and_converted_scales(bundles):
    from fdq.calibration.quant_api import set_engine
    from fdq.device.runtimes import input_quantization
    from fdq.host.export.ncnn_int8 import threshold_of_range
    from fdq.host.export.onnx_qdq import quantized_convs

    bundle = load_bundle(str(bundles["from_int8"]))
    assert bundle.runtime == "ncnn" and bundle.manifest["backend"]["dtype"] == "int8"
    quantization = bundle.manifest["quantization"]
    assert quantization["params_from"].startswith("source bundle") and "converted" in quantization["scales"]
    rows = {row["layer"]: row for row in quantization["layers"]}
    assert len(rows) == 49 and all(row["int8"] for row in rows.values())
    assert quantization["requantized"], "no requantize fusion"
    source = load_bundle(str(bundles["int8"]))
    set_engine(source.engine)
    convs = quantized_convs(torch.jit.load(str(source.file("model"))), input_quantization(source))
    model = _int8_layers(bundles["from_int8"])
    first = model.layers[1]  # the first convolution reads the input: the bundle's input range, converted
    assert first.int8.bottom_scale == pytest.approx(127 / threshold_of_range(convs[0].input_scale,
                                                                             convs[0].input_zero_point))
    assert np.array_equal(first.int8.weight, convs[0].weight.reshape(-1))
    np.testing.assert_allclose(first.int8.weight_scales, 1 / convs[0].weight_scales, rtol=1e-6)
    weights = {c.weight.tobytes(): c for c in convs}
    for layer in model.layers:
        if layer.int8 is not None:
            assert layer.int8.weight.tobytes() in weights, f"{layer.name}: not one of the bundle's int8 weights"
    assert "max_abs_diff_vs_source_bundle" in bundle.manifest["export"]["verification"]


def test_a_float_bundle_is_calibrated_on_the_images(bundles):
    bundle = load_bundle(str(bundles["from_float"]))
    quantization = bundle.manifest["quantization"]
    assert quantization["params_from"] == "fdq calibration" and bundle.manifest["calibration"]["images"] == 32
    assert "histogram" in quantization["scales"] and quantization["observer"] == "histogram"
    model = _int8_layers(bundles["from_float"])
    for layer in model.layers:
        if layer.int8 is not None and layer.int8.weight.size:  # ncnn's rule: 127 / absmax per channel
            assert np.abs(layer.int8.weight.astype(int)).max() == 127, layer.name


def test_keep_float_leaves_the_layers_fp32(bundles):
    bundle = load_bundle(str(bundles["kept"]))
    rows = {row["layer"]: row for row in bundle.manifest["quantization"]["layers"]}
    kept = [name for name, row in rows.items() if not row["int8"]]
    assert sorted(kept) == sorted(["convrelu_0", next(n for n, r in rows.items() if r["unit"] == KEPT_UNIT)])
    model = _int8_layers(bundles["kept"])
    for name in kept:
        layer = model.layer(name)
        assert 8 not in layer.params and layer.int8 is None and layer.weight is not None  # fp32 in both files
        assert rows[name]["reason"] == "--keep-float"
    producers = {layer.tops[0]: layer for layer in model.layers if layer.tops}
    for name in kept:  # nothing requantizes into a float layer
        producer = producers.get(model.layer(name).bottoms[0])
        assert producer is None or producer.int8 is None or producer.int8.top_scale is None, name


def _ap(bundle_dir, data):
    from fdq.device.runtimes import bundle_detector
    from fdq.host.evaluate import evaluate_detector

    result = evaluate_detector(bundle_detector(load_bundle(str(bundle_dir)), 1), str(data["images"]), data["gt"])
    return {s: 100 * result[s] for s in SETTINGS}


@pytest.mark.parametrize("export", ["from_int8", "from_float"])
def test_int8_loses_at_most_a_point_of_ap(bundles, data, export):
    ref, got = _ap(bundles["ncnn"], data), _ap(bundles[export], data)
    assert {s: round(got[s] - ref[s], 2) for s in SETTINGS if ref[s] - got[s] > AP_POINTS} == {}, (ref, got)


def test_ncnn2tables_kl_thresholds_export_and_lose_at_most_a_point(bundles, data, tmp_path):
    """The calibrated export with ncnn2table's KL thresholds (not the default, docs/ACCURACY.md): the manifest
    says so, its thresholds are its own, and on the 12 val images it loses at most a point."""
    from fdq.host.export.ncnn_int8 import prepare_bundle, write_int8

    out = write_int8(prepare_bundle(bundles["float"], data["calib"], tmp_path / "work", observer="kl"), tmp_path / "kl")
    quantization = load_bundle(str(out)).manifest["quantization"]
    assert quantization["observer"] == "kl" and "ncnn2table" in quantization["scales"]
    histogram = {row["layer"]: row["threshold"] for row in
                 load_bundle(str(bundles["from_float"])).manifest["quantization"]["layers"]}
    kl = {row["layer"]: row["threshold"] for row in quantization["layers"]}
    assert kl.keys() == histogram.keys() and sum(abs(kl[n] / histogram[n] - 1) > 0.05 for n in kl) >= len(kl) // 4
    ref, got = _ap(bundles["ncnn"], data), _ap(out, data)
    assert {s: round(got[s] - ref[s], 2) for s in SETTINGS if ref[s] - got[s] > AP_POINTS} == {}, (ref, got)


def _one_line(capsys, needle):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fdq: error: ") and needle in err[0], err
    return err[0]


def test_bad_input_is_one_line_and_writes_nothing(bundles, data, tmp_path, capsys):
    out = tmp_path / "out"
    cases = [
        ((bundles["int8"], "--keep-float", "convrelu_0,no_such_layer"), "--keep-float: no convolution 'no_such_layer'"),
        ((bundles["float"],), "needs --calib DIR: a float bundle holds no activation ranges"),
        ((bundles["int8"], "--calib", data["calib"]), "carries that bundle's own scales: drop --calib"),
    ]
    for argv, needle in cases:
        assert main(["export", str(argv[0]), "--format", "ncnn-int8", "--out", str(out),
                     *[str(a) for a in argv[1:]]]) == 1
        _one_line(capsys, needle)
        assert not out.exists(), argv
    assert main(["export", str(bundles["float"]), "--format", "ncnn", "--keep-float", "conv_1", "--out",
                 str(out)]) == 1
    _one_line(capsys, "--keep-float applies to ncnn-int8, not ncnn")


def test_the_unknown_layer_line_lists_the_known_ones(bundles, tmp_path, capsys):
    assert main(["export", str(bundles["int8"]), "--format", "ncnn-int8", "--keep-float", "nope",
                 "--out", str(tmp_path / "x")]) == 1
    line = _one_line(capsys, "its layers: convrelu_0, convdwrelu_0, ")
    assert "conv_27" in line


def test_an_int8_model_never_opens_without_int8_inference(bundles, tmp_path):
    import shutil

    from fdq.device.runtimes import load_inference

    fake = tmp_path / "relabelled"
    shutil.copytree(bundles["from_int8"], fake)
    manifest = (fake / "manifest.yaml").read_text().replace("dtype: int8", "dtype: fp32")
    (fake / "manifest.yaml").write_text(manifest)
    with pytest.raises(BundleError, match="holds int8 layers .* but is not opened as int8") as err:
        load_inference(load_bundle(str(fake), verify=False))
    assert "\n" not in str(err.value)


def test_a_board_whose_ncnn_lacks_int8_is_refused_at_deploy(bundles):
    from fdq.host.deploy import refusal

    int8, fp32 = load_bundle(str(bundles["from_int8"])), load_bundle(str(bundles["ncnn"]))
    board = {"machine": "aarch64", "python": "3.11.2", "modules": {"ncnn": "1.0.20240410"}, "ncnn_int8": False}
    why = refusal("pi", "python3", int8, board, ["ncnn"], None)
    assert why.startswith("from_int8 is an ncnn int8 model; ncnn 1.0.20240410 there (aarch64, Python 3.11.2) was "
                          "built without int8") and "\n" not in why, why
    assert refusal("pi", "python3", fp32, board, ["ncnn"], None) is None
    assert refusal("pi", "python3", int8, {**board, "ncnn_int8": True}, ["ncnn"], None) is None


def test_profile_takes_every_runtime_the_runner_runs(capsys):
    from fdq.host.bundle_cache import RUNTIMES, check_runtime

    assert {"ncnn-int8", "mnn", "mnn-int8", "executorch"} <= set(RUNTIMES)
    check_runtime("ncnn-int8", int8=True, calib=None)
    check_runtime("ncnn-int8", int8=False, calib="calib")
    check_runtime("executorch", int8=True, calib=None, backend="xnnpack")
    for runtime, int8, calib, needle in (("ncnn-int8", False, None, "give --calib DIR"),
                                         ("mnn", True, None, "mnn bundles are float"),
                                         ("mnn-int8", True, "c", "MNN's own quantization of the float model"),
                                         ("executorch", True, None, "--backend xnnpack")):
        with pytest.raises(ValueError, match=needle):
            check_runtime(runtime, int8, calib)
    with pytest.raises(SystemExit):
        profile_main(["--runtime", "ncnn-int9"])
    assert "unknown runtime 'ncnn-int9'" in capsys.readouterr().err


def test_profile_exports_an_int8_bundle_for_ncnn_int8_and_runs_it(bundles, tmp_path):
    """``fdq-profile --runtime ncnn-int8``: the int8 bundle's export (its own scales), run by the runner here."""
    import json

    import yaml

    local = tmp_path / "here.yaml"
    local.write_text(yaml.safe_dump({"name": "here", "transport": "local", "python": sys.executable,
                                     "workdir": str(tmp_path / "work"), "threads": 1, "runtimes": ["ncnn"]}))
    out = tmp_path / "run.json"
    assert profile_main(["--target", str(local), "--bundle", str(bundles["int8"]), "--runtime", "ncnn-int8",
                         "--frames", "2", "--warmup", "0", "--runs", str(tmp_path / "runs"), "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    bundle = doc["bundle"]
    assert (bundle["runtime"], bundle["dtype"], bundle["quantization"]) == ("ncnn", "int8", "ncnn-int8")
    assert bundle["quantization_config"]["params_from"].startswith("source bundle")


def _kl_threshold(*chunks: torch.Tensor):
    """ncnn2table's KL observer after its two passes over ``chunks``."""
    from fdq.calibration.quant_api import symmetric_threshold

    observer = symmetric_threshold("kl")
    for step in range(observer.passes):
        if step:
            observer.next_pass()
        for chunk in chunks:
            observer(chunk)
    return observer


def test_the_kl_threshold_clips_a_lone_outlier_and_keeps_a_bounded_range():
    """ncnn2table's method: a few extreme values do not stretch the grid, a range without a tail is
    kept whole; zeros (a ReLU's) count for neither, and both signs count by magnitude."""
    generator = torch.Generator().manual_seed(0)
    bulk = torch.relu(torch.randn(200_000, generator=generator))
    outlier = _kl_threshold(bulk, torch.tensor([-60.0]))
    assert outlier.absmax == 60.0
    assert 2.5 < outlier.threshold() < 10.0, outlier.threshold()  # the bulk's tail (max ~4.5) kept, 60 clipped
    uniform = _kl_threshold(torch.rand(200_000, generator=generator) * 2 - 1)
    assert 0.97 < uniform.threshold() / uniform.absmax <= 1.0
    assert _kl_threshold(bulk).threshold() == pytest.approx(_kl_threshold(bulk[bulk > 0]).threshold())  # half are 0

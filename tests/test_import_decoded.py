"""fdq import ``--decoder ssd-decoded``: a graph that ends in its own decoding, as Linzaer's published
Ultra-Light-Fast files (exported with ``is_test=True``) do: ``scores`` (1, N, 2) softmax and ``boxes`` (1, N, 4)
corners normalised to the input. The equivalent file is built here from fdq's own slim (the same network):
slim (whose eval forward ends in the softmax) plus SSD's decoding on fdq's priors, exported at a fixed
1x3x240x320. Imported with slim's preprocessing (BGR minus its mean), it must detect what the ``ssd-priors``
import of the same network (conftest's ``fixed_import``) detects, without landmarks, through every consumer."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from conftest import FIXED_HW, one_line_error

from fdq.host.cli import main as fdq_main

# AP margin against the ssd-priors import on all 64 val images: the same scores, boxes that differ by float
# rounding only (the graph computes x2 as centre + size / 2, fdq's numpy top-left + size). Measured: equal to
# every digit (docs/ACCURACY.md, "Imported with its decoding in the graph").
AP_MARGIN = 1e-4


@pytest.fixture(scope="module")
def decoded_onnx(shared_dir, tmp_path_factory) -> Path:
    """fdq's slim + softmax (its eval forward) + convert_locations_to_boxes and center_form_to_corner_form on
    fdq's priors for 320x240, variances 0.1/0.2: outputs ``scores`` and ``boxes``, as Linzaer's files have."""
    import torch

    from fdq.device.anchors import prior_boxes
    from fdq.models import SPECS, load_model

    spec = SPECS["slim"]
    slim = load_model("slim", shared_dir / "weights" / "slim_Final.pth").eval()
    priors = torch.from_numpy(prior_boxes(spec.min_sizes, spec.steps, *FIXED_HW, spec.clip).copy())
    centre_variance, size_variance = spec.variance

    class Decoded(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.slim = slim
            self.register_buffer("priors", priors)

        def forward(self, x: torch.Tensor):
            loc, scores, _ = self.slim(x)
            centres = self.priors[:, :2] + loc[..., :2] * centre_variance * self.priors[:, 2:]
            sizes = self.priors[:, 2:] * torch.exp(loc[..., 2:] * size_variance)
            return scores, torch.cat([centres - sizes / 2, centres + sizes / 2], dim=-1)

    path = tmp_path_factory.mktemp("decoded") / "version-slim-320.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Decoded().eval(), (torch.zeros(1, 3, *FIXED_HW),), str(path), input_names=["input"],
                          output_names=["scores", "boxes"], opset_version=17, dynamo=False)
    return path


@pytest.fixture(scope="module")
def decoded_import(decoded_onnx, tmp_path_factory) -> Path:
    from fdq.models import SPECS

    out = tmp_path_factory.mktemp("import") / "slim_decoded320"
    mean = ",".join(str(v) for v in SPECS["slim"].mean_bgr)
    assert fdq_main(["import", str(decoded_onnx), "--decoder", "ssd-decoded", "--mean", mean,
                     "--name", "slim_decoded320", "--licence", "MIT (Face-Detector-1MB-with-landmark)",
                     "--out", str(out)]) == 0
    return out


def test_manifest(decoded_onnx, decoded_import, tmp_path):
    """The decoder without parameters, the two outputs by name, the fixed size; README's command for Linzaer's
    files (RGB, (x - 127) / 128) is recorded as the BGR mean and std the runner applies before the swap."""
    manifest = yaml.safe_load((decoded_import / "manifest.yaml").read_text())
    assert manifest["model"]["decoder"] == {"name": "ssd-decoded", "params": {}}
    assert manifest["io"]["outputs"] == {"scores": "scores", "boxes": "boxes"}
    assert manifest["model"]["imported"]["check"]["outputs"] == {"scores": [1, 4420, 2], "boxes": [1, 4420, 4]}
    assert manifest["input"]["fixed_hw"] == list(FIXED_HW)
    out = tmp_path / "rgb"
    assert fdq_main(["import", str(decoded_onnx), "--decoder", "ssd-decoded", "--channels", "rgb", "--mean",
                     "127,127,127", "--std", "128,128,128", "--out", str(out)]) == 0
    rgb = yaml.safe_load((out / "manifest.yaml").read_text())["input"]
    assert (rgb["color"], rgb["mean_bgr"], rgb["std_bgr"]) == ("RGB", [127.0] * 3, [128.0] * 3)


def test_detections_equal_the_ssd_priors_import(decoded_import, fixed_import, val):
    """On 6 val images (4:3 and not, so letterboxed): the same scores, boxes within float rounding, no landmarks;
    every NMS path of the decoder (C kernels when they build, NMSBoxes, numpy) keeps the same faces."""
    from fdq.device.bundle import load_bundle
    from fdq.device.images import list_images, read_image
    from fdq.device.kernels import load_kernels
    from fdq.device.runtimes import bundle_detector

    images, _, _ = val
    priors = bundle_detector(load_bundle(str(fixed_import)))
    paths = ["numpy", "numpy+cv2"] + (["c"] if load_kernels() is not None else [])
    decoded = {p: bundle_detector(load_bundle(str(decoded_import)), postprocess=p) for p in paths}
    assert [d.decoder.kernels for d in decoded.values()] == paths
    total = 0
    for key, path in list_images(str(images))[:6]:
        image = read_image(path)
        theirs = priors.detect(image)
        for name, detector in decoded.items():
            ours = detector.detect(image)
            assert len(ours) == len(theirs) > 0, (key, name)
            assert np.array_equal(ours.scores, theirs.scores), (key, name)
            np.testing.assert_allclose(ours.boxes, theirs.boxes, rtol=1e-5, atol=1e-3, err_msg=f"{key} {name}")
            assert ours.landmarks.shape == (len(ours), 0) and theirs.landmarks.shape == (len(theirs), 10)
        total += len(theirs.above(0.5))
    assert total >= 5  # real faces were compared, not only low-score candidates


def test_ap_through_the_runner(decoded_import, fixed_import, val, tmp_path):
    """AP on all 64 val images by the runner (one process, both bundles interleaved): the ssd-priors import's,
    within AP_MARGIN; the runner's JSON is complete without landmarks."""
    from fdq.device.run import main as run_main

    images, ground_truth, _ = val
    out = [tmp_path / "decoded.json", tmp_path / "priors.json"]
    assert run_main(["--bundle", str(decoded_import), str(fixed_import), "--source", str(images), "--frames", "64",
                     "--warmup", "0", "--gt", str(ground_truth), "--json", *map(str, out)]) == 0
    decoded, priors = (json.loads(p.read_text()) for p in out)
    assert decoded["accuracy"]["images"] == priors["accuracy"]["images"] == 64
    for setting in ("easy", "medium", "hard"):
        assert decoded["accuracy"][setting] == pytest.approx(priors["accuracy"][setting], abs=AP_MARGIN), setting
    assert decoded["accuracy"]["medium"] > 0.5
    assert decoded["detections"]["per_frame"] == priors["detections"]["per_frame"]


def test_detect_and_demo_draw_boxes_without_landmarks(decoded_import, fixed_import, shared_dir, val, tmp_path, capsys):
    """``fdq detect``: each face's JSON has its box, score and an empty landmark list; the annotated image has
    the red boxes and none of the landmark dots the ssd-priors import draws. fdq-demo draws boxes on every frame."""
    from demo_media import MIN_RED_PX, assert_demo_draws_boxes, face_video, red_pixels

    image = val[0] / "0--Parade" / "0_Parade_Parade_0_194.jpg"
    docs, drawn = {}, {}
    for name, bundle in (("decoded", decoded_import), ("priors", fixed_import)):
        out = tmp_path / name
        assert fdq_main(["detect", "--bundle", str(bundle), "--input", str(image), "--output", str(out),
                         "--threshold", "0.5"]) == 0
        docs[name] = json.loads((out / "0_Parade_Parade_0_194.json").read_text())
        drawn[name] = cv2.imread(str(out / "0_Parade_Parade_0_194.jpg"))
    faces, theirs = docs["decoded"]["faces"], docs["priors"]["faces"]
    assert len(faces) == len(theirs) >= 2
    for face, their in zip(faces, theirs):
        assert face["landmarks"] == [] and len(their["landmarks"]) == 5
        assert face["score"] == their["score"]
        assert face["box"] == pytest.approx(their["box"], abs=0.02)
    source = cv2.imread(str(image))
    assert red_pixels(drawn["decoded"]) >= red_pixels(source) + MIN_RED_PX
    nose = np.all(np.abs(drawn["priors"].astype(int) - (255, 0, 255)) < 60, axis=2)  # magenta dots: noses
    assert nose.sum() > np.all(np.abs(drawn["decoded"].astype(int) - (255, 0, 255)) < 60, axis=2).sum() + 20

    video = face_video(decoded_import, shared_dir, tmp_path / "faces.mp4", (640, 480), 2, 1)
    assert_demo_draws_boxes(decoded_import, video, tmp_path / "annotated.mp4", capsys)


def test_mismatches_are_one_line(decoded_onnx, decoded_import, fixed_onnx, shared_dir, tmp_path, capsys):
    """A graph the decoder cannot read, either way round, is one line naming what was expected and found;
    fdq export refuses the import as it refuses every fixed-size import; nothing is written."""
    out = tmp_path / "out"
    yunet = shared_dir / "peers" / "yunet_n_dynamic.onnx"
    if yunet.is_file():
        one_line_error(capsys, ["import", str(yunet), "--decoder", "ssd-decoded", "--out", str(out)],
                       "decoder ssd-decoded expects outputs scores, boxes; the graph has cls_8,")
    one_line_error(capsys, ["import", str(fixed_onnx), "--decoder", "ssd-decoded", "--out", str(out)],
                   "decoder ssd-decoded expects outputs scores, boxes; the graph has loc, conf, landm")
    one_line_error(capsys, ["import", str(decoded_onnx), "--decoder", "ssd-priors", "--out", str(out)],
                   "decoder ssd-priors expects outputs loc, conf, landm; the graph has scores, boxes")
    one_line_error(capsys, ["import", str(decoded_onnx), "--decoder", "ssd-decoded", "--priors", "rfb",
                            "--out", str(out)], "--priors is for decoder ssd-priors, not ssd-decoded")
    one_line_error(capsys, ["export", str(decoded_import), "--format", "onnx-int8", "--calib", str(tmp_path),
                            "--out", str(out)], "takes a fixed 320x240 input")
    assert not out.exists()

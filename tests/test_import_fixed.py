"""fdq import of an ONNX face detector whose input has one fixed size, as most published files have
(Ultra-Light-Fast's ``version-slim-320.onnx``: 1x3x240x320): fdq's own slim exported here at exactly
that fixed size, imported with ``--decoder ssd-priors``, letterboxed by every detector into 320x240.
Compared with fdq's dynamic slim bundle at long side 320 (``slim_onnx_bundle``) on WIDER val: equal
detections where the input is the same (4:3 frames), sane ones where it is not, the same AP. The graph, the
import and ``val`` are conftest's fixtures (tests/test_import_decoded.py compares with them too)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from conftest import FIXED_HW, one_line_error

from fdq.host.cli import main as fdq_main

# AP margin against the dynamic slim at 320 on all 64 val images, in AP (not points). Both run one network on
# the same frames; they differ only on non-4:3 frames (letterbox rows of zero pixels below a wide frame,
# a smaller scale for a portrait one). Measured: +0.0002 easy, +0.0030 medium, +0.0019 hard (README, `fdq import`).
AP_MARGIN = 0.005


def test_manifest_records_the_fixed_size(fixed_import):
    manifest = yaml.safe_load((fixed_import / "manifest.yaml").read_text())
    assert manifest["input"]["fixed_hw"] == [240, 320] and manifest["input"]["dynamic_hw"] is False
    assert manifest["input"]["long_side"] == 320
    assert manifest["model"]["imported"]["inputs"][0]["shape"] == [1, 3, 240, 320]
    assert manifest["model"]["imported"]["check"]["input_hw"] == [240, 320]


def _matched(boxes: np.ndarray, others: np.ndarray, iou: float) -> np.ndarray:
    """Whether each x1 y1 x2 y2 box overlaps one of ``others`` (x1 y1 x2 y2) by at least ``iou``."""
    from widerface_reference import bbox_overlaps

    if not len(others):
        return np.zeros(len(boxes), bool)
    return bbox_overlaps(boxes.astype(np.float64), others.astype(np.float64)).max(axis=1) >= iou


def test_letterboxed_detections_on_val(fixed_import, slim_onnx_bundle, val):
    """On the first 8 val images: a 4:3 frame is letterboxed into exactly the dynamic slim's input at 320
    (same detections, bit for bit); a wider frame at the same scale with rows of padding below keeps the
    dynamic slim's confident faces; a portrait frame (scaled to 240 high, padding at the right) keeps its
    confident faces inside the image and on ground-truth faces. Top or centred padding, or a wrong ratio,
    moves or scales those boxes off the faces."""
    from fdq.device.bundle import load_bundle
    from fdq.device.images import list_images, read_image
    from fdq.device.runtimes import bundle_detector

    images, _, gt = val
    fixed = bundle_detector(load_bundle(str(fixed_import)))
    dynamic = bundle_detector(load_bundle(str(slim_onnx_bundle)), long_side=320)
    assert fixed.fixed_hw == FIXED_HW and dynamic.fixed_hw is None
    seen = {"4:3": 0, "wider": 0, "portrait": 0}
    for key, path in list_images(str(images))[:8]:
        image = read_image(path)
        height, width = image.shape[:2]
        ours, theirs = fixed.detect(image), dynamic.detect(image)
        if width * 3 == height * 4:
            seen["4:3"] += 1
            assert len(ours) == len(theirs) > 0, key
            for field in ("boxes", "scores", "landmarks"):
                assert np.array_equal(getattr(ours, field), getattr(theirs, field)), (key, field)
            continue
        confident = ours.above(0.5)
        if height > width:
            seen["portrait"] += len(confident)
            faces = gt.boxes[gt.keys.index(key)]
            faces = np.concatenate([faces[:, :2], faces[:, :2] + faces[:, 2:]], axis=1)
            centres = (confident.boxes[:, :2] + confident.boxes[:, 2:]) / 2
            assert np.all((centres >= 0) & (centres < (width, height))), key
            assert _matched(confident.boxes, faces, 0.5).all(), key
        else:
            seen["wider"] += len(confident)
            assert len(confident) == len(theirs.above(0.5)), key
            assert _matched(confident.boxes, theirs.above(0.5).boxes, 0.9).all(), key
    assert seen["4:3"] >= 2 and seen["wider"] >= 5 and seen["portrait"] >= 2, seen  # every case was checked


def test_ap_through_the_runner_equals_the_dynamic_slim(fixed_import, slim_onnx_bundle, val, tmp_path):
    """AP on all 64 val images, measured by the runner (fdq-run, one process, the two bundles interleaved),
    within AP_MARGIN of fdq's dynamic slim bundle at 320."""
    from fdq.device.run import main as run_main

    images, ground_truth, _ = val
    out = [tmp_path / "fixed.json", tmp_path / "dynamic.json"]
    assert run_main(["--bundle", str(fixed_import), str(slim_onnx_bundle), "--source", str(images), "--frames", "64",
                     "--warmup", "0", "--gt", str(ground_truth), "--json", *map(str, out)]) == 0
    fixed, dynamic = (json.loads(p.read_text())["accuracy"] for p in out)
    assert fixed["images"] == dynamic["images"] == 64
    for setting in ("easy", "medium", "hard"):
        assert fixed[setting] == pytest.approx(dynamic[setting], abs=AP_MARGIN), setting
    assert fixed["medium"] > 0.5  # a real detector, not two equally broken ones


def test_the_camera_demo_letterboxes_a_portrait_video(fixed_import, slim_onnx_bundle, shared_dir, tmp_path, capsys):
    """fdq-demo on the fixed-size import with 480x640 (portrait) frames: boxes drawn on every frame."""
    from demo_media import assert_demo_draws_boxes, face_video

    video = face_video(slim_onnx_bundle, shared_dir, tmp_path / "faces.mp4", (480, 640), 2, 1)
    assert_demo_draws_boxes(fixed_import, video, tmp_path / "annotated.mp4", capsys)


def test_fixed_size_refusals(fixed_onnx, fixed_import, val, home, tmp_path, capsys):
    """What a fixed-size import cannot do is one line each, naming the size; the sweep's bundle at its own
    side is the import itself, and another side is refused (the sweep skips it with that line)."""
    from fdq.device.bundle import load_bundle
    from fdq.host.bundle_cache import imported_bundle
    from fdq.host.importer import at_long_side

    images, ground_truth, _ = val
    out = tmp_path / "out"
    one_line_error(capsys, ["import", str(fixed_onnx), "--decoder", "ssd-priors", "--input-size", "640x480",
                             "--out", str(out)],
                    "--input-size 640x480: input 'input' has the fixed size 320x240 (frames are letterboxed into it)")
    one_line_error(capsys, ["eval", "--bundle", str(fixed_import), "--images", str(images), "--gt", str(ground_truth),
                             "--long-side", "640"], "takes a fixed 320x240 input (frames are letterboxed into it): "
                                                    "its long side is 320, not 640")
    one_line_error(capsys, ["export", str(fixed_import), "--format", "mnn", "--out", str(out)],
                    "takes a fixed 320x240 input")
    assert not out.exists()
    portrait = images / "0--Parade" / "0_Parade_Parade_0_194.jpg"  # fdq detect's default: the bundle's own side
    detected = tmp_path / "detected"
    assert fdq_main(["detect", "--bundle", str(fixed_import), "--input", str(portrait), "--output", str(detected)]) == 0
    doc = json.loads((detected / "0_Parade_Parade_0_194.json").read_text())
    assert doc["long_side"] == 320 and len(doc["faces"]) >= 2
    with pytest.raises(ValueError) as refused:
        at_long_side(load_bundle(str(fixed_import)), 640, str(out))
    assert str(refused.value) == ("imported slim_fixed320 takes a fixed 320x240 input (letterboxed): it runs as imported, "
                                  "at long side 320 only; asked for 640")
    with pytest.raises(ValueError, match="fixed 320x240 input"):  # not even rewritten at its own side
        at_long_side(load_bundle(str(fixed_import)), 320, str(out))
    assert not out.exists()
    assert imported_bundle(str(fixed_import), 320).resolve() == fixed_import.resolve()
    with pytest.raises(ValueError, match="fixed 320x240 input"):
        imported_bundle(str(fixed_import), 640)
    assert not (home / "bundles").exists()


def test_the_sweep_runs_a_fixed_size_import_at_its_own_side_only(fixed_import, home):
    """The sweep's plan for the fixed-size import at --long-sides 320,640 on onnxruntime and ncnn: one job, the
    import itself at 320; 640 and the ncnn export are skipped, each with a line naming the fixed size."""
    from fdq.host.profiling import Dataset, RunSettings
    from fdq.host.sweep_runs import Grid, plan
    from fdq.host.targets import Target

    target = Target(name="here", transport="local", python="python3", workdir="/w", runtimes=("onnxruntime",))
    facts = {"modules": {"onnxruntime": "1", "ncnn": "1"}, "machine": "x86_64"}
    grid = Grid(models=("slim_fixed320",), imported=(("slim_fixed320", str(fixed_import)),),
                runtimes=("onnxruntime", "ncnn"), precisions=("fp32",), threads=(1,), long_sides=(320, 640))
    said = []
    result = plan([(target, facts)], grid, Dataset({}, "images", "gt.json", 0), RunSettings(), [], said.append)
    assert [(job.bundle.resolve(), job.threads) for job in result.todo] == [(fixed_import.resolve(), 1)]
    assert len(result.skipped) == len(said) == 3
    assert "here: slim_fixed320 onnxruntime fp32 @640, 1 thread: imported slim_fixed320 takes a fixed 320x240 " \
           "input (letterboxed): it runs as imported, at long side 320 only; asked for 640" in result.skipped
    assert all("fixed 320x240 input" in line for line in result.skipped)

"""The decoder registry against its references: ssd-priors is today's decode of fdq's own models bit for
bit (C kernels and numpy alike); yunet decodes YuNet's outputs exactly as OpenCV's FaceDetectorYN does."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from fdq.device.anchors import prior_boxes
from fdq.device.decoders import DECODERS, UnknownDecoder, build_decoder, decoder_class
from fdq.device.detector import FaceDetector
from fdq.device.images import list_images, read_image
from fdq.device.kernels import load_kernels, postprocess_c
from fdq.device.postprocess import postprocess, postprocess_cv2
from fdq.device.preprocess import resize_reference, resize_uint8
from fdq.device.spec import DetectorSpec
from fdq.host.torch_inference import torch_inference
from fdq.host.zoo import resolve_weights
from fdq.models import SPECS, load_model

YUNET_SPEC = DetectorSpec(name="yunet_n", steps=(8, 16, 32), mean_bgr=(0.0, 0.0, 0.0), decoder="yunet", top_k=5000)


def val_images(shared_dir: Path, count: int):
    return [read_image(p) for _, p in list_images(str(shared_dir / "data" / "widerface_val_subset" / "val" / "images"))[:count]]


def test_registry_names_both_and_refuses_unknown():
    assert {"ssd-priors", "yunet"} <= set(DECODERS)
    with pytest.raises(UnknownDecoder, match=r"unknown decoder 'centernet' \(this fdq knows: .*ssd-priors.*yunet"):
        decoder_class("centernet")
    assert build_decoder(SPECS["slim"]).name == "ssd-priors"


@pytest.mark.parametrize("model_name", ["slim", "rfb", "mnet025"])
def test_ssd_priors_is_todays_decode_bit_for_bit(shared_dir, monkeypatch, model_name):
    """FaceDetector (through the registry) against the decode written out by hand as it was before it."""
    spec = SPECS[model_name]
    monkeypatch.setenv("FDQ_WEIGHTS_PATH", str(shared_dir / "weights"))
    infer = torch_inference(load_model(model_name, resolve_weights(model_name, None)))
    paths = {"numpy": postprocess, "numpy+cv2": postprocess_cv2}
    if load_kernels() is not None:
        paths["c"] = postprocess_c
    for image in val_images(shared_dir, 3):
        resized, ratio = resize_reference(image, 320)
        height, width = resized.shape[:2]
        blob = resized.astype(np.float32).transpose(2, 0, 1)[None] - np.asarray(spec.mean_bgr, np.float32).reshape(1, 3, 1, 1)
        loc, scores, landm = infer(np.ascontiguousarray(blob))
        priors = prior_boxes(spec.min_sizes, spec.steps, height, width, spec.clip)
        for path, function in paths.items():
            expected = function(loc, scores, landm, priors, spec.variance, (width, height), ratio, 0.02, 0.4)
            got = FaceDetector(infer, spec, long_side=320, postprocess=path).detect(image)
            assert len(expected) > 0
            for field in ("boxes", "scores", "landmarks"):
                assert np.array_equal(getattr(got, field), getattr(expected, field)), (path, field)


@pytest.mark.parametrize("long_side", [320, 640])
def test_yunet_decodes_as_opencv(shared_dir, long_side):
    """The graph's outputs from OpenCV's own dnn, decoded by fdq, are FaceDetectorYN's faces: the same count,
    scores and boxes (OpenCV's order among equal scores aside), on real val images."""
    path = shared_dir / "peers" / "yunet_n_dynamic.onnx"
    if not path.is_file():
        pytest.skip(f"YuNet not in {path.parent}")
    net = cv2.dnn.readNet(str(path))
    yunet = decoder_class("yunet")

    def infer(blob):
        net.setInput(blob)
        return yunet.split(net.forward(list(yunet.output_roles(YUNET_SPEC))))

    ours = FaceDetector(infer, YUNET_SPEC, long_side, score_threshold=0.02, nms_threshold=0.3, resize="uint8")
    reference = cv2.FaceDetectorYN.create(str(path), "", (320, 320), score_threshold=0.02, nms_threshold=0.3, top_k=5000)
    for image in val_images(shared_dir, 6):
        dets = ours.detect(image)
        resized, ratio = resize_uint8(image, long_side)
        reference.setInputSize((resized.shape[1], resized.shape[0]))
        faces = reference.detect(resized)[1]
        assert faces is not None and len(dets) == len(faces) > 0
        boxes = np.concatenate([faces[:, :2], faces[:, :2] + faces[:, 2:4]], axis=1) / np.float32(ratio)
        ours_order, ref_order = np.lexsort((dets.boxes[:, 0], dets.scores)), np.lexsort((boxes[:, 0], faces[:, 14]))
        assert np.array_equal(dets.scores[ours_order], faces[ref_order, 14])
        np.testing.assert_allclose(dets.boxes[ours_order], boxes[ref_order], rtol=0, atol=1e-3)
        landmarks = faces[:, 4:14] / np.float32(ratio)
        np.testing.assert_allclose(dets.landmarks[ours_order], landmarks[ref_order], rtol=0, atol=1e-3)

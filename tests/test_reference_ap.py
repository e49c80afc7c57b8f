"""The FP32 models reproduce the upstream reference AP on the shared val split (within 0.002)."""
import pytest

from fdq.device.detector import FaceDetector
from fdq.device.evaluation import load_ground_truth
from fdq.host.evaluate import evaluate_detector
from fdq.host.torch_inference import torch_inference
from fdq.host.zoo import resolve_weights
from fdq.models import SPECS, load_model

# Upstream test_widerface.py + the official evaluation on the same 64 images.
REFERENCE = {
    ("slim", 320): (0.7053, 0.5782, 0.2174),
    ("slim", 640): (0.7824, 0.7517, 0.4923),
    ("rfb", 320): (0.7179, 0.6094, 0.2382),
    ("rfb", 640): (0.7895, 0.7669, 0.5170),
    ("mnet025", 320): (0.6925, 0.5725, 0.2507),
    ("mnet025", 640): (0.7912, 0.7743, 0.5553),
}


@pytest.mark.parametrize("model_name,long_side", list(REFERENCE))
def test_fp32_reproduces_reference_ap(shared_dir, monkeypatch, model_name, long_side):
    monkeypatch.setenv("FDQ_WEIGHTS_PATH", str(shared_dir / "weights"))
    split = shared_dir / "data" / "widerface_val_subset" / "val"
    model = load_model(model_name, resolve_weights(model_name, None))
    detector = FaceDetector(torch_inference(model), SPECS[model_name], long_side=long_side)
    result = evaluate_detector(detector, str(split / "images"), load_ground_truth(split / "ground_truth"))
    assert result["images"] == 64
    for setting, expected in zip(("easy", "medium", "hard"), REFERENCE[(model_name, long_side)]):
        assert result[setting] == pytest.approx(expected, abs=0.002), setting

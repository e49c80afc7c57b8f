"""The eager PyTorch model as an inference function for :class:`fdq.device.detector.FaceDetector`."""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
from torch import nn

from fdq.device.detector import InferenceFn


def torch_inference(model: nn.Module) -> InferenceFn:
    """Wrap a model returning (loc, softmax scores, landmarks) for a batch of one."""
    model.eval()

    def infer(blob: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        with torch.inference_mode():
            loc, conf, landm = model(torch.from_numpy(blob))
        return loc[0].numpy(), conf[0, :, 1].numpy(), landm[0].numpy()

    return infer

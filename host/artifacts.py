"""Turning a (float or quantized) PyTorch model into a TorchScript bundle the device runner loads."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from fdq.device.spec import DetectorSpec
from fdq.host.bundles import write_bundle

MODEL_FILE = "model.pt"
REPORT_FILE = "report.json"


def trace(model: nn.Module, long_side: int,
          input_quant: Optional[Tuple[float, int]] = None) -> torch.jit.ScriptModule:
    """TorchScript by tracing at a 4:3 input; convolutions and the head reshapes stay size-generic.

    With ``input_quant`` (scale, zero point) the model takes a quint8 tensor instead of float32.
    """
    example = torch.zeros(1, 3, max(8, long_side * 3 // 4), long_side)
    if input_quant:
        example = torch.quantize_per_tensor(example, input_quant[0], input_quant[1], torch.quint8)
    with torch.inference_mode():
        return torch.jit.freeze(torch.jit.trace(model.eval(), example, check_trace=False))


def save_torchscript_bundle(model: nn.Module, spec: DetectorSpec, long_side: int, out: str, *,
                            engine: Optional[str], dtype: str, quantization: Dict[str, Any],
                            calibration: Optional[Dict[str, Any]] = None,
                            report: Optional[Dict[str, Any]] = None, force: bool = False) -> Path:
    """Write a self-describing TorchScript bundle; ``engine`` is the quantized engine (None for float)."""
    input_quant = None
    if engine:
        from fdq.calibration.quant_api import set_engine, split_input_quantization

        set_engine(engine)
        model, input_quant = split_input_quantization(model)
    scripted = trace(model, long_side, input_quant)

    def write_files(folder: Path) -> None:
        torch.jit.save(scripted, str(folder / MODEL_FILE))
        (folder / REPORT_FILE).write_text(json.dumps(report or {}, indent=2) + "\n", encoding="utf-8")

    manifest = {
        "model": {"name": spec.name, "spec": spec.to_dict()},
        "input": {"long_side": int(long_side), "mean_bgr": list(spec.mean_bgr), "color": "BGR", "layout": "NCHW",
                  "quantized": ({"dtype": "quint8", "scale": input_quant[0], "zero_point": input_quant[1]}
                                if input_quant else None)},
        "runtime": "torchscript",
        "backend": {"engine": engine, "dtype": dtype},
        "quantization": quantization,
        "calibration": calibration,
        "torch_version": str(torch.__version__),
        "entry": {"model": MODEL_FILE, "report": REPORT_FILE},
    }
    return write_bundle(out, manifest, write_files, force=force)

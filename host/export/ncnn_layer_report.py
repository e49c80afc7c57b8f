"""Per-layer accuracy of an ncnn int8 model against the fp32 model it was made from.

:func:`layer_sqnr`: the SQNR of every int8 layer's output against the same blob of the fp32 model
(ncnn's extractor reads any blob; a requantized int8 output is divided by its top scale first) on the
given inputs, worst first. The error accumulates: a layer's SQNR holds every layer before it. The fp32
model is the one the export converted (:attr:`fdq.host.export.ncnn_int8.Prepared.fp32`: cross-layer
equalization changes the blobs, so the float bundle's own ncnn export is not comparable blob by blob).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from fdq.device.bundle import Bundle
from fdq.host.export.ncnn_model import read_model


def _files(bundle: Bundle) -> Tuple[str, str]:
    return str(bundle.file("param")), str(bundle.file("model"))


def layer_sqnr(fp32: Bundle, int8: Bundle, blobs: Sequence[np.ndarray]) -> List[Tuple[str, float]]:
    """(layer, SQNR dB of its output over ``blobs``) for every int8 layer of ``int8``, lowest first."""
    from fdq.calibration.report import output_sqnr_db
    from fdq.device.runtimes import open_ncnn, run_ncnn

    model = read_model(*map(Path, _files(int8)))
    layers = [layer for layer in model.layers if layer.int8 is not None]
    tops = [layer.tops[0] for layer in layers]
    nets = (open_ncnn(*_files(fp32), threads=1, fp32=True), open_ncnn(*_files(int8), threads=1, fp32=True, int8=True))
    for net in nets:
        net.opt.lightmode = False  # every blob of a pass stays readable
    input_name = str(int8.manifest["io"]["input"])
    ref: Dict[str, List[torch.Tensor]] = {t: [] for t in tops}
    got: Dict[str, List[torch.Tensor]] = {t: [] for t in tops}
    for blob in blobs:
        for top, value in zip(tops, run_ncnn(nets[0], input_name, tops, blob)):
            ref[top].append(torch.from_numpy(value.reshape(-1).copy()))
        for layer, value in zip(layers, run_ncnn(nets[1], input_name, tops, blob)):
            top_scale = layer.int8.top_scale if layer.int8 else None
            got[layer.tops[0]].append(torch.from_numpy(value.reshape(-1) / (top_scale or 1.0)))
    result = [(layer.name, output_sqnr_db(torch.cat(ref[layer.tops[0]]), torch.cat(got[layer.tops[0]])))
              for layer in layers]
    return sorted(result, key=lambda item: item[1])

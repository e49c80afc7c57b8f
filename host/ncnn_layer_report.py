"""Per-layer accuracy of an ncnn int8 model against its fp32 model, and variants of it for the search.

* :func:`layer_sqnr`: the SQNR of every int8 layer's output against the same blob of the fp32 model
  (ncnn's extractor reads any blob; a requantized int8 output is divided by its top scale first) on
  the given inputs, worst first. The error accumulates: a layer's SQNR holds every layer before it.
* :func:`variant`: a calibrated export's thresholds applied again to the fp32 export's layers, with
  some layers kept fp32 (what ``--keep-float`` makes) or Winograd's 6-bit weights, written as a bundle:
  so a choice is scored on the same thresholds, without calibrating again.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from fdq.device.bundle import Bundle, load_bundle
from fdq.host.ncnn_model import read_model, write_model

_MANIFEST_OWN = ("schema", "files", "fdq_version", "created")


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


def variant(fp32: Bundle, calibrated: Bundle, out: Path, keep_float: Sequence[str] = (),
            winograd_bits: Optional[int] = None) -> Bundle:
    """``calibrated``'s thresholds on ``fp32``'s layers, ``keep_float`` left fp32, Winograd as
    :func:`fdq.host.ncnn_int8.to_int8` takes it, written at ``out``."""
    from fdq.host.bundles import write_bundle
    from fdq.host.export import NCNN_BIN, NCNN_PARAM
    from fdq.host.ncnn_int8 import LayerQuant, to_int8, winograd_note

    model = read_model(*map(Path, _files(fp32)))
    rows = calibrated.manifest["quantization"]["layers"]
    quant = {r["layer"]: LayerQuant(r["threshold"]) for r in rows if "threshold" in r and r["layer"] not in keep_float}
    table = to_int8(model, quant, winograd_bits)
    manifest = {k: copy.deepcopy(v) for k, v in calibrated.manifest.items() if k not in _MANIFEST_OWN}
    manifest["quantization"].update(layers=table, float_layers=[r["layer"] for r in table if not r["int8"]],
                                    requantized=[r["layer"] for r in table if "top_scale" in r],
                                    winograd=winograd_note(winograd_bits))
    path = write_bundle(str(out), manifest, lambda folder: write_model(model, folder / NCNN_PARAM, folder / NCNN_BIN),
                        force=True)
    return load_bundle(str(path))

#!/usr/bin/env python3
"""AP of int8 torch bundles next to their ``onnx-int8`` exports, through the runner's own code.

For every ``--bundle`` (an int8 TorchScript bundle), ``fdq export --format onnx-int8`` writes the QDQ
ONNX model with the bundle's own scales and zero points, and both are evaluated on the same images
(``fdq eval --bundle``'s code path), the val split of ``--data``. With ``--recalibrate`` a third row shows
the alternative: the float model quantized by ONNX Runtime's own calibration (MinMax) on the calib split,
which is another model.

    python scripts/bench_export_int8.py --bundle slim_q --bundle rfb_q --bundle mnet025_q --recalibrate \\
        --json docs/results/bench_export_int8.json
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import onnxruntime

from benchlib.data import Data, add_data_argument, data_of
from benchlib.results import machine, result, write_result
from benchlib.scoring import score_detector

from fdq.device.bundle import load_bundle
from fdq.device.evaluation import SETTINGS
from fdq.device.outputs import checked_outputs_or_exit
from fdq.device.runtimes import bundle_detector
from fdq.host.artifacts import save_torchscript_bundle
from fdq.host.export import export_bundle, summary
from fdq.host.export.inputs import float_model


def _ap(bundle_dir: Path, data: Data, gt) -> Dict[str, float]:
    return score_detector(bundle_detector(load_bundle(str(bundle_dir)), threads=1), data.val_images, gt)


def _row(name: str, bundle_dir: Path, data: Data, gt, reference: Dict[str, float]) -> Dict[str, Any]:
    ap = _ap(bundle_dir, data, gt)
    return {"what": name, "summary": summary(bundle_dir), "ap": ap,
            "delta_vs_torch_int8": {k: round(ap[k] - reference[k], 2) for k in SETTINGS}}


def measure(bundle: str, data: Data, gt, recalibrate_on: Optional[Path], work: Path) -> List[Dict[str, Any]]:
    """The rows of one int8 bundle: itself, its onnx-int8 export and (``recalibrate_on``) ONNX Runtime's."""
    source = load_bundle(bundle)
    name = str(source.manifest["model"]["name"])
    torch_ap = _ap(Path(bundle), data, gt)
    rows = [{"what": "torch int8 bundle", "bundle": str(Path(bundle).resolve()),
             "engine": source.engine, "quantization": source.manifest.get("quantization"), "ap": torch_ap}]
    qdq = export_bundle(bundle, "onnx-int8", work / f"{name}_onnx_int8")
    rows.append(_row("onnx-int8 (the bundle's scales)", qdq, data, gt, torch_ap))
    rows[-1]["verification"] = load_bundle(str(qdq)).manifest["export"]["verification"]
    if recalibrate_on:
        model, weights = float_model(source)
        fp32 = save_torchscript_bundle(model, source.spec, source.long_side, str(work / f"{name}_fp32"), engine=None,
                                       dtype="fp32", quantization={"level": "float", "weights": weights})
        recal = export_bundle(fp32, "onnx-int8", work / f"{name}_onnx_int8_recal", calib_dir=str(recalibrate_on))
        rows.append(_row("onnx-int8 recalibrated by ONNX Runtime", recal, data, gt, torch_ap))
    return [{"model": name, "long_side": source.long_side, **row} for row in rows]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--bundle", action="append", required=True, help="an int8 TorchScript bundle (repeatable)")
    add_data_argument(p)
    p.add_argument("--recalibrate", action="store_true", help="also quantize the float model with ONNX Runtime's "
                                                              "calibration on the calib images")
    p.add_argument("--json", required=True, help="result file to write (must not exist)")
    p.add_argument("--force", action="store_true", help="replace an existing --json")
    args = p.parse_args()
    target, = checked_outputs_or_exit("bench_export_int8", args.force, ("--json", args.json))
    data = data_of(args, "val", *(["calib"] if args.recalibrate else []))
    gt = data.ground_truth()
    with tempfile.TemporaryDirectory(prefix="fdq-bench-export-") as tmp:
        rows = [row for b in args.bundle
                for row in measure(b, data, gt, data.calib_images if args.recalibrate else None, Path(tmp))]
    write_result(target, result("bench_export_int8", rows, machine_facts=machine(onnxruntime=onnxruntime.__version__),
                                settings={"images": str(data.val_images), "ap_unit": "points", "threads": 1}))
    for row in rows:
        delta = row.get("delta_vs_torch_int8")
        print(f"{row['model']:8s} {row['what']:40s} " + " ".join(f"{row['ap'][k]:6.2f}" for k in SETTINGS)
              + (" | delta " + " ".join(f"{delta[k]:+.2f}" for k in SETTINGS) if delta else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""AP of int8 torch bundles next to their ``onnx-int8`` exports, through the runner's own code.

For every ``--bundle`` (an int8 TorchScript bundle), ``fdq export --format onnx-int8`` writes the QDQ
ONNX model with the bundle's own scales and zero points, and both are evaluated on the same images
(``fdq eval --bundle``'s code path). With ``--recalibrate-on DIR`` a third row shows the alternative:
the float model quantized by ONNX Runtime's own calibration (MinMax) on DIR, which is another model.

    python scripts/bench_export_int8.py --bundle slim_q --bundle rfb_q --bundle mnet025_q \\
        --images ../shared/data/widerface_val_subset/val/images \\
        --gt ../shared/data/widerface_val_subset/val/ground_truth \\
        --recalibrate-on ../shared/data/widerface_val_subset/calib/images --json docs/results/bench_export_int8.json
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict

import onnxruntime
import torch

from fdq.device.atomic import atomic_write_text
from fdq.device.bundle import load_bundle
from fdq.device.evaluation import load_ground_truth
from fdq.device.outputs import checked_outputs_or_exit
from fdq.device.runtimes import bundle_detector
from fdq.host.artifacts import save_torchscript_bundle
from fdq.host.evaluate import evaluate_detector
from fdq.host.export import export_bundle, summary
from fdq.host.export.inputs import float_model

SETTINGS = ("easy", "medium", "hard")


def _ap(bundle_dir: Path, images: str, gt) -> Dict[str, float]:
    result = evaluate_detector(bundle_detector(load_bundle(str(bundle_dir)), threads=1), images, gt)
    return {k: round(100 * float(result[k]), 2) for k in SETTINGS}


def _row(name: str, bundle_dir: Path, images: str, gt, reference: Dict[str, float]) -> Dict[str, Any]:
    ap = _ap(bundle_dir, images, gt)
    return {"what": name, "summary": summary(bundle_dir), "ap": ap,
            "delta_vs_torch_int8": {k: round(ap[k] - reference[k], 2) for k in SETTINGS}}


def measure(bundle: str, images: str, gt, recalibrate_on: str, work: Path) -> Dict[str, Any]:
    source = load_bundle(bundle)
    name = str(source.manifest["model"]["name"])
    torch_ap = _ap(Path(bundle), images, gt)
    rows = [{"what": "torch int8 bundle", "bundle": str(Path(bundle).resolve()),
             "engine": source.engine, "quantization": source.manifest.get("quantization"), "ap": torch_ap}]
    qdq = export_bundle(bundle, "onnx-int8", work / f"{name}_onnx_int8")
    rows.append(_row("onnx-int8 (the bundle's scales)", qdq, images, gt, torch_ap))
    rows[-1]["verification"] = load_bundle(str(qdq)).manifest["export"]["verification"]
    if recalibrate_on:
        model, weights = float_model(source)
        fp32 = save_torchscript_bundle(model, source.spec, source.long_side, str(work / f"{name}_fp32"), engine=None,
                                       dtype="fp32", quantization={"level": "float", "weights": weights})
        recal = export_bundle(fp32, "onnx-int8", work / f"{name}_onnx_int8_recal", calib_dir=recalibrate_on)
        rows.append(_row("onnx-int8 recalibrated by ONNX Runtime", recal, images, gt, torch_ap))
    return {"model": name, "long_side": source.long_side, "rows": rows}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--bundle", action="append", required=True, help="an int8 TorchScript bundle (repeatable)")
    p.add_argument("--images", required=True, help="WIDER-layout image folder EVENT/NAME.jpg")
    p.add_argument("--gt", required=True, help="its ground truth (.mat folder or .json)")
    p.add_argument("--recalibrate-on", default="", help="also quantize the float model with ONNX Runtime's "
                                                        "calibration on these images (default: skip)")
    p.add_argument("--json", required=True, help="result file to write (must not exist)")
    p.add_argument("--force", action="store_true", help="replace an existing --json")
    args = p.parse_args()
    checked_outputs_or_exit("bench_export_int8", args.force, ("--json", args.json))
    gt = load_ground_truth(args.gt)
    with tempfile.TemporaryDirectory(prefix="fdq-bench-export-") as tmp:
        models = [measure(b, args.images, gt, args.recalibrate_on, Path(tmp)) for b in args.bundle]
    doc = {"schema": "fdq.bench_export_int8/1", "command": " ".join(["bench_export_int8.py", *sys.argv[1:]]),
           "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "torch": str(torch.__version__), "onnxruntime": str(onnxruntime.__version__),
           "machine": platform.machine(), "images": args.images, "ap_unit": "points", "models": models}
    atomic_write_text(args.json, json.dumps(doc, indent=2) + "\n")
    for m in models:
        for row in m["rows"]:
            delta = row.get("delta_vs_torch_int8")
            print(f"{m['model']:8s} {row['what']:40s} " + " ".join(f"{row['ap'][k]:6.2f}" for k in SETTINGS)
                  + (" | delta " + " ".join(f"{delta[k]:+.2f}" for k in SETTINGS) if delta else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

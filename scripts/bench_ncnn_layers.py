#!/usr/bin/env python3
"""Where ncnn int8 loses accuracy, layer by layer, and which layers to keep float (``--keep-float``).

For one model and long side: the float bundle's ``ncnn-int8`` export calibrated on calib/, prepared
and written by the export's own code (``prepare_bundle``, ``write_int8``). Every int8 layer's output is
compared with the same blob of the fp32 model it was converted from on the calibration images (SQNR,
worst first: ``fdq.host.export.ncnn_layer_report.layer_sqnr``). The ``--top`` worst layers are then each kept
fp32 (what ``--keep-float`` makes, on the same thresholds) and scored by AP on the val split (the
runner's pipeline) against that fp32 model: a layer whose float copy raises the worst of easy / medium
/ hard is suggested, the most AP first, and the suggestion as a whole is scored the same way.

    python scripts/bench_ncnn_layers.py --model mnet025 --long-side 320

Writes docs/results/bench_ncnn_layers.json and the table between its markers in docs/ACCURACY.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

from benchlib.data import REPO, Data, add_result_arguments, data_of
from benchlib.docs import write_section
from benchlib.results import result, write_result
from benchlib.scoring import points

from fdq.device.bundle import Bundle, load_bundle
from fdq.device.evaluation import SETTINGS as SETTINGS_AP
from fdq.device.outputs import checked_outputs_or_exit

MARK_BEGIN, MARK_END = "<!-- bench_ncnn_layers:begin -->", "<!-- bench_ncnn_layers:end -->"


def _ap(bundle: Bundle, data: Data, gt: Any) -> Dict[str, float]:
    from fdq.device.runtimes import bundle_detector
    from fdq.host.evaluate import evaluate_detector

    return points(evaluate_detector(bundle_detector(bundle, 1), str(data.val_images), gt), 3)


def _worst(ap: Dict[str, float], ref: Dict[str, float]) -> float:
    return round(min(ap[s] - ref[s] for s in SETTINGS_AP), 3)


def run(model: str, side: int, top: int, data: Data, work: Path) -> Dict[str, Any]:
    from fdq.host.bundle_cache import FLOAT, quantized_bundle
    from fdq.host.export.inputs import preprocessed
    from fdq.host.export.ncnn_int8 import prepare_bundle, write_int8
    from fdq.host.export.ncnn_layer_report import layer_sqnr

    prep = prepare_bundle(quantized_bundle(model, FLOAT, 0, long_side=side), data.calib_images, work)
    int8 = load_bundle(str(write_int8(prep, work / "int8")))
    assert prep.calib is not None
    sqnr = layer_sqnr(prep.fp32, int8, list(preprocessed(prep.calib[0], side, int8.spec.mean_bgr)))
    gt = data.ground_truth()
    ref, base = _ap(prep.fp32, data, gt), _ap(int8, data, gt)
    tried = []
    for name, db in sqnr[:top]:
        ap = _ap(load_bundle(str(write_int8(prep, work / f"keep-{name}", keep_float=[name]))), data, gt)
        tried.append({"layer": name, "unit": prep.layer_units[name], "sqnr_db": db, "ap": ap,
                      "worst_vs_fp32": _worst(ap, ref), "recovered": round(_worst(ap, ref) - _worst(base, ref), 3)})
        print(json.dumps(tried[-1]), flush=True)
    suggested = [t["layer"] for t in sorted(tried, key=lambda t: -t["recovered"]) if t["recovered"] > 0]
    together = _ap(load_bundle(str(write_int8(prep, work / "suggested", keep_float=suggested))), data, gt) \
        if suggested else base
    return {"model": model, "long_side": side, "calibration": prep.calib[1], "fp32_ap": ref, "int8_ap": base,
            "int8_worst_vs_fp32": _worst(base, ref), "layers": [{"layer": n, "sqnr_db": db} for n, db in sqnr],
            "kept_float_one_at_a_time": tried, "suggested_keep_float": suggested, "suggested_ap": together,
            "suggested_worst_vs_fp32": _worst(together, ref)}


def table(result: Dict[str, Any]) -> str:
    scored = {t["layer"]: t for t in result["kept_float_one_at_a_time"]}
    lines = [f"{result['model']} at {result['long_side']}: int8 {result['int8_worst_vs_fp32']:+.2f} points (worst setting) "
             f"against fp32; `--keep-float {','.join(result['suggested_keep_float']) or '(none)'}`: "
             f"{result['suggested_worst_vs_fp32']:+.2f}.", "",
             "| layer | SQNR dB (calib images) | kept float: worst vs fp32 | AP recovered |", "|---|---|---|---|"]
    for row in result["layers"]:
        t = scored.get(row["layer"])
        lines.append(f"| {row['layer']} | {row['sqnr_db']:.2f} | "
                     + (f"{t['worst_vs_fp32']:+.2f} | {t['recovered']:+.2f} |" if t else "| |"))
    return "\n".join(lines)


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mnet025")
    parser.add_argument("--long-side", type=int, default=320)
    parser.add_argument("--top", type=int, default=8, help="how many of the worst layers to try in float")
    add_result_arguments(parser, "--json", "bench_ncnn_layers.json")
    args = parser.parse_args(argv)
    target, = checked_outputs_or_exit("bench_ncnn_layers", args.force, ("--json", args.json))
    data = data_of(args, "val", "calib")
    with tempfile.TemporaryDirectory(prefix="fdq-bench-ncnn-layers-") as tmp:
        row = run(args.model, args.long_side, args.top, data, Path(tmp))
    doc = result("bench_ncnn_layers", [row], argv=argv, settings={"calibration": row["calibration"]})
    write_result(target, doc)
    if not args.no_docs:
        write_section(REPO / "docs" / "ACCURACY.md", [MARK_BEGIN, f"`{doc['command']}`", "", table(row), MARK_END],
                      "ncnn int8: layer by layer")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

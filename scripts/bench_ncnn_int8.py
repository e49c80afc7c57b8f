#!/usr/bin/env python3
"""ncnn int8 against ncnn fp32: AP on val of both ncnn-int8 exports, the Winograd question, x86 time.

For each model and long side: the float bundle and fdq's level-2 qnnpack int8 bundle (calibrated on
calib/, fdq-profile's bundle cache), the fp32 ncnn export, and ``fdq export --format ncnn-int8`` of the
int8 bundle (its own weights, scales converted) and of the float bundle (calibrated on calib/), all
through the export's own code (``fdq.host.bundle_cache.runtime_bundle``). The Winograd question is asked
of the calibrated model (prepared again as the export prepares it): the 3x3 stride-1 convolutions given
6-bit weights and int8 Winograd F(4,3) (``ncnn2table``'s rule), and 8-bit weights with Winograd on (what
the 6 bits avoid), against the export's choice (8-bit weights, Winograd off for those layers). ``calibrated-kl``: the calibrated
model with ncnn2table's own default thresholds (KL divergence,
:class:`fdq.calibration.quant_api.KLThreshold`) in place of fdq's histogram observer. AP: the runner's
pipeline (uint8 resize, normalize, ncnn, decode, NMS) on the val split (``--splits calib,val``: on
each, for choices tuned on calib and confirmed on val; ``--variants``: a subset). Time: inference only, 1 thread,
median over the val images after one untimed pass, every variant on each image in turn so all share the
moment's load, as a ratio to ncnn fp32: this machine's x86 kernels, informative only (the board's cost
is bench_instructions' job).

    python scripts/bench_ncnn_int8.py --models slim,rfb,mnet025 --long-sides 320,640

Writes docs/results/bench_ncnn_int8.json and the table between its markers in docs/ACCURACY.md
(for the default split and variants only).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

from benchlib.data import REPO, Data, add_result_arguments, data_of
from benchlib.detectors import comparison_table, measure, timed_detector
from benchlib.docs import write_section
from benchlib.results import result, write_result

from fdq.device.bundle import Bundle, load_bundle
from fdq.device.evaluation import SETTINGS as SETTINGS_AP
from fdq.device.outputs import checked_outputs_or_exit

MARK_BEGIN, MARK_END = "<!-- bench_ncnn_int8:begin -->", "<!-- bench_ncnn_int8:end -->"
VARIANTS = ("fp32", "int8-bundle", "calibrated", "calibrated-winograd-6bit", "calibrated-winograd-8bit",
            "calibrated-kl")
WINOGRAD = {"calibrated-winograd-6bit": 6, "calibrated-winograd-8bit": 8}


def _bundles(model: str, side: int, calib: str, work: Path, variants: List[str]) -> Dict[str, Bundle]:
    from fdq.host.bundle_cache import FLOAT, quantized_bundle, runtime_bundle
    from fdq.host.export.ncnn_int8 import prepare_bundle, write_int8

    float_bundle = quantized_bundle(model, FLOAT, 0, long_side=side)
    made = {"fp32": runtime_bundle(float_bundle, "ncnn")}
    if "int8-bundle" in variants:
        int8_bundle = quantized_bundle(model, "qnnpack", 2, calib=calib, long_side=side)
        made["int8-bundle"] = runtime_bundle(int8_bundle, "ncnn-int8")
    if "calibrated" in variants:
        made["calibrated"] = runtime_bundle(float_bundle, "ncnn-int8", calib)
    if WINOGRAD.keys() & set(variants):
        prep = prepare_bundle(float_bundle, calib, work / f"{model}-{side}")  # the calibrated export's, made again
        for name in WINOGRAD.keys() & set(variants):
            made[name] = write_int8(prep, work / f"{model}-{side}-{name}", winograd_bits=WINOGRAD[name])
    if "calibrated-kl" in variants:
        prep = prepare_bundle(float_bundle, calib, work / f"{model}-{side}-kl", observer="kl")
        made["calibrated-kl"] = write_int8(prep, work / f"{model}-{side}-kl-int8")
    return {name: load_bundle(str(made[name])) for name in variants}


def _split(data: Data, split: str) -> Tuple[Any, List[Tuple[str, Any]]]:
    """Ground truth and decoded images of ``split`` (val or calib)."""
    from fdq.device.evaluation import load_ground_truth
    from fdq.device.images import list_images, read_image

    if split == "val":
        return data.ground_truth(), data.read_val()
    return (load_ground_truth(data.calib_labels),
            [(key, read_image(path)) for key, path in list_images(str(data.calib_images))])


def run(models: List[str], sides: List[int], data: Data, work: Path, announce: Callable[[str], None],
        variants: Sequence[str] = VARIANTS, splits: Sequence[str] = ("val",)) -> List[Dict[str, Any]]:
    from fdq.device.runtimes import load_inference

    wanted = ["fp32", *(v for v in variants if v != "fp32")]
    evaluated = {split: _split(data, split) for split in splits}
    rows: List[Dict[str, Any]] = []
    for model in models:
        for side in sides:
            bundles = _bundles(model, side, str(data.calib_images), work, wanted)
            for split, (gt, images) in evaluated.items():
                detectors = {name: timed_detector(load_inference(bundle, threads=1), bundle.spec, side)
                             for name, bundle in bundles.items()}
                ap, median = measure(detectors, images, gt)
                for name, bundle in bundles.items():
                    quantization = bundle.manifest["quantization"]
                    row = {"model": model, "long_side": side, "setting": name, "ap": ap[name],
                           "ap_minus_float": {s: round(ap[name][s] - ap["fp32"][s], 3) for s in SETTINGS_AP},
                           "inference_ms_p50": round(median[name], 3),
                           "inference_vs_float": round(median[name] / median["fp32"], 3),
                           "params_from": quantization.get("params_from"), "winograd": quantization.get("winograd"),
                           **({"split": split} if splits != ("val",) else {})}
                    rows.append(row)
                    announce(json.dumps(row))
    return rows


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="slim,rfb,mnet025")
    parser.add_argument("--long-sides", default="320,640")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="a subset of: " + ", ".join(VARIANTS))
    parser.add_argument("--splits", default="val", help="val, calib or both (comma-separated)")
    add_result_arguments(parser, "--json", "bench_ncnn_int8.json")
    args = parser.parse_args(argv)
    target, = checked_outputs_or_exit("bench_ncnn_int8", args.force, ("--json", args.json))
    variants, splits = args.variants.split(","), tuple(args.splits.split(","))
    unknown = [v for v in variants if v not in VARIANTS] + [s for s in splits if s not in ("val", "calib")]
    if unknown:
        parser.error(f"unknown variant or split: {', '.join(unknown)}")
    data = data_of(args, "val", "calib")
    with tempfile.TemporaryDirectory(prefix="fdq-bench-ncnn-int8-") as tmp:
        rows = run(args.models.split(","), [int(s) for s in args.long_sides.split(",")], data, Path(tmp),
                   lambda line: print(line, flush=True), variants, splits)
    doc = result("bench_ncnn_int8", rows, argv=argv, settings={"threads": 1, "calibration": "calib",
                                                               "splits": list(splits)})
    write_result(target, doc)
    if not args.no_docs and splits == ("val",) and tuple(variants) == VARIANTS:
        write_section(REPO / "docs" / "ACCURACY.md", [MARK_BEGIN, f"`{doc['command']}`", "", comparison_table(rows), MARK_END],
                      "ncnn int8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

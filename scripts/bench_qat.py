#!/usr/bin/env python
"""Does QAT (level 3) bring int8 closer to float than the level-2 model it starts from?

For each model and backend: the level-2 model (``fdq quantize --level 2``'s defaults: histogram
observer, per-channel weights, CLE; it is level 3's untrained checkpoint 0, calibrated on the same 24
``calib`` images), plain QAT (no StatAssist, no GradBoost) and QAT with StatAssist + GradBoost, each
fine-tuned on ``calib/`` (24 images trained on, 8 held back for checkpoint selection) by
:func:`fdq.calibration.qat.run_level`, the code of ``fdq quantize --level 3``, over ``--seeds``.
Each int8 model is scored on ``val/``, which no run sees:

* the output error against float, the calibration report's ``out err``
  (:func:`fdq.calibration.report.output_error`): mean |int8 - float| of the box offsets and of the
  face logit over the val anchors float scores >= 0.1, at ``--long-side``;
* WIDER easy/medium/hard AP (points) at ``--long-side`` (``benchlib.scoring.score``).

The goal (issue 13): StatAssist + GradBoost at least 25 % lower output error than level 2 (box
offsets and face logits, mean over seeds), with no AP loss beyond the split's noise: the spread of the
worst drop of one level-2 method over draws of its calibration images
(``docs/results/bench_ap_resolution_nobc.json``, ``scripts/bench_ap_resolution.py``).

    python scripts/bench_qat.py --json docs/results/bench_qat.json
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import statistics
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Dict, List, Optional, Tuple

import torch

from benchlib.data import REPO, Data, add_data_argument, data_of
from benchlib.results import machine, read_result, result, write_result
from benchlib.scoring import score

from fdq.calibration.data import find_images
from fdq.calibration.qat import FinetuneOptions, run_level
from fdq.calibration.report import output_error
from fdq.device.evaluation import SETTINGS
from fdq.device.outputs import checked_outputs_or_exit
from fdq.host.torch_inference import torch_inference
from fdq.host.zoo import resolve_weights
from fdq.models import MODEL_NAMES, load_model

GOAL_REDUCTION = 0.25
ERRORS = ("box_offset", "face_logit")
#: method key -> (label, StatAssist, GradBoost, fake-quant iterations: None = --iters)
METHODS = {"l2": ("L2 (checkpoint 0)", False, False, 0),
           "plain": ("L3 plain QAT", False, False, None),
           "sa_gb": ("L3 QAT + StatAssist + GradBoost", True, True, None)}
RESOLUTION = REPO / "docs" / "results" / "bench_ap_resolution_nobc.json"


def option(text: str) -> Tuple[str, Any]:
    """``KEY=VALUE`` of a :class:`FinetuneOptions` field, the value as a Python literal (or a string)."""
    key, sep, value = text.partition("=")
    if not sep or key not in FinetuneOptions.__dataclass_fields__:
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE with a fine-tuning option, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def run_task(model: str, backend: str, data: Data, long_side: int, seeds: List[int], iters: int,
             options: Dict[str, Any], methods: List[str]) -> Dict[str, Any]:
    """Every method and seed of one (model, backend)."""
    torch.set_num_threads(1)
    val_images = str(data.val_images)
    gt = data.ground_truth()
    float_model = load_model(model, resolve_weights(model, None)).eval()
    float_infer = torch_inference(float_model)
    val_blobs = [b.numpy() for b in find_images(val_images).load(long_side, float_model.spec.mean_bgr)[0]]
    rows: List[Dict[str, Any]] = []
    for key in methods:
        label, statassist, gradboost, method_iters = METHODS[key]
        for seed in (seeds[:1] if method_iters == 0 else seeds):
            t0 = time.process_time()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                int8, report = run_level(3, model, float_model, str(data.calib_images),
                                         data.calib_labels, backend=backend, long_side=long_side,
                                         iters=iters if method_iters is None else method_iters,
                                         statassist=statassist, gradboost=gradboost, **{**options, "seed": seed})
            infer = torch_inference(int8)
            rows.append({"method": key, "label": label, "seed": seed, "iters": report["iters"],
                         "best_iter": report["best_iter"], "checkpoints": report["checkpoints"],
                         "output_error": output_error(float_infer, infer, val_blobs),
                         "ap": score(infer, model, long_side, val_images, gt),
                         "train_cpu_seconds": round(time.process_time() - t0, 1)})
            print(json.dumps({"model": model, "backend": backend, **{k: rows[-1][k] for k in
                              ("method", "seed", "best_iter", "output_error", "ap", "train_cpu_seconds")}}),
                  flush=True)
    return {"model": model, "backend": backend, "ap_float": score(float_infer, model, long_side, val_images, gt),
            "runs": rows}


def summarise(task: Dict[str, Any], noise: Optional[float]) -> Dict[str, Any]:
    """Means over seeds per method, each method's error reduction and worst AP loss against level 2."""
    means: Dict[str, Dict[str, Any]] = {}
    for key in sorted({r["method"] for r in task["runs"]}, key=list(METHODS).index):
        runs = [r for r in task["runs"] if r["method"] == key]
        means[key] = {"seeds": [r["seed"] for r in runs],
                      "output_error": {e: round(statistics.mean(r["output_error"][e] for r in runs), 4) for e in ERRORS},
                      "ap": {s: round(statistics.mean(r["ap"][s] for r in runs), 2) for s in SETTINGS},
                      "best_iters": [r["best_iter"] for r in runs]}
    base = means["l2"]
    for m in means.values():
        m["error_reduction"] = {e: round(1.0 - m["output_error"][e] / base["output_error"][e], 3) for e in ERRORS}
        m["worst_ap_loss"] = round(max(base["ap"][s] - m["ap"][s] for s in SETTINGS), 2)
    best = means.get("sa_gb")
    goal = None if best is None else {
        "error_reduction_met": all(best["error_reduction"][e] >= GOAL_REDUCTION for e in ERRORS),
        "ap_noise_points": noise, "ap_met": None if noise is None else best["worst_ap_loss"] <= noise}
    return {"model": task["model"], "backend": task["backend"], "ap_float": task["ap_float"], "methods": means,
            "goal": goal}


def ap_noise() -> Dict[str, float]:
    """Per model: max - min of the level-2 worst drop over calibration draws (bench_ap_resolution)."""
    if not RESOLUTION.is_file():
        return {}
    doc = read_result(RESOLUTION, "bench_ap_resolution")
    return {r["model"]: round(r["max_drop"]["max"] - r["max_drop"]["min"], 2) for r in doc["rows"]}


def x86_saturates() -> bool:
    """Whether this machine's x86 int8 kernels saturate 8-bit products (fdq's probe): then x86 int8 strays
    further from float here than the fake-quant model QAT trains, unless activations are 7-bit."""
    from fdq.calibration.quant_api import int8_products_saturate

    return int8_products_saturate("x86")


def markdown(doc: Dict[str, Any]) -> str:
    side = doc["settings"]["long_side"]
    lines = [f"| model | backend | method | out err @{side} box / logit | vs L2 | easy / med / hard @{side} | "
             "worst AP loss vs L2 | kept checkpoint (per seed) |", "|---|---|---|---|---|---|---|---|"]
    for s in doc["summary"]["pairs"]:
        for key, m in s["methods"].items():
            err, red = m["output_error"], m["error_reduction"]
            vs = "-" if key == "l2" else f"{-100 * red['box_offset']:+.0f} % / {-100 * red['face_logit']:+.0f} %"
            ap = " / ".join(f"{m['ap'][x]:.2f}" for x in SETTINGS)
            loss = "-" if key == "l2" else f"{m['worst_ap_loss']:.2f}"
            lines.append(f"| {s['model']} | {s['backend']} | {METHODS[key][0]} | {err['box_offset']:.4f} / "
                         f"{err['face_logit']:.4f} | {vs} | {ap} | {loss} | {', '.join(map(str, m['best_iters']))} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_argument(p)
    p.add_argument("--models", default=",".join(MODEL_NAMES))
    p.add_argument("--backends", default="x86,qnnpack")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--long-side", type=int, default=320)
    p.add_argument("--iters", type=int, default=60, help="fake-quant iterations of the QAT runs")
    p.add_argument("--option", type=option, action="append", default=[], metavar="FIELD=VALUE",
                   help="a fine-tuning option (FinetuneOptions field) for every QAT run, e.g. lr=3e-5")
    p.add_argument("--methods", type=lambda s: s.split(","), default=list(METHODS),
                   help=f"of {', '.join(METHODS)} (l2, the baseline, is always run)")
    p.add_argument("--jobs", type=int, default=1, help="(model, backend) pairs run in parallel, 1 thread each")
    p.add_argument("--json", required=True)
    p.add_argument("--force", action="store_true", help="replace an existing --json")
    args = p.parse_args(argv)
    target, = checked_outputs_or_exit("bench_qat", args.force, ("--json", args.json))
    seeds = [int(s) for s in args.seeds.split(",")]
    options = dict(args.option)
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"bench_qat: error: unknown method(s) {', '.join(unknown)} (see --help)")
    methods = ["l2", *[m for m in METHODS if m in args.methods and m != "l2"]]
    pairs = [(m, b) for m in args.models.split(",") for b in args.backends.split(",")]
    load_before, t0 = os.getloadavg()[0], time.perf_counter()
    data = data_of(args, "val", "calib")
    noise = ap_noise()
    tasks: List[Dict[str, Any]] = []

    def document() -> Dict[str, Any]:
        """The results so far (``complete`` once every pair is in), rewritten after each pair."""
        ordered = sorted(tasks, key=lambda t: pairs.index((t["model"], t["backend"])))
        return result("bench_qat", ordered, argv=argv,
                      machine_facts=machine(x86_int8_saturates=x86_saturates(), load_before=load_before,
                                            wall_seconds=round(time.perf_counter() - t0, 1)),
                      settings={"long_side": args.long_side, "iters": args.iters, "seeds": seeds, "options": options,
                                "goal_reduction": GOAL_REDUCTION},
                      summary={"complete": len(tasks) == len(pairs),
                               "train_cpu_seconds": round(sum(r["train_cpu_seconds"] for t in tasks for r in t["runs"]), 1),
                               "pairs": [summarise(t, noise.get(t["model"])) for t in ordered]})

    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_task, m, b, data, args.long_side, seeds, args.iters, options, methods)
                   for m, b in pairs]
        for future in as_completed(futures):
            tasks.append(future.result())
            doc = document()
            write_result(target, doc)
    print(markdown(doc))
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

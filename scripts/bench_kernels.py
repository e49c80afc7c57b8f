"""Benchmark the C kernels against the numpy paths on real slim outputs at 320x240.

The issue's bar: C decode + NMS must beat numpy decode + cv2.dnn.NMSBoxes on the same candidates
with the same kept set (and be >= 20x numpy and < 0.2 ms); the normalize kernel >= 3x numpy. With
``--int8-bundle``: everything outside inference, end to end at long side 320, under 15 % of an int8
frame for camera frames at the input size and at most 10 % from 640x480 and 1024-wide frames (the
device path resizes in uint8).
Medians of many timed calls after a warm-up, each call timed alone with ``time.perf_counter``.

    python scripts/bench_kernels.py [--data DIR] [--image IMG] [--repeats 500] [--json docs/results/bench_kernels.json] [--force]
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Dict, List

import cv2
import numpy as np
import torch

from benchlib.data import REPO, add_data_argument, data_of
from benchlib.results import machine, result, write_result
from benchlib.timing import timed

from fdq.device.anchors import prior_boxes
from fdq.device.kernels import load_kernels, normalize_c, postprocess_c, quantize_input, quantize_input_c
from fdq.device.outputs import checked_outputs_or_exit
from fdq.device.postprocess import candidates, postprocess, postprocess_cv2
from fdq.device.preprocess import normalize
from fdq.host.zoo import resolve_weights
from fdq.models import SPECS, load_model

WIDTH, HEIGHT = 320, 240
SCORE_THRESHOLD, NMS_THRESHOLD = 0.02, 0.4


def compiler_version() -> str:
    """The first line of ``$CC --version`` (the compiler the kernels are built with)."""
    try:
        return subprocess.run(shlex.split(os.environ.get("CC") or "cc") + ["--version"], capture_output=True,
                              text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        return "unavailable"


def slim_outputs(image_path: Path, weights: Path):
    """Real slim outputs on one image forced to 320x240 (4,420 anchors), as contiguous float32."""
    image = cv2.imread(str(image_path))
    if image is None:
        sys.exit(f"cannot read {image_path}")
    resized = cv2.resize(image.astype(np.float32), (WIDTH, HEIGHT), interpolation=cv2.INTER_LINEAR)
    spec = SPECS["slim"]
    model = load_model("slim", weights)
    with torch.inference_mode():
        loc, conf, landm = model(torch.from_numpy(normalize(resized, spec.mean_bgr)))
    outputs = [np.ascontiguousarray(a) for a in (loc[0].numpy(), conf[0, :, 1].numpy(), landm[0].numpy())]
    priors = prior_boxes(spec.min_sizes, spec.steps, HEIGHT, WIDTH, spec.clip)
    ratio = WIDTH / image.shape[1]  # horizontal ratio; any positive value times the same work
    return image, outputs, priors, ratio


# Frame sources of the end-to-end rows: a camera at the input size (no resize), a 640x480 camera, and
# the 1024-wide WIDER images as they are; the detector's long side is 320 for all three.
FRAME_SOURCES = ("320x240", "640x480", "1024-wide")


def _frames(images_root: Path, source: str) -> List[np.ndarray]:
    images = [cv2.imread(str(p)) for p in sorted(images_root.rglob("*.jpg"))]
    if source == "1024-wide":
        return images
    width, height = (int(v) for v in source.split("x"))
    return [cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR) for image in images]


def end_to_end(bundle_dir: Path, images_root: Path, warmup: int, source: str) -> Dict[str, object]:
    """Per-stage medians of the runner's pipeline (uint8 resize when the frame is not at the input size,
    normalize, inference, decode, NMS) on val images delivered as ``source`` frames, long side 320."""
    from fdq.device.bundle import load_bundle
    from fdq.device.runtimes import bundle_detector

    bundle = load_bundle(str(bundle_dir))
    detector = bundle_detector(bundle, threads=1, long_side=WIDTH)
    frames = _frames(images_root, source)
    for frame in frames:  # every input size once (a new size costs extra the first time), then the warm-up
        detector.detect(frame)
    for frame in frames[:warmup]:
        detector.detect(frame)
    stages: Dict[str, List[float]] = {}
    for _ in range(3):
        for frame in frames:
            detector.detect(frame)
            for stage, ms in detector.last_timings_ms.items():
                stages.setdefault(stage, []).append(ms)
    outside = [t - i for t, i in zip(stages["total"], stages["inference"])]
    medians = {stage: float(np.median(v)) for stage, v in stages.items()}
    return {"bundle": str(bundle_dir), "engine": bundle.engine, "dtype": bundle.manifest["backend"]["dtype"],
            "source": source, "resize": detector.resize, "frames": len(stages["total"]), "kernels": detector.kernels,
            "median_ms": medians, "outside_inference_median_ms": float(np.median(outside)),
            "outside_inference_share": float(np.median(outside)) / medians["total"]}


def markdown(rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows[1:]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--image", type=Path, help="the image whose slim outputs are post-processed "
                                                   "(default: the first val image of --data)")
    parser.add_argument("--weights", type=Path, help="slim weights (default: the zoo's)")
    parser.add_argument("--repeats", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--json", type=Path, default=REPO / "docs" / "results" / "bench_kernels.json")
    parser.add_argument("--int8-bundle", type=Path, help="int8 x86 TorchScript bundle for the end-to-end share "
                        "of everything outside inference (fdq quantize --level 2 --backend x86 ...)")
    parser.add_argument("--force", action="store_true", help="replace an existing --json")
    args = parser.parse_args()
    target, = checked_outputs_or_exit("bench_kernels", args.force, ("--json", args.json))
    data = data_of(args, "val")
    image_path = args.image or next(iter(sorted(data.val_images.rglob("*.jpg"))), None)
    if image_path is None:
        sys.exit(f"bench_kernels: error: --data {args.data}: no val image there; pass --image")
    image_path = image_path.resolve()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*deprecated")
    kernels = load_kernels()
    if kernels is None:
        sys.exit("C kernels unavailable (see the warning above): nothing to compare")

    image, (loc, scores, landm), priors, ratio = slim_outputs(image_path, args.weights or resolve_weights("slim", None))
    spec = SPECS["slim"]
    pp_args = (loc, scores, landm, priors, spec.variance, (WIDTH, HEIGHT), ratio, SCORE_THRESHOLD, NMS_THRESHOLD)
    paths = {"numpy": postprocess, "numpy+cv2": postprocess_cv2, "c": postprocess_c}
    ref = postprocess(*pp_args)
    same = {}
    for name, fn in paths.items():
        d = fn(*pp_args)
        same[name] = bool(len(d) == len(ref) and np.array_equal(d.scores, ref.scores)
                          and np.allclose(d.boxes, ref.boxes, rtol=1e-6, atol=1e-4)
                          and np.allclose(d.landmarks, ref.landmarks, rtol=1e-6, atol=1e-4))
    post = {name: timed(lambda fn=fn: fn(*pp_args), args.repeats, args.warmup) for name, fn in paths.items()}

    resized_f32 = cv2.resize(image.astype(np.float32), (WIDTH, HEIGHT), interpolation=cv2.INTER_LINEAR)
    resized_u8 = cv2.resize(image, (WIDTH, HEIGHT), interpolation=cv2.INTER_LINEAR)
    mean, scale, zero_point = spec.mean_bgr, 1.0, 128  # scale/zero point of a typical int8 input

    def torch_quant() -> torch.Tensor:
        return torch.quantize_per_tensor(torch.from_numpy(normalize(resized_u8, mean)), scale, zero_point,
                                         torch.quint8)

    norm = {
        "float32": {"numpy": timed(lambda: normalize(resized_f32, mean), args.repeats, args.warmup),
                    "c": timed(lambda: normalize_c(resized_f32, mean), args.repeats, args.warmup)},
        "uint8": {"numpy": timed(lambda: normalize(resized_u8, mean), args.repeats, args.warmup),
                  "c": timed(lambda: normalize_c(resized_u8, mean), args.repeats, args.warmup)},
        "quantize_uint8": {
            "numpy": timed(lambda: quantize_input(resized_u8, mean, scale, zero_point), args.repeats, args.warmup),
            "torch": timed(torch_quant, args.repeats, args.warmup),
            "c": timed(lambda: quantize_input_c(resized_u8, mean, scale, zero_point), args.repeats,
                       args.warmup)},
    }
    norm_identical = bool(np.array_equal(kernels.normalize(resized_f32, mean), normalize(resized_f32, mean))
                          and np.array_equal(kernels.normalize(resized_u8, mean), normalize(resized_u8, mean))
                          and np.array_equal(kernels.quantize_input(resized_u8, mean, scale, zero_point),
                                             torch_quant().int_repr().numpy()))
    # one row per step and path, with how many times the C path's median it takes
    rows = [{"step": step, "path": name, **t, "over_c": t["median_ms"] / by_path["c"]["median_ms"]}
            for step, by_path in [("decode+NMS", post), *((f"normalize {v}", p) for v, p in norm.items())]
            for name, t in by_path.items()]
    over_c = {(r["step"], r["path"]): r["over_c"] for r in rows}
    goals = {"c_postprocess_at_least_20x_numpy": over_c["decode+NMS", "numpy"] >= 20,
             "c_postprocess_under_0.2_ms": post["c"]["median_ms"] < 0.2,
             "c_postprocess_faster_than_numpy_cv2": over_c["decode+NMS", "numpy+cv2"] > 1,
             "normalize_at_least_3x_numpy": min(over_c[f"normalize {v}", "numpy"] for v in ("float32", "uint8")) >= 3}
    if args.int8_bundle:
        rows_e2e = [end_to_end(args.int8_bundle, data.val_images, args.warmup, source) for source in FRAME_SOURCES]
        rows += [{"step": "end to end int8", **r} for r in rows_e2e]
        goals["outside_inference_under_15pct_at_input_size"] = rows_e2e[0]["outside_inference_share"] < 0.15
        goals["outside_inference_at_most_10pct_from_640x480_and_1024_wide"] = all(
            r["outside_inference_share"] <= 0.10 for r in rows_e2e[1:])
    image_name = str(image_path.relative_to(data.root.resolve())) if image_path.is_relative_to(data.root.resolve()) \
        else str(image_path)
    doc = result("bench_kernels", rows,
                 machine_facts=machine(numpy=np.__version__, opencv=cv2.__version__, compiler=compiler_version(),
                                       kernel_library=str(kernels.path)),
                 settings={"image": image_name, "input_size": [WIDTH, HEIGHT], "anchors": int(len(priors)),
                           "score_threshold": SCORE_THRESHOLD, "nms_threshold": NMS_THRESHOLD,
                           "repeats": args.repeats, "warmup": args.warmup, "threads": 1},
                 summary={"candidates": int(len(candidates(scores, SCORE_THRESHOLD))), "kept": len(ref),
                          "same_kept_set_as_numpy": same, "normalize_identical": norm_identical, "goals": goals})
    write_result(target, doc)

    table = [["step", "path", "median ms", "p90 ms", "x slower than C"]]
    table += [[r["step"], r["path"], f"{r['median_ms']:.4f}", f"{r['p90_ms']:.4f}", f"{r['over_c']:.1f}"]
              for r in rows if "path" in r]
    print(f"{image_name}: {len(priors)} anchors, {doc['summary']['candidates']} candidates, "
          f"{len(ref)} kept; same kept set: {same}; normalize identical: {norm_identical}\n")
    print(markdown(table))
    for e2e in rows_e2e if args.int8_bundle else []:
        print(f"\nend to end, int8 bundle, {e2e['source']} frames at long side {WIDTH}: {e2e['median_ms']}; outside "
              f"inference {e2e['outside_inference_median_ms']:.3f} ms = {100 * e2e['outside_inference_share']:.1f}% "
              f"of a frame")
    print(f"\ngoals: {goals}\nwrote {target}")


if __name__ == "__main__":
    main()

"""The ``fdq`` command line: one clear error line and a non-zero exit for bad input."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, List, Optional

from fdq.device.atomic import atomic_output, atomic_write_text
from fdq.device.cliargs import Parser, describe_long_side, int_at_least, long_side
from fdq.device.outputs import OutputRefused, atomic_folder, check_file_output, write_marker


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every default that says something; marks required options instead of "default: None"."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required and action.option_strings:
            return text + " (required)"
        if action.default is False:
            return text + " (default: off)"
        if action.default is None or "default" in text:
            return text
        return super()._get_help_string(action)


def _detector(model_name: str, weights: Optional[str], long_side: int):
    from fdq.device.detector import FaceDetector
    from fdq.host.torch_inference import torch_inference
    from fdq.host.zoo import resolve_weights
    from fdq.models import SPECS, load_model

    if model_name not in SPECS:
        raise CliError(f"unknown model '{model_name}' (choose from: {', '.join(SPECS)})")
    model = load_model(model_name, resolve_weights(model_name, weights))
    return FaceDetector(torch_inference(model), SPECS[model_name], long_side=long_side)


def _bundle_detector(path: str, long_side: Optional[int], threads: int):
    """A bundle through the same runner code the board uses (so a host number is a board number)."""
    from fdq.device.bundle import load_bundle
    from fdq.device.runtimes import bundle_detector

    return bundle_detector(load_bundle(path), threads, long_side)


# ---------------------------------------------------------------- zoo
def cmd_zoo(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from fdq.host import zoo

    if args.zoo_cmd == "fetch":
        names = list(zoo.ZOO) if args.name == "all" else [args.name]
        for name in names:
            print(zoo.fetch(name, progress=sys.stderr.isatty()))
        return 0
    table = Table(title="fdq weights")
    for column in ("name", "file", "size", "sha256", "where", "verified"):
        table.add_column(column, overflow="fold")  # a narrow terminal wraps the path, never cuts it
    for name in zoo.ZOO:
        s = zoo.status(name)
        table.add_row(name, s["filename"], str(s["size"]), s["sha256"][:16] + "...",
                      str(s["path"] or "not fetched"), "yes" if s["verified"] else "no")
    console = Console()
    if not console.is_terminal:  # a file or a pipe: as wide as the table needs
        from rich.measure import Measurement

        console = Console(width=Measurement.get(console, console.options.update_width(10_000), table).maximum)
    console.print(table)
    return 0


# ---------------------------------------------------------------- detect
def sample_image():
    """The embedded default: scikit-image's public-domain astronaut photo, as BGR uint8."""
    import numpy as np
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[:, :, ::-1])


def cmd_detect(args: argparse.Namespace) -> int:
    import cv2

    from fdq.device.draw import draw_detections
    from fdq.device.images import list_images, read_image

    if args.input is None:
        items = [("astronaut", None)]
    else:
        src = Path(args.input)
        if src.is_dir():
            items = list_images(str(src))
        elif src.is_file():
            items = [(src.stem, src)]
        else:
            raise CliError(f"input not found: {args.input}")
    detector = _detector(args.model, args.weights, args.long_side)
    with atomic_folder(args.output, args.force, "--output") as out:  # all images or nothing
        for key, path in items:
            image = read_image(path) if path is not None else sample_image()
            path = path or "scikit-image astronaut (public domain sample)"
            dets = detector.detect(image).above(args.threshold)
            faces = [{"box": [round(float(v), 2) for v in b], "score": round(float(s), 5),
                      "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in p.reshape(5, 2)]}
                     for b, s, p in zip(dets.boxes, dets.scores, dets.landmarks)]
            doc = {"image": str(path), "width": image.shape[1], "height": image.shape[0], "model": args.model,
                   "long_side": describe_long_side(args.long_side), "threshold": args.threshold, "faces": faces,
                   "timings_ms": {k: round(v, 3) for k, v in detector.last_timings_ms.items()}}
            target = out / key
            target.parent.mkdir(parents=True, exist_ok=True)
            Path(str(target) + ".json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
            ok, encoded = cv2.imencode(".jpg", draw_detections(image, dets))
            if not ok:
                raise CliError(f"cannot encode annotated image for {path}")
            encoded.tofile(str(target) + ".jpg")
            print(f"{path}: {len(dets)} faces -> {Path(args.output) / key}.jpg")
        write_marker(out, {"command": "fdq detect", "images": len(items)})
    return 0


# ---------------------------------------------------------------- eval
def cmd_eval(args: argparse.Namespace) -> int:
    from fdq.device.evaluation import evaluate, load_ground_truth, read_prediction_dir
    from fdq.device.outputs import check_folder_output

    for option, path in (("--json", args.json), ("--plot", args.plot)):
        if path:
            check_file_output(path, args.force, option)
    if args.predictions_out:
        check_folder_output(args.predictions_out, args.force, "--predictions-out")
    gt = load_ground_truth(args.gt)
    if args.predictions:
        if args.images or args.model:
            raise CliError("--predictions evaluates an existing folder: do not combine it with --images/--model")
        result = evaluate(read_prediction_dir(args.predictions), gt)
    else:
        if not args.images:
            raise CliError("give --images DIR (with --model) or --predictions DIR")
        from fdq.host.evaluate import evaluate_detector

        if args.bundle:
            if args.model or args.weights:
                raise CliError("--bundle carries its model: do not combine it with --model/--weights")
            detector = _bundle_detector(args.bundle, args.long_side, args.threads)
        else:
            detector = _detector(args.model or "slim", args.weights, 320 if args.long_side is None else args.long_side)
        result = evaluate_detector(detector, args.images, gt, args.predictions_out, args.force)
    curves = result.pop("curves")
    summary = {k: result[k] for k in ("easy", "medium", "hard", "images")}
    summary.update({k: v for k, v in result.items() if k not in summary})
    if not args.predictions:
        summary.update(model=args.model or ("slim" if not args.bundle else detector.spec.name),
                       long_side=describe_long_side(detector.long_side), bundle=args.bundle, kernels=detector.kernels)
    print(f"easy {summary['easy']:.4f}  medium {summary['medium']:.4f}  hard {summary['hard']:.4f}  "
          f"({summary['images']} images)")
    if args.json:
        check_file_output(args.json, args.force, "--json")
        atomic_write_text(args.json, json.dumps(summary, indent=2) + "\n")
    if args.plot:
        from fdq.host.plots import plot_pr_curves

        check_file_output(args.plot, args.force, "--plot")
        plot_pr_curves(curves, args.plot, title=f"{summary.get('model', 'predictions')} @ {summary.get('long_side', '')}")
    return 0


# ---------------------------------------------------------------- export
def cmd_export(args: argparse.Namespace) -> int:
    from fdq.host.export import export_bundle, summary

    path = export_bundle(args.bundle, args.format, args.out, args.calib, weights=args.weights, force=args.force,
                         float_ok=args.float)
    print(f"wrote {path}: {summary(path)}")
    return 0


# ---------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="fdq", description="Quantize face detectors and measure them on the device.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    z = sub.add_parser("zoo", help="pretrained weights: list, fetch")
    zsub = z.add_subparsers(dest="zoo_cmd", required=True, metavar="ACTION")
    zsub.add_parser("list", help="known weights and where they are cached")
    zf = zsub.add_parser("fetch", help="download and verify weights (NAME or 'all')")
    zf.add_argument("name", help="slim, rfb, mnet025, or all")
    z.set_defaults(func=cmd_zoo)

    d = sub.add_parser("detect", help="detect faces in an image or a folder")
    d.add_argument("--model", default="slim", help="slim, rfb or mnet025")
    d.add_argument("--weights", help="weights file or zoo name (default: the model's zoo weights)")
    d.add_argument("--input", help="image file or folder (default: a public-domain sample photo)")
    d.add_argument("--output", default="fdq-out", help="folder for annotated images and JSON (new or empty)")
    d.add_argument("--force", action="store_true", help="replace an earlier fdq detect output at --output")
    d.add_argument("--long-side", type=long_side, default=320,
                   help="network input long side in pixels, or 'native' for the image's own size")
    d.add_argument("--threshold", type=float, default=0.5, help="score to report a face")
    d.set_defaults(func=cmd_detect)

    e = sub.add_parser("eval", help="WIDER FACE easy/medium/hard AP (official protocol)")
    e.add_argument("--model", help="model to run: slim, rfb or mnet025 (default slim)")
    e.add_argument("--bundle", help="evaluate a bundle through the device runner's code")
    e.add_argument("--threads", type=int_at_least("--threads", 1), default=1, help="inference threads for --bundle")
    e.add_argument("--weights", help="weights file or zoo name for --model (default: the model's zoo weights)")
    e.add_argument("--images", help="WIDER-layout folder EVENT/NAME.jpg")
    e.add_argument("--predictions", help="existing prediction folder (official layout) to evaluate")
    e.add_argument("--gt", required=True, help="folder with the official .mat files (or a .json ground truth)")
    e.add_argument("--long-side", type=long_side,
                   help="network input long side in pixels, or 'native' (default 320, or the bundle's)")
    e.add_argument("--predictions-out", help="also write the predictions in the official layout (new folder)")
    e.add_argument("--json", help="write the AP summary as JSON")
    e.add_argument("--plot", help="write the precision-recall curves as PNG")
    e.add_argument("--force", action="store_true", help="replace earlier fdq outputs at --json/--plot/--predictions-out")
    e.set_defaults(func=cmd_eval)

    from fdq.host.quantize import register as register_quantize

    register_quantize(sub)

    x = sub.add_parser("export", help="export a bundle's model as another runtime's bundle",
                       formatter_class=HelpFormatter,
                       description="Export a bundle as another runtime's bundle. The line it prints and the new "
                                   "manifest say what the export is: runtime, precision and where its "
                                   "quantization parameters came from.")
    x.add_argument("bundle", help="the fdq bundle folder to export")
    x.add_argument("--format", required=True,
                   choices=("torchscript", "onnx", "onnx-int8", "ncnn", "mnn", "mnn-int8", "executorch"),
                   help="torchscript: a verified copy; onnx, ncnn, mnn, executorch: the fp32 model; onnx-int8: of an "
                        "int8 bundle its own scales and zero points as QDQ ONNX, of a float bundle QDQ calibrated by "
                        "ONNX Runtime on --calib; mnn-int8: MNN's offline quantization on --calib (executorch int8: "
                        "fdq quantize --level 2 --backend xnnpack)")
    x.add_argument("--out", required=True,
                   help="bundle folder to write: a new path or an empty folder (an fdq bundle there needs --force; "
                        "anything else is refused)")
    x.add_argument("--force", action="store_true", help="replace an existing fdq bundle at --out")
    x.add_argument("--float", action="store_true",
                   help="allow onnx/ncnn of an int8 or fp16 bundle: they then hold the float model it came from, "
                        "and say so")
    x.add_argument("--calib", help="calibration images for onnx-int8 of a float bundle and for mnn-int8 (use the "
                                   "set the bundle was made with); an int8 bundle brings its own scales to onnx-int8")
    x.add_argument("--weights", help="float weights (file or zoo name) for onnx/ncnn, if the bundle does not "
                                     "record them (default: the model's zoo weights)")
    x.set_defaults(func=cmd_export)
    return p


def _run(func: Callable[[argparse.Namespace], int], args: argparse.Namespace, prog: str) -> int:
    try:
        return func(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (CliError, OutputRefused, ValueError, OSError, RuntimeError, KeyError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 1


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return _run(args.func, args, "fdq")


def _target_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", required=True, help="a shipped profile (rpi4, local) or a profile YAML file")
    p.add_argument("--host", help="override the profile's host")
    p.add_argument("--port", type=int, help="override the profile's SSH port")
    p.add_argument("--user", help="override the profile's user")
    p.add_argument("--key", help="override the profile's private key file")
    p.add_argument("--python", help="override the profile's Python on the target")
    p.add_argument("--setup", action="store_true",
                   help="install the runner's packages and the profile's runtimes into a venv in the work directory "
                        "(wheels fetched here for the board's platform, installed there offline)")


def _connect(args: argparse.Namespace):
    from fdq.host.remote import connect
    from fdq.host.targets import load_target

    return connect(load_target(args.target, host=args.host, port=args.port, user=args.user, key=args.key,
                               python=args.python))


def _deploy(conn, bundles: List[str], setup: bool = False):
    from fdq.host.deploy import deploy
    from fdq.host.provision import prepare

    prepare(conn, setup)
    done = deploy(conn, bundles)
    print(f"{conn.target.name} ({conn.target.address}): {len(done.uploaded)} file(s) sent "
          f"({done.uploaded_bytes / 1024:.0f} KiB), {done.unchanged} unchanged, {len(done.removed)} removed; "
          f"workdir {done.workdir}", file=sys.stderr)
    return done


def cmd_deploy(args: argparse.Namespace) -> int:
    conn = _connect(args)
    try:
        done = _deploy(conn, args.bundles, args.setup)
    finally:
        conn.close()
    for local, remote in done.bundles.items():
        print(f"{local} -> {done.workdir}/{remote}")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from fdq.host.deploy import profile

    conn = _connect(args)
    try:
        done = _deploy(conn, [args.bundle], args.setup)
        remote = done.bundles[str(Path(args.bundle).resolve())]
        out = Path(args.out or f"fdq-profile/{conn.target.name}/{Path(remote).name}.json")
        doc = profile(conn, remote, out, args.frames, args.warmup, args.threads, args.source)
    finally:
        conn.close()
    device, latency = doc["device"], doc["latency_ms"]
    emulated = " (emulated: latency says nothing about the real board)" if device["emulation"]["emulated"] else ""
    print(f"{conn.target.name}: {device['machine']['arch']}, {device['runtime']} {device.get('engine') or ''} "
          f"{device['threads']} thread(s){emulated}: {doc['fps']:.1f} FPS, total p50 {latency['total']['p50']:.1f} ms "
          f"(inference {latency['inference']['p50']:.1f}), peak RSS {doc['memory']['peak_rss_mib']:.0f} MiB -> {out}")
    return 0


def _board_parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = Parser(prog=prog, description=description)
    _target_arguments(p)
    return p


def deploy_main(argv: Optional[List[str]] = None) -> int:
    p = _board_parser("fdq-deploy", "Put the device runner and bundles on a target (only what changed travels).")
    p.add_argument("bundles", nargs="+", metavar="BUNDLE")
    return _run(cmd_deploy, p.parse_args(argv), "fdq-deploy")


def profile_main(argv: Optional[List[str]] = None) -> int:
    from fdq.device.run import int_at_least  # the runner's own checks, before anything travels

    p = _board_parser("fdq-profile", "Deploy a bundle, run it on the target, fetch the result JSON.")
    p.add_argument("--bundle", required=True)
    p.add_argument("--frames", type=int_at_least("--frames", 1), default=100)
    p.add_argument("--warmup", type=int_at_least("--warmup", 0), default=10)
    p.add_argument("--threads", type=int_at_least("--threads", 1), help="default: the profile's threads")
    p.add_argument("--source", default="synthetic", help="on the target: an image folder, a video, or synthetic")
    p.add_argument("--out", help="local JSON (default fdq-profile/TARGET/BUNDLE.json)")
    return _run(cmd_profile, p.parse_args(argv), "fdq-profile")


if __name__ == "__main__":
    sys.exit(main())

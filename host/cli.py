"""The ``fdq`` command line: one clear error line and a non-zero exit for bad input."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from fdq.device.atomic import atomic_write_text
from fdq.device.cliargs import Parser, describe_long_side, int_at_least, long_side
from fdq.device.outputs import OutputRefused, atomic_folder, check_file_output, write_marker


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


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
                         float_ok=args.float, keep_float=args.keep_float or ())
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

    from fdq.host.compare import register as register_compare
    from fdq.host.quantize import register as register_quantize

    register_quantize(sub)
    register_compare(sub)
    from fdq.host.train import register as register_train

    register_train(sub)

    x = sub.add_parser("export", help="export a bundle's model as another runtime's bundle",
                       description="Export a bundle as another runtime's bundle. The line it prints and the new "
                                   "manifest say what the export is: runtime, precision and where its "
                                   "quantization parameters came from.")
    x.add_argument("bundle", help="the fdq bundle folder to export")
    x.add_argument("--format", required=True,
                   choices=("torchscript", "onnx", "onnx-int8", "ncnn", "ncnn-int8", "mnn", "mnn-int8", "executorch"),
                   help="torchscript: a verified copy; onnx, ncnn, mnn, executorch: the fp32 model; onnx-int8: of an "
                        "int8 bundle its own scales and zero points as QDQ ONNX, of a float bundle QDQ calibrated by "
                        "ONNX Runtime on --calib; ncnn-int8: ncnn's int8 model, of an int8 bundle with its own weights "
                        "and scales, of a float bundle calibrated by fdq on --calib; mnn-int8: MNN's offline "
                        "quantization on --calib (executorch int8: fdq quantize --level 2 --backend xnnpack)")
    x.add_argument("--out", required=True,
                   help="bundle folder to write: a new path or an empty folder (an fdq bundle there needs --force; "
                        "anything else is refused)")
    x.add_argument("--force", action="store_true", help="replace an existing fdq bundle at --out")
    x.add_argument("--float", action="store_true",
                   help="allow onnx/ncnn of an int8 or fp16 bundle: they then hold the float model it came from, "
                        "and say so")
    x.add_argument("--calib", help="calibration images for onnx-int8 and ncnn-int8 of a float bundle and for mnn-int8 "
                                   "(use the set the bundle was made with); an int8 bundle brings its own scales to "
                                   "onnx-int8 and ncnn-int8")
    x.add_argument("--keep-float", type=_comma_list(str), metavar="LAYER,...",
                   help="ncnn-int8: convolutions to keep fp32, by the ncnn layer or PyTorch unit names its manifest's "
                        "quantization.layers lists")
    x.add_argument("--weights", help="float weights (file or zoo name) for onnx/ncnn, if the bundle does not "
                                     "record them (default: the model's zoo weights)")
    x.set_defaults(func=cmd_export)
    return p


def run_command(func: Callable[[argparse.Namespace], int], args: argparse.Namespace, prog: str) -> int:
    """Run one command's function the way every fdq console script does: an error is one
    ``PROG: error: ...`` line and exit 1, Ctrl-C is exit 130."""
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
    return run_command(args.func, args, "fdq")


def add_target_arguments(p: Any, default: Optional[str] = None, required: Optional[bool] = None) -> None:
    """The options that name a target and override its profile, on a parser or an argument group;
    ``--target`` is required unless it has a ``default`` or ``required`` says otherwise."""
    p.add_argument("--target", required=default is None if required is None else required, default=default,
                   help="a shipped profile (rpi4, local), a profile YAML file (one board or hosts: a fleet) or an "
                        "Ansible INI inventory" + (f" (default {default}: this machine)" if default == "local" else ""))
    p.add_argument("--host", help="override the profile's host")
    p.add_argument("--port", type=int_at_least("--port", 1), help="override the profile's SSH port")
    p.add_argument("--user", help="override the profile's user")
    p.add_argument("--key", help="override the profile's private key file")
    p.add_argument("--python", help="override the profile's Python on the target")
    p.add_argument("--setup", action="store_true",
                   help="install the runner's packages and the profile's runtimes into a venv in the work directory "
                        "(wheels fetched here for the board's platform, installed there offline)")
    p.add_argument("--workdir", help="override the profile's work directory on the target")
    p.add_argument("--strict-host-keys", action="store_true", default=None,
                   help="refuse a host whose key is not yet in $FDQ_HOME/known_hosts (default: the profile's "
                        "strict_host_keys, else trust and record a first-seen key)")
    p.add_argument("--timeout", type=_seconds("--timeout"),
                   help="seconds one network step may wait: connect, SSH banner, login, each SFTP operation "
                        "(default: the profile's timeout, else 15)")


def _seconds(option: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} takes seconds, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{option} must be above 0 s, got {text}")
        return value
    return parse


def _duration(text: str) -> float:
    """``30m``, ``12h``, ``7d`` or plain seconds -> seconds (for --prune-older-than)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], units[text[-1]]) if text[-1:] in units else (text, 1)
    try:
        value = float(number) * unit
    except ValueError:
        raise argparse.ArgumentTypeError(f"--prune-older-than takes an age such as 30m, 12h or 7d, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"--prune-older-than must not be negative, got {text}")
    return value


def _overrides(args: argparse.Namespace) -> Dict[str, Any]:
    """The profile fields the command line replaces (None: keep the profile's)."""
    return dict(host=args.host, port=args.port, user=args.user, key=args.key, python=args.python,
                workdir=args.workdir, strict_host_keys=args.strict_host_keys, timeout=args.timeout)


def _targets(args: argparse.Namespace):
    """Every target ``--target`` names (one per host of a fleet), with the command line's overrides."""
    from fdq.host.targets import load_targets

    return load_targets(args.target, **_overrides(args))


def load_target_from_args(args: argparse.Namespace):
    """The one target ``--target`` names, with the command line's overrides (a fleet is refused)."""
    from fdq.host.targets import load_target

    return load_target(args.target, **_overrides(args))


def _connect(args: argparse.Namespace):
    from fdq.host.remote import connect

    return connect(load_target_from_args(args))


def _deploy_summary(done) -> str:
    return (f"{len(done.uploaded)} file(s) sent ({done.uploaded_bytes / 1024:.0f} KiB), {done.unchanged} unchanged, "
            f"{len(done.removed)} removed")


def deploy_and_report(conn, bundles: List[str], setup: bool = False, prune_older_than_s: Optional[float] = None):
    """Prepare the board (``--setup``), deploy ``bundles`` and print what travelled: the one deploy
    step of fdq-deploy, fdq-profile and fdq-demo."""
    from fdq.host.deploy import deploy, notices
    from fdq.host.provision import prepare

    prepare(conn, setup)
    done = deploy(conn, bundles, prune_older_than_s=prune_older_than_s)
    for line in notices(done, conn.target.name):
        print(line, file=sys.stderr)
    print(f"{conn.target.name} ({conn.target.address}): {_deploy_summary(done)}; workdir {done.workdir}",
          file=sys.stderr)
    return done


def cmd_deploy(args: argparse.Namespace) -> int:
    from fdq.device.bundle import load_bundle
    from fdq.host.fleet import on_each, print_table

    prune = args.prune_older_than if args.prune_older_than is not None else (0.0 if args.prune else None)
    for bundle in args.bundles:  # one error line for a bad bundle, not one per host
        load_bundle(bundle)
    targets = _targets(args)
    if args.setup:  # what --setup would install, checked before any connection
        from fdq.host.provision import requirements

        for target in targets:
            requirements(target, target.torch)
    if len(targets) > 1:
        results = on_each(targets, lambda conn: deploy_and_report(conn, args.bundles, args.setup, prune))
        print_table(f"fdq-deploy: {args.target}", results,
                    [("sent", _deploy_summary), ("workdir", lambda done: done.workdir)])
        failed = [r for r in results if not r.ok]
        if failed:
            print(f"fdq-deploy: error: {len(failed)} of {len(results)} host(s) failed: "
                  f"{', '.join(r.target.name for r in failed)}", file=sys.stderr)
        return 1 if failed else 0
    from fdq.host.remote import connect

    conn = connect(targets[0])
    try:
        done = deploy_and_report(conn, args.bundles, args.setup, prune)
    finally:
        conn.close()
    for local, remote in done.bundles.items():
        print(f"{local} -> {done.workdir}/{remote}")
    return 0


def _profile_plans(args: argparse.Namespace) -> List[Tuple[Any, List[Path]]]:
    """(target, bundles) for the --against target first (the baseline), then the --target's hosts."""
    from fdq.host.bundle_cache import FLOAT, check_runtime, quantized_bundle, runtime_bundle
    from fdq.host.targets import load_target

    plans = [(target, None if args.bundle else (args.backend or [target.engine or FLOAT]))
             for target in _targets(args)]  # a fleet: every host runs the same bundles
    if args.against:
        backends, name = args.against
        other = load_target(name)
        plans.insert(0, (other, backends or [other.engine or FLOAT]))
    for _, backends in plans:  # before any quantization: a bad combination costs one line, at once
        for backend in backends or ():
            check_runtime(args.runtime or "torchscript", backend != FLOAT, args.calib, backend)
    level = args.level if args.level is not None else (2 if args.calib else 1)
    made = []
    for target, backends in plans:
        sources = [Path(b) for b in args.bundle] if backends is None else [
            quantized_bundle(args.model, backend, level, weights=args.weights, calib=args.calib, labels=args.labels,
                             long_side=args.long_side, iters=args.iters) for backend in backends]
        # --bundle keeps each bundle's own runtime unless --runtime asks for an export
        runtime = args.runtime or (None if backends is None else "torchscript")
        made.append((target, [runtime_bundle(b, runtime, args.calib) if runtime else b for b in sources]))
    return made


def cmd_profile(args: argparse.Namespace) -> int:
    from fdq.device.outputs import check_file_output
    from fdq.host import profiling
    from fdq.host.compare import write_reports
    from fdq.host.remote import connect
    from fdq.host.report.runs import with_baseline
    from fdq.host.report.table import print_table

    if args.bundle and (args.backend or args.level is not None or args.calib or args.labels):
        raise CliError("--bundle carries its backend and level: do not combine it with --backend/--level/--calib")
    if args.gt and not args.images:
        raise CliError("--gt scores the images of --images DIR: give both")
    if args.images and args.source != "synthetic":
        raise CliError("--images sends images to the target; --source names a folder already there: give one")
    runs_dir = profiling.check_runs_folder(args.runs)
    for path, option in ((args.out, "--out"), (args.html, "--html"), (args.markdown, "--markdown")):
        if path:
            check_file_output(path, args.force, option)
    dataset = None
    if args.images:
        if not args.gt:
            raise CliError("--images without --gt measures latency only: give --gt DIR for accuracy, or "
                           "--source DIR for a folder on the target")
        dataset = profiling.stage_dataset(args.images, args.gt)
        if args.frames is not None and args.frames < dataset.count:
            raise CliError(f"--gt scores every image once: --frames {args.frames} < {dataset.count} images")
    if args.count_instructions:  # before any quantization, as every other bad combination
        from fdq.host.targets import load_target

        profiling.check_counting(_targets(args) + ([load_target(args.against[1])] if args.against else []),
                                 args.threads)
    plans = _profile_plans(args)
    jobs = [profiling.Job(target, bundle, threads) for target, bundles in plans for bundle in bundles
            for threads in (args.threads or [target.threads])]
    if args.out and len(jobs) != 1:
        raise CliError(f"--out takes one run's JSON and this profile makes {len(jobs)} runs: leave --out out "
                       f"(every run lands in --runs {args.runs})")
    settings = profiling.RunSettings(frames=args.frames if args.frames is not None or dataset else 100,
                                     min_seconds=args.min_seconds, warmup=args.warmup, source=args.source,
                                     per_op=args.per_op, cooldown=args.cooldown, max_temp=args.max_temp,
                                     run_timeout=args.run_timeout, count_instructions=args.count_instructions)
    outcome = profiling.run_jobs(jobs, settings, runs_dir, args.command_line, dataset, connect,
                                 announce=lambda line: print(line, file=sys.stderr), setup=args.setup,
                                 fleet=[target for target, _ in plans[1 if args.against else 0:]])
    if not outcome.runs:
        raise CliError(f"no run finished ({len(outcome.failures)} failed)")
    if args.out:
        atomic_write_text(args.out, json.dumps(outcome.runs[0].doc, indent=1) + "\n")
    runs, baseline = with_baseline(outcome.runs, None)
    print_table(runs, baseline)
    report = args.html or str(runs_dir / f"report-{outcome.runs[-1].path.stem.rsplit('-', 1)[-1]}.html")
    write_reports(runs, baseline, report, args.markdown, args.force)
    if args.out:
        print(f"run: {Path(args.out).resolve()}")
    print(f"report: {Path(report).resolve()}")
    return 1 if outcome.failures else 0


def deploy_parser() -> argparse.ArgumentParser:
    p = Parser(prog="fdq-deploy", description="Put the device runner and bundles on a target (only what changed "
                                              "travels).")
    add_target_arguments(p)
    p.add_argument("bundles", nargs="+", metavar="BUNDLE", help="bundle folder(s) to put on the target")
    p.add_argument("--prune", action="store_true",
                   help="first remove the bundles and results on the target that this deploy does not name")
    p.add_argument("--prune-older-than", type=_duration, metavar="AGE",
                   help="as --prune, only those older than AGE (30m, 12h, 7d)")
    return p


def deploy_main(argv: Optional[List[str]] = None) -> int:
    return run_command(cmd_deploy, deploy_parser().parse_args(argv), "fdq-deploy")


def _comma_list(parse: Callable[[str], Any]) -> Callable[[str], List[Any]]:
    """An argparse type: ``a,b,c``, each item through ``parse``."""
    def parse_all(text: str) -> List[Any]:
        items = [item.strip() for item in text.split(",")]
        if not all(items):
            raise argparse.ArgumentTypeError(f"empty item in {text!r}")
        return [parse(item) for item in items]

    return parse_all


def _backend(name: str) -> str:
    from fdq.calibration.quant_api import check_backend

    try:
        return name if name == "fp32" else check_backend(name)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}; or fp32 for the float bundle") from None


def _runtime(name: str) -> str:
    from fdq.host.bundle_cache import known_runtime

    try:
        return known_runtime(name)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _against(text: str) -> Tuple[Optional[List[str]], str]:
    """``BACKEND[,BACKEND]@TARGET`` or ``TARGET``."""
    backends, at, target = text.rpartition("@")
    if at and not backends or not target:
        raise argparse.ArgumentTypeError(f"expected BACKEND@TARGET (for example x86@local), got {text!r}")
    return (_comma_list(_backend)(backends) if at else None), target


def profile_parser() -> argparse.ArgumentParser:
    from fdq.device.cliargs import float_at_least  # the runner's own checks, before anything travels
    from fdq.device.run import WARMUP_FRAMES

    p = Parser(prog="fdq-profile", description="Quantize (or take) bundles, run them on a target, and "
                       "compare the runs: latency per stage, cold start, memory, temperature, AP.")
    add_target_arguments(p, default="local")
    p.add_argument("--against", type=_against, metavar="BACKEND@TARGET",
                   help="also run the model there, as the baseline (for example x86@local)")
    p.add_argument("--model", default="slim", help="slim, rfb or mnet025")
    p.add_argument("--backend", type=_comma_list(_backend), metavar="LIST",
                   help="qnnpack, x86, fbgemm, fp32, comma-separated (default: the target's engine)")
    p.add_argument("--level", type=int, choices=(1, 2, 3, 4),
                   help="quantization level (default 1, data-free, or 2 with --calib)")
    p.add_argument("--calib", help="calibration images (levels 2-4; --runtime ncnn-int8 or mnn-int8 of --backend fp32)")
    p.add_argument("--labels", help="ground truth of the --calib images (level 3)")
    p.add_argument("--weights", help="weights file or zoo name (default: the model's zoo weights)")
    p.add_argument("--iters", type=int_at_least("--iters", 1), help="as fdq quantize --iters")
    p.add_argument("--long-side", type=int_at_least("--long-side", 32), default=320,
                   help="input long side of the bundles it quantizes")
    p.add_argument("--bundle", nargs="+", action="extend", metavar="DIR", help="profile these bundles instead")
    p.add_argument("--runtime", type=_runtime,
                   help="torchscript, onnxruntime, ncnn, ncnn-int8, mnn, mnn-int8 or executorch: exports the bundle on "
                        "the fly (an int8 bundle carries its scales to onnxruntime and ncnn-int8; a float one is "
                        "calibrated on --calib for ncnn-int8 and mnn-int8) (default: torchscript, or a --bundle's own "
                        "runtime)")
    p.add_argument("--threads", type=_comma_list(int_at_least("--threads", 1)), metavar="LIST",
                   help="thread counts, run in turn (default: the target's)")
    p.add_argument("--frames", type=int_at_least("--frames", 1),
                   help="frames to measure (default 100, or every --images image once)")
    p.add_argument("--min-seconds", type=float_at_least("--min-seconds", 0), default=0.0,
                   help="and measure for at least this long")
    p.add_argument("--warmup", type=int_at_least("--warmup", 0), default=WARMUP_FRAMES,
                   help="unrecorded warm-up frames before timing")
    p.add_argument("--source", default="synthetic", help="on the target: an image folder, a video, or synthetic")
    p.add_argument("--images", help="WIDER-layout images sent to the target (with --gt: AP measured there)")
    p.add_argument("--gt", help="ground truth of --images (.mat folder or .json)")
    p.add_argument("--per-op", action="store_true", help="time per operator (TorchScript, ONNX Runtime)")
    p.add_argument("--cooldown", type=float_at_least("--cooldown", 0), default=0.0,
                   help="seconds the target idles between runs")
    p.add_argument("--max-temp", type=float_at_least("--max-temp", -273), help="wait until the CPU is cooler")
    p.add_argument("--run-timeout", type=float_at_least("--run-timeout", 1), metavar="S",
                   help="stop a run on the target after S seconds (default: 900 s plus 10 s a frame)")
    p.add_argument("--count-instructions", action="store_true",
                   help="also count each stage's instructions under the emulator (an emulated ARM board's "
                        "instruction_counter; one thread): exact and repeatable, unlike its latency")
    p.add_argument("--runs", default="fdq-runs", help="folder every run is kept in")
    p.add_argument("--out", help="also write the run's JSON here (one run only)")
    p.add_argument("--html", help="the HTML report (default: in the runs folder)")
    p.add_argument("--markdown", help="also write the table as Markdown")
    p.add_argument("--force", action="store_true", help="replace existing --out/--html/--markdown files")
    return p


def profile_main(argv: Optional[List[str]] = None) -> int:
    args = profile_parser().parse_args(argv)
    args.command_line = shlex.join(["fdq-profile", *(sys.argv[1:] if argv is None else argv)])
    return run_command(cmd_profile, args, "fdq-profile")


if __name__ == "__main__":
    sys.exit(main())

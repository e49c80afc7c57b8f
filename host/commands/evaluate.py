"""``fdq eval``: WIDER FACE easy / medium / hard AP of a model, a bundle (through the runner's own code)
or an existing prediction folder, with the official protocol."""
from __future__ import annotations

import argparse
import json
from typing import Any

from fdq.device.atomic import atomic_write_text
from fdq.device.cliargs import describe_long_side, int_at_least, long_side
from fdq.device.outputs import check_file_output, check_folder_output
from fdq.host.commands import CliError
from fdq.host.commands.detect import bundle_detector_at, model_detector


def cmd_eval(args: argparse.Namespace) -> int:
    from fdq.device.evaluation import evaluate, load_ground_truth, read_prediction_dir

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
            detector = bundle_detector_at(args.bundle, args.long_side, args.threads)
        else:
            detector = model_detector(args.model or "slim", args.weights, 320 if args.long_side is None else args.long_side)
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


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``eval`` subcommand to ``fdq``'s subparsers."""
    e = subparsers.add_parser("eval", help="WIDER FACE easy/medium/hard AP (official protocol)")
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
    return e

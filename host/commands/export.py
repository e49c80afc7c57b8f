"""``fdq export``: a bundle's model as another runtime's bundle (the formats of :mod:`fdq.host.export`)."""
from __future__ import annotations

import argparse
from typing import Any

from fdq.device.cliargs import comma_list
from fdq.host.export import FORMATS, export_bundle, summary


def cmd_export(args: argparse.Namespace) -> int:
    path = export_bundle(args.bundle, args.format, args.out, args.calib, weights=args.weights, force=args.force,
                         float_ok=args.float, keep_float=args.keep_float or ())
    print(f"wrote {path}: {summary(path)}")
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``export`` subcommand to ``fdq``'s subparsers; ``--format`` takes the format table's names."""
    x = subparsers.add_parser("export", help="export a bundle's model as another runtime's bundle",
                              description="Export a bundle as another runtime's bundle. The line it prints and the "
                                          "new manifest say what the export is: runtime, precision and where its "
                                          "quantization parameters came from.")
    x.add_argument("bundle", help="the fdq bundle folder to export")
    x.add_argument("--format", required=True, choices=FORMATS,
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
    x.add_argument("--keep-float", type=comma_list(str), metavar="LAYER,...",
                   help="ncnn-int8: convolutions to keep fp32, by the ncnn layer or PyTorch unit names its manifest's "
                        "quantization.layers lists")
    x.add_argument("--weights", help="float weights (file or zoo name) for onnx/ncnn, if the bundle does not "
                                     "record them (default: the model's zoo weights)")
    x.set_defaults(func=cmd_export)
    return x

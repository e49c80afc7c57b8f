"""``fdq import``: bring your own ONNX face detector (:mod:`fdq.host.importer`)."""
from __future__ import annotations

import argparse
from typing import Any, Tuple

from fdq.device.cliargs import float_at_least, probability


def input_size(text: str) -> Any:
    """``WxH`` (the size the bundle is checked at; its long side is the bundle's) or ``dynamic``."""
    if text == "dynamic":
        return None
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--input-size {text!r}: give WxH (for example 640x480) or dynamic") from None
    if width < 8 or height < 8:
        raise argparse.ArgumentTypeError(f"--input-size {text!r}: both sides must be at least 8 pixels")
    return (width, height)


def three_floats(option: str):
    def parse(text: str) -> Tuple[float, float, float]:
        try:
            values = tuple(float(v) for v in text.replace(",", " ").split())
        except ValueError:
            values = ()
        if len(values) != 3:
            raise argparse.ArgumentTypeError(f"{option} {text!r}: give three numbers, one per channel (e.g. 0,0,0)")
        return values  # type: ignore[return-value]
    return parse


def cmd_import(args: argparse.Namespace) -> int:
    from fdq.host.importer import ImportOptions, import_onnx

    options = ImportOptions(decoder=args.decoder, name=args.name, input_size=args.input_size, channels=args.channels,
                            mean=args.mean, std=args.std, score_threshold=args.score_threshold,
                            nms_iou=args.nms_iou, licence=args.licence, priors=args.priors)
    path = import_onnx(args.model, options, args.out, force=args.force)
    print(f"wrote {path}: {options.name or args.model} as a float onnxruntime bundle, decoder {args.decoder}")
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``import`` subcommand to ``fdq``'s subparsers."""
    p = subparsers.add_parser("import", help="make a bundle of your own ONNX face detector",
                              description="Check an ONNX face detector against a decoder and write it as a float "
                                          "bundle (runtime onnxruntime) that every fdq command takes: eval, detect, "
                                          "export, deploy, profile, compare.")
    p.add_argument("model", help="the .onnx file (one image input, dynamic height and width, or a fixed size that "
                                 "frames are letterboxed into)")
    p.add_argument("--decoder", required=True, help="how its outputs become faces: ssd-priors (fdq's own family), "
                                                         "ssd-decoded (outputs scores and decoded boxes: Ultra-Light-Fast's "
                                                         "published files) or yunet (fdq.device.decoders; an unknown name "
                                                         "lists them)")
    p.add_argument("--priors", metavar="MODEL",
                   help="ssd-priors: the anchors of fdq's model MODEL, slim (default; = rfb's and Ultra-Light-Fast's) "
                        "or mnet025 (RetinaFace-mnet's)")
    p.add_argument("--name", help="the model's name in reports (default: the file's stem)")
    p.add_argument("--input-size", type=input_size, default=None, metavar="WxH|dynamic",
                   help="the size the model is checked at, whose long side is the bundle's (default dynamic: 320x240; "
                        "a model of fixed input size: that size, the only one it takes)")
    p.add_argument("--channels", choices=("bgr", "rgb"), default="bgr", help="channel order the model takes")
    p.add_argument("--mean", type=three_floats("--mean"), default=(0.0, 0.0, 0.0), metavar="A,B,C",
                   help="subtracted per channel, in the model's channel order, from 0-255 pixels")
    p.add_argument("--std", type=three_floats("--std"), default=(1.0, 1.0, 1.0), metavar="A,B,C",
                   help="then divided per channel")
    p.add_argument("--score-threshold", type=probability("--score-threshold"), default=0.02,
                   help="score threshold before NMS where a command sets none")
    p.add_argument("--nms-iou", type=float_at_least("--nms-iou", 0.0), default=0.4,
                   help="NMS IoU threshold (YuNet's OpenCV default is 0.3)")
    p.add_argument("--licence", help="the model's licence, as you state it (recorded in the manifest)")
    p.add_argument("--out", required=True, help="bundle folder to write (new or empty; an fdq bundle needs --force)")
    p.add_argument("--force", action="store_true", help="replace an existing fdq bundle at --out")
    p.set_defaults(func=cmd_import)
    return p

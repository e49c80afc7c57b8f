"""``fdq detect``: faces in an image or a folder, as annotated JPEGs and JSON; and the detector of a
model name that ``fdq detect`` and ``fdq eval`` build."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Optional

from fdq.calibration.progress import track
from fdq.device.cliargs import describe_long_side, long_side
from fdq.device.outputs import atomic_folder, write_marker
from fdq.host.commands import CliError


def model_detector(model_name: str, weights: Optional[str], long_side: int):
    """The detector of a model (slim, rfb, mnet025) with its weights (file or zoo name; None: the zoo's)."""
    from fdq.device.detector import FaceDetector
    from fdq.host.torch_inference import torch_inference
    from fdq.host.zoo import resolve_weights
    from fdq.models import SPECS, load_model

    if model_name not in SPECS:
        raise CliError(f"unknown model '{model_name}' (choose from: {', '.join(SPECS)})")
    model = load_model(model_name, resolve_weights(model_name, weights))
    return FaceDetector(torch_inference(model), SPECS[model_name], long_side=long_side)


def bundle_detector_at(path: str, long_side: Optional[int], threads: int):
    """A bundle (fdq's own or imported) through the same runner code the board uses (so a host number
    is a board number); ``long_side`` None: the bundle's."""
    from fdq.device.bundle import load_bundle
    from fdq.device.runtimes import bundle_detector

    return bundle_detector(load_bundle(path), threads, long_side)


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
    if args.bundle:
        if args.weights:
            raise CliError("--bundle carries its model: do not combine it with --weights")
        detector = bundle_detector_at(args.bundle, args.long_side, 1)
    else:
        detector = model_detector(args.model, args.weights, 320 if args.long_side is None else args.long_side)
    with atomic_folder(args.output, args.force, "--output") as out:  # all images or nothing
        for key, path in track(items, "fdq: detecting"):
            image = read_image(path) if path is not None else sample_image()
            path = path or "scikit-image astronaut (public domain sample)"
            dets = detector.detect(image).above(args.threshold)
            faces = [{"box": [round(float(v), 2) for v in b], "score": round(float(s), 5),
                      "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in p.reshape(-1, 2)]}
                     for b, s, p in zip(dets.boxes, dets.scores, dets.landmarks)]
            doc = {"image": str(path), "width": image.shape[1], "height": image.shape[0], "model": detector.spec.name,
                   "long_side": describe_long_side(detector.long_side), "threshold": args.threshold, "faces": faces,
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


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``detect`` subcommand to ``fdq``'s subparsers."""
    d = subparsers.add_parser("detect", help="detect faces in an image or a folder")
    d.add_argument("--model", default="slim", help="slim, rfb or mnet025")
    d.add_argument("--bundle", help="detect with a bundle (fdq's own or made by fdq import) through the runner's code")
    d.add_argument("--weights", help="weights file or zoo name (default: the model's zoo weights)")
    d.add_argument("--input", help="image file or folder (default: a public-domain sample photo)")
    d.add_argument("--output", default="fdq-out", help="folder for annotated images and JSON (new or empty)")
    d.add_argument("--force", action="store_true", help="replace an earlier fdq detect output at --output")
    d.add_argument("--long-side", type=long_side,
                   help="network input long side in pixels, or 'native' for the image's own size (default 320, or the "
                        "bundle's: a bundle of fixed input size runs at its own only)")
    d.add_argument("--threshold", type=float, default=0.5, help="score to report a face")
    d.set_defaults(func=cmd_detect)
    return d

"""The one rule by which a benchmark finds its data, weights and peer models.

``--data DIR`` is a WIDER FACE subset root with ``val/`` and ``calib/``, each holding ``images/``
(``EVENT/NAME.jpg``) and ``ground_truth/``; it defaults to ``$FDQ_SHARED/data/widerface_val_subset``.
``FDQ_SHARED`` defaults to ``shared`` beside the repository (``../shared`` from its root). Weights
come from ``FDQ_WEIGHTS_PATH`` (then fdq's download cache), which defaults to ``$FDQ_SHARED/weights``
once a script has its data; YuNet's models are in ``$FDQ_SHARED/peers``.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Tuple

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def shared_dir() -> Path:
    """``$FDQ_SHARED``, default ``shared`` beside the repository."""
    return Path(os.environ.get("FDQ_SHARED") or REPO.parent / "shared")


def add_data_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--data`` option, the same in every benchmark."""
    parser.add_argument("--data", type=Path, default=shared_dir() / "data" / "widerface_val_subset",
                        help="WIDER subset root with val/ and calib/ (each images/ and ground_truth/); default: "
                             "$FDQ_SHARED/data/widerface_val_subset, FDQ_SHARED defaulting to ../shared")


@dataclass(frozen=True)
class Data:
    """The folders of one ``--data`` root (:meth:`at`)."""

    root: Path
    val_images: Path
    val_gt: Path
    calib_images: Path
    calib_labels: Path

    @classmethod
    def at(cls, root: Path) -> "Data":
        return cls(root, root / "val" / "images", root / "val" / "ground_truth", root / "calib" / "images",
                   root / "calib" / "ground_truth")

    def ground_truth(self) -> Any:
        """The val split's ground truth."""
        from fdq.device.evaluation import load_ground_truth

        return load_ground_truth(self.val_gt)

    def read_val(self) -> List[Tuple[str, np.ndarray]]:
        """The val images decoded once, (key, BGR) in the evaluator's order."""
        from fdq.device.images import list_images, read_image

        return [(key, read_image(path)) for key, path in list_images(str(self.val_images))]


def data_of(args: argparse.Namespace, *splits: str) -> Data:
    """The parsed ``--data``, checked to hold ``SPLIT/images`` for each of ``splits`` (one error line
    and exit status 1 otherwise); from here on weights default to ``$FDQ_SHARED/weights``."""
    data = Data.at(Path(args.data))
    for split in splits:
        if not (data.root / split / "images").is_dir():
            raise SystemExit(f"{Path(sys.argv[0]).stem}: error: --data {args.data}: no {split}/images folder there "
                             "(a WIDER subset root with val/ and calib/)")
    os.environ.setdefault("FDQ_WEIGHTS_PATH", str(shared_dir() / "weights"))
    return data


def peer_model(name: str) -> Path:
    """The ONNX file of a peer detector (``yunet_n``, ``yunet_s``) in ``$FDQ_SHARED/peers``."""
    return shared_dir() / "peers" / f"{name}_dynamic.onnx"


def add_result_arguments(parser: argparse.ArgumentParser, option: str, result: str) -> None:
    """The options of every int8 comparison here: ``--data`` (the WIDER FACE subset), the result file
    ``option`` (default ``docs/results/RESULT``), ``--no-docs`` and ``--force``."""
    add_data_argument(parser)
    parser.add_argument(option, default=str(REPO / "docs" / "results" / result))
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite the table in docs/ACCURACY.md")
    parser.add_argument("--force", action="store_true", help=f"replace an existing {option}")

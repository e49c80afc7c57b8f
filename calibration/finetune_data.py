"""The images of a level 3/4 fine-tuning run (:func:`fdq.calibration.qat.finetune`), as batches.

Images are resized like inference (to ``long_side``, not mean-subtracted), every ``round(1 / holdout)``-th
(sorted keys) held back for checkpoint selection, lightly augmented (random downscale, horizontal flip,
drawn per (seed, epoch, index)) and padded to a common size per batch, padded anchors taking part in
no loss. The light counterpart, for a few dozen images near the pretrained model, of
:mod:`fdq.calibration.widerface_data`'s reference augmentation for ``fdq train``; it flips boxes with
the same :func:`~fdq.calibration.widerface_data.mirror_boxes` and matches anchors with the same
:func:`~fdq.calibration.losses.match`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Protocol, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from fdq.device.anchors import prior_boxes
from fdq.device.images import list_images, read_image
from fdq.device.preprocess import resize_image
from fdq.device.spec import DetectorSpec

from .losses import match, stack_targets
from .widerface_data import mirror_boxes


class AugmentOptions(Protocol):
    """What :class:`FinetuneData` reads of a run's :class:`~fdq.calibration.qat.FinetuneOptions`."""

    seed: int
    flip: bool
    scale_jitter: float
    match_threshold: float


@dataclass
class Sample:
    """One image of the run, resized like inference, with its boxes once labels are read."""

    key: str
    image: np.ndarray                     # resized BGR float32 HWC (not mean-subtracted)
    ratio: float
    boxes: Optional[np.ndarray] = None    # (M, 4) x1 y1 x2 y2 in resized pixels, None without labels
    original: Optional[np.ndarray] = field(default=None, repr=False)   # BGR uint8, held-back images only


def held_indices(n: int, holdout: float) -> set:
    """Indices (in sorted-key order) of the images held back: every ``round(1 / holdout)``-th one."""
    if holdout <= 0 or n < 2:
        return set()
    every = max(2, int(round(1.0 / holdout)))
    return {i for i in range(n) if i % every == every - 1} or {n - 1}


def load_samples(images_dir: str, long_side: int,
                 holdout: float = 0.0) -> Tuple[List[Sample], List[Sample], Dict[str, Tuple[int, int]]]:
    """(training samples, held-back samples, original (height, width) per key) of an image folder.

    Images are resized like inference; only the held-back ones keep their original pixels (they are
    scored through the full detector), so a large folder costs about 1 MB per image at long side 320.
    """
    found = list_images(images_dir)          # sorted by key
    held_idx = held_indices(len(found), holdout)
    train, held, sizes = [], [], {}
    for i, (key, path) in enumerate(found):
        img = read_image(path)
        sizes[key] = img.shape[:2]
        resized, ratio = resize_image(img, long_side)
        if i in held_idx:
            held.append(Sample(key, resized, ratio, original=img))
        else:
            train.append(Sample(key, resized, ratio))
    return train, held, sizes


def augment_sample(sample: Sample, rng: np.random.Generator, flip: bool,
                   scale_jitter: float) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """One image's light augmentation: random downscale by up to ``scale_jitter``, horizontal flip
    half of the time (``flip``); (image, boxes in its pixels or None)."""
    img, b = sample.image, None if sample.boxes is None else sample.boxes.copy()
    if scale_jitter > 0:
        f = float(rng.uniform(1.0 - scale_jitter, 1.0))
        if f < 0.999:
            img = cv2.resize(img, None, None, fx=f, fy=f, interpolation=cv2.INTER_LINEAR)
            b = None if b is None else b * f
    if flip and rng.random() < 0.5:
        img = img[:, ::-1]
        if b is not None:
            b = mirror_boxes(b, img.shape[1])
    return np.ascontiguousarray(img), b


def pad_batch(images: Sequence[np.ndarray], boxes: Sequence[Optional[np.ndarray]], spec: DetectorSpec
              ) -> Tuple[torch.Tensor, np.ndarray, torch.Tensor, List[Optional[np.ndarray]]]:
    """Mean-subtract and zero-pad (= mean colour) images to a common size.

    Returns (input NCHW, priors (N, 4) for the padded size, valid (B, N) anchors whose centre lies in
    the image, per-image boxes normalised to the padded size or None).
    """
    height = max(i.shape[0] for i in images)
    width = max(i.shape[1] for i in images)
    mean = np.asarray(spec.mean_bgr, dtype=np.float32)
    batch = np.zeros((len(images), 3, height, width), dtype=np.float32)
    for n, img in enumerate(images):
        batch[n, :, :img.shape[0], :img.shape[1]] = (img - mean).transpose(2, 0, 1)
    priors = prior_boxes(spec.min_sizes, spec.steps, height, width, spec.clip)
    cx, cy = priors[:, 0] * width, priors[:, 1] * height
    valid = np.stack([(cx < img.shape[1]) & (cy < img.shape[0]) for img in images])
    scale = np.array([width, height, width, height], dtype=np.float32)
    norm = [None if b is None else (b / scale).astype(np.float32) for b in boxes]
    return torch.from_numpy(batch), priors, torch.from_numpy(valid), norm


def make_batch(samples: Sequence[Sample], spec: DetectorSpec, rng: np.random.Generator, flip: bool,
               scale_jitter: float) -> Tuple[torch.Tensor, np.ndarray, torch.Tensor, List[Optional[np.ndarray]]]:
    """:func:`augment_sample` each sample (drawing from ``rng``), then :func:`pad_batch`."""
    pairs = [augment_sample(s, rng, flip, scale_jitter) for s in samples]
    return pad_batch([p[0] for p in pairs], [p[1] for p in pairs], spec)


class FinetuneData(Dataset):
    """The training images of a :func:`~fdq.calibration.qat.finetune` run as
    :func:`~fdq.calibration.training.fit` draws them: ``period`` batches an epoch (each epoch ends in a
    held-back checkpoint), the images taken in turn across epochs, each augmented by a generator of
    (seed, epoch, index). :meth:`collate` pads a batch and, for labelled images, adds their anchor
    targets (the keys of :class:`~fdq.calibration.widerface_data.WiderFaceTraining`) and the padded
    size's ``priors``."""

    def __init__(self, samples: Sequence[Sample], spec: DetectorSpec, batch_size: int, period: int,
                 opts: AugmentOptions) -> None:
        self.samples = list(samples)
        self.spec = spec
        self.opts = opts
        self.length = batch_size * period
        self.epoch = 0

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        sample = self.samples[(self.epoch * self.length + index) % len(self.samples)]
        rng = np.random.default_rng([self.opts.seed, self.epoch, index])
        return augment_sample(sample, rng, self.opts.flip, self.opts.scale_jitter)

    def collate(self, items: List[Tuple[np.ndarray, Optional[np.ndarray]]]) -> Dict[str, torch.Tensor]:
        x, priors_np, valid, norm = pad_batch([i[0] for i in items], [i[1] for i in items], self.spec)
        priors = torch.from_numpy(np.array(priors_np))
        batch = {"image": x, "valid": valid, "priors": priors}
        if all(b is not None for b in norm):
            t = stack_targets([match(torch.from_numpy(b), priors, self.opts.match_threshold) for b in norm])
            batch.update(loc=t.loc, labels=t.labels, landm=t.landm, landm_valid=t.landm_valid)
        return batch

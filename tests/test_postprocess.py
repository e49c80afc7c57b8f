"""Anchors, decoding and NMS against brute-force loops written from the reference definitions."""
import itertools
import math

import numpy as np
import pytest

from fdq.device.anchors import prior_boxes
from fdq.device.decode import decode_boxes, decode_landmarks
from fdq.device.nms import nms, score_order
from fdq.device.postprocess import postprocess
from fdq.device.preprocess import normalize, resize_image, resize_ratio
from fdq.models import SPECS


def brute_force_priors(min_sizes, steps, height, width):
    out = []
    for k, step in enumerate(steps):
        for i, j in itertools.product(range(math.ceil(height / step)), range(math.ceil(width / step))):
            for size in min_sizes[k]:
                out.append([(j + 0.5) * step / width, (i + 0.5) * step / height, size / width, size / height])
    return np.array(out, dtype=np.float32)


def brute_force_nms(dets, thresh):
    """Greedy NMS, one pair at a time, boxes sorted by score (reference +1 pixel convention)."""
    keep, suppressed = [], [False] * len(dets)
    for i in range(len(dets)):
        if suppressed[i]:
            continue
        keep.append(i)
        for j in range(i + 1, len(dets)):
            if suppressed[j]:
                continue
            a, b = dets[i], dets[j]
            iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
            ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
            inter = iw * ih
            union = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter
            if inter / union > thresh:
                suppressed[j] = True
    return keep


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("height,width", [(240, 320), (213, 320), (320, 247)])
def test_priors_match_loop(name, height, width):
    spec = SPECS[name]
    np.testing.assert_allclose(prior_boxes(spec.min_sizes, spec.steps, height, width),
                               brute_force_priors(spec.min_sizes, spec.steps, height, width), rtol=0, atol=1e-7)


def test_decode_matches_loop():
    rng = np.random.default_rng(0)
    priors = rng.uniform(0.05, 0.9, size=(200, 4)).astype(np.float32)
    loc = rng.normal(size=(200, 4)).astype(np.float32)
    landm = rng.normal(size=(200, 10)).astype(np.float32)
    boxes, points = decode_boxes(loc, priors, (0.1, 0.2)), decode_landmarks(landm, priors, (0.1, 0.2))
    for n in range(200):
        cx, cy, w, h = priors[n]
        bcx, bcy = cx + loc[n, 0] * 0.1 * w, cy + loc[n, 1] * 0.1 * h
        bw, bh = w * math.exp(loc[n, 2] * 0.2), h * math.exp(loc[n, 3] * 0.2)
        np.testing.assert_allclose(boxes[n], [bcx - bw / 2, bcy - bh / 2, bcx + bw / 2, bcy + bh / 2], atol=1e-5)
        for k in range(5):
            np.testing.assert_allclose(points[n, 2 * k:2 * k + 2],
                                       [cx + landm[n, 2 * k] * 0.1 * w, cy + landm[n, 2 * k + 1] * 0.1 * h], atol=1e-6)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("thresh", [0.3, 0.4, 0.6])
def test_nms_matches_loop_on_random_boxes(seed, thresh):
    rng = np.random.default_rng(seed)
    n = 300
    xy = rng.uniform(0, 300, size=(n, 2))
    wh = rng.uniform(2, 60, size=(n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    scores = rng.uniform(size=n).astype(np.float32)
    order = score_order(scores)
    kept = nms(boxes[order], thresh)
    assert list(kept) == brute_force_nms(boxes[order].astype(np.float64), thresh)
    assert 0 < len(kept) < n


def test_score_order_is_stable_for_ties():
    scores = np.array([0.5, 1.0, 0.5, 1.0], dtype=np.float32)
    assert list(score_order(scores)) == [1, 3, 0, 2]


def test_resize_follows_reference_rule():
    assert resize_ratio(683, 1024, 320) == pytest.approx(320 / 1024)
    assert resize_ratio(1024, 683, 640) == pytest.approx(640 / 1024)
    assert resize_ratio(100, 50, 0) == 1.0
    img = np.full((683, 1024, 3), 200, np.uint8)
    resized, ratio = resize_image(img, 320)
    assert resized.shape == (213, 320, 3) and resized.dtype == np.float32
    blob = normalize(resized, (104, 117, 123))
    assert blob.shape == (1, 3, 213, 320)
    np.testing.assert_allclose(blob[0, :, 0, 0], [96, 83, 77])


def test_postprocess_equals_decode_everything_then_filter():
    """Decoding only the candidates gives what decoding every anchor then filtering gives."""
    rng = np.random.default_rng(3)
    spec = SPECS["slim"]
    priors = prior_boxes(spec.min_sizes, spec.steps, 240, 320)
    n = len(priors)
    loc = rng.normal(scale=0.5, size=(n, 4)).astype(np.float32)
    landm = rng.normal(size=(n, 10)).astype(np.float32)
    scores = rng.beta(0.3, 3, size=n).astype(np.float32)
    dets = postprocess(loc, scores, landm, priors, spec.variance, (320, 240), 0.5, 0.02, 0.4)
    full = decode_boxes(loc, priors, spec.variance) * np.array([320, 240, 320, 240], np.float32) / np.float32(0.5)
    idx = np.flatnonzero(scores > 0.02)
    order = idx[score_order(scores[idx])]
    expected = order[brute_force_nms(full[order].astype(np.float64), 0.4)]
    np.testing.assert_allclose(dets.boxes, full[expected], rtol=1e-6, atol=1e-4)
    np.testing.assert_array_equal(dets.scores, scores[expected])
    assert np.all(np.diff(dets.scores) <= 0)

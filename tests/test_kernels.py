"""The board-compiled C kernels against the numpy reference, OpenCV's NMS, torch quantization,
and the build machinery (cache, fallback without a compiler)."""
import os
import shlex
import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from fdq.device import kernels as kmod
from fdq.device.anchors import prior_boxes
from fdq.device.decoders.ssd_priors import select_postprocess
from fdq.device.detector import FaceDetector
from fdq.device.nms import nms, score_order
from fdq.device.postprocess import candidates, postprocess, postprocess_cv2
from fdq.device.decode import decode_boxes, decode_landmarks
from fdq.device.preprocess import normalize, resize_image
from fdq.models import SPECS, load_model

SLIM = SPECS["slim"]
# float32 exp differs by an ulp between numpy's SIMD code and libm on some CPUs: coordinates agree
# to 1e-4 px absolute, or 1e-6 relative past ~100 px (a float32 ulp is 6e-5 at 1000 px).
TOL = dict(rtol=1e-6, atol=1e-4)


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    """Kernels freshly built into an empty cache of this module, with C enabled."""
    compiler = shlex.split(os.environ.get("CC") or "cc")
    if not compiler or shutil.which(compiler[0]) is None:
        pytest.skip("no C compiler on this machine")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FDQ_KERNEL_CACHE", str(tmp_path_factory.mktemp("kernel_cache")))
        mp.delenv("FDQ_KERNELS", raising=False)
        kmod._compiled.cache_clear()
        loaded = kmod.load_kernels()
        assert loaded is not None and loaded.built
        yield loaded
    kmod._compiled.cache_clear()


@pytest.fixture
def fresh_state(monkeypatch):
    """Forget the loaded library before and after, so the test's environment decides."""
    kmod._compiled.cache_clear()
    yield monkeypatch
    kmod._compiled.cache_clear()


def random_outputs(seed, loc_scale=0.5, ties=True):
    """Slim-shaped outputs at 320x240 with many candidates; rounded scores give many ties."""
    rng = np.random.default_rng(seed)
    priors = prior_boxes(SLIM.min_sizes, SLIM.steps, 240, 320)
    n = len(priors)
    loc = rng.normal(scale=loc_scale, size=(n, 4)).astype(np.float32)
    landm = rng.normal(size=(n, 10)).astype(np.float32)
    scores = rng.beta(0.3, 3, size=n)
    if ties:
        scores = np.round(scores, 2)
    return loc, scores.astype(np.float32), landm, priors


def assert_same_detections(a, b, exact=False):
    assert len(a) == len(b)
    np.testing.assert_array_equal(a.scores, b.scores)
    if exact:
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.landmarks, b.landmarks)
    else:
        np.testing.assert_allclose(a.boxes, b.boxes, **TOL)
        np.testing.assert_allclose(a.landmarks, b.landmarks, **TOL)


# ---------------------------------------------------------------- preprocessing

@pytest.mark.parametrize("shape", [(240, 320, 3), (213, 320, 3), (7, 5, 3)])
def test_normalize_kernels_equal_numpy(kernels, shape):
    rng = np.random.default_rng(1)
    u8 = rng.integers(0, 256, size=shape, dtype=np.uint8)
    f32 = (rng.uniform(-10, 270, size=shape)).astype(np.float32)
    for image in (u8, f32):
        out = kernels.normalize(image, SLIM.mean_bgr)
        assert out.dtype == np.float32 and out.flags.c_contiguous
        np.testing.assert_array_equal(out, normalize(image, SLIM.mean_bgr))
        np.testing.assert_array_equal(kmod.normalize_c(image, SLIM.mean_bgr), normalize(image, SLIM.mean_bgr))


def test_normalize_kernel_on_the_resized_float_image(kernels, shared_dir):
    image = cv2.imread(str(sorted((shared_dir / "data/widerface_val_subset/val/images").rglob("*.jpg"))[0]))
    resized, _ = resize_image(image, 320)
    np.testing.assert_array_equal(kernels.normalize(resized, SLIM.mean_bgr), normalize(resized, SLIM.mean_bgr))


@pytest.mark.filterwarnings("ignore:.*quantize_per_tensor.*deprecated")
@pytest.mark.parametrize("scale,zero_point", [(2.0, 128), (1.0, 0), (0.5, 100), (0.7371, 131), (1.9921875, 255),
                                              (0.0123, 7)])
def test_quantize_kernel_equals_torch(kernels, scale, zero_point):
    """Scale 2 makes every half-integer a tie: rounding must be half to even, like torch.
    C and numpy give the same values in the same channels-last layout, which the quantized tensor
    the TorchScript runtime builds from the blob keeps."""
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, size=(61, 47, 3), dtype=np.uint8)
    image.reshape(-1, 3)[:256] = np.arange(256, dtype=np.uint8)[:, None]  # every value in every channel
    expected = torch.quantize_per_tensor(torch.from_numpy(normalize(image, SLIM.mean_bgr)), scale, zero_point,
                                         torch.quint8).int_repr().numpy()
    for out in (kernels.quantize_input(image, SLIM.mean_bgr, scale, zero_point),
                kmod.quantize_input(image, SLIM.mean_bgr, scale, zero_point)):
        assert out.dtype == np.uint8 and out.shape == (1, 3, 61, 47)
        assert out.strides == (61 * 47 * 3, 1, 47 * 3, 3)
        np.testing.assert_array_equal(out, expected)
        tensor = torch.from_numpy(out)
        assert tensor.is_contiguous(memory_format=torch.channels_last)
        quantized = torch._make_per_tensor_quantized_tensor(tensor, scale, zero_point)
        assert quantized.is_contiguous(memory_format=torch.channels_last)


def test_kernels_reject_bad_inputs(kernels):
    with pytest.raises(ValueError):
        kernels.normalize(np.zeros((4, 4), np.uint8), SLIM.mean_bgr)
    with pytest.raises(TypeError):
        kernels.normalize(np.zeros((4, 4, 3), np.float64), SLIM.mean_bgr)
    with pytest.raises(TypeError):
        kernels.quantize_input(np.zeros((4, 4, 3), np.float32), SLIM.mean_bgr, 1.0, 0)
    loc, scores, landm, priors = random_outputs(0)
    with pytest.raises(ValueError):
        kernels.postprocess(loc[:-1], scores, landm, priors, SLIM.variance, (320, 240), 1.0)


# ---------------------------------------------------------------- decode and NMS

@pytest.mark.parametrize("seed", range(3))
def test_decode_kernel_equals_numpy(kernels, seed):
    loc, scores, landm, priors = random_outputs(seed)
    index, cand_scores, boxes, points = kernels.decode(loc, scores, landm, priors, SLIM.variance, (320, 240),
                                                       0.3125, 0.02)
    idx = candidates(scores, 0.02)
    np.testing.assert_array_equal(index, idx)
    np.testing.assert_array_equal(cand_scores, scores[idx])
    scale = np.array([320, 240], np.float32) / np.float32(0.3125)
    np.testing.assert_allclose(boxes, decode_boxes(loc[idx], priors[idx], SLIM.variance) * np.tile(scale, 2), **TOL)
    np.testing.assert_allclose(points, decode_landmarks(landm[idx], priors[idx], SLIM.variance) * np.tile(scale, 5),
                               **TOL)


def random_boxes(seed, n=500):
    """Boxes with tied scores, exact duplicates, integer corners, and a pair at IoU exactly 0.4."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 300, size=(n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(2, 60, size=(n, 2))], axis=1).astype(np.float32)
    boxes[::7] = np.round(boxes[::7])
    boxes[1::40] = boxes[::40]
    boxes[-2:] = [[0, 0, 9, 9], [0, 0, 3, 9]]
    scores = (np.round(rng.uniform(size=n), 2) + 0.01).astype(np.float32)
    return boxes, scores


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("thresh", [0.3, 0.4, 0.6])
def test_nms_kernel_equals_numpy(kernels, seed, thresh):
    boxes, scores = random_boxes(seed)
    order = score_order(scores)
    expected = order[nms(boxes[order], thresh)]
    np.testing.assert_array_equal(kernels.nms(boxes, scores, thresh), expected)
    assert 0 < len(expected) < len(boxes)


def test_nms_kernel_keeps_iou_exactly_at_threshold(kernels):
    boxes = np.array([[0, 0, 9, 9], [0, 0, 3, 9]], np.float32)  # IoU 40 / 100
    scores = np.array([0.9, 0.8], np.float32)
    assert list(kernels.nms(boxes, scores, 0.4)) == [0, 1]
    assert list(kernels.nms(boxes, scores, 0.39)) == [0]
    assert len(kernels.nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.4)) == 0


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("ties", [True, False])
def test_three_postprocess_paths_agree_on_random_outputs(kernels, seed, ties):
    loc, scores, landm, priors = random_outputs(seed, ties=ties)
    args = (loc, scores, landm, priors, SLIM.variance, (320, 240), 0.3125, 0.02, 0.4)
    reference = postprocess(*args)
    assert len(reference) > 100
    assert_same_detections(kernels.postprocess(*args), reference)
    assert_same_detections(postprocess_cv2(*args), reference, exact=True)


@pytest.mark.parametrize("count", [0, 1])
def test_paths_with_no_or_one_candidate(kernels, count):
    loc, scores, landm, priors = random_outputs(0)
    scores = np.zeros_like(scores)
    scores[:count] = 0.9
    args = (loc, scores, landm, priors, SLIM.variance, (320, 240), 1.0)
    for dets in (kernels.postprocess(*args), postprocess_cv2(*args)):
        assert len(dets) == count and dets.boxes.shape == (count, 4) and dets.landmarks.shape == (count, 10)
        assert_same_detections(dets, postprocess(*args))


# ---------------------------------------------------------------- real model outputs

@pytest.fixture(scope="module")
def slim_outputs(shared_dir):
    """Slim's raw outputs on a few validation images, through the reference preprocessing."""
    weights = shared_dir / "weights" / "slim_Final.pth"
    images = sorted((shared_dir / "data/widerface_val_subset/val/images").rglob("*.jpg"))[:3]
    if not weights.is_file() or not images:
        pytest.skip("slim weights or validation images missing")
    model = load_model("slim", weights)
    out = []
    for path in images:
        resized, ratio = resize_image(cv2.imread(str(path)), 320)
        with torch.inference_mode():
            loc, conf, landm = model(torch.from_numpy(normalize(resized, SLIM.mean_bgr)))
        height, width = resized.shape[:2]
        priors = prior_boxes(SLIM.min_sizes, SLIM.steps, height, width)
        out.append((loc[0].numpy(), conf[0, :, 1].numpy(), landm[0].numpy(), priors, (width, height), ratio))
    return out


def test_three_postprocess_paths_agree_on_slim_outputs(kernels, slim_outputs):
    for loc, scores, landm, priors, size, ratio in slim_outputs:
        args = (loc, scores, landm, priors, SLIM.variance, size, ratio, 0.02, 0.4)
        reference = postprocess(*args)
        assert len(reference) > 10
        assert_same_detections(kernels.postprocess(*args), reference)
        assert_same_detections(postprocess_cv2(*args), reference, exact=True)
        # Same kept anchors: decode + NMS kernels one step at a time against the numpy steps.
        index, cand_scores, boxes, _ = kernels.decode(loc, scores, landm, priors, SLIM.variance, size, ratio, 0.02)
        np.testing.assert_array_equal(index, candidates(scores, 0.02))
        order = score_order(cand_scores)
        np.testing.assert_array_equal(kernels.nms(boxes, cand_scores, 0.4), order[nms(boxes[order], 0.4)])


def test_face_detector_default_path_equals_reference(kernels, shared_dir):
    weights = shared_dir / "weights" / "slim_Final.pth"
    image = cv2.imread(str(sorted((shared_dir / "data/widerface_val_subset/val/images").rglob("*.jpg"))[1]))
    model = load_model("slim", weights)

    def infer(blob):
        with torch.inference_mode():
            loc, conf, landm = model(torch.from_numpy(blob))
        return loc[0].numpy(), conf[0, :, 1].numpy(), landm[0].numpy()

    fast = FaceDetector(infer, SLIM)
    reference = FaceDetector(infer, SLIM, postprocess="numpy", normalize=normalize)
    assert fast.kernels == "c" and reference.kernels == "numpy"
    assert_same_detections(fast.detect(image), reference.detect(image))


# ---------------------------------------------------------------- selection, fallback, cache

def test_select_postprocess(kernels):
    assert select_postprocess()[1] == "c"
    assert select_postprocess("numpy+cv2") == (postprocess_cv2, "numpy+cv2")
    assert select_postprocess("numpy") == (postprocess, "numpy")
    with pytest.raises(ValueError):
        select_postprocess("gpu")


def test_env_forces_numpy(kernels, fresh_state):
    fresh_state.setenv("FDQ_KERNELS", "numpy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kmod.load_kernels() is None
        assert kmod.kernel_status() == "numpy"
    assert select_postprocess()[1] == "numpy+cv2"
    with pytest.raises(RuntimeError):
        select_postprocess("c")
    assert FaceDetector(lambda blob: None, SLIM).kernels == "numpy+cv2"


def test_no_compiler_warns_once_and_falls_back(fresh_state, tmp_path):
    fresh_state.setenv("CC", "/nonexistent")
    fresh_state.setenv("FDQ_KERNEL_CACHE", str(tmp_path / "empty"))
    fresh_state.delenv("FDQ_KERNELS", raising=False)
    with pytest.warns(RuntimeWarning, match="unavailable.*nonexistent"):
        assert kmod.load_kernels() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: later calls are silent
        assert kmod.kernel_status() == "numpy"
        loc, scores, landm, priors = random_outputs(0)
        args = (loc, scores, landm, priors, SLIM.variance, (320, 240), 1.0, 0.02, 0.4)
        assert_same_detections(kmod.postprocess_c(*args), postprocess(*args), exact=True)
        image = np.full((5, 4, 3), 7, np.uint8)
        np.testing.assert_array_equal(kmod.normalize_c(image, SLIM.mean_bgr), normalize(image, SLIM.mean_bgr))
    assert not (tmp_path / "empty").exists() or not any((tmp_path / "empty").iterdir())


def test_second_load_uses_the_cache(kernels, fresh_state):
    path: Path = kernels.path
    mtime = path.stat().st_mtime_ns
    again = kmod.load_kernels()
    assert again is not None and not again.built and again.path == path
    assert path.stat().st_mtime_ns == mtime
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary leftovers
    assert kmod.kernel_status() == "c"


def test_a_cached_load_starts_no_process(kernels, fresh_state):
    """Every runner start loads the kernels: from the cache without running the compiler (a process at
    each start is slow on a Pi, and its timing made instruction counts vary)."""
    def spawned(cmd, *args, **kwargs):
        raise AssertionError(f"started {cmd}")

    fresh_state.setattr(kmod.subprocess, "run", spawned)
    again = kmod.load_kernels()
    assert again is not None and not again.built and again.path == kernels.path


def test_another_compiler_is_another_build(kernels, fresh_state, tmp_path):
    """The cache knows a compiler by its real path, size and modification time (ccache's default
    check): a new compiler binary, or the same one changed, builds anew."""
    wrapper = tmp_path / "cc-wrapper"
    wrapper.write_text(f"#!/bin/sh\nexec {shutil.which(shlex.split(os.environ.get('CC') or 'cc')[0])} \"$@\"\n")
    wrapper.chmod(0o755)
    fresh_state.setenv("CC", str(wrapper))
    first = kmod.load_kernels()
    assert first is not None and first.built and first.path != kernels.path
    os.utime(wrapper, ns=(wrapper.stat().st_atime_ns, wrapper.stat().st_mtime_ns + 10**9))
    kmod._compiled.cache_clear()
    second = kmod.load_kernels()
    assert second is not None and second.built and second.path not in (first.path, kernels.path)


def test_rejected_arch_flag_falls_back_to_plain_build(kernels, fresh_state, tmp_path):
    fresh_state.setenv("FDQ_KERNEL_CACHE", str(tmp_path))
    fresh_state.setattr(kmod, "_arch_flags", lambda: ["-mno-such-cpu-flag=42"])
    loaded = kmod.load_kernels()
    assert loaded is not None and loaded.built
    boxes, scores = random_boxes(0)
    order = score_order(scores)
    np.testing.assert_array_equal(loaded.nms(boxes, scores, 0.4), order[nms(boxes[order], 0.4)])

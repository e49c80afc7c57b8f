"""Levels 3 and 4: GradBoost's noise, StatAssist's optimizer carry-over, the losses, label checks and a
short real QAT run whose int8 detections must overlap the float model's."""
import math
import shutil
import warnings

import numpy as np
import pytest
import torch

from fdq.calibration import quant_api
from fdq.calibration.gradboost import GradBoost, carry_optimizer_state
from fdq.calibration.labels import LabelError, load_labels, subset_ground_truth, training_boxes
from fdq.calibration.losses import distillation_loss, match, multibox_loss, output_match_loss, stack_targets
from fdq.device.anchors import prior_boxes
from fdq.models import SPECS, load_model

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")

DATA = "data/widerface_val_subset"
N = 40000


# ---------------------------------------------------------------- GradBoost
def _boost_setup(decay=0.1, clip=100.0, beta=0.9, seed=0):
    """One parameter of N elements, lr 0 (the optimizer step changes nothing), known gradients."""
    torch.manual_seed(seed)
    p = torch.nn.Parameter(torch.zeros(N))
    opt = GradBoost(torch.optim.SGD([p], lr=0.0), decay=decay, beta=beta, clip=clip,
                    generator=torch.Generator().manual_seed(seed))
    sign = torch.where(torch.rand(N) < 0.5, -1.0, 1.0)
    sign[:1000] = 0.0                                   # zero gradients never get noise
    warm = [torch.rand(N) * 2 + 0.1 for _ in range(3)]
    return p, opt, sign, warm


def _expected_stats(warm, beta):
    lo = hi = warm[0].clone()
    for g in warm[1:]:
        lo, hi = torch.minimum(g, beta * lo + (1 - beta) * g), torch.maximum(g, beta * hi + (1 - beta) * g)
    return lo, hi


def test_gradboost_tracks_min_max_and_adds_no_noise_during_warmup():
    p, opt, sign, warm = _boost_setup()
    for g in warm:
        grad = sign * g
        p.grad = grad.clone()
        opt.step()
        assert torch.equal(p.grad, grad)                # warm-up: gradient untouched
    lo, hi = _expected_stats([(sign * g).abs() for g in warm], 0.9)
    got_lo, got_hi = opt.stats[p]
    torch.testing.assert_close(got_lo, lo)
    torch.testing.assert_close(got_hi, hi)
    assert torch.all(got_hi >= got_lo)


def test_gradboost_noise_follows_its_definition():
    decay, clip = 0.1, 100.0                            # clip large: the bound never bites here
    p, opt, sign, warm = _boost_setup(decay=decay, clip=clip)
    for g in warm:
        p.grad = sign * g
        opt.step()
    lo, hi = opt.stats[p]
    spread = hi - lo
    opt.start_boost()
    nonzero_grad = sign != 0
    for t in range(4):
        grad = sign * (torch.rand(N) + 0.5)
        p.grad = grad.clone()
        opt.step()
        noise = opt.last_noise[p]
        torch.testing.assert_close(p.grad, grad + noise)
        on = noise != 0
        assert not on[~nonzero_grad].any()                            # no gradient, no noise
        assert torch.equal(torch.sign(noise[on]), torch.sign(grad[on]))  # the gradient's sign
        frac = on[nonzero_grad].float().mean().item()
        assert abs(frac - 0.5) < 0.02                                 # Bernoulli(0.5) coin
        assert torch.all(noise.abs() <= clip * hi + 1e-6)
        # |noise| / ((max - min) (1 - decay)^t) is |Laplace(0, 1)| = Exp(1): mean 1, P(> 1) = 1/e.
        ratio = noise[on].abs() / (spread[on] * (1 - decay) ** t)
        assert abs(ratio.mean().item() - 1.0) < 0.05, t
        assert abs((ratio > 1).float().mean().item() - math.exp(-1)) < 0.02, t
    assert opt.t == 4


def test_gradboost_noise_is_clipped_to_the_bound():
    p, opt, sign, warm = _boost_setup(decay=0.0, clip=0.3)
    for g in warm:
        p.grad = sign * g
        opt.step()
    _, hi = opt.stats[p]
    opt.start_boost()
    p.grad = sign * torch.ones(N)
    opt.step()
    noise = opt.last_noise[p].abs()
    bound = 0.3 * hi
    assert torch.all(noise <= bound + 1e-6)
    assert (noise >= bound - 1e-6).float().mean() > 0.05   # the bound is actually reached


# ---------------------------------------------------------------- StatAssist
def test_statassist_carries_momentum_into_fake_quant(shared_dir):
    float_model = load_model("slim", shared_dir / "weights" / "slim_Final.pth")
    quant_api.set_engine("x86")
    fused = quant_api.fuse(float_model, qat=True).train()
    opt = GradBoost(torch.optim.SGD(fused.parameters(), lr=1e-3, momentum=0.9))
    x = torch.randn(2, 3, 64, 64) * 50
    for _ in range(2):
        opt.zero_grad()
        sum(o.pow(2).mean() for o in fused(x)).backward()
        opt.step()
    before = dict(fused.named_parameters())
    buffers = {name: opt.state[p]["momentum_buffer"].clone() for name, p in before.items()}
    stats = {name: opt.stats[p][1].clone() for name, p in before.items()}
    assert all(b.abs().sum() > 0 for b in buffers.values())

    prepared = quant_api.prepare_qat(fused, quant_api.make_qconfig("x86", "moving-minmax", True, qat=True))
    inner = opt.optimizer
    how = carry_optimizer_state(opt, before, prepared)
    assert how in ("same", "remapped")
    assert opt.optimizer is inner                                   # the same optimizer object continues
    now = dict(prepared.named_parameters())
    stepped = [p for g in opt.param_groups for p in g["params"]]
    assert {id(p) for p in stepped} == {id(p) for p in now.values()}   # it steps the prepared model
    # Every old buffer reappears, unchanged, on the prepared parameter that took its place.
    carried = {}
    for name, p in now.items():
        for cand in (name, name.replace(".bn.", ".1."), name.rsplit(".", 1)[0] + ".0." + name.rsplit(".", 1)[1]):
            if cand in buffers and cand not in carried:
                carried[cand] = (opt.state[p]["momentum_buffer"], opt.stats[p][1])
                break
    assert set(carried) == set(buffers)
    for name, (buf, hi) in carried.items():
        assert torch.equal(buf, buffers[name]) and buf.abs().sum() > 0, name
        assert torch.equal(hi, stats[name]), name
    # and training goes on
    prepared.train()
    opt.zero_grad()
    sum(o.pow(2).mean() for o in prepared(x)).backward()
    opt.step()


def test_statassist_same_tensors_need_no_remap():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    assert carry_optimizer_state(opt, dict(model.named_parameters()), model) == "same"


# ---------------------------------------------------------------- losses
def _targets(priors):
    boxes = torch.tensor([[0.10, 0.10, 0.30, 0.35], [0.55, 0.40, 0.90, 0.95]])
    return stack_targets([match(boxes, priors, 0.35)])


def test_multibox_loss_is_zero_for_a_perfect_prediction_and_positive_otherwise():
    priors = torch.from_numpy(np.array(prior_boxes(SPECS["slim"].min_sizes, SPECS["slim"].steps, 160, 160)))
    t = _targets(priors)
    assert 0 < int(t.labels.sum()) < 100
    logits = torch.nn.functional.one_hot(t.labels, 2).float() * 40 - 20
    perfect = multibox_loss(t.loc.clone(), logits, torch.zeros_like(t.landm), t)
    assert perfect["total"].item() < 1e-6
    wrong = multibox_loss(torch.zeros_like(t.loc), -logits, torch.zeros_like(t.landm), t)
    assert wrong["loc"].item() > 0.1 and wrong["conf"].item() > 10
    # no faces: only (mined) negatives count, a confident background costs ~nothing
    empty = stack_targets([match(torch.zeros(0, 4), priors)])
    bg = torch.zeros(1, priors.shape[0], 2)
    bg[..., 0] = 20
    assert multibox_loss(torch.zeros_like(t.loc), bg, torch.zeros_like(t.landm), empty)["total"].item() < 1e-6


def test_match_encodes_boxes_that_decode_back():
    from fdq.device.decode import decode_boxes
    priors = torch.from_numpy(np.array(prior_boxes(SPECS["slim"].min_sizes, SPECS["slim"].steps, 160, 160)))
    t = _targets(priors)
    pos = t.labels[0] > 0
    decoded = decode_boxes(t.loc[0][pos].numpy(), priors[pos].numpy(), (0.1, 0.2))
    boxes = np.array([[0.10, 0.10, 0.30, 0.35], [0.55, 0.40, 0.90, 0.95]], dtype=np.float32)
    assert all(np.abs(decoded[i] - boxes).max(axis=1).min() < 1e-5 for i in range(len(decoded)))


def test_distillation_loss_zero_when_student_equals_teacher():
    torch.manual_seed(0)
    out = (torch.randn(2, 50, 4), torch.randn(2, 50, 2) * 3, torch.randn(2, 50, 10))
    same = distillation_loss(out, out)
    assert same["total"].item() < 1e-6
    other = distillation_loss((out[0] + 1, -out[1], out[2] + 1), out)
    assert other["score"].item() > 0 and other["loc"].item() > 0 and other["landm"].item() > 0



def test_output_match_loss_is_the_report_output_error_on_the_counted_anchors():
    """The L1 term equals the calibration report's out err (mean |face logit| and |box offset| error on the
    anchors the teacher scores >= 0.1), ignores the others and the invalid ones, and pulls every counted
    anchor's logit with the same force."""
    from fdq.calibration.report import face_logit

    torch.manual_seed(0)
    teacher = (torch.randn(1, 6, 4), torch.tensor([[[0.0, 3.0], [0.0, -1.0], [0.0, -5.0], [0.0, 0.5],
                                                    [0.0, 2.0], [0.0, -4.0]]]), torch.randn(1, 6, 10))
    loc = teacher[0] + torch.tensor([0.1, -0.2, 0.3, 0.0])
    logits = (teacher[1] + torch.tensor([0.0, 0.4])).requires_grad_(True)
    valid = torch.tensor([[True, True, True, True, False, True]])
    parts = output_match_loss((loc, logits, teacher[2]), teacher, 0.1, valid)
    keep = [0, 1, 3]                      # face scores 0.95, 0.27, 0.62; anchor 4 is invalid, 2 and 5 are < 0.1
    scores = torch.softmax(teacher[1], -1)[0, :, 1].numpy().astype(np.float64)
    moved = torch.softmax(logits.detach(), -1)[0, :, 1].numpy().astype(np.float64)
    want_logit = np.abs(face_logit(moved[keep]) - face_logit(scores[keep])).mean()
    assert parts["logit"].item() == pytest.approx(want_logit, abs=1e-5)
    assert parts["loc"].item() == pytest.approx(0.15, abs=1e-6)
    parts["total"].backward()
    grad = logits.grad[0, :, 1]
    assert torch.allclose(grad[keep], torch.full((3,), 1 / 3)) and not grad[[2, 4, 5]].any()
    assert output_match_loss(teacher, teacher, 0.1)["total"].item() == 0.0


# ---------------------------------------------------------------- labels
def test_labels_that_describe_other_images_are_refused(shared_dir):
    calib_gt = shared_dir / DATA / "calib" / "ground_truth"
    val_keys = ["0--Parade/0_Parade_Parade_0_125", "3--Riot/3_Riot_Riot_3_318"]
    with pytest.raises(ValueError) as err:
        load_labels(calib_gt, val_keys)
    assert isinstance(err.value, LabelError) and "\n" not in str(err.value) and "no labels" in str(err.value)
    key = "0--Parade/0_Parade_Parade_0_102"
    with pytest.raises(LabelError, match="describe other images"):
        load_labels(calib_gt, [key], {key: (100, 100)})            # boxes far outside a 100x100 image
    boxes = load_labels(calib_gt, [key], {key: (819, 1024)})[key]
    assert boxes.shape[1] == 4 and np.all(boxes[:, 2:] > boxes[:, :2])
    from fdq.device.evaluation import load_ground_truth
    sub = subset_ground_truth(load_ground_truth(calib_gt), [key])
    assert sub.keys == [key] and len(sub.boxes[0]) >= len(boxes)
    # the official text layout gives the same boxes
    txt = load_labels(calib_gt / "wider_face_val_bbx_gt.txt", [key])[key]
    np.testing.assert_allclose(txt, boxes)


def test_training_boxes_drop_invalid_and_tiny_faces():
    xywh = np.array([[10, 10, 20, 30], [5, 5, 0, 10], [1, 1, 1, 1], [50, 50, 10, 10]], dtype=float)
    out = training_boxes(xywh, invalid=np.array([0, 0, 0, 1], bool), min_size=2)
    np.testing.assert_allclose(out, [[10, 10, 30, 40]])


def test_level3_refuses_mismatched_labels_before_training(shared_dir, tmp_path):
    from fdq.calibration.qat import run_level
    src = next((shared_dir / DATA / "calib" / "images").rglob("*.jpg"))
    (tmp_path / src.parent.name).mkdir()
    shutil.copy(src, tmp_path / src.parent.name / src.name)
    model = load_model("slim", shared_dir / "weights" / "slim_Final.pth")
    with pytest.raises(ValueError, match="no labels"):
        run_level(3, "slim", model, str(tmp_path), shared_dir / DATA / "val" / "ground_truth", iters=1)


# ---------------------------------------------------------------- a short real run
def _iou(a, b):
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: (x[:, 2:] - x[:, :2]).prod(-1)
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def test_short_level3_run_gives_an_int8_model_that_agrees_with_float(shared_dir, tmp_path):
    """20 QAT iterations (+5 warm-up) on 4 calib images at long side 160, slim, x86, StatAssist and
    GradBoost on. Tolerance: on a val image at long side 320, at least 90 % of the float model's faces
    with score > 0.5 have an int8 detection (score > 0.3) with IoU >= 0.5."""
    from fdq.calibration.qat import run_level
    from fdq.device.detector import FaceDetector
    from fdq.device.images import read_image
    from fdq.host.torch_inference import torch_inference

    calib = shared_dir / DATA / "calib"
    images = sorted((calib / "images").rglob("*.jpg"))[::8][:4]
    for src in images:
        (tmp_path / src.parent.name).mkdir(exist_ok=True)
        shutil.copy(src, tmp_path / src.parent.name / src.name)
    float_model = load_model("slim", shared_dir / "weights" / "slim_Final.pth")
    reference = {k: v.clone() for k, v in float_model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        int8, report = run_level(3, "slim", float_model, str(tmp_path), calib / "ground_truth", backend="x86",
                                 long_side=160, iters=20, statassist=True, gradboost=True,
                                 warmup_iters=5, eval_every=10)
    assert all(torch.equal(v, reference[k]) for k, v in float_model.state_dict().items())  # float untouched
    assert report["train_images"] == 3 and report["heldout_images"] == 1
    assert report["warmup_iters_done"] == 5 and report["gradboost_boost_steps"] == 20
    assert report["optimizer_carry"] in ("same", "remapped")
    assert [c["iter"] for c in report["checkpoints"]] == [0, 10, 20]
    assert report["best_iter"] in (0, 10, 20) and report["selection"] == "heldout_both"
    # the level-2 checkpoint is replaced only by one at least as good in held-back AP and closer to float
    first, chosen = report["checkpoints"][0], report["best_heldout"]
    assert chosen is first or (chosen["mean"] >= first["mean"] and chosen["distill"] < first["distill"])
    assert all(c["distill"] >= chosen["distill"] for c in report["checkpoints"] if c["mean"] >= first["mean"])
    assert any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in int8.modules())

    image = read_image(shared_dir / DATA / "val" / "images" / "1--Handshaking" / "1_Handshaking_Handshaking_1_579.jpg")
    ref = FaceDetector(torch_inference(float_model), SPECS["slim"], long_side=320).detect(image).above(0.5)
    got = FaceDetector(torch_inference(int8), SPECS["slim"], long_side=320).detect(image).above(0.3)
    assert len(ref) >= 5 and len(got) > 0
    matched = (_iou(ref.boxes, got.boxes).max(axis=1) >= 0.5).mean()
    assert matched >= 0.9, matched


def test_level4_runs_without_labels(shared_dir, tmp_path, capfd):
    """Distillation only (2 + 2 iterations), on trainable ConvBn modules (no CLE) whose BatchNorm
    statistics freeze after one iteration. stderr is no terminal here: no progress line (test_cli
    watches one on a terminal)."""
    from fdq.calibration.qat import run_level

    src = sorted((shared_dir / DATA / "calib" / "images").rglob("*.jpg"))[:3]
    for s in src:
        (tmp_path / s.parent.name).mkdir(exist_ok=True)
        shutil.copy(s, tmp_path / s.parent.name / s.name)
    model = load_model("slim", shared_dir / "weights" / "slim_Final.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        int8, report = run_level(4, "slim", model, str(tmp_path), backend="x86", long_side=128, iters=2,
                                 warmup_iters=2, eval_every=2, holdout=0.34, cle=False, freeze_bn_after=1)
    assert report["level"] == 4 and not report["gt_loss"] and report["selection"] == "heldout_both"
    assert report["heldout_images"] == 1 and len(report["checkpoints"]) == 2
    assert "gt" not in report["loss_last"] and "pseudo" not in report["loss_last"]
    # the float warm-up (student == teacher) learns from the teacher's detections, not from nothing
    assert report["loss_first"]["pseudo"] > 0 and abs(report["loss_first"]["distill"]) < 1e-5
    err = capfd.readouterr().err
    assert "fine-tuning" not in err and "warm-up (StatAssist)" not in err and "\x1b[" not in err, err[-1000:]


@pytest.mark.parametrize("bias_correction,reduce_range", [(False, "none"), (True, "none"), (False, "activations"),
                                                           (False, "weights"), (False, "saturating-weights")])
def test_level3_starts_from_the_level2_model(shared_dir, tmp_path, bias_correction, reduce_range):
    """Checkpoint 0 (no fake-quant step yet) is the level-2 model: CLE, histogram observers calibrated
    on the training images, bias correction and 7-bit activations or weights (``reduce_range``: the
    fake-quant ranges follow the choice, "saturating-weights" in the same convolutions) if asked for, even
    after a StatAssist warm-up, whose weight updates are undone while its optimizer state is kept. Tolerance: the face scores of a val image agree to 1e-4."""
    from fdq.calibration.ptq import PTQOptions, calibrate
    from fdq.calibration.finetune_data import load_samples, make_batch
    from fdq.calibration.qat import run_level
    from fdq.device.images import read_image
    from fdq.device.preprocess import normalize, resize_image

    calib = shared_dir / DATA / "calib"
    for src in sorted((calib / "images").rglob("*.jpg"))[::8][:4]:
        (tmp_path / src.parent.name).mkdir(exist_ok=True)
        shutil.copy(src, tmp_path / src.parent.name / src.name)
    float_model = load_model("slim", shared_dir / "weights" / "slim_Final.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        int8, report = run_level(3, "slim", float_model, str(tmp_path), calib / "ground_truth", backend="x86",
                                 long_side=160, iters=0, warmup_iters=3, bias_correction=bias_correction,
                                 reduce_range=reduce_range)
        assert report["warmup_iters_done"] == 3 and report["best_iter"] == 0
        train, _, _ = load_samples(str(tmp_path), 160, holdout=0.25)
        rng = np.random.default_rng(0)
        inputs = [make_batch([s], SPECS["slim"], rng, flip=False, scale_jitter=0.0)[0] for s in train]
        level2 = calibrate(float_model, PTQOptions(backend="x86", bias_correction=bias_correction,
                                                      reduce_range=reduce_range), inputs).convert()

    image = read_image(shared_dir / DATA / "val" / "images" / "1--Handshaking" / "1_Handshaking_Handshaking_1_579.jpg")
    blob = torch.from_numpy(normalize(resize_image(image, 160)[0], SPECS["slim"].mean_bgr))
    with torch.no_grad():
        got, want = int8(blob)[1], level2(blob)[1]
    assert (got - want).abs().max() < 1e-4
    narrowed = quant_api.narrowed_units(int8)
    assert narrowed == quant_api.narrowed_units(level2) and bool(narrowed) is reduce_range.endswith("weights")


def test_observers_paused_restores_each_observer(shared_dir):
    """Held-back scoring must not calibrate: no observer moves, and each keeps its on/off state."""
    float_model = load_model("slim", shared_dir / "weights" / "slim_Final.pth")
    prepared = quant_api.prepare_qat(quant_api.fuse(float_model),
                                     quant_api.make_qconfig("x86", "moving-minmax", True, qat=True))
    prepared(torch.randn(1, 3, 64, 64) * 50)
    prepared.conv1.apply(torch.ao.quantization.disable_observer)
    before = {k: v.clone() for k, v in prepared.state_dict().items()}
    flags = {n: bool(m.observer_enabled[0]) for n, m in prepared.named_modules() if hasattr(m, "observer_enabled")}
    with quant_api.observers_paused(prepared):
        prepared(torch.randn(1, 3, 64, 64) * 500)
    assert all(torch.equal(v, before[k]) for k, v in prepared.state_dict().items())
    assert flags == {n: bool(m.observer_enabled[0]) for n, m in prepared.named_modules() if hasattr(m, "observer_enabled")}
    assert not all(flags.values()) and any(flags.values())

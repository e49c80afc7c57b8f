"""``fdq train``: WIDER label formats, the reference augmentation's geometry, the training loop (loss goes
down, pretrained AP survives, AMP, DDP under torchrun, Ctrl-C and --resume bit for bit), and its output
folder rules. Real images of the shared WIDER subset, real weights; tiny sizes to keep CPU cost small."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fdq.calibration.labels import LabelError, read_faces
from fdq.calibration.quant_api import SATURATING_CHOICE, int8_products_saturate
from fdq.calibration.widerface_data import (Faces, WiderFaceTraining, augment, crop, has_landmarks,
                                            labelled_images, mirror)
from fdq.device.images import read_image
from fdq.models import SPECS, load_model

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")

DATA = "data/widerface_val_subset"
#: Five landmarks at fixed fractions of each box (left eye, right eye, nose, left / right mouth corner):
#: symmetric, so that a mirrored face with its pairs swapped has the same fractions again.
TEMPLATE = np.array([[0.3, 0.35], [0.7, 0.35], [0.5, 0.55], [0.35, 0.75], [0.65, 0.75]])


def _env(shared_dir):
    return {**os.environ, "FDQ_SHARED": str(shared_dir), "FDQ_WEIGHTS_PATH": str(shared_dir / "weights"),
            "OMP_NUM_THREADS": "1"}


def _fdq(shared_dir, *args, check=True, **kw):
    out = subprocess.run([sys.executable, "-m", "fdq.host.cli", *map(str, args)], capture_output=True, text=True,
                         env=_env(shared_dir), **kw)
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


def _epochs(out: Path) -> list:
    """The training epochs' records of an output's metrics.jsonl (epoch 0 is the starting weights')."""
    return [m for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if m["epoch"] > 0]


def _subset(shared_dir, dest: Path, every: int = 4, limit: int = 8) -> Path:
    """A WIDER-layout folder of a few calib images (copied into the test's tmp folder)."""
    for src in sorted((shared_dir / DATA / "calib" / "images").rglob("*.jpg"))[::every][:limit]:
        (dest / src.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dest / src.parent.name / src.name)
    return dest


def _label_txt(shared_dir, path: Path, landmark_every: int = 2) -> Path:
    """A RetinaFace label.txt of the calib images: the official boxes, and on every ``landmark_every``-th
    face the template landmarks in the 20-value layout (x y w h, 5 x (lx ly flag), score); -1 elsewhere."""
    faces = read_faces(shared_dir / DATA / "calib" / "ground_truth" / "wider_face_val_bbx_gt.txt")
    lines = []
    for key, f in faces.items():
        lines.append(f"# {key}.jpg")
        for i, (x, y, w, h) in enumerate(f.xywh):
            if i % landmark_every == 0 and w > 0 and h > 0:
                pts = [v for px, py in TEMPLATE for v in (x + px * w, y + py * h, 0.0)]
            else:
                pts = [-1.0] * 15
            lines.append(" ".join(f"{v:g}" for v in [x, y, w, h, *pts, 0.9 if pts[0] >= 0 else -1.0]))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------- labels
def test_label_txt_with_landmarks_matches_the_official_boxes(shared_dir, tmp_path):
    gt = shared_dir / DATA / "calib" / "ground_truth"
    official = read_faces(gt / "wider_face_val_bbx_gt.txt")
    mat = read_faces(gt)
    retina = read_faces(_label_txt(shared_dir, tmp_path / "label.txt"))
    assert set(official) == set(retina) == set(mat) and len(official) == 32
    for key in official:
        np.testing.assert_allclose(retina[key].xywh, official[key].xywh, atol=1e-3)
        np.testing.assert_allclose(mat[key].xywh, official[key].xywh)
        np.testing.assert_array_equal(mat[key].invalid, official[key].invalid)
        with_points = has_landmarks(retina[key].landmarks)
        assert with_points[::2].all() or not (official[key].xywh[::2, 2:] > 0).all()
        assert not with_points[1::2].any()
        assert not has_landmarks(official[key].landmarks).any()       # the official files have none
    assert sum(f.invalid.sum() for f in official.values()) == 8        # the README's invalid faces


@pytest.mark.parametrize("layout", ["bbx", "retina"])
def test_a_corrupt_label_line_is_one_error_naming_file_and_line(shared_dir, tmp_path, layout):
    src = shared_dir / DATA / "calib" / "ground_truth" / "wider_face_val_bbx_gt.txt"
    lines = (src.read_text().splitlines() if layout == "bbx" else
             _label_txt(shared_dir, tmp_path / "ok.txt").read_text().splitlines())
    lines[4] = "12 34 abc 56"
    bad = tmp_path / ("bad_bbx_gt.txt" if layout == "bbx" else "label.txt")
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(LabelError) as err:
        read_faces(bad)
    msg = str(err.value)
    assert "\n" not in msg and str(bad) in msg and "line 5" in msg
    # the command: one error line, exit 1, no output folder
    images = _subset(shared_dir, tmp_path / "images", limit=2)
    out = _fdq(shared_dir, "train", "--model", "slim", "--images", images, "--labels", bad, "--out",
               tmp_path / "run", check=False)
    assert out.returncode == 1 and out.stderr.strip().count("\n") == 0, out.stderr
    assert out.stderr.startswith("fdq: error: corrupt labels") and "line 5" in out.stderr
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- augmentation geometry
def _faces_of(shared_dir, tmp_path):
    labels = _label_txt(shared_dir, tmp_path / "label.txt", landmark_every=1)
    return labelled_images(str(shared_dir / DATA / "calib" / "images"), labels)


def _template_error(faces: Faces) -> float:
    """Largest deviation of the landmarks from the template fractions of their boxes."""
    pts = faces.landmarks.reshape(-1, 5, 2)
    wh = faces.boxes[:, None, 2:] - faces.boxes[:, None, :2]
    frac = (pts - faces.boxes[:, None, :2]) / wh
    return float(np.abs(frac - TEMPLATE[None]).max()) if len(pts) else 0.0


def test_crop_keeps_faces_by_centre_and_their_pixels(shared_dir, tmp_path):
    items = _faces_of(shared_dir, tmp_path)[:6]
    for n, item in enumerate(items):
        image = read_image(item.path)
        faces = item.faces.subset(item.faces.used)
        out, kept, roi = crop(image, faces, np.random.default_rng(n))
        assert roi is not None and out.shape[0] == out.shape[1] == roi[2] - roi[0] == roi[3] - roi[1]
        centres = (faces.boxes[:, :2] + faces.boxes[:, 2:]) / 2
        inside = ((centres > roi[:2]) & (centres < roi[2:])).all(axis=1)
        assert inside.sum() == len(kept.boxes) > 0                  # exactly the faces centred inside
        np.testing.assert_allclose(kept.boxes, np.clip(faces.boxes[inside], np.tile(roi[:2], 2),
                                                       np.tile(roi[2:], 2)) - np.tile(roi[:2], 2))
        whole = ((faces.boxes[inside, :2] >= roi[:2]) & (faces.boxes[inside, 2:] <= roi[2:])).all(axis=1)
        assert whole.any()                                            # at least one face wholly inside
        ox, oy = roi[:2].astype(int)
        for box in kept.boxes[whole].astype(int):
            x1, y1, x2, y2 = box
            np.testing.assert_array_equal(out[y1:y2, x1:x2], image[y1 + oy:y2 + oy, x1 + ox:x2 + ox])
        assert _template_error(kept.subset(whole)) < 1e-4


def test_mirror_flips_pixels_boxes_and_swaps_landmark_pairs(shared_dir, tmp_path):
    item = _faces_of(shared_dir, tmp_path)[0]
    image = read_image(item.path)
    faces = item.faces.subset(item.faces.used)
    rng = np.random.default_rng(0)
    while True:   # draw until the coin says "flip"
        state = rng.bit_generator.state
        flipped, moved = mirror(image, faces, rng)
        if flipped is not image:
            break
    assert flipped.shape == image.shape
    np.testing.assert_array_equal(flipped, image[:, ::-1])
    width = image.shape[1]
    np.testing.assert_allclose(moved.boxes[:, [0, 2]], width - faces.boxes[:, [2, 0]])
    np.testing.assert_allclose(moved.boxes[:, [1, 3]], faces.boxes[:, [1, 3]])
    pts, src = moved.landmarks.reshape(-1, 5, 2), faces.landmarks.reshape(-1, 5, 2)
    np.testing.assert_allclose(pts[:, 0, 0], width - src[:, 1, 0], rtol=1e-6)   # left eye <- right eye
    np.testing.assert_allclose(pts[:, 3, 0], width - src[:, 4, 0], rtol=1e-6)   # mouth corners swapped
    np.testing.assert_allclose(pts[:, 2, 0], width - src[:, 2, 0], rtol=1e-6)   # the nose stays the nose
    assert (pts[:, 0, 0] < pts[:, 1, 0]).all()           # the left eye is still left of the right one
    assert _template_error(moved) < 1e-4
    rng.bit_generator.state = state
    assert mirror(image, faces, rng)[0] is not image     # the same generator state, the same decision


def test_augment_is_deterministic_and_geometry_stays_consistent(shared_dir, tmp_path):
    items = _faces_of(shared_dir, tmp_path)
    ds = WiderFaceTraining(items, SPECS["slim"], 160, seed=3)
    differ = 0
    for i in range(len(items)):
        image, faces = ds.sample(i)
        again, faces2 = ds.sample(i)
        np.testing.assert_array_equal(image, again)
        np.testing.assert_array_equal(faces.boxes, faces2.boxes)
        assert image.shape == (160, 160, 3) and image.dtype == np.float32
        assert (faces.boxes >= -1e-3).all() and (faces.boxes <= 160 + 1e-3).all()
        pts = faces.landmarks[has_landmarks(faces.landmarks)]
        assert (pts >= 0).all() and (pts <= 160 + 1e-3).all()
        whole = (faces.boxes[:, 2:] - faces.boxes[:, :2]).min(axis=1) > 4
        full = faces.subset(whole & has_landmarks(faces.landmarks))
        # faces not clipped by the crop keep their landmarks at the template fractions (mirrored or not)
        unclipped = full.subset(((full.boxes > 0.5) & (full.boxes < 159.5)).all(axis=1))
        assert _template_error(unclipped) < 1e-3
        assert (unclipped.landmarks[:, 0] < unclipped.landmarks[:, 2]).all()   # left eye left of right eye
        differ += int(not np.array_equal(ds.sample(i)[0], WiderFaceTraining(items, SPECS["slim"], 160, seed=4)
                                        .sample(i)[0]))
    assert differ == len(items)                            # another seed, other samples
    ds.set_epoch(1)
    assert not np.array_equal(ds.sample(0)[0], WiderFaceTraining(items, SPECS["slim"], 160, seed=3).sample(0)[0])
    plain, faces = augment(read_image(items[0].path), items[0].faces, 160, SPECS["slim"].mean_bgr, None)
    scale = 160 / max(read_image(items[0].path).shape[:2])
    np.testing.assert_allclose(faces.boxes, items[0].faces.boxes * scale, rtol=1e-5)


def test_ignored_faces_take_part_in_no_loss(shared_dir, tmp_path):
    items = labelled_images(str(_subset(shared_dir, tmp_path / "images", limit=4)),
                            shared_dir / DATA / "calib" / "ground_truth")
    counted = WiderFaceTraining(items, SPECS["slim"], 320, augment=False, min_face=0)
    ignored = WiderFaceTraining(items, SPECS["slim"], 320, augment=False, min_face=10_000)
    with_faces = 0
    for i in range(len(items)):
        a, b = counted[i], ignored[i]
        assert int(b["labels"].sum()) == 0                              # no positives ...
        if int(a["labels"].sum()) == 0:
            continue
        with_faces += 1
        assert torch.equal(~b["valid"], a["labels"] > 0)              # ... and their anchors no negatives
    assert with_faces >= 2
    # the invalid faces of the official labels (3 tiny ones here) are ignored, not background (full size: the 6x8 one reaches an anchor)
    flagged = [it for it in labelled_images(str(shared_dir / DATA / "calib" / "images"),
                                            shared_dir / DATA / "calib" / "ground_truth")
               if it.key == "0--Parade/0_Parade_Parade_0_814"]
    assert (~flagged[0].faces.used).sum() == 3
    sample = WiderFaceTraining(flagged, SPECS["slim"], 1024, augment=False, min_face=0)[0]
    assert int((~sample["valid"]).sum()) >= 1 and not bool((~sample["valid"] & (sample["labels"] > 0)).any())


def test_landmarks_become_targets_only_where_present(shared_dir, tmp_path):
    labels = _label_txt(shared_dir, tmp_path / "label.txt", landmark_every=2)
    items = [it for it in labelled_images(str(shared_dir / DATA / "calib" / "images"), labels)][:4]
    ds = WiderFaceTraining(items, SPECS["slim"], 320, augment=False)
    pos = torch.stack([ds[i]["labels"] > 0 for i in range(len(ds))])
    with_points = torch.stack([ds[i]["landm_valid"] for i in range(len(ds))])
    assert with_points.any() and (with_points <= pos).all() and (with_points != pos).any()
    free = WiderFaceTraining(labelled_images(str(shared_dir / DATA / "calib" / "images"),
                                             shared_dir / DATA / "calib" / "ground_truth")[:4],
                             SPECS["slim"], 320, augment=False)
    assert sum(int(free[i]["labels"].sum()) for i in range(4)) > 0
    assert not any(bool(free[i]["landm_valid"].any()) for i in range(4))


# ---------------------------------------------------------------- the loop
def _loss_on(model, ds):
    from fdq.calibration.qat import logits_mode
    from fdq.calibration.training import detection_loss

    batch = {k: torch.stack([ds[i][k] for i in range(len(ds))]) for k in ds[0]}
    with torch.no_grad():
        out = logits_mode(model)(batch["image"])
    return float(detection_loss(batch)(out)["total"])


def test_a_few_iterations_lower_the_loss(shared_dir, tmp_path):
    """6 SGD steps on 8 calib images (unaugmented, 128 px) from the pretrained slim weights lower the
    multibox loss on those images by at least 5 %."""
    from fdq.calibration.training import Distributed, FitConfig, detection_loss, fit

    items = labelled_images(str(_subset(shared_dir, tmp_path / "images", every=4, limit=8)),
                            shared_dir / DATA / "calib" / "ground_truth")
    ds = WiderFaceTraining(items, SPECS["slim"], 128, augment=False)
    model = load_model("slim", shared_dir / "weights" / "slim_Final.pth")
    before = _loss_on(model, ds)
    opt = torch.optim.SGD(model.parameters(), lr=2e-3, momentum=0.9)
    out = tmp_path / "run"
    out.mkdir()
    result = fit(model, ds, detection_loss, opt, FitConfig(epochs=3, batch_size=4, workers=0, warmup_epochs=0),
                 Distributed(0, 1, torch.device("cpu")), out, progress=False)
    after = _loss_on(model, ds)
    assert result.steps == 6 and after < 0.95 * before, (before, after)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3] and all({"loss", "loc", "conf", "landm", "lr"} <= set(m)
                                                           for m in lines)


def test_steps_end_the_run_inside_an_epoch(shared_dir, tmp_path):
    """``steps`` (fdq quantize's --iters) cuts the last epoch short; the constant schedule keeps the lr;
    without ``out`` nothing is written (4 images at 64 px, batch 2: two steps an epoch, 3 steps)."""
    from fdq.calibration.training import Distributed, FitConfig, detection_loss, fit

    items = labelled_images(str(_subset(shared_dir, tmp_path / "images", every=8, limit=4)),
                            shared_dir / DATA / "calib" / "ground_truth")
    ds = WiderFaceTraining(items, SPECS["slim"], 64, augment=False)
    model = load_model("slim", shared_dir / "weights" / "slim_Final.pth")
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    seen = []
    before = sorted(p.name for p in tmp_path.iterdir())
    result = fit(model, ds, detection_loss, opt, FitConfig(epochs=50, batch_size=2, workers=0, warmup_epochs=0,
                                                          schedule="constant", steps=3),
                 Distributed(0, 1, torch.device("cpu")), None, on_step=seen.append, progress=False)
    assert result.steps == 3 and result.epochs_done == 2 and seen == [0, 1, 2]
    assert [m["step"] for m in result.metrics] == [2, 3] and all(m["lr"] == 1e-3 for m in result.metrics)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_training_from_pretrained_keeps_val_ap(shared_dir, tmp_path):
    """2 epochs on the 32 calib images at 160 px (lr 1e-4) from the pretrained weights: val AP at long side
    160 (64 images) stays within 2 points of the pretrained model's in every setting; best.pt and last.pt
    load with fdq.models.load_model and `fdq eval --weights` takes them."""
    d = shared_dir / DATA
    out = tmp_path / "run"
    _fdq(shared_dir, "train", "--model", "slim", "--images", d / "calib" / "images", "--labels",
         d / "calib" / "ground_truth", "--val-images", d / "val" / "images", "--val-gt", d / "val" / "ground_truth",
         "--epochs", 2, "--batch-size", 8, "--size", 160, "--lr", 1e-4, "--warmup-epochs", 0, "--workers", 1,
         "--out", out)
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    _fdq(shared_dir, "eval", "--model", "slim", "--images", d / "val" / "images", "--gt",
         d / "val" / "ground_truth", "--long-side", 160, "--json", tmp_path / "base.json")
    reference = json.loads((tmp_path / "base.json").read_text())
    ap = reference.get("ap", reference)
    for m in metrics:
        for s in ("easy", "medium", "hard"):
            assert m["val"][s] >= float(ap[s]) - 0.02, (s, m["val"], ap)
    best = max(metrics, key=lambda m: m["val"]["mean"])
    assert best["best"] and sum(m["best"] for m in metrics) >= 1
    for name in ("last.pt", "best.pt"):
        load_model("slim", out / name)
    _fdq(shared_dir, "eval", "--model", "slim", "--weights", out / "best.pt", "--images", d / "val" / "images",
         "--gt", d / "val" / "ground_truth", "--long-side", 160, "--json", tmp_path / "best.json")
    got = json.loads((tmp_path / "best.json").read_text())
    got = got.get("ap", got)
    assert abs(float(got["easy"]) - best["val"]["easy"]) < 1e-6
    cmd = json.loads((out / "command.json").read_text())
    assert cmd["settings"]["epochs"] == 2 and "--val-images" in cmd["argv"]


def test_amp_on_cpu_runs_and_its_loss_stays_close(shared_dir, tmp_path):
    """bfloat16 autocast: one epoch on 8 images at 128 px; its mean loss is within 5 % of float32's."""
    images = _subset(shared_dir, tmp_path / "images", limit=8)
    losses = {}
    for amp in (False, True):
        out = tmp_path / f"run{int(amp)}"
        _fdq(shared_dir, "train", "--model", "slim", "--images", images, "--labels",
             shared_dir / DATA / "calib" / "ground_truth", "--epochs", 1, "--batch-size", 4, "--size", 128,
             "--workers", 0, *(["--amp"] if amp else []), "--out", out)
        m = _epochs(out)[0]
        assert m["amp"] is amp
        losses[amp] = m["loss"]
    assert losses[True] != losses[False]
    assert abs(losses[True] - losses[False]) <= 0.05 * losses[False], losses


def test_ddp_two_processes_through_torchrun(shared_dir, tmp_path):
    """torchrun, 2 CPU processes (gloo), one epoch on 8 images: every rank ends with identical weights
    (sha256 of every parameter, gathered from both ranks), rank 0 alone writes the folder."""
    images = _subset(shared_dir, tmp_path / "images", limit=8)
    out = tmp_path / "run"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "fdq.host.train", "--model", "slim", "--images", str(images), "--labels",
                          str(shared_dir / DATA / "calib" / "ground_truth"), "--epochs", "1", "--batch-size", "2",
                          "--size", "128", "--workers", "1", "--holdout", "0", "--out", str(out)],
                         capture_output=True, text=True, env=_env(shared_dir), timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    m = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert m["world_size"] == 2 and m["replicas_identical"] is True
    assert m["step"] == 2 and m["images"] == 8            # each rank saw half of the images per step
    assert run.stdout.count("wrote") == 1
    load_model("slim", out / "last.pt")


def test_ctrl_c_saves_a_checkpoint_and_resume_is_bit_for_bit(shared_dir, tmp_path):
    """3 epochs of 3 steps (2 of the 8 images held back); SIGINT during epoch 2 exits 130 with a mid-epoch
    checkpoint; --resume then ends with exactly the weights, epoch losses and held-back losses of the run
    that was never interrupted."""
    images = _subset(shared_dir, tmp_path / "images", limit=8)
    args = ["train", "--model", "slim", "--images", images, "--labels", shared_dir / DATA / "calib" / "ground_truth",
            "--epochs", 3, "--batch-size", 2, "--size", 128, "--workers", 1]
    _fdq(shared_dir, *args, "--out", tmp_path / "straight")
    out = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-m", "fdq.host.cli", *map(str, args), "--out", str(out)],
                            env=_env(shared_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not ((out / "metrics.jsonl").exists() and _epochs(out)) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)  # epoch 1 is done (epoch 0, the starting weights' held-back loss, comes first)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert "resumable checkpoint" in err and "--resume" in err
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert 3 <= state["step"] < 9, state["step"]  # 6 training images (2 held back), batch 2: 3 steps an epoch
    again = _fdq(shared_dir, "train", "--resume", out, "--epochs", 3)
    assert "wrote" in again.stdout
    a, b = torch.load(tmp_path / "straight" / "last.pt"), torch.load(out / "last.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la, lb = _epochs(tmp_path / "straight"), _epochs(out)
    assert [m["loss"] for m in la] == [m["loss"] for m in lb] and len(la) == 3
    assert [m["val"] for m in la] == [m["val"] for m in lb]  # the held-back loss too
    # a resumed run keeps its settings: other options are refused in one line
    bad = _fdq(shared_dir, "train", "--resume", out, "--lr", 0.1, check=False)
    assert bad.returncode == 1 and "--lr" in bad.stderr and bad.stderr.count("\n") == 1


def test_out_never_replaces_a_users_folder(shared_dir, tmp_path):
    images = _subset(shared_dir, tmp_path / "images", limit=2)
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    base = ["train", "--model", "slim", "--images", images, "--labels", shared_dir / DATA / "calib" / "ground_truth",
            "--epochs", 1, "--batch-size", 2, "--size", 64, "--workers", 0]
    for extra in ([], ["--force"]):
        r = _fdq(shared_dir, *base, "--out", user, *extra, check=False)
        assert r.returncode == 1 and "not written by fdq" in r.stderr and r.stderr.count("\n") == 1
    assert (user / "notes.txt").read_text() == "keep me" and len(list(user.iterdir())) == 1
    run = tmp_path / "run"
    _fdq(shared_dir, *base, "--out", run)
    r = _fdq(shared_dir, *base, "--out", run, check=False)
    assert r.returncode == 1 and "--force" in r.stderr
    first = (run / "last.pt").stat().st_mtime_ns
    _fdq(shared_dir, *base, "--out", run, "--force")
    assert (run / "last.pt").stat().st_mtime_ns != first
    bad = _fdq(shared_dir, "train", "--model", "slim", "--images", images, "--out", tmp_path / "x", check=False)
    assert bad.returncode == 1 and "--labels" in bad.stderr and not (tmp_path / "x").exists()


@pytest.mark.parametrize("labelled", [True, False])
def test_qat_through_the_training_loop_writes_an_int8_bundle(shared_dir, tmp_path, labelled):
    """--qat --statassist --gradboost --distill, 1 epoch on 4 images at 96 px: with labels level 3,
    without level 4 (the float warm-up learns from the teacher's detections); the labelled run with
    7-bit activations (--reduce-range), the unlabelled one with fdq's choice (7-bit weights in the
    convolutions whose x86 kernel saturates 8-bit int8 on this machine). The bundle loads through the device loader and carries the report; the StatAssist optimizer
    state was carried over."""
    from fdq.device.bundle import load_bundle

    images = _subset(shared_dir, tmp_path / "images", limit=4)
    out = tmp_path / "run"
    labels = ["--labels", shared_dir / DATA / "calib" / "ground_truth"] if labelled else []
    _fdq(shared_dir, "train", "--model", "slim", "--images", images, *labels, "--qat", "--backend", "x86",
         "--statassist", "--gradboost", "--distill", "--warmup-iters", 2, "--epochs", 1, "--batch-size", 2,
         "--size", 96, "--workers", 0, "--observer", "moving-minmax", *(["--reduce-range"] if labelled else []),
         "--out", out)
    bundle = load_bundle(out / "bundle")
    manifest = bundle.manifest
    assert manifest["backend"] == {"engine": "x86", "dtype": "int8"}
    assert manifest["quantization"]["level"] == (3 if labelled else 4)
    saturates = int8_products_saturate("x86")  # this machine's x86 kernels, probed (test_calibration checks it)
    chosen = "activations" if labelled else SATURATING_CHOICE if saturates else "none"
    assert manifest["quantization"]["reduce_range"] == chosen
    # the 7-bit weight convolutions by name: fake-quant ranges followed the probe
    assert bool(manifest["quantization"].get("reduce_range_units")) is (chosen == "saturating-weights")
    assert manifest["quantization"]["reduce_range_reason"].startswith(
        "--reduce-range given" if labelled else "this machine's x86 int8 kernels saturate" if saturates else
        "this machine's x86 int8 kernels do not saturate")
    # The input's int8 grid: codes up to 127 reach the brightest pixels only with 7-bit activations (with
    # 8 bits, code 127 sits near the middle of the mean-subtracted range, [-123, 151], below 14).
    grid = manifest["input"]["quantized"]
    assert ((127 - grid["zero_point"]) * grid["scale"] > 60) is (chosen == "activations")
    report = json.loads((out / "bundle" / "report.json").read_text())
    training = report["training"]
    assert training["warmup_iters_done"] == 2 and training["optimizer_carry"] in ("same", "remapped")
    assert training["steps"] == 2 and training["gt_loss"] is labelled
    assert report["calibration_report"]["in_sample"] and "output_error" in report["calibration_report"]
    m = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert m["distill"] > 0 and (("gt" in m) is labelled)


@pytest.mark.parametrize("options, message", [
    (["--reduce-range"], "--reduce-range applies to --qat"),
    (["--reduce-range", "weights"], "--reduce-range applies to --qat"),
    (["--qat", "--backend", "qnnpack", "--reduce-range", "weights"], "--reduce-range is an x86/fbgemm workaround"),
    (["--qat", "--backend", "qnnpack", "--reduce-range"], "--reduce-range is an x86/fbgemm workaround"),
])
def test_qat_options_are_checked_before_any_work(shared_dir, tmp_path, options, message):
    out = tmp_path / "run"
    done = _fdq(shared_dir, "train", "--model", "slim", "--images", shared_dir / DATA / "calib" / "images",
                "--labels", shared_dir / DATA / "calib" / "ground_truth", *options, "--out", out, check=False)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1 and lines[0].startswith("fdq: error: ") and message in lines[0]
    assert not out.exists()


def test_a_fine_tune_never_ends_worse_than_it_started(shared_dir, tmp_path):
    """From the pretrained weights with a learning rate that wrecks them (0.05, 2 epochs on 8 images at
    128 px), without --val-images: a quarter of the images is held back, the starting weights are best.pt's
    first candidate, and best.pt's loss on those images is no worse than the starting weights' (here it is
    them, while last.pt is worse). The defaults are the fine-tuning ones: lr 1e-4, BatchNorm statistics frozen."""
    from fdq.calibration.finetune_data import held_indices
    from fdq.host.train import FINETUNE_LR

    images = _subset(shared_dir, tmp_path / "images", limit=8)
    gt = shared_dir / DATA / "calib" / "ground_truth"
    out = tmp_path / "run"
    done = _fdq(shared_dir, "train", "--model", "slim", "--images", images, "--labels", gt, "--epochs", 2,
                "--batch-size", 2, "--size", 128, "--workers", 0, "--lr", 0.05, "--warmup-epochs", 0, "--out", out)
    assert "6 training images, 2 held back" in done.stderr
    items = labelled_images(str(images), gt)
    held = WiderFaceTraining([items[i] for i in sorted(held_indices(len(items), 0.25))], SPECS["slim"], 128,
                             augment=False)
    start = _loss_on(load_model("slim", shared_dir / "weights" / "slim_Final.pth"), held)
    best, last = (_loss_on(load_model("slim", out / name), held) for name in ("best.pt", "last.pt"))
    assert best <= start and not last <= start, (best, start, last)  # last.pt is worse (or diverged: nan)
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["epoch"] == 0 and metrics[0]["best"] and metrics[0]["val"]["heldback_images"] == 2
    assert abs(metrics[0]["val"]["heldback_loss"] - start) < 1e-4 * start
    default = _fdq(shared_dir, "train", "--model", "slim", "--images", images, "--labels", gt, "--epochs", 1,
                   "--batch-size", 4, "--size", 64, "--workers", 0, "--out", tmp_path / "default")
    assert "held back" in default.stderr
    settings = json.loads((tmp_path / "default" / "command.json").read_text())["settings"]
    assert settings["lr"] == FINETUNE_LR and settings["holdout"] == 0.25 and settings["freeze_bn"] is True

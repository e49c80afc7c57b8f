"""WIDER FACE evaluation: hand-computed APs and equality with a loop transcription of the reference."""
import json
import time
import warnings

import numpy as np
import pytest

from fdq.device.evaluation import (
    SETTINGS,
    EvaluationError,
    GroundTruth,
    evaluate,
    load_ground_truth,
    read_prediction_dir,
    save_ground_truth_json,
    to_wider_rows,
    write_prediction_file,
)

import widerface_reference as ref


# ---------------------------------------------------------------- helpers


def make_gt(images):
    """GroundTruth from [(key, boxes xywh, easy, medium, hard)]; a setting of None means all boxes."""
    keys, boxes, keep = [], [], {s: [] for s in SETTINGS}
    for key, b, *settings in images:
        keys.append(key)
        boxes.append(np.asarray(b, dtype=np.float64).reshape(-1, 4))
        for s, idx in zip(SETTINGS, settings):
            keep[s].append(np.arange(1, len(boxes[-1]) + 1) if idx is None else np.asarray(idx, dtype=np.int64))
    return GroundTruth(keys=keys, boxes=boxes, **keep)


def rows(*r):
    return np.asarray(r, dtype=np.float64).reshape(-1, 5)


def nested(preds):
    """{"EVENT/NAME": rows} -> the reference's {event: {name: rows}} (copies: it normalises in place)."""
    out = {}
    for key, v in preds.items():
        event, name = key.split("/")
        out.setdefault(event, {})[name] = np.array(v, dtype=np.float64)
    return out


def oracle(preds, gt_dir, iou=0.5):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        aps, curves = ref.evaluation_from_preds(nested(preds), str(gt_dir), iou_thresh=iou)
    return aps, curves


def random_predictions(gt, seed, fp_max=30, quantise=False, score_range=(0.0, 1.0)):
    """Jittered gt boxes (some dropped) plus random false positives, shuffled, as WIDER rows."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, b in zip(gt.keys, gt.boxes):
        if rng.random() < 0.05:
            out[key] = np.zeros((0, 5))
            continue
        keep = b[rng.random(len(b)) < 0.8]
        size = np.maximum(keep[:, 2:4], 1.0)
        xy1 = keep[:, :2] + rng.normal(0.0, 0.12, keep[:, :2].shape) * size
        xy2 = xy1 + size * np.exp(rng.normal(0.0, 0.15, keep[:, 2:4].shape))
        dup = rng.random(len(keep)) < 0.15  # duplicate detections of the same face
        tp = np.vstack([np.hstack([xy1, xy2]), np.hstack([xy1[dup] + 1.5, xy2[dup] - 1.0])])
        n_fp = int(rng.integers(0, fp_max + 1))
        fxy = rng.uniform(0, 1000, (n_fp, 2))
        fp = np.hstack([fxy, fxy + rng.uniform(4, 200, (n_fp, 2))])
        boxes = np.vstack([tp, fp]).astype(np.float32)
        boxes = boxes[rng.permutation(len(boxes))]
        scores = rng.uniform(*score_range, len(boxes)).astype(np.float32)
        if quantise:  # many ties, and normalised scores that land exactly on thresholds
            scores = (np.round(scores * 50) / 50).astype(np.float32)
        out[key] = to_wider_rows(boxes, scores)
    return out


@pytest.fixture(scope="module")
def subset_gt_dir(shared_dir):
    path = shared_dir / "data" / "widerface_val_subset" / "val" / "ground_truth"
    if not path.is_dir():
        pytest.skip(f"WIDER FACE val subset not found at {path}")
    return path


@pytest.fixture(scope="module")
def subset_gt(subset_gt_dir):
    return load_ground_truth(subset_gt_dir)


# ---------------------------------------------------------------- hand-computed cases


def test_perfect_detections_are_ap_one():
    gt = make_gt([("0--Parade/a", [[10, 10, 20, 20]], None, None, None), ("0--Parade/b", [[5, 5, 9, 9]], None, None, None)])
    res = evaluate({"0--Parade/a": rows([10, 10, 20, 20, 0.9]), "0--Parade/b": rows([5, 5, 9, 9, 0.4])}, gt)
    assert res["easy"] == res["medium"] == res["hard"] == 1.0
    assert res["images"] == 2 and res["missing_images"] == 0


def test_a_single_distinct_score_gives_ap_zero_like_the_reference():
    # min-max normalisation divides by max - min = 0: every score becomes nan and passes no threshold.
    gt = make_gt([("e/a", [[10, 10, 20, 20]], None, None, None)])
    assert evaluate({"e/a": rows([10, 10, 20, 20, 0.9])}, gt)["easy"] == 0.0
    # A detection outside the ground truth still takes part in the normalisation (as in the reference).
    assert evaluate({"e/a": rows([10, 10, 20, 20, 0.9]), "e/other": rows([0, 0, 5, 5, 0.1])}, gt)["easy"] == 1.0


def test_one_of_two_faces_found_is_ap_half():
    gt = make_gt([("e/a", [[10, 10, 20, 20], [100, 100, 20, 20]], None, None, None)])
    res = evaluate({"e/a": rows([10, 10, 20, 20, 0.9], [300, 300, 5, 5, 0.0])}, gt)
    assert res["hard"] == pytest.approx(0.5, abs=1e-12)


def test_false_positive_ranked_first_halves_ap():
    # FP at normalised score 1, TP at 0: only the last threshold (0.0) reaches recall 1 with precision 1/2.
    gt = make_gt([("e/a", [[10, 10, 20, 20]], None, None, None)])
    res = evaluate({"e/a": rows([300, 300, 20, 20, 1.0], [10, 10, 20, 20, 0.0])}, gt)
    assert res["easy"] == pytest.approx(0.5, abs=1e-12)
    assert res["curves"]["easy"]["precision"][0] == 0.0
    assert res["curves"]["easy"]["precision"][-1] == 0.5


def test_duplicate_detection_counts_as_false_positive():
    # A (1.0) finds face 1, B (0.5) is a duplicate of face 1, C (0.0) finds face 2.
    # Recall 0.5 with precision 1, then recall 1 with precision 2/3 -> AP = 0.5 + 0.5 * 2/3.
    gt = make_gt([("e/a", [[10, 10, 20, 20], [100, 100, 20, 20]], None, None, None)])
    a, b, c = [10, 10, 20, 20, 1.0], [11, 10, 20, 20, 0.5], [100, 100, 20, 20, 0.0]
    assert evaluate({"e/a": rows(a, b, c)}, gt)["hard"] == pytest.approx(0.5 + 1 / 3, abs=1e-12)
    assert evaluate({"e/a": rows(a, c)}, gt)["hard"] == 1.0


def test_detection_of_ignored_face_is_not_a_false_positive():
    # Face 2 counts only in "hard". Its detection has the highest score: in easy/medium it is
    # neither TP nor FP (precision 0/0 = nan at the top thresholds, as in the reference).
    gt = make_gt([("e/a", [[10, 10, 20, 20], [100, 100, 20, 20]], [1], [1], [1, 2])])
    preds = {"e/a": rows([100, 100, 20, 20, 1.0], [10, 10, 20, 20, 0.0])}
    res = evaluate(preds, gt)
    assert res["easy"] == 1.0 and res["medium"] == 1.0
    assert np.isnan(res["curves"]["easy"]["precision"][0])
    assert res["hard"] == 1.0
    # The same detection where the face is not annotated at all is a false positive.
    gt_fp = make_gt([("e/a", [[10, 10, 20, 20]], None, None, None)])
    assert evaluate(preds, gt_fp)["easy"] == pytest.approx(0.5, abs=1e-12)


def test_iou_uses_plus_one_pixel_areas():
    # gt x2 = 3, y2 = 1 -> area 4 * 2 = 8; pred x2 = y2 = 1 -> area 4; overlap 4 -> IoU 4 / 8 = 0.5
    # (without +1 it would be 1 / 3 and miss the 0.5 threshold).
    gt = make_gt([("e/a", [[0, 0, 3, 1]], None, None, None)])
    preds = {"e/a": rows([0, 0, 1, 1, 0.7]), "e/other": rows([0, 0, 1, 1, 0.1])}
    assert evaluate(preds, gt)["easy"] == 1.0
    assert evaluate(preds, gt, iou_threshold=0.51)["easy"] == 0.0


def test_missing_image_counts_as_no_detections_and_input_is_not_modified():
    gt = make_gt([("e/a", [[10, 10, 20, 20]], None, None, None), ("e/b", [[10, 10, 20, 20]], None, None, None)])
    preds = {"e/a": rows([10, 10, 20, 20, 0.3], [50, 50, 5, 5, 0.2])}
    before = preds["e/a"].copy()
    res = evaluate(preds, gt)
    assert res["easy"] == pytest.approx(0.5, abs=1e-12)
    assert res["images"] == 2 and res["missing_images"] == 1
    assert np.array_equal(preds["e/a"], before)


def test_result_shape():
    gt = make_gt([("e/a", [[10, 10, 20, 20]], None, None, None)])
    res = evaluate({"e/a": rows([10, 10, 20, 20, 0.9])}, gt, thresh_num=10)
    for s in SETTINGS:
        assert isinstance(res[s], float)
        assert len(res["curves"][s]["precision"]) == len(res["curves"][s]["recall"]) == 10


def test_to_wider_rows_truncates_corners_toward_zero():
    boxes = np.array([[-3.7, 2.9, 10.9, 7.1], [1.5, 1.5, 2.4, 3.99]], dtype=np.float32)
    scores = np.array([0.1, 0.7], dtype=np.float32)
    r = to_wider_rows(boxes, scores)
    assert r.dtype == np.float64 and r.shape == (2, 5)
    assert r[:, :4].tolist() == [[-3, 2, 13, 5], [1, 1, 1, 2]]
    assert r[0, 4] == float(np.float32(0.1)) and r[1, 4] == float(np.float32(0.7))
    assert to_wider_rows(np.zeros((0, 4)), np.zeros(0)).shape == (0, 5)


def test_bad_inputs_raise_evaluation_error():
    gt = make_gt([("e/a", [[10, 10, 20, 20]], None, None, None)])
    with pytest.raises(EvaluationError, match="e/a"):
        evaluate({"e/a": np.zeros((3, 4))}, gt)
    with pytest.raises(EvaluationError, match="1-based"):
        make_gt([("e/a", [[10, 10, 20, 20]], [2], None, None)])
    with pytest.raises(EvaluationError, match="EVENT/NAME"):
        make_gt([("a", [[10, 10, 20, 20]], None, None, None)])


# ---------------------------------------------------------------- against the reference


@pytest.mark.parametrize(
    "seed, kwargs, iou",
    [
        (0, {}, 0.5),
        (1, {"quantise": True}, 0.5),
        (2, {"score_range": (0.3, 0.6)}, 0.5),
        (3, {"fp_max": 5}, 0.3),
        (4, {"quantise": True, "score_range": (0.02, 1.0)}, 0.7),
    ],
)
def test_matches_reference_on_real_ground_truth(subset_gt_dir, subset_gt, seed, kwargs, iou):
    preds = random_predictions(subset_gt, seed, **kwargs)
    res = evaluate(preds, subset_gt, iou_threshold=iou)
    aps, curves = oracle(preds, subset_gt_dir, iou=iou)
    for s, ap, curve in zip(SETTINGS, aps, curves):
        assert abs(res[s] - ap) < 1e-6, (s, res[s], ap)
        assert res[s] == ap  # bit-exact in practice: same float operations in the same order
        np.testing.assert_array_equal(np.array(res["curves"][s]["precision"]), curve[:, 0])
        np.testing.assert_array_equal(np.array(res["curves"][s]["recall"]), curve[:, 1])
    assert 0.0 < res["hard"] < 1.0


def test_prediction_files_round_trip(tmp_path, subset_gt_dir, subset_gt):
    preds = random_predictions(subset_gt, 7)
    preds["0--Parade/not_in_ground_truth"] = rows([1, 2, 3, 4, 0.01])  # extra file: only normalises
    for key, r in preds.items():
        write_prediction_file(tmp_path, key, r)
    assert not list(tmp_path.rglob("*.tmp"))
    back = read_prediction_dir(tmp_path)
    assert back.keys() == preds.keys()
    for key in preds:
        assert back[key].shape == (len(preds[key]), 5)
        assert np.array_equal(back[key], preds[key])
    res_mem = evaluate(preds, subset_gt)
    res_file = evaluate(back, subset_gt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        aps, _ = ref.evaluation(str(tmp_path), str(subset_gt_dir))  # the reference's own reader
    for s, ap in zip(SETTINGS, aps):
        assert res_mem[s] == res_file[s] == ap


def test_prediction_file_format(tmp_path):
    path = write_prediction_file(tmp_path, "0--Parade/img_1", rows([1, 2, 3, 4, 0.123456789012], [5, 6, 7, 8, 1e-5]))
    assert path == tmp_path / "0--Parade" / "img_1.txt"
    assert path.read_text().splitlines() == ["img_1", "2", "1 2 3 4 0.123456789012", "5 6 7 8 1e-05"]
    write_prediction_file(tmp_path, "0--Parade/empty", np.zeros((0, 5)))
    assert read_prediction_dir(tmp_path)["0--Parade/empty"].shape == (0, 5)


@pytest.mark.parametrize(
    "text, match",
    [
        ("img\n", "count line"),
        ("img\ntwo\n", "line 2"),
        ("img\n1\n1 2 3 4\n", "line 3"),
        ("img\n2\n1 2 3 4 0.5\n", "header says 2"),
        ("img\n1\n1 2 x 4 0.5\n", "line 3"),
    ],
)
def test_malformed_prediction_file_names_the_file(tmp_path, text, match):
    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / "img.txt").write_text(text)
    with pytest.raises(EvaluationError, match=match) as info:
        read_prediction_dir(tmp_path)
    assert "img.txt" in str(info.value)


def test_missing_prediction_dir(tmp_path):
    with pytest.raises(EvaluationError, match="not found"):
        read_prediction_dir(tmp_path / "nope")


# ---------------------------------------------------------------- ground truth loading


def test_ground_truth_from_mat(subset_gt):
    assert subset_gt.num_images == len(subset_gt) == 64
    assert subset_gt.keys[0] == "0--Parade/0_Parade_Parade_0_194"
    assert sum(len(b) for b in subset_gt.boxes) == 2346
    for i, b in enumerate(subset_gt.boxes):
        assert b.dtype == np.float64 and b.shape[1] == 4
        for s in SETTINGS:
            assert subset_gt.keep(s)[i].dtype == np.int64
    # easy is a subset of medium, medium of hard
    for e, m, h in zip(subset_gt.easy, subset_gt.medium, subset_gt.hard):
        assert set(e) <= set(m) <= set(h)


def test_ground_truth_json_round_trip(tmp_path, subset_gt):
    text = json.dumps(subset_gt.to_json_dict())
    again = GroundTruth.from_json_dict(json.loads(text))
    path = tmp_path / "gt.json"
    save_ground_truth_json(subset_gt, path)
    loaded = load_ground_truth(path)
    for other in (again, loaded):
        assert other.keys == subset_gt.keys
        for s in ("boxes",) + SETTINGS:
            for a, b in zip(getattr(other, s), getattr(subset_gt, s)):
                assert a.dtype == b.dtype and np.array_equal(a, b)
    preds = random_predictions(subset_gt, 11)
    assert evaluate(preds, loaded) == evaluate(preds, subset_gt)


def test_full_official_ground_truth_loads(shared_dir):
    path = shared_dir / "data" / "widerface_ground_truth"
    if not path.is_dir():
        pytest.skip(f"full WIDER FACE ground truth not found at {path}")
    gt = load_ground_truth(path)
    assert gt.num_images == 3226
    assert sum(len(k) for k in gt.hard) <= sum(len(b) for b in gt.boxes)


def test_missing_ground_truth_folder(tmp_path):
    with pytest.raises(EvaluationError, match="ground truth not found"):
        load_ground_truth(tmp_path / "nope")


def test_ground_truth_folder_missing_a_file(tmp_path, subset_gt_dir):
    import shutil

    for name in ("wider_face_val.mat", "wider_easy_val.mat", "wider_medium_val.mat"):
        shutil.copy(subset_gt_dir / name, tmp_path / name)
    with pytest.raises(EvaluationError, match="lacks wider_hard_val.mat"):
        load_ground_truth(tmp_path)


def test_malformed_mat_lacking_face_bbx_list(tmp_path, subset_gt_dir):
    import shutil

    from scipy.io import loadmat, savemat

    for name in ("wider_easy_val.mat", "wider_medium_val.mat", "wider_hard_val.mat"):
        shutil.copy(subset_gt_dir / name, tmp_path / name)
    face = loadmat(str(subset_gt_dir / "wider_face_val.mat"))
    savemat(str(tmp_path / "wider_face_val.mat"), {"event_list": face["event_list"], "file_list": face["file_list"]})
    with pytest.raises(EvaluationError, match="face_bbx_list") as info:
        load_ground_truth(tmp_path)
    assert "wider_face_val.mat" in str(info.value)


def test_garbage_mat_and_json(tmp_path):
    for name in ("wider_face_val.mat", "wider_easy_val.mat", "wider_medium_val.mat", "wider_hard_val.mat"):
        (tmp_path / name).write_bytes(b"not a mat file")
    with pytest.raises(EvaluationError, match="cannot read"):
        load_ground_truth(tmp_path)
    bad = tmp_path / "gt.json"
    bad.write_text('{"format": "something else"}')
    with pytest.raises(EvaluationError, match="gt.json"):
        load_ground_truth(bad)


# ---------------------------------------------------------------- speed and plots


def test_evaluate_is_fast_on_the_val_split(subset_gt):
    rng = np.random.default_rng(5)
    preds = {}
    for key, b in zip(subset_gt.keys, subset_gt.boxes):
        n = int(rng.integers(max(100, len(b)), 1001))
        xy = rng.uniform(0, 1000, (n, 2))
        boxes = np.hstack([xy, xy + rng.uniform(4, 300, (n, 2))])
        boxes[: len(b), :2] = b[:, :2]
        boxes[: len(b), 2:] = b[:, :2] + b[:, 2:]
        preds[key] = to_wider_rows(boxes[rng.permutation(n)], rng.random(n).astype(np.float32))
    evaluate(preds, subset_gt)  # warm-up
    start = time.perf_counter()
    evaluate(preds, subset_gt)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"evaluate took {elapsed:.3f} s"  # typically well under 0.2 s


def test_plot_pr_curves_writes_png(tmp_path, subset_gt):
    from fdq.host.plots import plot_pr_curves

    res = evaluate(random_predictions(subset_gt, 3), subset_gt)
    out = tmp_path / "plots" / "pr.png"
    plot_pr_curves(res, str(out), title="test")
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 1000
    assert [p.name for p in out.parent.iterdir()] == ["pr.png"]
    plot_pr_curves(res["curves"], str(tmp_path / "curves_only.png"))
    assert (tmp_path / "curves_only.png").stat().st_size > 1000

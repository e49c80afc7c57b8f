"""The regression gate (``fdq compare --check``) on real runs on this machine: the same bundle twice
passes, a clearly slower configuration (slim at 640 against 320) fails; its statistics on documents
made from those runs (frames scaled, AP lowered), and counted documents compared count for count."""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any, Dict

import pytest
import yaml

from fdq.host.cli import main as fdq_main, profile_main

FRAMES = 12
TOLERANCE = "100%"  # slim at 640 takes about 5 times as long as at 320


def local_profile(root: Path) -> Path:
    """A ``transport: local`` target profile under ``root``."""
    profile = root / "here.yaml"
    profile.write_text(yaml.safe_dump({"name": "here", "transport": "local", "python": sys.executable,
                                       "workdir": str(root / "work"), "threads": 1}))
    return profile


def two_images(root: Path, shared_dir: Path) -> Dict[str, Path]:
    """Two val images and their ground truth as JSON, under ``root``."""
    from fdq.calibration.labels import subset_ground_truth
    from fdq.device.evaluation import load_ground_truth, save_ground_truth_json

    val = shared_dir / "data" / "widerface_val_subset" / "val"
    event = "0--Parade"
    (root / "images" / event).mkdir(parents=True)
    for image in sorted((val / "images" / event).glob("*.jpg"))[:2]:
        (root / "images" / event / image.name).symlink_to(image)
    keys = [f"{event}/{p.stem}" for p in (root / "images" / event).iterdir()]
    save_ground_truth_json(subset_ground_truth(load_ground_truth(val / "ground_truth"), keys), root / "gt.json")
    return {"images": root / "images", "gt": root / "gt.json"}


@pytest.fixture(scope="module")
def gate_runs(tmp_path_factory, slim_fp32_bundle, shared_dir) -> Dict[str, Any]:
    """Real runs on this machine: slim fp32 at 320 twice (two fdq-profile calls), and at 640 once."""
    from fdq.host.artifacts import save_torchscript_bundle
    from fdq.models import SPECS, load_model

    root = tmp_path_factory.mktemp("gate")
    big = save_torchscript_bundle(load_model("slim", shared_dir / "weights" / "slim_Final.pth"), SPECS["slim"], 640,
                                  str(root / "slim640"), engine=None, dtype="fp32", quantization={"level": "float"})
    data, profile = two_images(root, shared_dir), local_profile(root)
    made = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FDQ_HOME", str(root / "home"))
        for name, bundle in (("base", slim_fp32_bundle), ("big", big), ("again", slim_fp32_bundle)):
            out = root / f"{name}.json"
            assert profile_main(["--target", str(profile), "--bundle", str(bundle), "--images", str(data["images"]),
                                 "--gt", str(data["gt"]), "--frames", str(FRAMES), "--warmup", "2",
                                 "--runs", str(root / "runs"), "--out", str(out)]) == 0
            made[name] = out
        # the same three bundles alternately in one runner: slim 320, 640, and 320 again
        mp.setenv("FDQ_HOME", str(root / "home-interleaved"))
        assert profile_main(["--target", str(profile), "--bundle", str(slim_fp32_bundle), str(big),
                             str(slim_fp32_bundle), "--interleave", "--images", str(data["images"]), "--gt",
                             str(data["gt"]), "--frames", str(FRAMES), "--warmup", "2", "--runs",
                             str(root / "interleaved")]) == 0
    interleaved = sorted((root / "interleaved").glob("[!.]*.json"))
    return {**made, "root": root, "home": root / "home", "runs": root / "runs", "interleaved": interleaved}


def _variant(source: Path, folder: Path, name: str, scale: float = 1.0, ap_drop: float = 0.0) -> Path:
    """A document made from a real run: every frame's latency times ``scale``, AP lowered by ``ap_drop``."""
    doc = json.loads(source.read_text())
    doc = copy.deepcopy(doc)
    for stage in doc["latency_ms"].values():
        stage["frames"] = [scale * v for v in stage["frames"]]
        for q in ("mean", "p50", "p90", "p99", "min", "max"):
            stage[q] *= scale
    for s in ("easy", "medium", "hard"):
        doc["accuracy"][s] -= ap_drop
    out = folder / f"{name}.json"
    out.write_text(json.dumps(doc))
    return out


def _check(capsys, *args: str) -> tuple:
    code = fdq_main(["compare", *args, "--check"])
    lines = capsys.readouterr().out.strip().splitlines()
    return code, [line for line in lines if line.startswith(("check", "FAIL"))]


def test_the_same_bundle_twice_passes(gate_runs, capsys):
    # Two runs one after the other on a machine shared while tests run: another process can slow one by
    # more than half (seen: +67 %, its interval +45 .. +99 %), which no interval over one run's frames
    # sees; the tolerance covers that here (--interleave is the cure, test_interleave).
    code, lines = _check(capsys, str(gate_runs["again"]), "--baseline", str(gate_runs["base"]), "--tolerance", TOLERANCE)
    assert code == 0, lines
    assert lines[0].startswith("check again.json against base.json: p50 ") and "95 % CI" in lines[0]
    assert "AP easy +0.00 / medium +0.00 / hard +0.00 pt" in lines[0] and "differs" not in lines[0]
    assert lines[-1] == "check: passed"


def test_a_clearly_slower_configuration_fails(gate_runs, capsys):
    code, lines = _check(capsys, str(gate_runs["big"]), "--baseline", str(gate_runs["base"]), "--tolerance", TOLERANCE)
    assert code == 1, lines
    assert "differs: side 640 vs 320" in lines[0]
    fails = [line for line in lines if line.startswith("FAIL")]
    assert len(fails) == 1 and "beyond the 100 % tolerance" in fails[0]
    assert lines[-1] == "check: FAILED, 1 run(s)"


def test_noise_is_told_from_change(gate_runs, tmp_path, capsys):
    """On one real run's frames: 1 % slower passes the default 5 %, 50 % slower (its whole interval
    beyond 5 %) fails."""
    base = gate_runs["base"]
    for scale, expected in ((1.01, 0), (1.5, 1)):
        code, lines = _check(capsys, str(_variant(base, tmp_path, f"x{scale}", scale)), "--baseline", str(base))
        assert code == expected, lines
    # two runs over the same images: frames resampled in pairs, so a frame's own cost cancels (the same
    # frames scaled: exactly the scale); each run resampled on its own otherwise, an interval around
    from fdq.device.result import read_run
    from fdq.host.gate import judge, ratio_interval, same_frames

    run, again = read_run(base), read_run(gate_runs["again"])
    assert same_frames(run, again)
    verdict = judge(again, [run])
    assert verdict.change.low < verdict.change.value < verdict.change.high
    same = judge(read_run(_variant(base, tmp_path, "same", 1.2)), [run])
    assert abs(same.change.value - 0.2) < 1e-9 and abs(same.change.low - 0.2) < 1e-9 and same.failed
    frames = run.doc["latency_ms"]["total"]["frames"]
    apart = ratio_interval(frames, frames, paired=False)
    assert apart.value == 1 and apart.low < 1 < apart.high


def test_lost_ap_fails(gate_runs, tmp_path, capsys):
    base = gate_runs["base"]
    code, lines = _check(capsys, str(_variant(base, tmp_path, "worse", ap_drop=0.02)), "--baseline", str(base))
    assert code == 1
    assert [line for line in lines if line.startswith("FAIL")][0].endswith("points, more than the 1 allowed")
    code, _ = _check(capsys, str(_variant(base, tmp_path, "bit", ap_drop=0.005)), "--baseline", str(base))
    assert code == 0


def test_a_folder_of_baselines_matches_by_configuration(gate_runs, tmp_path, capsys):
    baselines = tmp_path / "baselines"
    baselines.mkdir()
    for name in ("base", "big"):
        (baselines / f"{name}.json").write_text(gate_runs[name].read_text())
    slower = _variant(gate_runs["big"], tmp_path, "big-slower", 1.5)
    code, lines = _check(capsys, str(gate_runs["again"]), str(slower), "--baseline", str(baselines),
                         "--tolerance", "20%")
    assert code == 1
    assert lines[0].startswith("check again.json against base.json") and lines[1].startswith(
        "check big-slower.json against big.json")
    assert sum(line.startswith("FAIL") for line in lines) == 1


def test_the_report_shows_the_interval(gate_runs, tmp_path, capsys):
    md, html = tmp_path / "r.md", tmp_path / "r.html"
    assert fdq_main(["compare", str(gate_runs["base"]), str(gate_runs["big"]), "--markdown", str(md),
                     "--html", str(html)]) == 0
    lines = md.read_text().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:4]]
    column = header.index("speed-up 95% CI")
    assert rows[0][column] == "-"
    low, high = (float(v) for v in rows[1][column].rstrip("x").split("-"))
    speedup = float(rows[1][header.index("speed-up")].rstrip("x"))
    assert low <= speedup <= high < 1
    assert "bootstrap 95 % interval" in html.read_text()


def test_check_needs_a_baseline(gate_runs, capsys):
    assert fdq_main(["compare", str(gate_runs["base"]), "--check"]) == 1
    assert capsys.readouterr().err.strip() == "fdq: error: --check compares with --baseline RUN|RUNS_DIR: give one"
    with pytest.raises(SystemExit):
        fdq_main(["compare", str(gate_runs["base"]), "--check", "--baseline", str(gate_runs["base"]),
                  "--tolerance", "five"])
    assert "--tolerance takes a percentage" in capsys.readouterr().err


def test_interleave_gives_one_run_per_bundle_with_interleaved_frames(gate_runs):
    from fdq.device.result import read_run

    runs = sorted((read_run(p) for p in gate_runs["interleaved"]), key=lambda r: r.doc["interleaved"]["position"])
    assert [r.doc["interleaved"]["position"] for r in runs] == [0, 1, 2]
    assert [r.doc["settings"]["long_side"] for r in runs] == [320, 640, 320]
    assert len({tuple(r.doc["interleaved"]["bundles"]) for r in runs}) == 1
    starts = [r.doc["settings"]["frame_start_s"] for r in runs]
    assert all(len(s) == FRAMES for s in starts)
    merged = [s[i] for i in range(FRAMES) for s in starts]  # A B C A B C ...: strictly increasing
    assert all(a < b for a, b in zip(merged, merged[1:]))
    assert all(r.accuracy["medium"] == runs[0].accuracy["medium"] for r in (runs[0], runs[2]))


def test_interleaved_runs_pass_and_fail_the_gate_at_its_defaults(gate_runs, capsys):
    """The same bundle, measured alternately with itself, passes at the default 5 %; the 640 run fails."""
    first, big, again = sorted(gate_runs["interleaved"], key=lambda p: json.loads(p.read_text())["interleaved"]["position"])
    code, lines = _check(capsys, str(again), str(big), "--baseline", str(first))
    assert code == 1, lines
    assert lines[0].startswith(f"check {again.name}") and "differs" not in lines[0]
    fails = [line for line in lines if line.startswith("FAIL")]
    assert len(fails) == 1 and "beyond the 5 % tolerance" in fails[0]
    capsys.readouterr()
    fdq_main(["compare", str(first), str(big)])
    assert "measured interleaved" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------
# History: the index of runs under FDQ_HOME
# ---------------------------------------------------------------------------------------------------


def test_every_run_is_indexed_and_listed(gate_runs, monkeypatch, capsys):
    from fdq.host.history import query

    monkeypatch.setenv("FDQ_HOME", str(gate_runs["home"]))
    rows = query()
    assert len(rows) == 3 and {Path(r["path"]).parent for r in rows} == {gate_runs["runs"]}
    base = json.loads(gate_runs["base"].read_text())
    first = rows[0]
    assert first["created"] == base["created"] and first["p50_ms"] == base["latency_ms"]["total"]["p50"]
    assert first["ap_medium"] == base["accuracy"]["medium"] and first["target"] == "here"
    assert first["bundle_sha256"] == base["bundle"]["manifest_sha256"] and first["fdq_version"]
    assert first["git_commit"] == base["profile"]["git_commit"] and len(first["git_commit"]) == 40
    assert [r["side"] for r in rows] == [320, 640, 320]
    assert fdq_main(["runs", "--model", "slim", "--since", "1d"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "runs: 3 run(s)"
    assert fdq_main(["runs", "--model", "rfb"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "runs: 0 run(s)"


def test_reindex_gives_the_same_rows(gate_runs, tmp_path, monkeypatch):
    from fdq.host.history import query, reindex

    monkeypatch.setenv("FDQ_HOME", str(gate_runs["home"]))
    before = query()
    assert fdq_main(["runs", "--reindex"]) == 0
    assert query() == before
    fresh = tmp_path / "fresh.sqlite"  # from the folder alone, into a new index
    assert reindex([str(gate_runs["runs"])], fresh) == 3 and query(path=fresh) == before


def test_history_plots_one_configuration(gate_runs, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FDQ_HOME", str(gate_runs["home"]))
    page = tmp_path / "history.html"
    assert fdq_main(["compare", "--history", str(gate_runs["base"]), "--html", str(page)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[-1] == f"report: {page.resolve()}"  # base and again, not the 640 run
    text = page.read_text()
    assert text.count("<svg") == 2 and "Latency over time" in text
    assert not any(tag in text for tag in ("<script", "<link", "src=", "<img"))  # self-contained
    assert fdq_main(["compare", "--history", "model=slim,side=640"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1
    assert fdq_main(["compare", "--history", "model=rfb"]) == 1
    assert "no run of model=rfb" in capsys.readouterr().err


WRITER = """
import sys
from pathlib import Path
from fdq.device.result import read_run
from fdq.host.history import record
index = Path(sys.argv[1])
Path(sys.argv[2]).touch()
while not Path(sys.argv[3]).exists():  # both writers start together
    pass
for path in sorted(Path(sys.argv[4]).glob("*.json")):
    problem = record(read_run(path), index)
    assert problem is None, problem
"""


def test_two_processes_writing_at_once_both_land(gate_runs, tmp_path):
    import subprocess

    from fdq.host.history import query

    source = gate_runs["base"].read_text()
    for writer in ("a", "b"):
        (tmp_path / writer).mkdir()
        for i in range(40):
            (tmp_path / writer / f"{i:02d}.json").write_text(source)
    index, go = tmp_path / "index.sqlite", tmp_path / "go"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(index), str(tmp_path / f"ready-{w}"), str(go),
                                 str(tmp_path / w)]) for w in ("a", "b")]
    while not all((tmp_path / f"ready-{w}").exists() for w in ("a", "b")):
        assert all(p.poll() is None for p in writers)
    go.touch()
    assert [p.wait(timeout=120) for p in writers] == [0, 0]
    rows = query(path=index)
    assert len(rows) == 80 and {Path(r["path"]).parent.name for r in rows} == {"a", "b"}

"""``fdq-profile --sweep``: the front and the recommendation on hand-made run documents (a configuration
that loses more than the bound is never recommended, however fast), then real sweeps: on the local
target over two models x two runtimes x two sides on a few val images, stopped by SIGINT and resumed
(runner starts counted), its progress line on a terminal and not in a pipe, and on the emulated A72
board ranked by the cycle estimate of its counted instructions."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest
import yaml

from fdq.device.result import Run
from fdq.host.sweep import (Config, analyse, config_of, pareto_front, points, recommend, ship_line)

PROFILE = [sys.executable, "-c", "import sys; from fdq.host.cli import profile_main; sys.exit(profile_main(sys.argv[1:]))"]
EVENTS = ("5--Car_Accident", "1--Handshaking")


def _doc(model: str, runtime: str, precision: str, p90: float, ap: float, *, threads: int = 1, side: int = 320,
         rss: float = 100.0, target: str = "pi", emulated: bool = False) -> Dict[str, Any]:
    """The fields of an ``fdq.run/1`` document the answer reads (written by hand: the cases are chosen)."""
    return {"schema": "fdq.run/1", "created": "2026-12-07T00:00:00+00:00",
            "bundle": {"model": model, "dtype": precision, "engine": None, "manifest_sha256": "0" * 64},
            "device": {"runtime": runtime, "threads": threads, "machine": {"node": target},
                       "emulation": {"emulated": emulated}},
            "settings": {"long_side": side, "frames": 3},
            "latency_ms": {"total": {"p50": p90 * 0.9, "p90": p90}},
            "accuracy": {"easy": ap + 0.13, "medium": ap, "hard": ap - 0.36},
            "memory": {"peak_rss_mib": rss}, "profile": {"target": target}}


def _runs(*docs: Dict[str, Any]) -> List[Run]:
    return [Run(d, Path(f"run{i}.json")) for i, d in enumerate(docs)]


def test_the_front_and_the_fastest_configuration_within_the_bound():
    runs = _runs(_doc("slim", "ncnn", "fp32", 14.0, 0.574), _doc("slim", "ncnn", "int8", 9.8, 0.570),
                 _doc("slim", "onnxruntime", "fp32", 16.0, 0.574), _doc("rfb", "ncnn", "fp32", 18.0, 0.62),
                 _doc("rfb", "ncnn", "int8", 11.0, 0.60))
    found = points(runs, "p90")
    assert [p.value for p in found] == [9.8, 11.0, 14.0, 16.0, 18.0]
    # onnxruntime fp32 is slower than ncnn fp32 at the same AP; rfb int8 is beaten by nothing (more AP than slim)
    assert [str(p.config) for p in pareto_front(found)] == ["slim ncnn int8 @320, 1 thread", "rfb ncnn int8 @320, 1 thread",
                                                            "rfb ncnn fp32 @320, 1 thread"]
    rec = recommend(found, max_ap_drop=1.0)
    assert rec.point.config == Config("slim", "ncnn", "int8", 1, 320) and rec.point.drop == pytest.approx(0.4)
    runs[1].doc["device"]["threads"] = 4
    runs[1].doc["accuracy"].update(easy=0.70, hard=0.21)
    assert ship_line(recommend(points(runs, "p90"), 1.0), "p90") == (
        "ship: slim ncnn int8 @320, 4 threads: p90 9.8 ms (102 FPS), AP .70/.57/.21, -0.4 pt against its float")


def test_a_configuration_losing_more_than_the_bound_is_never_recommended_even_when_fastest():
    fast_but_bad = _doc("slim", "torchscript", "int8", 5.0, 0.40)  # as x86 int8 at level 1 without CLE can be
    runs = _runs(_doc("slim", "torchscript", "fp32", 20.0, 0.57), fast_but_bad,
                 _doc("slim", "onnxruntime", "int8", 12.0, 0.565))
    found = points(runs, "p90")
    assert found[0].run.doc is fast_but_bad and found[0] in pareto_front(found)
    assert recommend(found, 1.0).point.config == Config("slim", "onnxruntime", "int8", 1, 320)
    assert recommend(found, 0.1).point.config.precision == "fp32"  # 0.5 pt is too much at 0.1
    # with --max-rss below the float's peak nothing qualifies, and the line says why
    runs[0].doc["memory"]["peak_rss_mib"] = 300.0
    line = ship_line(recommend(points(runs, "p90"), 0.1, max_rss_mib=200), "p90")
    assert line.startswith("ship: nothing qualifies: 2 lose more than 0.1 pt of medium AP against their float "
                           "(the least: slim onnxruntime int8 @320, 1 thread, -0.5 pt); 1 peak above --max-rss 200 MiB")


def test_no_float_to_compare_with_is_said():
    line = ship_line(recommend(points(_runs(_doc("slim", "ncnn", "int8", 9.0, 0.5)), "p90"), 1.0), "p90")
    assert line == ("ship: nothing qualifies: 1 have no float run of their model and side to compare with "
                    "(add fp32 to --precisions)")


def test_a_fleet_gets_a_front_and_a_recommendation_per_host_and_instructions_rank_when_asked():
    docs = [_doc("slim", "torchscript", "fp32", 30.0, 0.57, target=host) for host in ("pi-1", "pi-2")]
    docs += [_doc("slim", "torchscript", "int8", 20.0, 0.565, target="pi-1"),
             _doc("slim", "torchscript", "int8", 20.0, 0.50, target="pi-2")]
    result = analyse(_runs(*docs), "p90", 1.0)
    assert [(h.host, h.recommendation.point.config.precision) for h in result.hosts] == [("pi-1", "int8"),
                                                                                          ("pi-2", "fp32")]
    for d, count in zip(docs, (36e6, 36e6, 34e6, 34e6)):
        d["instructions"] = {"per_frame": {"total": {"median": count}}}
    assert ship_line(analyse(_runs(*docs), "instructions", 1.0).hosts[0].recommendation, "instructions",
                     "pi-1").startswith("ship on pi-1: slim torchscript int8 @320, 1 thread: 34.0 M instructions")


def test_cycles_rank_by_the_instruction_mix_where_counts_alone_do_not():
    """The same instruction count, one run of FP multiply-adds, one of Q-form integer multiplies (half the
    A72 throughput): by instructions they tie, by the cycle estimate the integer one is slower."""
    from fdq.host.estimate import A72_THROUGHPUT

    fp32, int8 = _doc("slim", "ncnn", "fp32", 30.0, 0.57), _doc("slim", "ncnn", "int8", 20.0, 0.565)
    for d, kind in ((fp32, "simd_fmul_q"), (int8, "simd_imul_q")):
        classes = {name: [0, 0, 0] for name in A72_THROUGHPUT}
        classes[kind], classes["load"] = [10e6, 12e6, 11e6], [4e6, 4e6, 4e6]
        d["instructions"] = {"per_frame": {"total": {"median": 15e6}}, "classes": {"total": classes}}
    runs = _runs(fp32, int8)
    assert [p.value for p in points(runs, "instructions")] == [15e6, 15e6]
    found = points(runs, "cycles")
    assert [(p.config.precision, p.value) for p in found] == [("fp32", 15e6), ("int8", 26e6)]  # 11/1 + 4, 11/0.5 + 4
    assert ship_line(recommend(found, 1.0), "cycles") == ("ship: slim ncnn fp32 @320, 1 thread: 15.0 M A72 cycles "
                                                          "(estimate), AP .70/.57/.21, the float itself")
    del int8["instructions"]["classes"]  # counted by an older plugin: no estimate, not a point
    assert [p.config.precision for p in points(runs, "cycles")] == ["fp32"]


def test_the_runtimes_a_host_sweeps_are_those_installed_there():
    from fdq.host.sweep_runs import SweepError, host_runtimes
    from fdq.host.targets import Target

    pi = Target(name="pi", transport="local", python="python3", workdir="/w", runtimes=("torchscript", "ncnn", "mnn"))
    modules = {"torch": "2.9.1", "onnxruntime": "1.19.2", "ncnn": "1.0", "MNN": None, "executorch": None}
    assert host_runtimes(None, pi, modules) == ["torchscript", "ncnn"]          # the profile's, installed
    assert host_runtimes(("all",), pi, modules) == ["torchscript", "onnxruntime", "ncnn"]  # every one installed
    assert host_runtimes(("onnxruntime",), pi, modules) == ["onnxruntime"]
    with pytest.raises(SweepError, match=r"pi: its Python lacks MNN, executorch for --runtimes mnn,executorch"):
        host_runtimes(("mnn", "executorch"), pi, modules)


def test_peak_rss_is_the_runners_own_not_its_parents():
    """--max-rss reads the runner's peak RSS; on the local target the runner is exec'd from a process that
    may hold hundreds of MiB (fdq-profile itself), whose peak ``ru_maxrss`` carries over ``exec``."""
    parent = ("import resource, subprocess, sys\n"
              "big = bytearray(300 * 2**20)\n"
              "child = subprocess.run([sys.executable, '-c', 'from fdq.device.sysinfo import peak_rss_mib; "
              "print(peak_rss_mib())'], capture_output=True, text=True, check=True).stdout\n"
              "print(float(child), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)\n")
    own, inherited = map(float, subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True,
                                               check=True).stdout.split())
    assert inherited > 300 and own < 100, (own, inherited)


# -- real sweeps ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def few_images(tmp_path_factory, shared_dir):
    """Three val images in two events (links to the shared files); --gt is the val set's ground truth."""
    val = shared_dir / "data" / "widerface_val_subset" / "val"
    root = tmp_path_factory.mktemp("few") / "images"
    for event in EVENTS:
        (root / event).mkdir(parents=True)
        for image in sorted((val / "images" / event).glob("*.jpg"))[:2]:
            (root / event / image.name).symlink_to(image)
    return {"images": root, "gt": val / "ground_truth"}


@pytest.fixture(scope="module")
def local(tmp_path_factory, home):
    """This machine as a target whose Python notes every runner start in ``starts``."""
    folder = tmp_path_factory.mktemp("sweep-target")
    starts = folder / "starts"
    python = folder / "python"
    python.write_text(f'#!/bin/sh\ncase " $* " in *" fdq.device.run "*) echo start >> "{starts}";; esac\n'
                      f'exec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    profile = folder / "here.yaml"
    profile.write_text(yaml.safe_dump({"name": "here", "transport": "local", "python": str(python),
                                       "workdir": str(folder / "work"), "threads": 1,
                                       "runtimes": ["torchscript", "onnxruntime", "ncnn"]}))
    return {"profile": profile, "starts": starts}


def _argv(local, few_images, runs: Path) -> List[str]:
    return ["--target", str(local["profile"]), "--sweep", "--models", "slim,rfb", "--runtimes", "torchscript,onnxruntime",
            "--precisions", "fp32", "--long-sides", "160,320", "--warmup", "1", "--images", str(few_images["images"]),
            "--gt", str(few_images["gt"]), "--runs", str(runs)]


def _starts(local) -> int:
    return len(local["starts"].read_text().splitlines()) if local["starts"].exists() else 0


@pytest.fixture(scope="module")
def swept(local, few_images, tmp_path_factory):
    """The uninterrupted sweep: 2 models x 2 runtimes x 2 sides, 8 runs."""
    runs = tmp_path_factory.mktemp("swept") / "runs"
    before = _starts(local)
    proc = subprocess.run([*PROFILE, *_argv(local, few_images, runs)], capture_output=True, text=True, timeout=900)
    return {"proc": proc, "runs": runs, "starts": _starts(local) - before}


def _rows(stdout: str) -> Dict[str, List[str]]:
    """configuration -> the table's cells (mark, metric, AP, drop, RSS, run)."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 7 and "@" in cells[1]:
            rows[cells[1]] = [cells[0], *cells[2:]]
    return rows


@pytest.mark.slow
def test_a_local_sweep_runs_every_configuration_and_names_one_to_ship(swept):
    proc = swept["proc"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert swept["starts"] == 8
    rows = _rows(proc.stdout)
    expected = {f"{m} {r} fp32 @{s}, 1 thread" for m in ("slim", "rfb") for r in ("torchscript", "onnxruntime")
                for s in (160, 320)}
    assert set(rows) == expected
    p90s = [float(re.match(r"p90 ([\d.]+) ms", row[1]).group(1)) for row in rows.values()]
    assert p90s == sorted(p90s)  # sorted by the metric
    front = [c for c, row in rows.items() if "front" in row[0]]
    assert front and all(row[3] == "+0.0" for row in rows.values())  # every float against itself
    ship = proc.stdout.strip().splitlines()[-1]
    shipped = [c for c, row in rows.items() if row[0].startswith("ship")]
    assert shipped == [next(iter(rows))]  # every float qualifies: the fastest, the table's first row
    assert re.fullmatch(rf"ship: {shipped[0]}: p90 [\d.]+ ms \(\d+ FPS\), AP [\d.]+/\.\d\d/\.\d\d, the float itself",
                        ship), ship
    # the same images give the same AP on both runtimes
    for model in ("slim", "rfb"):
        for side in (160, 320):
            assert rows[f"{model} torchscript fp32 @{side}, 1 thread"][2] == rows[f"{model} onnxruntime fp32 @{side}, 1 thread"][2]
    report = Path(next(line[8:] for line in proc.stdout.splitlines() if line.startswith("report: ")))
    page = report.read_text()
    for name in (row[5] for row in rows.values()):
        assert (swept["runs"] / name).is_file() and page.count(f'href="{name}"') == 2  # the point and the table
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I), "external resource"
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert "configurations done" not in proc.stderr  # no progress line in a pipe


@pytest.mark.slow
def test_sigint_mid_sweep_then_the_same_command_runs_only_the_rest(local, few_images, swept, tmp_path):
    assert swept["proc"].returncode == 0
    runs = tmp_path / "runs"
    argv = [*PROFILE, *_argv(local, few_images, runs)]
    before = _starts(local)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300
        while len(list(runs.glob("[!.]*.json"))) < 3:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "fdq-profile: interrupted", err[-2000:]
    kept = sorted(p.name for p in runs.glob("[!.]*.json"))
    assert 3 <= len(kept) < 8 and not list(runs.glob(".*.tmp*"))  # complete runs only
    first = _starts(local) - before
    again = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{len(kept)} finished under" in again.stderr
    assert _starts(local) - before - first == 8 - len(kept)  # only the rest ran
    rows, whole = _rows(again.stdout), _rows(swept["proc"].stdout)
    assert set(rows) == set(whole) and len(list(runs.glob("[!.]*.json"))) == 8
    assert set(kept) <= {row[5] for row in rows.values()}  # the finished runs are the ones it shows
    assert {c: row[2] for c, row in rows.items()} == {c: row[2] for c, row in whole.items()}  # AP


def test_progress_shows_on_a_terminal(local, few_images, tmp_path):
    import pty

    main_fd, terminal = pty.openpty()
    argv = _argv(local, few_images, tmp_path / "runs")
    argv[argv.index("--models") + 1], argv[argv.index("--runtimes") + 1] = "slim", "onnxruntime"
    argv[argv.index("--long-sides") + 1] = "160"
    proc = subprocess.Popen([*PROFILE, *argv], stdout=subprocess.DEVNULL, stderr=terminal,
                            env=dict(os.environ, COLUMNS="160"))
    os.close(terminal)
    seen = b""
    while True:
        try:
            chunk = os.read(main_fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    os.close(main_fd)
    assert proc.wait(timeout=300) == 0, seen[-2000:]
    assert b"sweep, configurations" in seen, seen[-2000:]


def test_a_spent_budget_starts_nothing_and_the_same_command_goes_on(local, few_images, tmp_path):
    argv = _argv(local, few_images, tmp_path / "runs")
    argv[argv.index("--models") + 1], argv[argv.index("--runtimes") + 1] = "slim", "onnxruntime"
    argv[argv.index("--long-sides") + 1] = "160"
    before = _starts(local)
    spent = subprocess.run([*PROFILE, *argv, "--budget-minutes", "0"], capture_output=True, text=True, timeout=300)
    assert spent.returncode == 1 and _starts(local) == before, spent.stderr[-2000:]
    assert "--budget-minutes 0 spent: 1 configuration(s) not run; the same command runs them" in spent.stderr
    assert spent.stderr.strip().splitlines()[-1] == "fdq-profile: error: no run finished (0 failed, 1 not started)"
    done = subprocess.run([*PROFILE, *argv, "--budget-minutes", "60"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and _starts(local) == before + 1, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1].startswith("ship: slim onnxruntime fp32 @160, 1 thread: p90 ")


def test_bad_sweeps_are_one_line(local, few_images, tmp_path, capsys):
    from fdq.host.cli import profile_main

    runs = tmp_path / "runs"
    for argv, needle in ((["--sweep"], "give --images DIR and --gt DIR"),
                         (["--sweep", "--runtimes", "tflite"], "unknown runtime 'tflite'"),
                         (["--sweep", "--precisions", "fp16"], "unknown 'fp16'"),
                         (["--sweep", "--runtime", "ncnn"], "do not combine it with --runtime"),
                         (["--sweep", "--models", "slim,yolo", "--images", str(few_images["images"]), "--gt",
                           str(few_images["gt"])], "--models: unknown model 'yolo'"),
                         (["--sweep", "--models", f"slim,{tmp_path}", "--images", str(few_images["images"]), "--gt",
                           str(few_images["gt"])], f"--models: incomplete bundle {tmp_path}: no manifest.yaml")):
        try:
            code = profile_main(["--target", str(local["profile"]), "--runs", str(runs), *argv])
        except SystemExit as exc:  # argparse's own refusal
            code = exc.code
        assert code != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("fdq-profile: error: ") and needle in err[0], (argv, err)
    assert not runs.exists()


def test_a_sweep_takes_an_imported_yunet_and_names_a_configuration_of_it(local, few_images, home, shared_dir,
                                                                          tmp_path):
    """``--models PATH`` of a bundle fdq import wrote (YuNet-n, imported at 320, swept at 160 and 320): fp32 on
    onnxruntime, ncnn and mnn, int8 as onnx-int8, ncnn-int8 and mnn-int8 calibrated on --calib (two MNN
    calibrations and a conversion after one: the cache runs them apart), each held against the imported
    float at its side; TorchScript skipped with its reason; the ship line names a YuNet configuration."""
    from conftest import copy_calib_images

    from fdq.host.bundle_cache import CacheError
    from fdq.host.cli import main as fdq_main
    from fdq.host.sweep_runs import imported_config_bundle

    yunet = shared_dir / "peers" / "yunet_n_dynamic.onnx"
    if not yunet.is_file():
        pytest.skip(f"YuNet not in {yunet.parent}")
    imported = tmp_path / "yunet_n"
    assert fdq_main(["import", str(yunet), "--decoder", "yunet", "--name", "yunet_n", "--out", str(imported)]) == 0
    with pytest.raises(CacheError, match="onnx-int8 of an imported model is calibrated on images: give --calib DIR"):
        imported_config_bundle(Config("yunet_n", "onnxruntime", "int8", 1, 160), str(imported), None)
    calib = copy_calib_images(shared_dir, tmp_path / "calib")
    runs = tmp_path / "runs"
    before = _starts(local)
    proc = subprocess.run([*PROFILE, "--target", str(local["profile"]), "--sweep", "--models", str(imported),
                           "--runtimes", "torchscript,onnxruntime,ncnn,mnn", "--precisions", "fp32,int8", "--calib",
                           str(calib), "--long-sides", "160,320", "--warmup", "1", "--images", str(few_images["images"]),
                           "--gt", str(few_images["gt"]), "--runs", str(runs)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _starts(local) - before == 12
    rows = _rows(proc.stdout)
    runtimes, sides = ("onnxruntime", "ncnn", "mnn"), (160, 320)
    assert set(rows) == {f"yunet_n {r} {p} @{s}, 1 thread" for r in runtimes for p in ("fp32", "int8") for s in sides}
    assert "skipped here: yunet_n torchscript fp32 @160, 1 thread: torchscript runs fdq's own PyTorch models; an " \
           "imported model runs on onnxruntime, ncnn, mnn" in proc.stderr
    docs = [json.loads(p.read_text()) for p in runs.glob("*.json")]
    assert {d["bundle"]["model"] for d in docs} == {"yunet_n"}
    by_config = {config_of(Run(d, Path("r"))): d for d in docs}
    for runtime in runtimes:
        for side in sides:  # each int8 row's drop is against the imported float at its side
            drop = 100.0 * (by_config[Config("yunet_n", runtime, "fp32", 1, side)]["accuracy"]["medium"]
                            - by_config[Config("yunet_n", runtime, "int8", 1, side)]["accuracy"]["medium"])
            assert rows[f"yunet_n {runtime} int8 @{side}, 1 thread"][3] == f"{0.0 - drop + 0.0:+.1f}"
    ship = proc.stdout.strip().splitlines()[-1]
    assert re.match(r"ship: yunet_n (onnxruntime|ncnn|mnn) (fp32|int8) @(160|320), 1 thread: p90 ", ship), ship


@pytest.mark.slow
def test_a_sweep_on_the_emulated_a72_ranks_by_its_cycle_estimate(arm64_board, home, few_images, tmp_path):
    """Two configurations (slim TorchScript fp32 and qnnpack int8 at 160) on the emulated Pi 4: the metric
    defaults to the A72 cycle estimate of the counted instruction classes there, the report says its
    latencies are emulated."""
    from fdq.host.estimate import run_cycles

    runs = tmp_path / "runs"
    proc = subprocess.run([*PROFILE, "--target", str(arm64_board["profile"]), "--sweep", "--models", "slim",
                           "--runtimes", "torchscript", "--precisions", "fp32,int8", "--long-sides", "160",
                           "--iters", "2", "--warmup", "0", "--images", str(few_images["images"]),
                           "--gt", str(few_images["gt"]), "--runs", str(runs)],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    docs = [json.loads(p.read_text()) for p in runs.glob("[!.]*.json")]
    assert len(docs) == 2 and all(d["instructions"]["classes"] and d["device"]["machine"]["arch"] == "aarch64"
                                  for d in docs)
    assert sorted(config_of(Run(d)).precision for d in docs) == ["fp32", "int8"]
    rows = _rows(proc.stdout)
    cycles = [float(re.match(r"([\d.]+) M A72 cycles \(estimate\)", row[1]).group(1)) for row in rows.values()]
    assert len(rows) == 2 and cycles == sorted(cycles)
    assert sorted(cycles) == sorted(round(run_cycles(d) / 1e6, 1) for d in docs)
    assert "latencies are emulated" in proc.stdout
    ship = proc.stdout.strip().splitlines()[-1]
    assert re.match(r"ship: slim torchscript (fp32|int8) @160, 1 thread: [\d.]+ M A72 cycles \(estimate\), AP [\d.]+/\.\d\d/", ship), ship
    report = Path(next(line[8:] for line in proc.stdout.splitlines() if line.startswith("report: ")))
    assert "latencies are emulated" in report.read_text()

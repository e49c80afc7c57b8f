"""fdq-profile as users type it: bundles quantized on demand and cached, runs on the local target and
over a real sshd (``sshd`` in conftest.py), accuracy measured on the target, Ctrl-C, bad input.

Cheap on purpose: level-1 bundles with 2 distillation steps, a few frames, four images.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fdq.host.cli import main as fdq_main, profile_main

ITERS = ["--iters", "2"]  # level-1 distillation steps: enough to make a real int8 bundle, cheap on 2 cores
EVENTS = ("5--Car_Accident", "1--Handshaking")
PROFILE = [sys.executable, "-c", "import sys; from fdq.host.cli import profile_main; sys.exit(profile_main(sys.argv[1:]))"]


def _yaml(path: Path, **fields) -> Path:
    path.write_text(yaml.safe_dump(fields))
    return path


@pytest.fixture(scope="module")
def local(tmp_path_factory, home):
    folder = tmp_path_factory.mktemp("local-target")
    return _yaml(folder / "here.yaml", name="here", transport="local", python=sys.executable,
                 workdir=str(folder / "work"), threads=1, runtimes=["torchscript", "onnxruntime", "ncnn"])


@pytest.fixture
def board(sshd, tmp_path, home):
    return _yaml(tmp_path / "board.yaml", name="loopback-board", transport="ssh", host="127.0.0.1",
                 port=sshd["port"], user="root", key=str(sshd["key"]), python=sys.executable,
                 workdir=str(tmp_path / "on-board"), threads=1)


@pytest.fixture(scope="module")
def few_images(tmp_path_factory, shared_dir):
    """Four WIDER val images in two events (links to the shared files) and their ground truth as JSON."""
    from fdq.calibration.labels import subset_ground_truth
    from fdq.device.evaluation import load_ground_truth, save_ground_truth_json

    val = shared_dir / "data" / "widerface_val_subset" / "val"
    root = tmp_path_factory.mktemp("few")
    keys = []
    for event in EVENTS:
        (root / "images" / event).mkdir(parents=True)
        for image in sorted((val / "images" / event).glob("*.jpg"))[:2]:
            (root / "images" / event / image.name).symlink_to(image)
            keys.append(f"{event}/{image.stem}")
    save_ground_truth_json(subset_ground_truth(load_ground_truth(val / "ground_truth"), keys), root / "gt.json")
    return {"images": root / "images", "gt": root / "gt.json", "val_gt": val / "ground_truth", "count": len(keys)}


def _runs(folder: Path):
    return sorted((json.loads(p.read_text()) for p in folder.glob("[!.]*.json")), key=lambda d: d["device"]["threads"])


@pytest.fixture(scope="module")
def two_backends(local, home, tmp_path_factory):
    """``--backend qnnpack,x86`` on the local target: quantizes both (level 1), runs both."""
    runs = tmp_path_factory.mktemp("two") / "fdq-runs"
    argv = ["--target", str(local), "--backend", "qnnpack,x86", *ITERS, "--frames", "3", "--warmup", "1",
            "--runs", str(runs)]
    proc = subprocess.run([*PROFILE, *argv], capture_output=True, text=True, timeout=900)
    return {"proc": proc, "runs": runs, "argv": argv}


def test_two_backends_give_two_runs_with_their_engines_and_a_report(two_backends):
    proc, runs = two_backends["proc"], two_backends["runs"]
    assert proc.returncode == 0, proc.stderr
    docs = sorted((json.loads(p.read_text()) for p in runs.glob("[!.]*.json")), key=lambda d: d["bundle"]["engine"])
    assert [d["bundle"]["engine"] for d in docs] == ["qnnpack", "x86"]
    for doc in docs:
        assert doc["bundle"]["dtype"] == "int8" and doc["bundle"]["quantization"] == "1"
        assert doc["settings"]["frames"] == 3 and doc["device"]["engine"] == doc["bundle"]["engine"]
        assert doc["profile"]["target"] == "here" and doc["profile"]["command"].startswith("fdq-profile ")
        cold = doc["cold_start"]
        assert cold["load_ms"] > 0 and cold["first_frame_ms"] > 0
        assert set(cold["first_frame_stages_ms"]) == {"preprocess", "inference", "postprocess", "total"}
    names = sorted(p.name for p in runs.glob("[!.]*.json"))
    assert all(n.startswith("here-") and "-torchscript-t1-" in n for n in names)
    lines = proc.stdout.strip().splitlines()
    report = Path(lines[-1].removeprefix("report: "))
    assert lines[-1].startswith("report: ") and report.parent == runs and report.suffix == ".html"
    assert "<svg" in report.read_text()
    assert "qnnpack" in proc.stdout and "x86" in proc.stdout and "1.00x" in proc.stdout
    assert proc.stderr.count("fdq: quantizing slim") == 2


def test_a_second_call_quantizes_nothing(two_backends, capsys):
    argv = [a if a != "3" else "1" for a in two_backends["argv"]]
    assert profile_main(argv) == 0
    err = capsys.readouterr().err
    assert "quantizing" not in err, err
    assert len(list(two_backends["runs"].glob("[!.]*.json"))) == 4  # runs accumulate, none replaced


def test_threads_list_gives_one_run_per_thread_count(local, slim_fp32_bundle, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert profile_main(["--target", str(local), "--bundle", str(slim_fp32_bundle), "--threads", "1,2",
                         "--frames", "2", "--warmup", "0", "--runs", str(runs)]) == 0
    docs = _runs(runs)
    assert [d["device"]["threads"] for d in docs] == [1, 2] and [d["settings"]["threads"] for d in docs] == [1, 2]
    assert all(d["bundle"]["dtype"] == "fp32" for d in docs)


def test_min_seconds_and_per_op_and_thermal_zone(local, slim_fp32_bundle, tmp_path):
    zone = tmp_path / "temp"
    zone.write_text("45000\n")
    out = tmp_path / "one.json"
    assert profile_main(["--target", str(local), "--bundle", str(slim_fp32_bundle), "--frames", "1",
                         "--min-seconds", "1", "--warmup", "0", "--per-op", "--max-temp", "50",
                         "--runs", str(tmp_path / "runs"), "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["settings"]["measured_s"] >= 1.0 and doc["settings"]["frames"] > 1
    assert len(doc["latency_ms"]["total"]["frames"]) == doc["settings"]["frames"]
    per_op = doc["per_op"]
    assert per_op["available"] and per_op["frames"] >= 1
    ops = {row["op"] for row in per_op["by_type"]}
    assert any("conv" in op for op in ops), ops
    assert sum(r["share"] for r in per_op["by_type"]) <= 1.0 + 1e-9 and per_op["slowest"][0]["ms_per_frame"] > 0
    # this machine has no CPU temperature: the wait is skipped, and the result says so
    if doc["thermal"]["start_c"] is None:
        assert any("reports no CPU temperature" in w for w in doc["warnings"])


def test_max_temp_waits_for_the_zone_to_cool(slim_fp32_bundle, tmp_path):
    zone = tmp_path / "temp"
    zone.write_text("70000\n")
    out = tmp_path / "cool.json"
    proc = subprocess.Popen([sys.executable, "-m", "fdq.device.run", "--bundle", str(slim_fp32_bundle),
                             "--frames", "1", "--warmup", "0", "--thermal-zone", str(zone), "--max-temp", "50",
                             "--json", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Timed from the runner's own word that it waits (its imports can take seconds on a loaded machine)
    assert proc.stdout.readline() == "fdq-run: waiting until the CPU is cooler than 50 degC (now 70.0; at most 600 s)\n"
    time.sleep(2.0)
    assert proc.poll() is None and not out.exists()  # still waiting for 70 degC to drop under 50
    cooler = tmp_path / "temp.new"
    cooler.write_text("42000\n")
    cooler.replace(zone)  # at once, as sysfs reads are: a file read mid-write says no temperature at all
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    doc = json.loads(out.read_text())
    assert doc["settings"]["waited_s"] >= 2.0 and doc["thermal"]["start_c"] == 42.0
    assert doc["thermal"]["zone"] == str(zone) and not doc["warnings"]


def test_onnxruntime_export_on_the_fly_and_its_per_op(local, home, tmp_path):
    out = tmp_path / "ort.json"
    assert profile_main(["--target", str(local), "--backend", "fp32", "--runtime", "onnxruntime", "--per-op",
                         "--frames", "2", "--warmup", "0", "--runs", str(tmp_path / "runs"), "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["bundle"]["runtime"] == "onnxruntime" and doc["device"]["runtime_versions"]["onnxruntime"]
    per_op = doc["per_op"]
    assert per_op["available"] and "onnxruntime" in per_op["tool"]
    assert "Conv" in {row["op"] for row in per_op["by_type"]}
    assert all(row["name"] and row["op"] for row in per_op["slowest"])


def test_a_given_bundle_keeps_its_own_runtime(local, home, slim_fp32_bundle, tmp_path):
    onnx = tmp_path / "slim-onnx"
    assert fdq_main(["export", str(slim_fp32_bundle), "--format", "onnx", "--out", str(onnx)]) == 0
    out = tmp_path / "run.json"
    assert profile_main(["--target", str(local), "--bundle", str(onnx), "--frames", "2", "--warmup", "0",
                         "--runs", str(tmp_path / "runs"), "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["bundle"]["runtime"] == "onnxruntime" and doc["profile"]["bundle"] == str(onnx)


def test_against_runs_the_baseline_first(two_backends, local, tmp_path):
    runs, table = tmp_path / "runs", tmp_path / "table.md"
    assert profile_main(["--target", str(local), "--backend", "qnnpack", *ITERS, "--against", f"fp32@{local}",
                         "--frames", "2", "--warmup", "0", "--runs", str(runs), "--markdown", str(table)]) == 0
    rows = [line.split(" | ") for line in table.read_text().splitlines()[2:4]]
    assert rows[0][0] == "| slim fp32" and rows[1][0] == "| slim qnnpack int8"
    assert rows[0][13] == "1.00x"  # the workstation run is the baseline


def test_images_and_gt_give_the_same_ap_on_the_target_as_fdq_eval(board, two_backends, few_images, tmp_path, capsys):
    bundle = next(Path(os.environ["FDQ_HOME"], "bundles").glob("slim-qnnpack-l1-*"))
    out = tmp_path / "board.json"
    args = ["--target", str(board), "--bundle", str(bundle), "--images", str(few_images["images"]),
            "--gt", str(few_images["val_gt"]), "--warmup", "0", "--runs", str(tmp_path / "runs")]
    assert profile_main([*args, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    doc = json.loads(out.read_text())
    acc = doc["accuracy"]
    assert acc["images"] == few_images["count"] and doc["settings"]["frames"] == few_images["count"]
    assert doc["source"]["path"].startswith(str(Path(yaml.safe_load(board.read_text())["workdir"]) / "data"))
    host = tmp_path / "host.json"
    assert fdq_main(["eval", "--bundle", str(bundle), "--images", str(few_images["images"]),
                     "--gt", str(few_images["gt"]), "--json", str(host)]) == 0
    ref = json.loads(host.read_text())
    for setting in ("easy", "medium", "hard"):
        assert acc[setting] == pytest.approx(ref[setting], abs=1e-9)
    assert f"{few_images['count'] + 1} file(s) sent" in err or "file(s) sent" in err
    assert profile_main(args) == 0  # the images are there now: nothing travels again
    assert ": 0 file(s) sent" in capsys.readouterr().err


def _runner_pids(workdir: Path):
    """The runner processes working in ``workdir`` (the SSH test board's are this machine's too)."""
    import psutil

    return [p.pid for p in psutil.process_iter(["cmdline", "cwd"])
            if "fdq.device.run" in (p.info["cmdline"] or []) and p.info["cwd"] == str(workdir)]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("where", ["local", pytest.param("ssh", marks=pytest.mark.board)])
def test_ctrl_c_stops_the_runner_there_and_leaves_no_half_result(where, request, slim_fp32_bundle, tmp_path):
    profile = request.getfixturevalue("local" if where == "local" else "board")
    workdir = Path(yaml.safe_load(profile.read_text())["workdir"])
    runs, out = tmp_path / "runs", tmp_path / "one.json"
    before = set((workdir / "results").glob("*")) if (workdir / "results").is_dir() else set()
    proc = subprocess.Popen([*PROFILE, "--target", str(profile), "--bundle",
                             str(slim_fp32_bundle), "--frames", "1000000", "--warmup", "0", "--runs", str(runs),
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # Ctrl-C must reach it even when this test runs as a background job (SIGINT ignored)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not (_runner_pids(workdir) and all(_alive(p) for p in _runner_pids(workdir))):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        pids = _runner_pids(workdir)
        time.sleep(2.0)  # the runner is measuring now
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "fdq-profile: interrupted"
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids), "the runner still runs on the target"
    assert not out.exists() and not list(runs.glob("[!.]*.json"))
    assert not set((workdir / "results").iterdir()) - before, "a half result is left on the target"


@pytest.mark.parametrize("argv, needle", [
    (["--backend", "armv9"], "argument --backend: unknown backend 'armv9'"),
    (["--runtime", "tflite"], "argument --runtime: unknown runtime 'tflite'"),
    (["--threads", "1,0"], "argument --threads: --threads must be >= 1, got 0"),
    (["--threads", "two"], "argument --threads: --threads must be an integer, got 'two'"),
    (["--against", "x86@"], "argument --against: expected BACKEND@TARGET"),
])
def test_bad_options_are_one_line(argv, needle, capsys):
    with pytest.raises(SystemExit) as stop:
        profile_main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fdq-profile: error: ") and needle in err[0], err
    assert err[0].endswith("(see --help)")


def test_bad_combinations_are_one_line_and_write_nothing(local, slim_fp32_bundle, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's")
    taken = tmp_path / "taken.json"
    taken.write_text("{}")
    cases = [
        (["--backend", "qnnpack", "--runtime", "ncnn"], "ncnn bundles are float"),
        (["--bundle", str(slim_fp32_bundle), "--backend", "x86"], "--bundle carries its backend"),
        (["--gt", str(tmp_path)], "--gt scores the images of --images DIR"),
        (["--runs", str(mine)], "not a runs folder fdq made"),
        (["--bundle", str(slim_fp32_bundle), "--out", str(taken)], "file exists; add --force"),
        (["--bundle", str(slim_fp32_bundle), "--threads", "1,2", "--out", str(tmp_path / "x.json")],
         "--out takes one run's JSON"),
        (["--target", "no-such-board"], "unknown target 'no-such-board'"),
    ]
    for argv, needle in cases:
        runs = tmp_path / "runs"
        assert profile_main(["--target", str(local), *ITERS, "--runs", str(runs), *argv]) == 1, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("fdq-profile: error: ") and needle in err[0], (argv, err)
        assert not runs.exists() and taken.read_text() == "{}" and (mine / "notes.txt").read_text() == "the user's"


def test_a_failed_run_does_not_lose_the_others(local, slim_fp32_bundle, tmp_path, capsys):
    import shutil

    other = tmp_path / "slim_other_engine"
    shutil.copytree(slim_fp32_bundle, other)
    manifest = yaml.safe_load((other / "manifest.yaml").read_text())
    manifest["backend"]["engine"] = "no_such_engine"
    (other / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    runs = tmp_path / "runs"
    assert profile_main(["--target", str(local), "--bundle", str(other), str(slim_fp32_bundle), "--frames", "1",
                         "--warmup", "0", "--runs", str(runs)]) == 1
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("fdq-profile: error:")]
    assert len(errors) == 1 and "slim_other_engine" in errors[0] and "no_such_engine" in errors[0]
    assert len(list(runs.glob("[!.]*.json"))) == 1 and captured.out.strip().splitlines()[-1].startswith("report: ")


def test_arm64_board_gives_the_hosts_ap_within_one_point(arm64_board, home, two_backends, few_images, tmp_path):
    """The emulated Raspberry Pi (``scripts/testboard.sh up arm64`` prints its profile): QNNPACK's ARM
    kernels there, the same evaluator; AP within 1 point of this machine's on the same images."""
    profile = str(arm64_board["profile"])
    bundle = next(Path(os.environ["FDQ_HOME"], "bundles").glob("slim-qnnpack-l1-*"))
    out, host = tmp_path / "arm64.json", tmp_path / "host.json"
    assert profile_main(["--target", profile, "--bundle", str(bundle), "--images", str(few_images["images"]),
                         "--gt", str(few_images["val_gt"]), "--warmup", "0", "--runs", str(tmp_path / "runs"),
                         "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["device"]["machine"]["arch"] == "aarch64" and doc["device"]["engine"] == "qnnpack"
    assert any("emulated" in w for w in doc["warnings"])
    assert fdq_main(["eval", "--bundle", str(bundle), "--images", str(few_images["images"]),
                     "--gt", str(few_images["gt"]), "--json", str(host)]) == 0
    ref = json.loads(host.read_text())
    for setting in ("easy", "medium", "hard"):
        assert abs(doc["accuracy"][setting] - ref[setting]) <= 0.01, setting

"""The fdq command line on real images: outputs, and one clear error line for bad input."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from fdq.device.evaluation import load_ground_truth

from terminal import run_on_terminal


def run_fdq(*args, env_extra=None, prog="fdq.host.cli"):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", prog, *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.fixture(scope="module")
def weights_env(shared_dir):
    return {"FDQ_WEIGHTS_PATH": str(shared_dir / "weights")}


@pytest.fixture(scope="module")
def val(shared_dir):
    return shared_dir / "data" / "widerface_val_subset" / "val"


def test_detect_embedded_default(tmp_path, weights_env):
    r = run_fdq("detect", "--output", tmp_path, env_extra=weights_env)
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "astronaut.json").read_text())
    assert len(doc["faces"]) == 1 and doc["faces"][0]["score"] > 0.9
    x1, y1, x2, y2 = doc["faces"][0]["box"]
    assert 150 < x1 < x2 < 300 and 30 < y1 < y2 < 200  # the astronaut's face
    assert (tmp_path / "astronaut.jpg").stat().st_size > 10_000


def test_detect_folder_writes_one_json_per_image(tmp_path, weights_env, val):
    event = sorted((val / "images").iterdir())[0]
    r = run_fdq("detect", "--model", "mnet025", "--input", event, "--output", tmp_path, env_extra=weights_env)
    assert r.returncode == 0, r.stderr
    images = sorted(event.glob("*.jpg"))
    docs = sorted(tmp_path.glob("*.json"))
    assert len(docs) == len(images)
    assert sum(len(json.loads(d.read_text())["faces"]) for d in docs) > len(images)


def test_eval_writes_predictions_json_and_plot_and_re_evaluates(tmp_path, weights_env, val):
    preds, summary, plot = tmp_path / "preds", tmp_path / "ap.json", tmp_path / "pr.png"
    r = run_fdq("eval", "--model", "slim", "--images", val / "images", "--gt", val / "ground_truth",
                "--long-side", 320, "--predictions-out", preds, "--json", summary, "--plot", plot,
                env_extra=weights_env)
    assert r.returncode == 0, r.stderr
    first = json.loads(summary.read_text())
    assert first["images"] == 64 and first["easy"] == pytest.approx(0.7053, abs=0.002)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = tmp_path / "again.json"
    r = run_fdq("eval", "--predictions", preds, "--gt", val / "ground_truth", "--json", again)
    assert r.returncode == 0, r.stderr
    second = json.loads(again.read_text())
    for setting in ("easy", "medium", "hard"):
        assert second[setting] == first[setting]


@pytest.mark.parametrize("case", ["missing-input", "unknown-model", "empty-folder", "malformed-mat",
                                  "missing-gt", "bad-weights", "unknown-zoo"])
def test_bad_input_is_one_error_line(tmp_path, weights_env, val, case):
    empty = tmp_path / "empty"
    empty.mkdir()
    bad_gt = tmp_path / "gt"
    bad_gt.mkdir()
    for name in ("wider_face_val.mat", "wider_easy_val.mat", "wider_medium_val.mat", "wider_hard_val.mat"):
        (bad_gt / name).write_bytes(b"MATLAB 5.0 MAT-file, this is not one")
    args = {
        "missing-input": ["detect", "--input", tmp_path / "nope.jpg", "--output", tmp_path / "o"],
        "unknown-model": ["detect", "--model", "yolo", "--output", tmp_path / "o"],
        "empty-folder": ["detect", "--input", empty, "--output", tmp_path / "o"],
        "malformed-mat": ["eval", "--images", val / "images", "--gt", bad_gt],
        "missing-gt": ["eval", "--images", val / "images", "--gt", tmp_path / "nogt"],
        "bad-weights": ["detect", "--weights", tmp_path / "none.pth", "--output", tmp_path / "o"],
        "unknown-zoo": ["zoo", "fetch", "yolo"],
    }[case]
    r = run_fdq(*args, env_extra=weights_env)
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fdq: error:"), r.stderr
    assert "Traceback" not in r.stderr


def test_zoo_list_shows_all_weights(weights_env):
    r = run_fdq("zoo", "list", env_extra=dict(weights_env, COLUMNS="200"))
    assert r.returncode == 0, r.stderr
    for name in ("slim", "rfb", "mnet025"):
        assert name in r.stdout


def test_eval_bundle_goes_through_the_runner_code(tmp_path, slim_fp32_bundle, val):
    bundle = tmp_path / "b"
    shutil.copytree(slim_fp32_bundle, bundle)  # a copy: this test damages it
    out = tmp_path / "ap.json"
    r = run_fdq("eval", "--bundle", bundle, "--images", val / "images", "--gt", val / "ground_truth", "--json", out)
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert doc["long_side"] == 320 and doc["model"] == "slim"
    for setting, expected in zip(("easy", "medium", "hard"), (0.7053, 0.5782, 0.2174)):
        assert doc[setting] == pytest.approx(expected, abs=0.002)
    (bundle / "model.pt").write_bytes((bundle / "model.pt").read_bytes()[:-10])
    r = run_fdq("eval", "--bundle", bundle, "--images", val / "images", "--gt", val / "ground_truth")
    assert r.returncode == 1 and "checksum" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    # The split's root for its images/ folder: one line naming that folder, before any image is run
    first = load_ground_truth(val / "ground_truth").keys[0]
    r = run_fdq("eval", "--bundle", slim_fp32_bundle, "--images", val, "--gt", val / "ground_truth")
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        f"fdq: error: 64 ground-truth images are not in {val} (first: {first}); point --images at "
        f"{val / 'images'}, one folder down"], r.stderr


def _all_parsers():
    """Every parser of every fdq command line, subcommands included."""
    import argparse

    from fdq.device.demo import build_parser as demo_parser
    from fdq.device.run import build_parser as run_parser
    from fdq.host.cli import build_parser, deploy_parser, profile_parser

    todo, seen = [build_parser(), deploy_parser(), profile_parser(), run_parser(), demo_parser()], []
    while todo:
        parser = todo.pop()
        seen.append(parser)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo.extend(action.choices.values())
    return seen


def test_every_option_has_a_help_line_and_required_ones_say_so():
    import argparse

    from fdq.device.cliargs import HelpFormatter

    parsers = _all_parsers()
    assert len(parsers) >= 12  # fdq, zoo, zoo list/fetch, detect, eval, quantize, export, compare, deploy, profile, runner, demo
    for parser in parsers:
        formatter = parser._get_formatter()
        assert isinstance(formatter, HelpFormatter), parser.prog  # defaults shown, required marked
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"{parser.prog} {action.option_strings or action.dest} has no help line"
            if action.required and action.option_strings:
                assert "(required" in formatter._expand_help(action), (parser.prog, action.option_strings)


def test_help_shows_defaults_and_what_is_required():
    r = run_fdq("quantize", "--help")
    text = " ".join(r.stdout.split())
    assert r.returncode == 0
    assert "slim, rfb or mnet025 (required)" in text
    assert "(required unless --fp32)" in text and "(required for int8)" in text
    assert "input long side of the bundle (default: 320)" in text
    text = " ".join(run_fdq("detect", "--help").stdout.split())
    assert "slim, rfb or mnet025 (default: slim)" in text and "(default: fdq-out)" in text


@pytest.mark.parametrize("args, needle", [
    (["detect", "--long-side", "0"], "--long-side must be >= 32, got 0"),
    (["detect", "--long-side", "-5"], "--long-side must be >= 32, got -5"),
    (["eval", "--gt", "x", "--threads", "-2"], "--threads must be >= 1, got -2"),
    (["eval", "--gt", "x", "--long-side", "-5"], "--long-side must be >= 32, got -5"),
    (["quantize", "--model", "slim", "--fp32"], "the following arguments are required: --out"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_usage_errors_are_one_line_with_a_pointer_to_help(args, needle):
    r = run_fdq(*args)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [r.stderr.strip()], r.stderr
    assert r.stderr.startswith("fdq: error: ") and needle in r.stderr and r.stderr.strip().endswith("(see --help)")


def test_native_size_has_its_own_spelling(tmp_path, weights_env):
    r = run_fdq("detect", "--long-side", "native", "--output", tmp_path / "o", env_extra=weights_env)
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "o" / "astronaut.json").read_text())
    assert doc["long_side"] == "native" and doc["width"] == 512  # the photo's own size, not resized
    assert max(face["score"] for face in doc["faces"]) > 0.9


def test_zoo_list_into_a_pipe_keeps_whole_paths(weights_env, shared_dir):
    r = run_fdq("zoo", "list", env_extra=dict(weights_env, COLUMNS="60"))
    assert r.returncode == 0, r.stderr
    assert str(shared_dir / "weights" / "mobilenet0.25_Final.pth") in r.stdout


def test_quantize_prints_its_report_and_no_torch_deprecation(tmp_path, weights_env, shared_dir):
    calib = shared_dir / "data" / "widerface_val_subset" / "calib"
    r = run_fdq("quantize", "--model", "slim", "--level", "1", "--backend", "qnnpack", "--iters", "5",
                "--calib", calib / "images", "--labels", calib / "ground_truth", "--out", tmp_path / "b",
                env_extra=weights_env)
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "b" / "report.json").read_text())["calibration_report"]
    out = " ".join(r.stdout.split())
    assert "float vs quantized on" in out and "AP drop (points)" in out and "AP against float faces" in out
    assert f"{report['quantized_ap']['easy']:.2f}" in out
    assert f"{report['agreement']['matched']}/{report['agreement']['float_faces']}" in out
    assert out.endswith(f"wrote {tmp_path / 'b'}")
    assert "deprecated" not in r.stderr, r.stderr
    assert "distilling" not in r.stderr and "fdq: calibrating" not in r.stderr  # a pipe: no progress line


def _plain(text: str) -> str:
    """A terminal's text without its colour and cursor codes."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def test_quantize_shows_progress_on_a_terminal(tmp_path, weights_env, shared_dir):
    """Level 1's distillation steps and the calibration images move a progress line on a terminal
    (stderr a pty), and the bundle is the same command's as in a pipe."""
    calib = shared_dir / "data" / "widerface_val_subset" / "calib" / "images"
    status, _, seen = run_on_terminal([sys.executable, "-m", "fdq.host.cli", "quantize", "--model", "slim", "--level",
                                       "1", "--backend", "qnnpack", "--iters", "5", "--calib", str(calib), "--out",
                                       str(tmp_path / "b")], dict(os.environ, **weights_env))
    assert status == 0, seen[-2000:]
    assert "distilling calibration inputs from BatchNorm statistics" in seen, seen[-2000:]
    assert (tmp_path / "b" / "manifest.yaml").is_file()


def test_qat_iterations_show_progress_on_a_terminal(tmp_path, weights_env, shared_dir):
    """Level 4's fake-quant iterations (fit's steps, the loop fdq train shows) move a line with their
    loss on a terminal. In a pipe: test_qat's level-4 run."""
    calib = tmp_path / "calib"
    for image in sorted((shared_dir / "data" / "widerface_val_subset" / "calib" / "images").rglob("*.jpg"))[:3]:
        (calib / image.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(image, calib / image.parent.name / image.name)
    status, _, seen = run_on_terminal([sys.executable, "-m", "fdq.host.cli", "quantize", "--model", "slim", "--level",
                                       "4", "--backend", "x86", "--calib", str(calib), "--iters", "2", "--warmup-iters",
                                       "1", "--long-side", "64", "--out", str(tmp_path / "b")],
                                      dict(os.environ, **weights_env))
    assert status == 0, seen[-2000:]
    plain = _plain(seen)
    assert "fdq: fake-quant fine-tuning, epoch 1/1" in plain and re.search(r"loss \d+\.\d{4}", plain), plain[-2000:]
    assert (tmp_path / "b" / "manifest.yaml").is_file()


def test_export_shows_its_stage_on_a_terminal_and_nothing_in_a_pipe_or_quiet(tmp_path, weights_env, slim_fp32_bundle):
    """An export is a spinner line with its elapsed time on a terminal (its stages beneath it);
    in a pipe, or on a terminal with --quiet, its output is what it was."""
    status, out, seen = run_on_terminal([sys.executable, "-m", "fdq.host.cli", "export", "--format", "onnx",
                                         str(slim_fp32_bundle), "--out", str(tmp_path / "onnx")],
                                        dict(os.environ, **weights_env))
    assert status == 0, seen[-2000:]
    plain = _plain(seen)
    assert f"fdq: exporting {slim_fp32_bundle.name} as onnx" in plain and re.search(r"0:00:\d\d", plain), plain[-2000:]
    assert out.startswith(f"wrote {tmp_path / 'onnx'}")
    r = run_fdq("export", "--format", "torchscript", slim_fp32_bundle, "--out", tmp_path / "ts", env_extra=weights_env)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    status, out, seen = run_on_terminal([sys.executable, "-m", "fdq.host.cli", "export", "--format", "torchscript",
                                         str(slim_fp32_bundle), "--out", str(tmp_path / "quiet"), "--quiet"],
                                        dict(os.environ, **weights_env))
    assert status == 0 and seen == "" and out.startswith(f"wrote {tmp_path / 'quiet'}"), seen  # --quiet: nothing

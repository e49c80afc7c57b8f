"""The benchmark scripts never replace a result file without --force, and refuse before any work.

Each script runs as a real subprocess with the arguments it needs (the real shared data and
weights), its result file pointing at a file that already holds the user's text. The refusal must
be one error line that names the option and --force, leave the file as it was, and come before the
script builds, loads or writes anything: the run's folder (every other output named inside it) holds
nothing new afterwards, and paths the script would open first (a bundle, a board profile) do not
exist, so only a refusal that comes first gives this error.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"

#: script -> the arguments besides its result files: (shared folder, run folder) -> argv
BASE: Dict[str, Callable[[Path, Path], List[str]]] = {
    "bench_ap_resolution": lambda s, t: ["--data", f"{s}/data/widerface_val_subset"],
    "bench_eval": lambda s, t: ["--shared", str(s)],
    "bench_forward": lambda s, t: ["--images", f"{t}/no-images"],
    "bench_first_shape": lambda s, t: ["--bundle", f"{t}/no-bundle"],
    "bench_instructions": lambda s, t: ["--board", f"{t}/no-board.yaml", "--shared", str(s), "--work", f"{t}/work"],
    "bench_kernels": lambda s, t: ["--image", next((s / "data/widerface_val_subset/val/images").rglob("*.jpg")),
                                   "--weights", f"{s}/weights/slim_Final.pth"],
    "bench_mnn_int8": lambda s, t: ["--data", f"{s}/data/widerface_val_subset", "--no-docs"],
    "bench_ncnn_int8": lambda s, t: ["--data", f"{s}/data/widerface_val_subset", "--no-docs"],
    "bench_ncnn_layers": lambda s, t: ["--data", f"{s}/data/widerface_val_subset", "--no-docs"],
    "bench_peers": lambda s, t: ["--shared", str(s), "--work", f"{t}/work", "--markdown", f"{t}/SPEED.md"],
    "bench_quant": lambda s, t: ["--data", f"{s}/data/widerface_val_subset"],
    "bench_resize": lambda s, t: ["--shared", str(s)],
    "bench_runtimes": lambda s, t: ["--shared", str(s), "--work", f"{t}/work", "--markdown", f"{t}/SPEED.md"],
    "check_board_torch": lambda s, t: ["--python", sys.executable, "--data", f"{s}/data/widerface_val_subset"],
    "bench_export_int8": lambda s, t: ["--bundle", f"{t}/no-bundle", "--images",
                                       f"{s}/data/widerface_val_subset/val/images",
                                       "--gt", f"{s}/data/widerface_val_subset/val/ground_truth"],
    "bench_ort_int8": lambda s, t: ["--shared", str(s)],
    "bench_pt2e": lambda s, t: ["--shared", str(s)],
}
#: script -> the options naming its result files: each is the existing one in a case of its own
FILES = {name: ["--json"] for name in BASE}
FILES.update(bench_mnn_int8=["--out"], bench_peers=["--json", "--plot"], bench_quant=["--json", "--markdown"])
CASES = [(name, option) for name, options in FILES.items() for option in options]


def run_script(name: str, args: List[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPTS / f"{name}.py"), *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=120, env=dict(os.environ, FDQ_HOME=str(cwd / "home")))


@pytest.mark.parametrize("name,option", CASES, ids=[f"{n}{o}" for n, o in CASES])
def test_existing_result_file_is_refused_before_work(name, option, shared_dir, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    existing = run_dir / f"mine.{option[2:]}"
    existing.write_text("the user's own results\n", encoding="utf-8")
    outputs = [arg for opt in FILES[name] for arg in (opt, existing if opt == option else run_dir / f"new.{opt[2:]}")]
    result = run_script(name, [*BASE[name](shared_dir, run_dir), *outputs], run_dir)
    assert result.returncode != 0, result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"{name}: error: {option} {existing}: file exists; add --force to replace it", result.stderr
    assert existing.read_text(encoding="utf-8") == "the user's own results\n"
    assert sorted(run_dir.rglob("*")) == [existing]  # nothing made: no work folder, home or other result
    assert result.stdout == ""


def test_help_offers_force():
    """One interpreter runs every script's --help (each would import torch again on its own)."""
    driver = ("import runpy, sys\n"
              "for path in sys.argv[1:]:\n"
              "    sys.argv = [path, '--help']\n"
              "    print(f'== {path}', flush=True)\n"
              "    try:\n"
              "        runpy.run_path(path, run_name='__main__')\n"
              "    except SystemExit as exc:\n"
              "        assert exc.code in (0, None), (path, exc.code)\n")
    paths = [str(SCRIPTS / f"{name}.py") for name in BASE]
    result = subprocess.run([sys.executable, "-c", driver, *paths], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    helps = dict(part.split("\n", 1) for part in result.stdout.split("== ")[1:])
    assert sorted(helps) == sorted(paths)
    for path, text in helps.items():
        assert "--force" in text and "replace an existing" in " ".join(text.split()), (path, text)


@pytest.mark.parametrize("name,result", [("bench_instructions", "bench_instructions.json"),
                                         ("check_board_torch", "board_torch_compat.json")])
def test_from_json_only_reads_and_is_not_refused(name, result, tmp_path):
    """--from-json writes no --json, so an existing one is neither refused nor touched."""
    existing = tmp_path / "mine.json"
    existing.write_text("the user's own results\n", encoding="utf-8")
    earlier = SCRIPTS.parent / "docs" / "results" / result
    run = run_script(name, ["--from-json", earlier, "--json", existing], tmp_path)
    assert run.returncode == 0, run.stderr
    assert "| slim |" in run.stdout  # the table of the earlier result
    assert existing.read_text(encoding="utf-8") == "the user's own results\n"

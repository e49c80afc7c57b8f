"""The benchmark scripts never replace a result file without --force, and refuse before any work;
what they write has the one result layout, fdq.bench/1 (scripts/benchlib/results.py).

Each script runs as a real subprocess with the arguments it needs (the real shared data and
weights), its result file pointing at a file that already holds the user's text. The refusal must
be one error line that names the option and --force, leave the file as it was, and come before the
script builds, loads or writes anything: the run's folder (every other output named inside it) holds
nothing new afterwards, and paths the script would open first (a bundle, a board profile) do not
exist, so only a refusal that comes first gives this error.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"

#: script -> the arguments besides its result files: (data folder, run folder) -> argv
BASE: Dict[str, Callable[[Path, Path], List[str]]] = {
    "bench_ap_resolution": lambda d, t: ["--data", d],
    "bench_eval": lambda d, t: ["--data", d],
    "bench_forward": lambda d, t: ["--data", f"{t}/no-data"],
    "bench_first_shape": lambda d, t: ["--bundle", f"{t}/no-bundle"],
    "bench_instructions": lambda d, t: ["--board", f"{t}/no-board.yaml", "--data", d, "--work", f"{t}/work"],
    "bench_kernels": lambda d, t: ["--data", d, "--image", next((d / "val/images").rglob("*.jpg")),
                                   "--weights", f"{d.parents[1]}/weights/slim_Final.pth"],
    "bench_mnn_int8": lambda d, t: ["--data", d, "--no-docs"],
    "bench_mobilenet_a72": lambda d, t: ["--board", f"{t}/no-board.yaml", "--work", f"{t}/work"],
    "bench_ncnn_int8": lambda d, t: ["--data", d, "--no-docs"],
    "bench_ncnn_layers": lambda d, t: ["--data", d, "--no-docs"],
    "bench_peers": lambda d, t: ["--data", d, "--work", f"{t}/work", "--markdown", f"{t}/SPEED.md"],
    "bench_quant": lambda d, t: ["--data", d],
    "bench_resize": lambda d, t: ["--data", d],
    "bench_runtimes": lambda d, t: ["--data", d, "--work", f"{t}/work", "--markdown", f"{t}/SPEED.md"],
    "check_board_torch": lambda d, t: ["--python", sys.executable, "--data", d],
    "bench_export_int8": lambda d, t: ["--bundle", f"{t}/no-bundle", "--data", d],
    "bench_ort_int8": lambda d, t: ["--data", d],
    "bench_pt2e": lambda d, t: ["--data", d],
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
    result = run_script(name, [*BASE[name](shared_dir / "data" / "widerface_val_subset", run_dir), *outputs], run_dir)
    assert result.returncode != 0, result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"{name}: error: {option} {existing}: file exists; add --force to replace it", result.stderr
    assert existing.read_text(encoding="utf-8") == "the user's own results\n"
    assert sorted(run_dir.rglob("*")) == [existing]  # nothing made: no work folder, home or other result
    assert result.stdout == ""


def test_help_offers_force():
    """One interpreter runs every script's --help (each would import torch again on its own)."""
    driver = ("import runpy, sys\n"
              f"sys.path.insert(0, {str(SCRIPTS)!r})  # as running a script from there does: benchlib\n"
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


#: the result layout every benchmark writes (scripts/benchlib/results.py), keys in this order
LAYOUT = ["schema", "script", "command", "created", "machine", "settings", "rows", "summary"]


def assert_layout(doc: dict, script: str) -> None:
    assert list(doc) == LAYOUT
    assert doc["schema"] == "fdq.bench/1" and doc["script"] == script
    assert doc["command"].startswith(f"python scripts/{script}.py")
    assert isinstance(doc["rows"], list) and doc["rows"] and all(isinstance(r, dict) for r in doc["rows"])
    assert all(isinstance(doc[k], dict) for k in ("machine", "settings", "summary"))


def test_a_run_writes_the_common_layout(slim_fp32_bundle, tmp_path):
    """A real (short) run of a benchmark: its result file has the layout, with this machine's facts."""
    out = tmp_path / "first_shape.json"
    run = run_script("bench_first_shape", ["--bundle", slim_fp32_bundle, "--warmup", "1", "--runs", "10",
                                           "--json", out], tmp_path)
    assert run.returncode == 0, run.stderr
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert_layout(doc, "bench_first_shape")
    assert doc["rows"][0]["first_shape_timed_ms"] > 0 and doc["settings"]["runs"] == 10
    assert {"arch", "cpu", "cores", "python", "torch"} <= set(doc["machine"])


def test_from_json_merges_into_the_common_layout(tmp_path):
    """bench_quant --from-json reads earlier results (one per backend) and writes one in the same layout."""
    results = SCRIPTS.parent / "docs" / "results"
    out, page = tmp_path / "merged.json", tmp_path / "merged.md"
    run = run_script("bench_quant", ["--from-json", results / "bench_quant_x86.json", results / "bench_quant_qnnpack.json",
                                     "--json", out, "--markdown", page], tmp_path)
    assert run.returncode == 0, run.stderr
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert_layout(doc, "bench_quant")
    assert {r["backend"] for r in doc["rows"]} == {None, "x86", "qnnpack"}
    assert "| L2 histogram | qnnpack |" in page.read_text(encoding="utf-8")


def test_from_json_refuses_another_layout(tmp_path):
    """A file of another layout (the raw results keep theirs) is one error line, not a traceback."""
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"command": "old", "rows": []}), encoding="utf-8")
    run = run_script("bench_instructions", ["--from-json", other], tmp_path)
    assert run.returncode != 0
    assert run.stderr.strip().splitlines()[-1] == (f"bench_instructions: error: {other}: not an fdq.bench/1 result "
                                                   "(the layout of docs/results/README.md)")


@pytest.mark.parametrize("path", sorted((SCRIPTS.parent / "docs" / "results").glob("*.json")),
                         ids=lambda p: p.name)
def test_committed_results_have_the_common_layout(path):
    """Every result docs/results/ holds (not raw/) is in the layout its script reads back."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert_layout(doc, doc.get("script", ""))
    assert (SCRIPTS / f"{doc['script']}.py").is_file()

"""Nothing a user owns is ever replaced: every output path of every fdq command, on real bundles and images.

The rule (fdq.device.outputs): a new path or an empty folder is written; an fdq output already there
is replaced only with --force; anything else is refused, --force or not, with one error line.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Dict

import pytest

from fdq.device.outputs import OutputRefused, atomic_folder, check_file_output, check_folder_output, write_marker


def run_fdq(*args, cwd=None, env_extra=None, prog="fdq.host.cli"):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", prog, *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600, cwd=cwd)


def snapshot(folder: Path) -> Dict[str, str]:
    """Every file below ``folder`` (relative path -> sha256), folders included as markers."""
    return {p.relative_to(folder).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(folder.rglob("*"))}


def one_error_line(result: subprocess.CompletedProcess, needle: str) -> str:
    assert result.returncode != 0
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("fdq: error:") and needle in lines[0], result.stderr
    return lines[0]


@pytest.fixture
def user_folder(tmp_path: Path) -> Path:
    """A folder of the user's: a file, a subfolder with a file."""
    folder = tmp_path / "mine"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("my notes\n")
    (folder / "sub" / "data.csv").write_text("a,b\n1,2\n")
    return folder


@pytest.fixture(scope="module")
def weights_env(shared_dir: Path) -> Dict[str, str]:
    return {"FDQ_WEIGHTS_PATH": str(shared_dir / "weights")}


@pytest.fixture(scope="module")
def val_event(shared_dir: Path) -> Path:
    return sorted((shared_dir / "data" / "widerface_val_subset" / "val" / "images").iterdir())[0]


# ------------------------------------------------------------------ fdq quantize --out
QUANTIZE = ("quantize", "--model", "slim", "--fp32", "--out")


def test_quantize_writes_a_new_path_and_an_empty_folder(tmp_path: Path, weights_env: Dict[str, str]) -> None:
    r = run_fdq(*QUANTIZE, tmp_path / "new" / "b", env_extra=weights_env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "new" / "b" / "manifest.yaml").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_fdq(*QUANTIZE, ".", cwd=empty, env_extra=weights_env)  # the working directory itself, empty
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in empty.iterdir()) == ["manifest.yaml", "model.pt", "report.json"]


def test_quantize_refuses_an_existing_bundle_unless_forced(tmp_path: Path, weights_env: Dict[str, str]) -> None:
    out = tmp_path / "b"
    assert run_fdq(*QUANTIZE, out, env_extra=weights_env).returncode == 0
    before = snapshot(out)
    one_error_line(run_fdq(*QUANTIZE, out, env_extra=weights_env), "add --force")
    assert snapshot(out) == before
    r = run_fdq(*QUANTIZE, out, "--force", env_extra=weights_env)
    assert r.returncode == 0, r.stderr
    after = snapshot(out)
    assert after.keys() == before.keys() and after["manifest.yaml"] != before["manifest.yaml"]  # a new bundle
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no scratch or old copy left beside it


@pytest.mark.parametrize("force", [False, True])
def test_quantize_never_replaces_a_users_folder_or_file(tmp_path: Path, user_folder: Path,
                                                        weights_env: Dict[str, str], force: bool) -> None:
    extra = ["--force"] if force else []
    before = snapshot(user_folder)
    one_error_line(run_fdq(*QUANTIZE, user_folder, *extra, env_extra=weights_env), "not written by fdq")
    assert snapshot(user_folder) == before
    a_file = tmp_path / "somefile"
    a_file.write_text("keep me\n")
    one_error_line(run_fdq(*QUANTIZE, a_file, *extra, env_extra=weights_env), "not a folder fdq wrote")
    assert a_file.read_text() == "keep me\n"


def test_out_dot_inside_a_project_keeps_every_file(user_folder: Path, weights_env: Dict[str, str]) -> None:
    before = snapshot(user_folder)
    for extra in ([], ["--force"]):
        one_error_line(run_fdq(*QUANTIZE, ".", *extra, cwd=user_folder, env_extra=weights_env), "--out .")
        assert snapshot(user_folder) == before
    assert sorted(p.name for p in user_folder.parent.iterdir()) == ["mine"]


def test_the_home_folder_is_refused(user_folder: Path, weights_env: Dict[str, str]) -> None:
    before = snapshot(user_folder)
    one_error_line(run_fdq(*QUANTIZE, "~", "--force", env_extra=dict(weights_env, HOME=str(user_folder))), "--out ~")
    assert snapshot(user_folder) == before


# ------------------------------------------------------------------ fdq export --out
def test_export_follows_the_same_rule(tmp_path: Path, user_folder: Path, slim_fp32_bundle: Path) -> None:
    before = snapshot(user_folder)
    one_error_line(run_fdq("export", slim_fp32_bundle, "--format", "torchscript", "--out", user_folder, "--force"),
                   "not written by fdq")
    assert snapshot(user_folder) == before
    out = tmp_path / "copy"
    assert run_fdq("export", slim_fp32_bundle, "--format", "torchscript", "--out", out).returncode == 0
    one_error_line(run_fdq("export", slim_fp32_bundle, "--format", "torchscript", "--out", out), "add --force")
    assert run_fdq("export", slim_fp32_bundle, "--format", "torchscript", "--out", out, "--force").returncode == 0


# ------------------------------------------------------------------ fdq detect --output
def test_detect_output_is_all_or_nothing_and_never_the_users(tmp_path: Path, user_folder: Path, val_event: Path,
                                                             weights_env: Dict[str, str]) -> None:
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(sorted(val_event.glob("*.jpg"))[0], images / "b_face.jpg")
    (images / "a_broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")  # sorted first: fails on the first image
    out = tmp_path / "out"
    one_error_line(run_fdq("detect", "--input", images, "--output", out, env_extra=weights_env), "cannot decode")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "mine"]  # no empty output folder left

    (images / "a_broken.jpg").unlink()
    assert run_fdq("detect", "--input", images, "--output", out, env_extra=weights_env).returncode == 0
    assert sorted(p.name for p in out.iterdir()) == [".fdq-output", "b_face.jpg", "b_face.json"]
    one_error_line(run_fdq("detect", "--input", images, "--output", out, env_extra=weights_env), "add --force")
    assert run_fdq("detect", "--input", images, "--output", out, "--force", env_extra=weights_env).returncode == 0

    before = snapshot(user_folder)
    one_error_line(run_fdq("detect", "--input", images, "--output", user_folder, "--force", env_extra=weights_env),
                   "not written by fdq")
    assert snapshot(user_folder) == before


# ------------------------------------------------------------------ fdq eval --json / --plot / --predictions-out
def test_eval_outputs_are_never_the_users(tmp_path: Path, user_folder: Path, shared_dir: Path,
                                          weights_env: Dict[str, str]) -> None:
    val = shared_dir / "data" / "widerface_val_subset" / "val"
    base = ["eval", "--model", "slim", "--images", val / "images", "--gt", val / "ground_truth"]
    notes = user_folder / "notes.txt"
    before = snapshot(user_folder)
    for option in ("--json", "--plot"):
        one_error_line(run_fdq(*base, option, notes, env_extra=weights_env), "add --force")
        one_error_line(run_fdq(*base, option, user_folder / "sub", "--force", env_extra=weights_env),
                       "not a regular file")
    one_error_line(run_fdq(*base, "--predictions-out", user_folder, "--force", env_extra=weights_env),
                   "not written by fdq")
    assert snapshot(user_folder) == before

    preds, summary = tmp_path / "preds", tmp_path / "ap.json"
    assert run_fdq(*base, "--predictions-out", preds, "--json", summary, env_extra=weights_env).returncode == 0
    again = run_fdq(*base, "--predictions-out", preds, "--json", summary, "--force", env_extra=weights_env)
    assert again.returncode == 0, again.stderr
    assert json.loads(summary.read_text())["images"] == 64 and len(list(preds.glob("*/*.txt"))) == 64


# ------------------------------------------------------------------ the rule itself
def test_a_failed_folder_write_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_folder(out) as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_a_file_the_user_puts_into_the_empty_folder_meanwhile_is_kept(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(OutputRefused, match="appeared there while fdq was writing"):
        with atomic_folder(out) as tmp:
            (tmp / "a.txt").write_text("fdq's")
            (tmp / "b.txt").write_text("fdq's")
            (out / "b.txt").write_text("the user's")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"] and (out / "b.txt").read_text() == "the user's"


def test_a_marked_folder_is_replaced_only_with_force(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with atomic_folder(out) as tmp:
        (tmp / "a.txt").write_text("first")
        write_marker(tmp)
    with pytest.raises(OutputRefused, match="add --force"):
        check_folder_output(out)
    with atomic_folder(out, force=True) as tmp:
        (tmp / "b.txt").write_text("second")
        write_marker(tmp)
    assert sorted(p.name for p in out.iterdir()) == [".fdq-output", "b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_checking_a_file_output_interns_nothing(tmp_path: Path) -> None:
    """The runner checks its --json, a name new each run, before it counts instructions: interned (as
    pathlib does with every part), the name would change what the counted frames execute."""
    name = "".join(["run-", uuid.uuid4().hex, ".json"])
    assert check_file_output(f"{tmp_path}{os.sep}{name}") == os.path.join(tmp_path, name)
    probe = "".join(["run-", name[4:]])  # the same text, a new object: interning keeps it only if none was
    assert sys.intern(probe) is probe


def test_file_outputs(tmp_path: Path) -> None:
    existing = tmp_path / "r.json"
    existing.write_text("{}")
    assert check_file_output(tmp_path / "new.json") == str(tmp_path / "new.json")
    with pytest.raises(OutputRefused, match="add --force"):
        check_file_output(existing)
    assert check_file_output(existing, force=True) == str(existing)
    with pytest.raises(OutputRefused, match="not a regular file"):
        check_file_output(tmp_path, force=True)

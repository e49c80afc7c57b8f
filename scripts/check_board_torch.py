#!/usr/bin/env python
"""Do bundles written by this host's torch and runtimes run, unchanged, on the board's older ones and CPU?

The board runs the aarch64 torch 2.9.1 wheel, older than the host's; a bundle is TorchScript
saved by the host. For each model this script builds a float bundle, an fp16 one and a level-2
int8 bundle per backend (the ``fdq quantize`` defaults) with the host's torch, copies
``fdq/device`` alone into a scratch folder (what reaches a board: nothing of the host side), and
runs ``python -m fdq.device.run`` on the val images under the host's Python and under
``--python``: a venv with the board's torch, or with ``--chroot ROOT`` the Python of an arm64 root
filesystem (``scripts/make_board_root.sh``), run through qemu-user as a Cortex-A72 on an x86 host, so
that the int8 bundles go through the ARM kernels (QNNPACK's NEON code) the board runs. ``--runtimes`` adds
every other runtime's float and int8 bundle, exported from those (``fdq export``: ONNX float and int8,
ncnn, MNN float and int8, ExecuTorch float; ExecuTorch int8 through ``fdq quantize --backend xnnpack``; the
recipes of ``benchlib.recipes``);
on an emulated board give ``--python`` a Python that has them, e.g. the venv ``fdq-deploy --setup``
installed into a test board's work directory. Each run's machine, runtime version, AP and faces per
frame are recorded; a bundle agrees when it runs on both and the AP of every setting matches within
``--ap-tolerance`` points.

Exit status 1 when a bundle fails to run or disagrees, so the script doubles as a check.

    python scripts/check_board_torch.py --python /path/to/torch-2.9.1/bin/python \\
        --json docs/results/board_torch_compat.json --force
    sudo scripts/make_board_root.sh /srv/fdq-board
    sudo python scripts/check_board_torch.py --chroot /srv/fdq-board --python /opt/fdq/bin/python \\
        --json docs/results/board_arm64_compat.json --force
    sudo python scripts/check_board_torch.py --chroot /var/lib/fdq-testboard/NAME/root \\
        --python /root/host1/runtimes/venv/bin/python --runtimes all --models slim,rfb,mnet025 --rows fp32,l2 \\
        --backends qnnpack --images 8 --json docs/results/board_arm64_runtimes.json
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Dict, Iterator, List, Optional, Tuple

from benchlib.data import Data, add_data_argument, data_of
from benchlib.recipes import RECIPES, build
from benchlib.results import read_result, result, write_result

from fdq.calibration.labels import subset_ground_truth
from fdq.device.bundle import RUNTIME_MODULES
from fdq.device.evaluation import SETTINGS, save_ground_truth_json
from fdq.device.outputs import checked_outputs_or_exit
from fdq.models import MODEL_NAMES

DEVICE_DIR = Path(__file__).resolve().parent.parent / "device"
BOARD_MOUNT = "/mnt/fdq-check"
# The CPU a chrooted board's programs run as under qemu-user, as on the test boards: a Pi 4's, not qemu's
# default "max", which has the dot product, SVE and i8mm extensions int8 kernels are chosen by.
BOARD_CPU = "cortex-a72"
RUNTIMES = tuple(RUNTIME_MODULES)  # every runtime the runner knows
# runtime -> its bundles besides torch's: (row name, recipe); an int8 torch bundle's export comes from the
# level-2 bundle of the first --backends
EXPORTS = {"onnxruntime": [("onnx", "onnx-fp32"), ("onnx-int8", "onnx-int8-l2")],
           "ncnn": [("ncnn", "ncnn-fp32")],
           "mnn": [("mnn", "mnn-fp32"), ("mnn-int8", "mnn-int8")],
           "executorch": [("executorch", "executorch-fp32")]}
#: --rows -> the torch bundle's recipe
TORCH_ROWS = {"fp32": "fp32", "fp16": "fp16", "l2": "l2-histogram"}


def device_only_tree(root: Path) -> Path:
    """``root/fdq/device``: the device package alone, importable with ``PYTHONPATH=root``."""
    shutil.copytree(DEVICE_DIR, root / "fdq" / "device", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    return root


@dataclass(frozen=True)
class Interpreter:
    """Where the device runner runs: a Python on this machine, or one inside a root filesystem
    entered with chroot (``root``: the emulated board). There it sees the scratch folder and the
    images through bind mounts, with /proc and /sys mounted (QNNPACK reads the CPU description
    there), all in a private mount namespace that ends with the run."""

    python: str
    work: Path      # scratch folder: the device-only tree, bundles, ground truth, results
    images: Path
    root: Optional[Path] = None

    def path(self, path: Path) -> str:
        """``path`` as the interpreter sees it."""
        if self.root is None:
            return str(path)
        for outside, inside in ((self.work, "work"), (self.images, "images")):
            if path == outside or outside in path.parents:
                return str(PurePosixPath(BOARD_MOUNT, inside, path.relative_to(outside)))
        raise ValueError(f"{path} is outside what the board sees")

    def command(self, args: List[str]) -> List[str]:
        cpu = [] if self.root is None else [f"QEMU_CPU={BOARD_CPU}"]  # qemu-user (binfmt) reads it
        inner = ["env", "-i", "PATH=/usr/bin:/bin", f"HOME={self.path(self.work)}", "PYTHONDONTWRITEBYTECODE=1",
                 *cpu, f"PYTHONPATH={self.path(self.work / 'board')}", self.python, *args]
        if self.root is None:
            return inner
        root, mount = shlex.quote(str(self.root)), shlex.quote(str(self.root) + BOARD_MOUNT)
        script = (f"mkdir -p {mount}/work {mount}/images"
                  f" && mount --bind {shlex.quote(str(self.work))} {mount}/work"
                  f" && mount --bind {shlex.quote(str(self.images))} {mount}/images"
                  f" && mount -t proc proc {root}/proc && mount -t sysfs sysfs {root}/sys"
                  f" && exec chroot {root} {shlex.join(inner)}")
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]


def run_device(interpreter: Interpreter, bundle: Path, gt: Path, out: Path) -> Dict[str, Any]:
    """One ``fdq.device.run`` over every val image; its result document, or the error it printed."""
    p = interpreter.path
    proc = subprocess.run(interpreter.command(["-m", "fdq.device.run", "--bundle", p(bundle), "--source",
                                               p(interpreter.images), "--gt", p(gt), "--warmup", "1",
                                               "--json", p(out)]),
                          capture_output=True, text=True, cwd=str(interpreter.work))
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        return {"error": lines[-1] if lines else f"exit status {proc.returncode}"}
    doc = json.loads(out.read_text(encoding="utf-8"))
    device = doc["device"]
    versions = device["runtime_versions"]
    module = {"torchscript": "torch", "mnn": "MNN"}.get(versions["runtime"], versions["runtime"])
    return {"machine": device["machine"]["arch"], "emulated": device["emulation"]["emulated"],
            "torch": versions.get("torch"), "runtime": versions["runtime"], "version": versions.get(module),
            "kernels": device["kernels"],
            "ap": {s: round(100.0 * doc["accuracy"][s], 2) for s in SETTINGS},
            "faces_per_frame": doc["detections"]["per_frame"]}


def compare(host: Dict[str, Any], board: Dict[str, Any], tolerance: float) -> Dict[str, Any]:
    if "error" in host or "error" in board:
        return {"agree": False}
    ap_delta = max(abs(host["ap"][s] - board["ap"][s]) for s in SETTINGS)
    frames = sum(a != b for a, b in zip(host["faces_per_frame"], board["faces_per_frame"]))
    return {"agree": ap_delta <= tolerance, "max_ap_delta": round(ap_delta, 2), "frames_with_other_face_count": frames}


def bundles_of(model: str, keys: List[str], args: argparse.Namespace, work: Path,
               data: Data) -> Iterator[Tuple[str, Optional[str], Path]]:
    """(row, backend, bundle) of ``model``: the torch rows, then each of ``args.runtimes``' exports (of the
    float row, or of the level-2 row's first backend), and the ExecuTorch int8 program. Every bundle is
    made by ``fdq`` in a process of its own, as a user runs it (after an MNN int8 calibration MNN's
    converter cannot run again in the same process: docs/ACCURACY.md)."""
    def made(key: str, backend: Optional[str]) -> Path:
        return build(key, model, args.long_side, work, data, backend)

    int8 = "l2-histogram" in keys
    if "torchscript" in args.runtimes:
        yield from ((key, backend, made(key, backend))
                    for key in keys for backend in (args.backends if RECIPES[key].per_backend else [None]))
    for runtime in args.runtimes:
        for name, key in EXPORTS.get(runtime, []):
            if RECIPES[key].per_backend and not int8:
                continue  # an export of the level-2 bundle, which --rows leaves out
            backend = args.backends[0] if RECIPES[key].per_backend else None
            yield name, backend, made(key, backend)
    if "executorch" in args.runtimes and int8:
        yield "l2-histogram-executorch", "xnnpack", made("l2-histogram", "xnnpack")


def run(args: argparse.Namespace, data: Data, argv: Optional[List[str]]) -> Dict[str, Any]:
    data = Data.at(data.root.resolve())  # the runs start in the scratch folder
    images = str(data.val_images)
    torch_rows = [TORCH_ROWS[r] for r in ("fp32", *args.rows)]
    results: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="check_board_torch.") as tmp:
        work = Path(tmp)
        device_only_tree(work / "board")
        truth = data.ground_truth()
        if args.images:  # copies (a chroot cannot follow links out) of the first N images, their ground truth alone
            keys = sorted(str(p.relative_to(images).with_suffix("")) for p in Path(images).rglob("*.jpg"))[:args.images]
            for key in keys:
                (work / "images" / key).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(Path(images, f"{key}.jpg"), work / "images" / f"{key}.jpg")
            truth, images = subset_ground_truth(truth, keys), str(work / "images")
        host = Interpreter(sys.executable, work, Path(images))
        board = Interpreter(args.python, work, Path(images), Path(args.chroot).resolve() if args.chroot else None)
        gt = work / "gt.json"  # the board reads JSON ground truth (no scipy there)
        save_ground_truth_json(truth, gt)
        for model in args.models:
            for key, backend, bundle in bundles_of(model, torch_rows, args, work, data):
                # one result file per run: the runner never replaces one
                on_host = run_device(host, bundle, gt, work / f"host-{bundle.name}.json")
                on_board = run_device(board, bundle, gt, work / f"board-{bundle.name}.json")
                entry = {"model": model, "row": key, "backend": backend, "host": on_host, "board": on_board,
                         **compare(on_host, on_board, args.ap_tolerance)}
                print(json.dumps({k: entry.get(k) for k in ("model", "row", "backend", "agree", "max_ap_delta")}),
                      flush=True)
                results.append(entry)
    return result("check_board_torch", results, argv=argv, settings={
        "board_root": args.chroot, "long_side": args.long_side, "ap_tolerance_points": args.ap_tolerance})


def markdown(doc: Dict[str, Any]) -> str:
    """The results as one table: AP easy / medium / hard (points) on each side, and their difference."""
    def ap(run: Dict[str, Any]) -> str:
        return run["error"] if "error" in run else " / ".join(f"{run['ap'][s]:.2f}" for s in SETTINGS)

    def side(key: str, machine: str) -> str:
        run = next((r[key] for r in doc["rows"] if "error" not in r[key]), None)
        if run is None:
            return machine
        return f"{run['machine']}{', emulated' if run['emulated'] else ''}, torch {run['torch']}"

    def runtime(r: Dict[str, Any]) -> str:
        run = r["board"] if "error" not in r["board"] else r["host"]
        return "-" if "error" in run else f"{run.get('runtime', 'torchscript')} {run.get('version') or run['torch']}"

    header = (f"| model | bundle | backend | runtime (board) | host ({side('host', doc['machine']['arch'])}) "
              f"| board ({side('board', 'board')}) | max AP diff | frames with another face count |")
    lines = [f"`{doc['command']}` ({doc['created']}; long side {doc['settings']['long_side']}; AP easy / medium / "
             "hard, points)",
             "", header, "|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        lines.append(f"| {r['model']} | {r['row']} | {r['backend'] or '-'} | {runtime(r)} | {ap(r['host'])} "
                     f"| {ap(r['board'])} | {r.get('max_ap_delta', '-')} | {r.get('frames_with_other_face_count', '-')} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--python", help="interpreter with the board's torch (e.g. a torch 2.9.1 venv)")
    p.add_argument("--chroot", metavar="ROOT", help="--python lies in this root filesystem and runs chrooted into it "
                                                    "(an arm64 one from scripts/make_board_root.sh; needs root)")
    add_data_argument(p)
    p.add_argument("--models", type=lambda s: s.split(","), default=list(MODEL_NAMES))
    p.add_argument("--backends", type=lambda s: s.split(","), default=["qnnpack", "x86"])
    p.add_argument("--rows", type=lambda s: [r for r in s.split(",") if r != "fp32"], default=["fp16", "l2"],
                   help="torch bundles besides fp32: fp16, l2 (level-2 int8, histogram observer)")
    p.add_argument("--runtimes", type=lambda s: list(RUNTIMES) if s == "all" else s.split(","),
                   default=["torchscript"], help=f"runtimes whose bundles run: {', '.join(RUNTIMES)} or all")
    p.add_argument("--images", type=int, help="only the first N val images, sorted (emulation is slow)")
    p.add_argument("--long-side", type=int, default=320)
    p.add_argument("--ap-tolerance", type=float, default=0.5,
                   help="largest AP difference that agrees (points; int8 kernels of another CPU round differently)")
    p.add_argument("--json", default="docs/results/board_torch_compat.json")
    p.add_argument("--from-json", metavar="JSON", help="run nothing: print the table of an earlier --json")
    p.add_argument("--force", action="store_true", help="replace an existing --json")
    args = p.parse_args(argv)
    if args.from_json:
        print(markdown(read_result(args.from_json, "check_board_torch")))
        return 0
    if not args.python:
        p.error("give --python (run) or --from-json (print a table)")
    unknown = sorted(set(args.rows) - set(TORCH_ROWS))
    if unknown:
        p.error(f"unknown rows: {', '.join(unknown)} (choose from: fp16, l2)")
    out, = checked_outputs_or_exit("check_board_torch", args.force, ("--json", args.json))
    doc = run(args, data_of(args, "val", "calib"), argv)
    write_result(out, doc)
    failed = [r for r in doc["rows"] if not r["agree"]]
    print(markdown(doc))
    print(f"wrote {out}: {len(doc['rows']) - len(failed)} of {len(doc['rows'])} bundles agree")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Do bundles written by this host's torch run, unchanged, under the board's older torch?

The board runs the aarch64 torch 2.9.1 wheel, older than the host's; a bundle is TorchScript
saved by the host. For each model this script builds a float bundle, an fp16 one and a level-2
int8 bundle per backend (the ``fdq quantize`` defaults) with the host's torch, copies
``fdq/device`` alone into a scratch folder (what reaches a board: nothing of the host side), and
runs ``python -m fdq.device.run`` on the val images under the host's Python and under
``--python``. Each run's torch version, AP and faces per frame are recorded; a bundle agrees when
it loads under both and the AP of every setting matches within ``--ap-tolerance`` points.

Exit status 1 when a bundle fails to run or disagrees, so the script doubles as a check.

    python scripts/check_board_torch.py --python /path/to/torch-2.9.1/bin/python \\
        --data ../shared/data/widerface_val_subset --json docs/board_torch_compat.json
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quant import build, rows_for  # noqa: E402  (the one way a benchmark builds bundles)

from fdq.device.evaluation import SETTINGS, load_ground_truth, save_ground_truth_json  # noqa: E402
from fdq.models import MODEL_NAMES  # noqa: E402

DEVICE_DIR = Path(__file__).resolve().parent.parent / "device"


def device_only_tree(root: Path) -> Path:
    """``root/fdq/device``: the device package alone, importable with ``PYTHONPATH=root``."""
    shutil.copytree(DEVICE_DIR, root / "fdq" / "device", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    return root


def run_device(python: str, tree: Path, bundle: Path, images: str, gt: Path, out: Path) -> Dict[str, Any]:
    """One ``fdq.device.run`` over every val image; its result document, or the error it printed."""
    env = {"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin", "HOME": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([python, "-m", "fdq.device.run", "--bundle", str(bundle), "--source", images,
                           "--gt", str(gt), "--warmup", "1", "--json", str(out)],
                          capture_output=True, text=True, env=env, cwd=str(tree))
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        return {"error": lines[-1] if lines else f"exit status {proc.returncode}"}
    doc = json.loads(out.read_text(encoding="utf-8"))
    return {"torch": doc["device"]["runtime_versions"].get("torch"),
            "ap": {s: round(100.0 * doc["accuracy"][s], 2) for s in SETTINGS},
            "faces_per_frame": doc["detections"]["per_frame"]}


def compare(host: Dict[str, Any], board: Dict[str, Any], tolerance: float) -> Dict[str, Any]:
    if "error" in host or "error" in board:
        return {"agree": False}
    ap_delta = max(abs(host["ap"][s] - board["ap"][s]) for s in SETTINGS)
    frames = sum(a != b for a, b in zip(host["faces_per_frame"], board["faces_per_frame"]))
    return {"agree": ap_delta <= tolerance, "max_ap_delta": round(ap_delta, 2), "frames_with_other_face_count": frames}


def run(args: argparse.Namespace) -> Dict[str, Any]:
    data = Path(args.data).resolve()  # the runs start in the scratch folder
    images, calib = str(data / "val" / "images"), str(data / "calib" / "images")
    rows = [r for r in rows_for(["fp32", "fp16", "l2"], ["histogram"], calib, str(data / "calib" / "ground_truth"), 0)
            if r.key in ("fp32", "fp16", "l2-histogram")]
    results: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="check_board_torch.") as tmp:
        work = Path(tmp)
        tree = device_only_tree(work / "board")
        gt = work / "gt.json"  # the board reads JSON ground truth (no scipy there)
        save_ground_truth_json(load_ground_truth(data / "val" / "ground_truth"), gt)
        for model in args.models:
            for row in rows:
                for backend in (args.backends if row.backend else [None]):
                    bundle = build(model, row, backend, args.long_side, work)["bundle"].path
                    host = run_device(sys.executable, tree, bundle, images, gt, work / "host.json")
                    board = run_device(args.python, tree, bundle, images, gt, work / "board.json")
                    entry = {"model": model, "row": row.key, "backend": backend, "host": host, "board": board,
                             **compare(host, board, args.ap_tolerance)}
                    print(json.dumps({k: entry.get(k) for k in ("model", "row", "backend", "agree", "max_ap_delta")}),
                          flush=True)
                    results.append(entry)
    return {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["check_board_torch.py", *sys.argv[1:]]),
            "machine": platform.machine(), "long_side": args.long_side, "ap_tolerance_points": args.ap_tolerance,
            "results": results}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--python", required=True, help="interpreter with the board's torch (e.g. a torch 2.9.1 venv)")
    p.add_argument("--data", required=True, help="WIDER subset root with val/ and calib/")
    p.add_argument("--models", type=lambda s: s.split(","), default=list(MODEL_NAMES))
    p.add_argument("--backends", type=lambda s: s.split(","), default=["qnnpack", "x86"])
    p.add_argument("--long-side", type=int, default=320)
    p.add_argument("--ap-tolerance", type=float, default=0.1, help="largest AP difference that agrees (points)")
    p.add_argument("--json", default="docs/board_torch_compat.json")
    args = p.parse_args(argv)
    doc = run(args)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    tmp.replace(out)
    failed = [r for r in doc["results"] if not r["agree"]]
    print(f"wrote {out}: {len(doc['results']) - len(failed)} of {len(doc['results'])} bundles agree")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

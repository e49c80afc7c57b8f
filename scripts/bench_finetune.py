#!/usr/bin/env python
"""Fine-tuning a pretrained detector with ``fdq train``: which learning rate, and does best.pt hold.

Each row is one ``fdq train --model M`` run (the product path, in a subprocess) from the zoo's pretrained
weights on the ``calib`` images with their labels, at the default settings except ``--lr`` (and
``--holdout 0`` for the old behaviour's row: 1e-3 on every image, best.pt by training loss). The learning
rate is chosen by the held-back ``calib`` images' loss (the run's own selection data); ``val`` then judges
best.pt and last.pt with ``fdq eval --weights`` against the pretrained model at the training size, so
that no default is tuned on the images that judge it.

Example::

    FDQ_WEIGHTS_PATH=../shared/weights python scripts/bench_finetune.py \\
        --lrs 1e-3,3e-4,1e-4,3e-5 \\
        --json docs/results/bench_finetune.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

from benchlib.data import add_data_argument, data_of
from benchlib.results import result, write_result

from fdq.device.outputs import checked_outputs_or_exit

SETTINGS = ("easy", "medium", "hard")


def _fdq(*args: Any) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "fdq.host.cli", *map(str, args)], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"bench_finetune: fdq {' '.join(map(str, args[:3]))} failed: {done.stderr.strip()[-500:]}")
    return done


def val_ap(model: str, weights: Any, data: Path, size: int, scratch: Path) -> Dict[str, float]:
    out = scratch / f"eval-{abs(hash(str(weights)))}.json"
    args = ["eval", "--model", model, "--images", data / "val" / "images", "--gt", data / "val" / "ground_truth",
            "--long-side", size, "--json", out]
    _fdq(*args, *(["--weights", weights] if weights else []))
    doc = json.loads(out.read_text())
    ap = doc.get("ap", doc)
    return {s: round(float(ap[s]), 4) for s in SETTINGS}


def one_run(model: str, lr: float, holdout: float, data: Path, epochs: int, size: int, scratch: Path,
            freeze_bn: bool) -> Dict:
    out = scratch / f"{model}-{lr:g}-{holdout:g}-{freeze_bn}"
    _fdq("train", "--model", model, "--images", data / "calib" / "images", "--labels", data / "calib" / "ground_truth",
         "--epochs", epochs, "--size", size, "--lr", lr, "--holdout", holdout,
         "--freeze-bn" if freeze_bn else "--no-freeze-bn", "--out", out)
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    best_epoch = max(m["epoch"] for m in metrics if m["best"])
    row = {"model": model, "lr": lr, "holdout": holdout, "freeze_bn": freeze_bn, "epochs": epochs, "size": size, "best_epoch": best_epoch,
           "train_loss": [round(m["loss"], 4) for m in metrics if m["epoch"] > 0],
           "heldback_loss": [round(m["val"]["heldback_loss"], 4) for m in metrics if "val" in m],
           "val_best": val_ap(model, out / "best.pt", data, size, scratch),
           "val_last": val_ap(model, out / "last.pt", data, size, scratch)}
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def main(argv: List[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_argument(p)
    p.add_argument("--models", default="slim")
    p.add_argument("--lrs", default="1e-3,3e-4,1e-4,3e-5", help="learning rates, each with the default holdout")
    p.add_argument("--freeze-bn", type=lambda t: [v == "frozen" for v in t.split(",")], default=[False, True],
                   help="BatchNorm statistics of the runs: train,frozen (both, the default)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--size", type=int, default=320)
    p.add_argument("--json", required=True)
    p.add_argument("--force", action="store_true", help="replace an existing --json")
    args = p.parse_args(argv)
    checked_outputs_or_exit("bench_finetune", args.force, ("--json", args.json))
    data = data_of(args, "val", "calib").root
    rows: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        for model in args.models.split(","):
            pretrained = val_ap(model, None, data, args.size, scratch)
            rows.append({"model": model, "lr": None, "val_best": pretrained, "val_last": pretrained})
            rows.append(one_run(model, 1e-3, 0.0, data, args.epochs, args.size, scratch, False))  # the old default
            rows += [one_run(model, float(lr), 0.25, data, args.epochs, args.size, scratch, freeze)
                     for freeze in args.freeze_bn for lr in args.lrs.split(",")]
    settings = {"epochs": args.epochs, "size": args.size, "train": "calib", "judge": "val"}
    write_result(args.json, result("bench_finetune", rows, settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""What the SSH port forward of ``fdq-demo --target`` costs a viewer: one ``/frame.jpg``, direct or forwarded.

On a native test board (``scripts/testboard.sh up native``: this machine behind its own sshd; needs
root), ``fdq-demo --target`` serves a short 640x480 video made from val images and lingers on its
last frame. The same JPEG is then fetched from the board's own loopback port and through the
forward (127.0.0.1 here -> SSH channel -> the board's 127.0.0.1), in alternating blocks, medians
after warm-up. Both ends are this machine, so this is the forward's own cost (paramiko, encryption,
the threads), not a network's.

    sudo python scripts/bench_forward.py [--images DIR] [--runs 200] [--json docs/results/bench_forward.json]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import List, Optional

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quant import paired_median_ms  # noqa: E402  (one timing method for every latency number)

from fdq.device.atomic import atomic_write_text  # noqa: E402
from fdq.device.images import list_images  # noqa: E402
from fdq.device.outputs import checked_outputs_or_exit  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TESTBOARD = REPO / "scripts" / "testboard.sh"
SIZE, FRAMES = (640, 480), 4
SERVING = re.compile(r"^fdq-demo: serving (http://127\.0\.0\.1:\d+/) from \S+ \(its 127\.0\.0\.1:(\d+),")


def _bundle_and_video(images: str, folder: Path) -> List[Path]:
    """The slim float bundle (zoo weights) and a video of the first val images."""
    from fdq.host.artifacts import save_torchscript_bundle
    from fdq.host.zoo import resolve_weights
    from fdq.models import SPECS, load_model

    bundle = folder / "slim_fp32"
    save_torchscript_bundle(load_model("slim", resolve_weights("slim", None)), SPECS["slim"], 320, str(bundle),
                            engine=None, dtype="fp32", quantization={"level": "float"})
    video = folder / "faces.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, SIZE)
    for _, path in list_images(images)[:FRAMES]:
        writer.write(cv2.resize(cv2.imread(str(path)), SIZE, interpolation=cv2.INTER_AREA))
    writer.release()
    return [bundle, video]


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", default=str(Path(os.environ.get("FDQ_SHARED", REPO.parent / "shared"))
                                           / "data" / "widerface_val_subset" / "val" / "images"))
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--json", default="docs/results/bench_forward.json")
    p.add_argument("--force", action="store_true", help="replace an existing --json")
    args = p.parse_args(argv)
    checked_outputs_or_exit("bench_forward", args.force, ("--json", args.json))
    name = f"bench-forward-{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="fdq-bench-forward-") as tmp:
        bundle, video = _bundle_and_video(args.images, Path(tmp))
        up = subprocess.run(["bash", str(TESTBOARD), "up", "native", "--name", name, "--python", sys.executable],
                            capture_output=True, text=True, check=True)
        try:
            proc = subprocess.Popen([sys.executable, "-m", "fdq.host.demo_remote", "--target",
                                     up.stdout.strip().splitlines()[-1], "--bundle", str(bundle), "--source", str(video),
                                     "--forward", "127.0.0.1:0", "--linger", "3600"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                    env={**os.environ, "FDQ_HOME": str(Path(tmp) / "home")})
            try:
                forwarded = board_port = None
                for line in proc.stderr:  # the URL, then the source's end: the same frame from then on
                    match = SERVING.match(line)
                    if match:
                        forwarded, board_port = match.group(1), match.group(2)
                    if "serving the last frame" in line:
                        break
                if forwarded is None:
                    raise SystemExit(f"fdq-demo --target did not serve (exit {proc.wait()})")
                direct = f"http://127.0.0.1:{board_port}/"
                size = len(urllib.request.urlopen(direct + "frame.jpg", timeout=30).read())
                direct_ms, forwarded_ms = paired_median_ms(
                    lambda: urllib.request.urlopen(direct + "frame.jpg", timeout=30).read(),
                    lambda: urllib.request.urlopen(forwarded + "frame.jpg", timeout=30).read(), args.warmup, args.runs)
            finally:
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=60)
        finally:
            subprocess.run(["bash", str(TESTBOARD), "down", name], capture_output=True, text=True)
    doc = {"what": "GET /frame.jpg of fdq-demo --target on a native test board: direct vs SSH port forward",
           "frame": f"{SIZE[0]}x{SIZE[1]}", "jpeg_bytes": size, "runs": args.runs, "warmup": args.warmup,
           "direct_ms": direct_ms, "forwarded_ms": forwarded_ms, "ratio": round(forwarded_ms / direct_ms, 2),
           "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])}
    atomic_write_text(args.json, json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())

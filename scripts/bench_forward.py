#!/usr/bin/env python
"""What the SSH port forward of ``fdq-demo --target`` costs a viewer: one ``/frame.jpg``, direct or forwarded.

On a native test board (``scripts/testboard.sh up native``: this machine behind its own sshd; needs
root), ``fdq-demo --target`` serves a short 640x480 video made from val images and lingers on its
last frame. The same JPEG is then fetched from the board's own loopback port and through the
forward (127.0.0.1 here -> SSH channel -> the board's 127.0.0.1), in alternating blocks, medians
after warm-up. Both ends are this machine, so this is the forward's own cost (paramiko, encryption,
the threads), not a network's.

    sudo python scripts/bench_forward.py [--data DIR] [--runs 200] [--json docs/results/bench_forward.json]
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

from benchlib.data import REPO, Data, add_data_argument, data_of
from benchlib.recipes import build
from benchlib.results import result, write_result
from benchlib.timing import paired_median_ms

from fdq.device.images import list_images
from fdq.device.outputs import checked_outputs_or_exit

TESTBOARD = REPO / "scripts" / "testboard.sh"
SIZE, FRAMES = (640, 480), 4
SERVING = re.compile(r"^fdq-demo: serving (http://127\.0\.0\.1:\d+/) from \S+ \(its 127\.0\.0\.1:(\d+),")


def _bundle_and_video(data: Data, folder: Path) -> List[Path]:
    """The slim float bundle (zoo weights) and a video of the first val images."""
    bundle = build("fp32", "slim", 320, folder, data)
    video = folder / "faces.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, SIZE)
    for _, path in list_images(str(data.val_images))[:FRAMES]:
        writer.write(cv2.resize(cv2.imread(str(path)), SIZE, interpolation=cv2.INTER_AREA))
    writer.release()
    return [bundle, video]


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_argument(p)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--json", default="docs/results/bench_forward.json")
    p.add_argument("--force", action="store_true", help="replace an existing --json")
    args = p.parse_args(argv)
    target, = checked_outputs_or_exit("bench_forward", args.force, ("--json", args.json))
    data = data_of(args, "val")
    name = f"bench-forward-{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="fdq-bench-forward-") as tmp:
        bundle, video = _bundle_and_video(data, Path(tmp))
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
    row = {"frame": f"{SIZE[0]}x{SIZE[1]}", "jpeg_bytes": size, "direct_ms": direct_ms,
           "forwarded_ms": forwarded_ms, "ratio": round(forwarded_ms / direct_ms, 2)}
    write_result(target, result("bench_forward", [row], argv=argv, settings={
        "what": "GET /frame.jpg of fdq-demo --target on a native test board: direct vs SSH port forward",
        "runs": args.runs, "warmup": args.warmup}))
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())

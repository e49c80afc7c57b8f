"""fdq-demo --target: the demo runs on a test board and is watched here through the SSH connection.

On the native board (this machine behind its own sshd): a video made from real validation images
(``demo_media``) is put on the board over SFTP, ``fdq-demo --target`` serves it, and the forwarded
local URL gives the page, JPEG frames of the MJPEG stream, the board's live latency and, in headless
Chromium, a frame with boxes. Ctrl-C (SIGINT to the host process) and a dropped connection (the
host process killed) each leave no demo process on the board and no listener on either side. On the
emulated arm64 board (about 40x slower: a few small frames): the demo starts, frames come through
the forward, and the page names an aarch64 board.
"""
from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Dict, List

import pytest
import yaml

from demo_media import assert_live_facts, assert_screenshot_shows_boxes, assert_serves_page_and_frames, face_video
from fdq.host.demo_remote import main
from fdq.host.remote import connect
from fdq.host.targets import load_target

TESTBOARD = Path(__file__).resolve().parents[1] / "scripts" / "testboard.sh"
HOST_DEMO = [sys.executable, "-m", "fdq.host.demo_remote"]
SIZE, N_IMAGES, REPEAT = (640, 480), 3, 2
ARM_SIZE, ARM_FRAMES = (320, 240), 3
SERVING = re.compile(r"^fdq-demo: serving (http://127\.0\.0\.1:(\d+)/) from \S+ \(its 127\.0\.0\.1:(\d+),")


def _put_on_board(board: Dict, local: Path, remote: str) -> str:
    """``local`` sent to the board over SFTP as ``remote`` (``~/...``); its absolute path there."""
    conn = connect(load_target(str(board["profile"])))
    try:
        conn.put(local, remote)
        return conn.path(remote)
    finally:
        conn.close()


@pytest.fixture(scope="module")
def board_video(sshd, home, slim_fp32_bundle, shared_dir, tmp_path_factory) -> str:
    """Six 640x480 frames (three images with a face, each twice), on the native board."""
    local = face_video(slim_fp32_bundle, shared_dir, tmp_path_factory.mktemp("video") / "faces.mp4", SIZE,
                       N_IMAGES, REPEAT)
    return _put_on_board(sshd, local, "~/media/faces.mp4")


@dataclass
class RemoteDemo:
    proc: subprocess.Popen
    lines: "queue.Queue[str]"
    seen: List[str]
    url: str = ""
    local_port: int = 0
    board_port: int = 0

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        """The first stderr line (from now on) matching ``pattern``; fails when fdq-demo ends first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
                continue
            self.seen.append(line)
            match = re.search(pattern, line)
            if match:
                return match
        pytest.fail(f"fdq-demo never printed {pattern!r} (exit {self.proc.poll()}); stderr:\n" + "\n".join(self.seen))

    def stderr(self) -> str:
        """Every stderr line so far (what a failure shows: the demo's own account of why it ended)."""
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return "\n".join(self.seen)

    def stop(self, sig: int) -> str:
        """Send ``sig``; the rest of stderr once it exited."""
        self.proc.send_signal(sig)
        self.proc.wait(timeout=60)
        time.sleep(0.2)  # let the pump drain
        rest = []
        while not self.lines.empty():
            rest.append(self.lines.get())
        return "\n".join(rest)


def start_demo(board: Dict, bundle: Path, source: str, *extra: str, timeout: float = 120) -> RemoteDemo:
    """``fdq-demo --target BOARD`` in a process of its own, once it printed the forwarded URL."""
    proc = subprocess.Popen([*HOST_DEMO, "--target", str(board["profile"]), "--bundle", str(bundle), "--source",
                             source, "--forward", "127.0.0.1:0", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            # Ctrl-C must reach it even when this test runs as a background job (SIGINT ignored)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    demo = RemoteDemo(proc, queue.Queue(), [])

    def pump() -> None:
        for line in proc.stderr:
            demo.lines.put(line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    try:
        match = demo.wait_for(SERVING.pattern, timeout)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    demo.url, demo.local_port, demo.board_port = match.group(1), int(match.group(2)), int(match.group(3))
    return demo


def board_demo_pids(board: Dict) -> List[int]:
    """The board's processes (``testboard.sh pids``) that run the device demo."""
    out = subprocess.run(["bash", str(TESTBOARD), "pids", board["name"]], capture_output=True, text=True, check=True)
    found = []
    for pid in out.stdout.split():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"fdq.device.demo" in cmdline:
            found.append(int(pid))
    return found


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def assert_gone(board: Dict, demo: RemoteDemo, within: float) -> None:
    """No demo process on the board and nothing listening on either port (waiting ``within`` s)."""
    deadline = time.monotonic() + within
    while board_demo_pids(board) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not board_demo_pids(board), "the demo still runs on the board"
    assert not listening(demo.local_port), "the forward still listens here"
    assert not listening(demo.board_port), "the demo still listens on the board"


@pytest.fixture(scope="module")
def native_demo(sshd, home, slim_fp32_bundle, board_video):
    """The demo on the native board, through a copy of its profile with 2 threads (the demo's default there)."""
    profile = home / "two-threads.yaml"
    profile.write_text(yaml.safe_dump({**sshd["fields"], "threads": 2}))
    demo = start_demo({**sshd, "profile": profile}, slim_fp32_bundle, board_video, "--max-frames",
                      str(N_IMAGES * REPEAT), "--linger", "600")
    try:
        yield demo
    finally:
        if demo.proc.poll() is None:
            demo.proc.kill()
            demo.proc.wait()


def test_forwarded_url_gives_the_page_frames_and_the_boards_latency(sshd, native_demo, tmp_path):
    assert native_demo.local_port != native_demo.board_port
    assert len(board_demo_pids(sshd)) == 1  # it runs on the board
    try:
        assert_serves_page_and_frames(native_demo.url, SIZE)
        facts = assert_live_facts(native_demo.url, tmp_path, N_IMAGES * REPEAT)
    except OSError as exc:  # the forward went away: fdq-demo's stderr and the board's sshd log say why
        sshd_log = (Path(sshd["home"]) / "host1" / "sshd.log").read_text(errors="replace")[-3000:]
        pytest.fail(f"{exc!r}; fdq-demo (exit {native_demo.proc.poll()}) stderr:\n{native_demo.stderr()}\n"
                    f"the board's sshd.log ends:\n{sshd_log}")
    assert facts["machine"] == os.uname().machine and facts["emulated"] is False
    assert facts["threads"] == 2  # the profile's, as fdq-profile runs


def test_chromium_through_the_forward_shows_a_frame_with_boxes(native_demo, tmp_path):
    assert_screenshot_shows_boxes(native_demo.url, tmp_path, SIZE)


def test_ctrl_c_stops_the_demo_on_the_board_and_closes_the_forward(sshd, native_demo):
    # Last test of the module's shared demo: it ends it.
    assert native_demo.proc.poll() is None, f"fdq-demo stopped before --linger ran out; stderr:\n{native_demo.stderr()}"
    rest = native_demo.stop(signal.SIGINT)
    assert native_demo.proc.returncode == 130, rest
    assert "Traceback" not in rest and rest.splitlines()[-1] == "fdq-demo: interrupted", rest
    assert_gone(sshd, native_demo, within=10)


def test_a_dropped_connection_stops_the_demo_on_the_board(sshd, home, slim_fp32_bundle, board_video):
    """The host process dies (SIGKILL: no Ctrl-C handling runs): the board's demo sees its session's
    stdin close and ends, so no orphan keeps the camera."""
    demo = start_demo(sshd, slim_fp32_bundle, board_video, "--linger", "600")
    # Lingering, the board's demo writes nothing more: only its stdin can tell it the session ended.
    demo.wait_for("source finished; serving the last frame", 60)
    assert len(board_demo_pids(sshd)) == 1
    demo.stop(signal.SIGKILL)
    assert_gone(sshd, demo, within=20)


def test_an_unreadable_source_on_the_board_is_one_line(sshd, home, slim_fp32_bundle):
    done = subprocess.run([*HOST_DEMO, "--target", str(sshd["profile"]), "--bundle", str(slim_fp32_bundle),
                           "--source", "/no/such/video.mp4", "--forward", "127.0.0.1:0"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert errors == [f"fdq-demo: error: {sshd['name']}: cannot open video source '/no/such/video.mp4': "
                      f"no such file"], done.stderr
    assert not board_demo_pids(sshd)


def test_an_existing_board_output_is_refused_before_anything_travels(sshd, home, slim_fp32_bundle, tmp_path):
    taken = tmp_path / "taken.mp4"
    taken.write_bytes(b"the user's video")
    _put_on_board(sshd, taken, "~/fdq/taken.mp4")
    done = subprocess.run([*HOST_DEMO, "--target", str(sshd["profile"]), "--bundle", str(slim_fp32_bundle),
                           "--source", "0", "--output", "taken.mp4"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "file(s) sent" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (f"fdq-demo: error: --output taken.mp4: file exists on "
                                                    f"{sshd['name']}; add --force to replace it (see --help)")


@pytest.mark.parametrize("extra, needle", [
    (["--serve", "127.0.0.1:8080"], "with --target the board serves on its own loopback only"),
    (["--allow-remote"], "with --target the board serves on its own loopback only"),
    (["--forward", "0.0.0.0:8080"], "--forward 0.0.0.0:8080: only a loopback address here"),
    (["--forward", "8080"], "--forward: expected HOST:PORT"),
    (["--threshold", "2"], "--threshold must be between 0 and 1"),
])
def test_usage_errors_come_before_any_board_is_reached(extra, needle, tmp_path, capsys):
    # The target does not exist: exit 2 with the usage line proves nothing was looked up or reached.
    assert main(["--target", str(tmp_path / "none.yaml"), "--bundle", str(tmp_path), "--source", "0", *extra]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fdq-demo: error: ") and needle in lines[0], lines


def test_without_target_fdq_demo_is_the_device_demo(tmp_path, capsys):
    entry = next(e for e in metadata.entry_points(group="console_scripts") if e.name == "fdq-demo")
    assert entry.load() is main
    assert main(["--bundle", str(tmp_path), "--source", str(tmp_path / "none.mp4")]) == 1
    assert capsys.readouterr().err.startswith("fdq-demo: error: cannot open video source")
    assert main(["--bundle", str(tmp_path), "--source", "0", "--forward", "127.0.0.1:9", "--setup"]) == 2
    assert capsys.readouterr().err == ("fdq-demo: error: --setup, --forward only go(es) with --target (the demo on "
                                       "a board) (see --help)\n")


def test_a_taken_forward_port_is_one_line_before_the_board_is_reached(sshd, home, slim_fp32_bundle, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["--target", str(sshd["profile"]), "--bundle", str(slim_fp32_bundle), "--source", "0",
                     "--forward", f"127.0.0.1:{port}"]) == 1
    err = capsys.readouterr().err
    assert err == (f"fdq-demo: error: cannot listen on 127.0.0.1:{port} (Address already in use): choose another "
                   f"--forward port (0: any free one)\n")


def test_arm64_board_serves_frames_through_the_forward(arm64_board, home, slim_fp32_bundle, shared_dir,
                                                       tmp_path_factory, tmp_path):
    """The emulated Raspberry Pi 4: a few 320x240 frames; the page and stats name an emulated aarch64 board."""
    local = face_video(slim_fp32_bundle, shared_dir, tmp_path_factory.mktemp("arm-video") / "faces.mp4", ARM_SIZE,
                       ARM_FRAMES, 1, min_face_px=20)
    source = _put_on_board(arm64_board, local, "~/media/faces.mp4")
    # Under emulation the board's Python imports torch and loads the bundle in minutes.
    demo = start_demo(arm64_board, slim_fp32_bundle, source, "--max-frames", str(ARM_FRAMES), "--linger", "600",
                      timeout=900)
    try:
        page = assert_serves_page_and_frames(demo.url, ARM_SIZE, boxes=False)
        assert '<div id="machine">aarch64 (emulated' in page
        facts = assert_live_facts(demo.url, tmp_path, ARM_FRAMES, wait_s=300)
        assert facts["machine"] == "aarch64" and facts["emulated"] is True
        assert facts["threads"] == arm64_board["fields"]["threads"]
        rest = demo.stop(signal.SIGINT)
        assert demo.proc.returncode == 130, rest
        assert_gone(arm64_board, demo, within=20)
    finally:
        if demo.proc.poll() is None:
            demo.proc.kill()
            demo.proc.wait()


def test_this_machine_as_target_is_refused_in_one_line(slim_fp32_bundle, capsys):
    assert main(["--target", "local", "--bundle", str(slim_fp32_bundle), "--source", "0"]) == 1
    assert capsys.readouterr().err == ("fdq-demo: error: --target local is this machine: run fdq-demo without "
                                       "--target (--serve 127.0.0.1:8080 serves the page here)\n")

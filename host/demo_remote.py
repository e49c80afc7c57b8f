"""``fdq-demo --target BOARD``: the camera demo runs on the board and is watched here, through SSH.

Without ``--target``, ``fdq-demo`` is the device demo on this machine (:func:`fdq.device.demo.main`).
With it, over one SSH connection: the runner and the bundle are deployed (only what the board
lacks, ``--setup`` as in ``fdq-deploy``), ``python -m fdq.device.demo`` starts there serving on the
board's 127.0.0.1 at a port the board picks (it reports it), and that port is forwarded to
``--forward`` here (a loopback address; default 127.0.0.1:8080). Nothing listens on a network
interface of either machine. The frames, their FPS and stage latency, and the page's numbers are
the board's.

The board's demo ends with the session: Ctrl-C here stops its process group there
(``Connection.run``), and with the connection dropped its standard input closes, which it watches
(``--stop-on-eof``), so no orphan keeps the camera. A failure there (no camera, an unreadable
source) is one line here.
"""
from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path, PurePosixPath
from typing import List, Optional, Sequence, Tuple

from fdq.calibration.progress import set_quiet
from fdq.device import demo, mjpeg
from fdq.device.bundle import load_bundle

from .commands import CliError, add_quiet, run_command
from .commands.deploy import deploy_and_report
from .commands.target_options import add_target_arguments, load_target_from_args
from .forward import PortForward
from .profiling import board_command
from .remote import SSHConnection, by_line, connect

PROG = demo.PROG
DEFAULT_FORWARD = "127.0.0.1:8080"
# The board's demo reports its address in this line (fdq.device.demo's "serving URL ..." line).
_SERVING = re.compile(r"^fdq-demo: serving http://127\.0\.0\.1:(\d+)/")
# Options of the device demo that fdq-demo --target sets itself rather than passing on.
_SET_HERE = {"help", "bundle", "serve", "allow_remote", "stop_on_eof"}


def build_parser() -> argparse.ArgumentParser:
    """The device demo's options, and those that take it to a board."""
    parser = demo.build_parser()
    parser.set_defaults(threads=None)  # with --target: the profile's threads, as fdq-profile runs
    group = parser.add_argument_group("on a board, watched here through SSH (--target)")
    add_target_arguments(group, required=False)
    group.add_argument("--forward", metavar="HOST:PORT", default=DEFAULT_FORWARD,
                       help="with --target: the address here the board's page is forwarded to (loopback only; "
                            "port 0: any free one)")
    add_quiet(group)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``fdq-demo``: on a board with ``--target``, else the device demo on this machine."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(args_list)
        if args.target is None:  # argv goes to the device demo as it is (its own defaults and checks)
            device = {a.dest for a in demo.build_parser()._actions}
            given = [a.option_strings[0] for a in parser._actions
                     if a.dest not in device and getattr(args, a.dest) != a.default]
            if given:
                parser.error(f"{', '.join(given)} only go(es) with --target (the demo on a board)")
        else:
            args.forward_address = _check_args(parser, args)
    except SystemExit as exc:  # usage error or --help: argparse already printed
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if args.target is None:
        return demo.main(args_list)  # as it always was: its own checks, on this machine
    set_quiet(args.quiet)
    return run_command(run_on_board, args, PROG)


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Tuple[str, int]:
    """Usage errors before the board is reached; the --forward address."""
    if args.serve is not None or args.allow_remote:
        parser.error("with --target the board serves on its own loopback only: leave out --serve and "
                     "--allow-remote (--forward HOST:PORT sets the address here)")
    demo.check_frame_options(parser, args)
    try:
        host, port = mjpeg.parse_hostport(args.forward)
    except ValueError as exc:
        parser.error(f"--forward: {exc}")
    if not mjpeg.is_loopback_host(host):
        parser.error(f"--forward {args.forward}: only a loopback address here (127.0.0.1): anyone who can "
                     f"reach {host} could watch the board's camera")
    return host, port


def board_args(args: argparse.Namespace, remote_bundle: str) -> List[str]:
    """The board demo's command line: every device option given here, the deployed bundle, its
    page on the board's loopback at a port it picks, and the end of the session ending it."""
    out = ["--bundle", remote_bundle, "--serve", "127.0.0.1:0", "--stop-on-eof"]
    for action in demo.build_parser()._actions:
        value = getattr(args, action.dest, None)
        if not action.option_strings or action.dest in _SET_HERE or value is None or value == action.default:
            continue
        out += [action.option_strings[0]] + ([] if action.nargs == 0 else [str(value)])
    return out


def _check_board_output(conn: SSHConnection, workdir: str, path: str, force: bool) -> None:
    """``--output`` on the board, before anything travels (the board's demo checks it again as it starts):
    a new file, or an existing regular file with ``--force``, in a folder that exists there."""
    name, where = shlex.quote(path), conn.target.name
    conn.makedirs(workdir)
    found = conn.run(f"cd {shlex.quote(workdir)} && if [ -f {name} ] && [ ! -L {name} ]; then echo file; "
                     f"elif [ -e {name} ] || [ -L {name} ]; then echo other; "
                     f"elif [ ! -d \"$(dirname {name})\" ]; then echo nofolder; fi", timeout=conn.target.timeout)
    kind = found.stdout.strip()
    if kind == "file" and not force:
        raise CliError(f"--output {path}: file exists on {where}; add --force to replace it (see --help)")
    if kind == "other":
        raise CliError(f"--output {path}: exists on {where} and is not a regular file; refusing to replace it")
    if kind == "nofolder":
        raise CliError(f"--output {path}: folder {PurePosixPath(path).parent} does not exist on {where} "
                       f"(a relative path is in its work directory {workdir})")


class _Relay:
    """The board demo's stderr, line by line: its address starts the forward, its progress lines
    are printed here under the board's name; error lines wait for the exit (one line then)."""

    def __init__(self, conn: SSHConnection, forward: PortForward) -> None:
        self.conn, self.forward = conn, forward
        self.started = False
        self.feed = by_line(self._line)

    def _line(self, line: str) -> None:
        name = self.conn.target.name
        serving = _SERVING.match(line)
        if serving and not self.started:
            port = int(serving.group(1))
            self.forward.start(self.conn, port)
            self.started = True
            print(f"{PROG}: serving {self.forward.url} from {name} (its 127.0.0.1:{port}, forwarded over SSH; "
                  f"Ctrl-C stops the demo there)", file=sys.stderr, flush=True)
        elif line.startswith(f"{PROG}: ") and not line.startswith(f"{PROG}: error:"):
            print(f"{PROG}: {name}: {line[len(PROG) + 2:]}", file=sys.stderr, flush=True)


def run_on_board(args: argparse.Namespace) -> int:
    """Deploy, start the demo on the board, forward its page here until it ends or Ctrl-C."""
    load_bundle(args.bundle)  # a bad bundle is one line before anything is reached (deploy checks it again)
    target = load_target_from_args(args)
    if target.transport != "ssh":
        raise CliError(f"--target {args.target} is this machine: run fdq-demo without --target "
                       f"(--serve {args.forward} serves the page here)")
    if args.threads is None:
        args.threads = target.threads
    forward = PortForward(*args.forward_address)  # a port in use fails now, before the board is reached
    try:
        conn = connect(target)
        try:
            workdir = conn.path(target.workdir)
            if args.output:
                _check_board_output(conn, workdir, args.output, args.force)
            deployed = deploy_and_report(conn, [args.bundle], args.setup)
            remote_bundle = deployed.bundles[str(Path(args.bundle).resolve())]
            print(f"{PROG}: starting the demo on {target.name} (it loads the bundle there first)", file=sys.stderr,
                  flush=True)
            relay = _Relay(conn, forward)
            command = board_command(conn, deployed.workdir, board_args(args, remote_bundle), module="fdq.device.demo")
            done = conn.run(command, timeout=None, on_stderr=relay.feed)
        finally:
            conn.close()
    finally:
        forward.close()
    if done.returncode != 0:
        raise CliError(f"{target.name}: {done.last_error_line().removeprefix(PROG + ': error: ')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

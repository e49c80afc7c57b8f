"""``fdq deploy`` (``fdq-deploy``): put the device runner and bundles on a target, only what changed
travelling; and the deploy step that ``fdq profile`` and ``fdq-demo --target`` share."""
from __future__ import annotations

import argparse
import sys
from typing import Any, List, Optional

from fdq.device.cliargs import duration
from fdq.host.commands.target_options import add_target_arguments, load_targets_from_args


def _deploy_summary(done) -> str:
    return (f"{len(done.uploaded)} file(s) sent ({done.uploaded_bytes / 1024:.0f} KiB), {done.unchanged} unchanged, "
            f"{len(done.removed)} removed")


def deploy_and_report(conn, bundles: List[str], setup: bool = False, prune_older_than_s: Optional[float] = None):
    """Prepare the board (``--setup``), deploy ``bundles`` and print what travelled: the one deploy
    step of fdq-deploy, fdq-profile and fdq-demo."""
    from fdq.host.deploy import deploy, notices
    from fdq.host.provision import prepare

    prepare(conn, setup)
    done = deploy(conn, bundles, prune_older_than_s=prune_older_than_s)
    for line in notices(done, conn.target.name):
        print(line, file=sys.stderr)
    print(f"{conn.target.name} ({conn.target.address}): {_deploy_summary(done)}; workdir {done.workdir}",
          file=sys.stderr)
    return done


def cmd_deploy(args: argparse.Namespace) -> int:
    from fdq.device.bundle import load_bundle
    from fdq.host.fleet import on_each, print_table

    prune = args.prune_older_than if args.prune_older_than is not None else (0.0 if args.prune else None)
    for bundle in args.bundles:  # one error line for a bad bundle, not one per host
        load_bundle(bundle)
    targets = load_targets_from_args(args)
    if args.setup:  # what --setup would install, checked before any connection
        from fdq.host.provision import requirements

        for target in targets:
            requirements(target, target.torch)
    if len(targets) > 1:
        results = on_each(targets, lambda conn: deploy_and_report(conn, args.bundles, args.setup, prune))
        print_table(f"fdq-deploy: {args.target}", results,
                    [("sent", _deploy_summary), ("workdir", lambda done: done.workdir)])
        failed = [r for r in results if not r.ok]
        if failed:
            print(f"fdq-deploy: error: {len(failed)} of {len(results)} host(s) failed: "
                  f"{', '.join(r.target.name for r in failed)}", file=sys.stderr)
        return 1 if failed else 0
    from fdq.host.remote import connect

    conn = connect(targets[0])
    try:
        done = deploy_and_report(conn, args.bundles, args.setup, prune)
    finally:
        conn.close()
    for local, remote in done.bundles.items():
        print(f"{local} -> {done.workdir}/{remote}")
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``deploy`` subcommand to ``fdq``'s subparsers (``fdq-deploy``: the same as a program)."""
    p = subparsers.add_parser("deploy", help="put the device runner and bundles on a target",
                              description="Put the device runner and bundles on a target (only what changed "
                                          "travels).")
    add_target_arguments(p)
    p.add_argument("bundles", nargs="+", metavar="BUNDLE", help="bundle folder(s) to put on the target")
    p.add_argument("--prune", action="store_true",
                   help="first remove the bundles and results on the target that this deploy does not name")
    p.add_argument("--prune-older-than", type=duration("--prune-older-than"), metavar="AGE",
                   help="as --prune, only those older than AGE (30m, 12h, 7d)")
    p.set_defaults(func=cmd_deploy)
    return p

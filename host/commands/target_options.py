"""The options that name a target (``--target`` and its overrides), and the targets they name:
shared by ``fdq deploy``, ``fdq profile`` and ``fdq-demo --target``."""
from __future__ import annotations

import argparse
from typing import Any, Dict, List, Optional

from fdq.device.cliargs import int_at_least, seconds
from fdq.host.targets import Target, load_target, load_targets


def add_target_arguments(p: Any, default: Optional[str] = None, required: Optional[bool] = None) -> None:
    """The options that name a target and override its profile, on a parser or an argument group;
    ``--target`` is required unless it has a ``default`` or ``required`` says otherwise."""
    p.add_argument("--target", required=default is None if required is None else required, default=default,
                   help="a shipped profile (rpi4, local), a profile YAML file (one board or hosts: a fleet) or an "
                        "Ansible INI inventory" + (f" (default {default}: this machine)" if default == "local" else ""))
    p.add_argument("--host", help="override the profile's host")
    p.add_argument("--port", type=int_at_least("--port", 1), help="override the profile's SSH port")
    p.add_argument("--user", help="override the profile's user")
    p.add_argument("--key", help="override the profile's private key file")
    p.add_argument("--python", help="override the profile's Python on the target")
    p.add_argument("--setup", action="store_true",
                   help="install the runner's packages and the profile's runtimes into a venv in the work directory "
                        "(wheels fetched here for the board's platform, installed there offline)")
    p.add_argument("--workdir", help="override the profile's work directory on the target")
    p.add_argument("--strict-host-keys", action="store_true", default=None,
                   help="refuse a host whose key is not yet in $FDQ_HOME/known_hosts (default: the profile's "
                        "strict_host_keys, else trust and record a first-seen key)")
    p.add_argument("--timeout", type=seconds("--timeout"),
                   help="seconds one network step may wait: connect, SSH banner, login, each SFTP operation "
                        "(default: the profile's timeout, else 15)")


def _overrides(args: argparse.Namespace) -> Dict[str, Any]:
    """The profile fields the command line replaces (None: keep the profile's)."""
    return dict(host=args.host, port=args.port, user=args.user, key=args.key, python=args.python,
                workdir=args.workdir, strict_host_keys=args.strict_host_keys, timeout=args.timeout)


def load_targets_from_args(args: argparse.Namespace) -> List[Target]:
    """Every target ``--target`` names (one per host of a fleet), with the command line's overrides."""
    return load_targets(args.target, **_overrides(args))


def load_target_from_args(args: argparse.Namespace) -> Target:
    """The one target ``--target`` names, with the command line's overrides (a fleet is refused)."""
    return load_target(args.target, **_overrides(args))

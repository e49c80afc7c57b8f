"""Targets: the boards (and this workstation) a bundle is deployed to, described by YAML profiles.

A profile is ``profiles/<name>.yaml`` shipped with fdq (``rpi4``, ``local``) or any YAML file with
the same fields; ``--target`` takes either. Unknown fields are an error, so a typo never falls back
to a default silently.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import yaml

TRANSPORTS = ("ssh", "local")


class TargetError(ValueError):
    """A profile that cannot be found or does not describe a usable target."""


@dataclass(frozen=True)
class Target:
    name: str
    transport: str
    python: str
    workdir: str
    description: str = ""
    host: Optional[str] = None
    port: int = 22
    user: Optional[str] = None
    key: Optional[str] = None
    threads: int = 1
    engine: Optional[str] = None
    runtimes: Tuple[str, ...] = ("torchscript",)
    torch: Optional[str] = None  # the torch version fdq-deploy --setup installs (default: the newest for the board)
    onnxruntime: Optional[str] = None  # the same for onnxruntime
    thermal_zone: Optional[str] = None
    throttling: Optional[str] = None

    @property
    def address(self) -> str:
        return f"{self.user}@{self.host}:{self.port}" if self.transport == "ssh" else "this machine"


def shipped_profiles() -> Dict[str, Path]:
    """The profiles fdq ships, by name."""
    folder = resources.files("fdq.profiles")
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml")}


def load_target(name_or_path: str, **overrides: Any) -> Target:
    """The target a shipped profile name or a YAML file describes; ``overrides`` that are not None
    replace its fields (the command line's ``--host``, ``--port``, ...)."""
    shipped = shipped_profiles()
    path = shipped.get(name_or_path) or Path(name_or_path).expanduser()
    if not path.is_file():
        raise TargetError(f"unknown target {name_or_path!r}: not a shipped profile ({', '.join(sorted(shipped))}) "
                          f"nor a YAML file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise TargetError(f"profile {path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise TargetError(f"profile {path} is not a mapping of fields")
    known = {f.name for f in fields(Target)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise TargetError(f"profile {path}: unknown field(s) {', '.join(unknown)}")
    missing = sorted(f for f in ("name", "transport", "python", "workdir") if not data.get(f))
    if missing:
        raise TargetError(f"profile {path}: missing field(s) {', '.join(missing)}")
    if data["transport"] not in TRANSPORTS:
        raise TargetError(f"profile {path}: transport must be one of {', '.join(TRANSPORTS)}, "
                          f"got {data['transport']!r}")
    if "runtimes" in data:
        data["runtimes"] = tuple(data["runtimes"])
    target = replace(Target(**data), **{k: v for k, v in overrides.items() if v is not None})
    if target.transport == "ssh" and not (target.host and target.user):
        raise TargetError(f"profile {path}: an ssh target needs host and user")
    return target

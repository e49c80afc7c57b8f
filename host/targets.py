"""Targets: the boards (and this workstation) a bundle is deployed to, described by YAML profiles.

A profile is ``profiles/<name>.yaml`` shipped with fdq (``rpi4``, ``local``) or any YAML file with
the same fields; ``--target`` takes either, or an Ansible INI inventory (``*.ini``). Unknown fields
are an error, so a typo never falls back to a default silently.

A profile may describe a fleet: ``hosts:`` lists ``{host, port, user}`` entries (each may also set
``key``, ``python``, ``workdir`` or its own ``name``); the single-host fields next to it are their
defaults. :func:`load_targets` gives one :class:`Target` per host.
"""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml

from .zoo import fdq_home

TRANSPORTS = ("ssh", "local")
HOST_FIELDS = ("host", "port", "user", "key", "python", "workdir", "name")
# Ansible inventory variables -> profile fields (``fdq_<field>`` sets any other field).
_ANSIBLE_VARS = {"ansible_host": "host", "ansible_port": "port", "ansible_user": "user",
                 "ansible_ssh_private_key_file": "key", "ansible_python_interpreter": "python"}


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
    # A command on the board that runs a program under an instruction-counting emulator
    # (testboard.sh's arm64 boards: /opt/fdq-count/run); fdq-profile --count-instructions needs it.
    instruction_counter: Optional[str] = None
    strict_host_keys: bool = False   # refuse a host not yet in known_hosts (StrictHostKeyChecking=yes)
    timeout: float = 15.0            # seconds one network step may wait: connect, banner, login, SFTP

    @property
    def address(self) -> str:
        return f"{self.user}@{self.host}:{self.port}" if self.transport == "ssh" else "this machine"


def shipped_profiles() -> Dict[str, Path]:
    """The profiles fdq ships, by name."""
    folder = resources.files("fdq.profiles")
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml")}


def _profile_path(name_or_path: str) -> Path:
    shipped = shipped_profiles()
    if name_or_path in shipped:
        return shipped[name_or_path]
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    if path.suffix in (".yaml", ".yml", ".ini") or os.sep in name_or_path:
        raise TargetError(f"target file {name_or_path} does not exist")
    raise TargetError(f"unknown target {name_or_path!r}: not a shipped profile ({', '.join(sorted(shipped))}) "
                      f"nor a YAML file")


def _read_yaml(path: Path) -> Dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise TargetError(f"profile {path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise TargetError(f"profile {path} is not a mapping of fields")
    return data


def _ansible_hosts(path: Path) -> List[Dict[str, Any]]:
    """Host entries of an Ansible INI inventory: every host line of every group, with the group's
    ``[group:vars]`` and ``[all:vars]`` under its own variables; each host once."""
    groups: Dict[str, List[Tuple[str, Dict[str, str]]]] = {}
    group_vars: Dict[str, Dict[str, str]] = {}
    section = "ungrouped"
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split(" #")[0].strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            continue
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise TargetError(f"inventory {path}:{number}: {exc}") from None
        if section.endswith(":children"):
            continue
        if section.endswith(":vars"):
            key, _, value = line.partition("=")
            group_vars.setdefault(section[:-5], {})[key.strip()] = value.strip().strip("'\"")
            continue
        pairs = dict(w.split("=", 1) for w in words[1:] if "=" in w)
        groups.setdefault(section, []).append((words[0], pairs))
    entries: Dict[str, Dict[str, Any]] = {}
    for group, hosts in groups.items():
        for alias, own in hosts:
            merged = {**group_vars.get("all", {}), **group_vars.get(group, {}), **own}
            entry: Dict[str, Any] = {"name": alias, "host": alias}
            for var, value in merged.items():
                if var in _ANSIBLE_VARS:
                    entry[_ANSIBLE_VARS[var]] = value
                elif var.startswith("fdq_"):
                    entry[var[4:]] = value
            entries.setdefault(alias, entry)
    if not entries:
        raise TargetError(f"inventory {path} lists no hosts")
    return list(entries.values())


def _make_target(data: Dict[str, Any], path: Path, overrides: Dict[str, Any]) -> Target:
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
    data = dict(data)
    if "runtimes" in data:
        data["runtimes"] = tuple(data["runtimes"])
    for name, kind in (("port", int), ("threads", int), ("timeout", float)):
        if name in data:
            try:
                data[name] = kind(data[name])
            except (TypeError, ValueError):
                raise TargetError(f"profile {path}: {name} must be a number, got {data[name]!r}") from None
    if isinstance(data.get("strict_host_keys"), str):
        data["strict_host_keys"] = data["strict_host_keys"].lower() in ("yes", "true", "1")
    target = replace(Target(**data), **{k: v for k, v in overrides.items() if v is not None})
    if target.transport == "ssh" and not (target.host and target.user):
        raise TargetError(f"profile {path}: an ssh target needs host and user")
    if target.timeout <= 0:
        raise TargetError(f"profile {path}: timeout must be above 0 s")
    return replace(target, workdir=target.workdir.replace("$FDQ_HOME", str(fdq_home())))


def load_targets(name_or_path: str, **overrides: Any) -> List[Target]:
    """Every target a shipped profile name, a YAML profile or an Ansible INI inventory describes
    (one per host of a fleet); ``overrides`` that are not None replace their fields (the command
    line's ``--host``, ``--port``, ...)."""
    path = _profile_path(name_or_path)
    if path.suffix == ".ini":
        base = _read_yaml(shipped_profiles()["rpi4"])
        base.update(name=path.stem, hosts=_ansible_hosts(path))
    else:
        base = _read_yaml(path)
    hosts = base.pop("hosts", None)
    if hosts is None:
        return [_make_target(base, path, overrides)]
    if not isinstance(hosts, list) or not hosts or not all(isinstance(h, dict) for h in hosts):
        raise TargetError(f"profile {path}: hosts must be a list of {{host, port, user}} entries")
    targets = []
    for index, entry in enumerate(hosts, 1):
        extra = sorted(set(entry) - set(HOST_FIELDS))
        if extra:
            raise TargetError(f"profile {path}: hosts entry {index}: unknown field(s) {', '.join(extra)} "
                              f"(an entry sets {', '.join(HOST_FIELDS)})")
        data = {**base, "name": f"{base.get('name')}-{index}", **entry}
        targets.append(_make_target(data, path, overrides))
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise TargetError(f"profile {path}: two hosts share a name")
    return targets


def load_target(name_or_path: str, **overrides: Any) -> Target:
    """The one target a profile describes; a fleet profile is refused here (see :func:`load_targets`)."""
    targets = load_targets(name_or_path, **overrides)
    if len(targets) != 1:
        raise TargetError(f"target {name_or_path} lists {len(targets)} hosts; this command takes one "
                          f"(give it a profile of one host)")
    return targets[0]

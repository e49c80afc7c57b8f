"""The one layout of a benchmark's result file, ``fdq.bench/1``, written and read back.

Every result is a JSON object with these keys, in this order:

* ``schema``: ``fdq.bench/1``;
* ``script``: the benchmark that wrote it (``bench_quant``), and ``command``: its command line;
* ``created``: when (UTC, ISO 8601);
* ``machine``: facts about the machine and its load during the run (:func:`machine`);
* ``settings``: what holds for every row (options, constants, the images used);
* ``rows``: the measurements, one object each;
* ``summary``: what the script concluded from the rows (goals, ratios, an estimate); may be empty.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from fdq.device.atomic import atomic_write_text

SCHEMA = "fdq.bench/1"
KEYS = ("schema", "script", "command", "created", "machine", "settings", "rows", "summary")
#: the x86 features that decide which int8 and bfloat16 kernels a runtime picks
X86_FEATURES = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")


def machine(**facts: Any) -> Dict[str, Any]:
    """Architecture, CPU model and cores, the CPU features int8 kernels are chosen by, Python and
    torch versions and the 1-minute load average now, plus the script's own ``facts``."""
    import torch

    from fdq.device.sysinfo import cpu_features, cpu_info

    features = cpu_features() or []
    if platform.machine().lower() in ("x86_64", "amd64"):
        features = [f for f in features if f in X86_FEATURES]
    return {"arch": platform.machine(), "cpu": cpu_info()["model"], "cores": os.cpu_count(), "cpu_features": features,
            "python": platform.python_version(), "torch": torch.__version__, "load_average_1m": os.getloadavg()[0],
            **facts}


def command_line(script: str, argv: Optional[List[str]] = None) -> str:
    """How the run was started: ``python scripts/SCRIPT.py ARGS``."""
    return " ".join([f"python scripts/{script}.py", *map(str, sys.argv[1:] if argv is None else argv)])


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def result(script: str, rows: List[Dict[str, Any]], settings: Optional[Dict[str, Any]] = None,
           summary: Optional[Dict[str, Any]] = None, machine_facts: Optional[Dict[str, Any]] = None,
           command: Optional[str] = None, argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """A result document of this run (``machine_facts``: default :func:`machine`)."""
    return {"schema": SCHEMA, "script": script, "command": command or command_line(script, argv), "created": now(),
            "machine": machine() if machine_facts is None else machine_facts, "settings": settings or {},
            "rows": rows, "summary": summary or {}}


def write_result(path: Union[str, Path], doc: Dict[str, Any]) -> None:
    """Write ``doc`` atomically (a failure leaves the earlier file or none)."""
    missing = [k for k in KEYS if k not in doc]
    if missing or doc["schema"] != SCHEMA:
        raise ValueError(f"not an {SCHEMA} result (missing {', '.join(missing) or 'the schema'})")
    atomic_write_text(str(path), json.dumps(doc, indent=1) + "\n")


def read_result(path: Union[str, Path], script: Optional[str] = None) -> Dict[str, Any]:
    """A result file written by :func:`write_result` (by ``script``, when given); anything else ends
    the program with one error line."""
    prog = Path(sys.argv[0]).stem
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SystemExit(f"{prog}: error: {path}: cannot read a result: {exc}") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise SystemExit(f"{prog}: error: {path}: not an {SCHEMA} result (the layout of docs/results/README.md)")
    if script is not None and doc.get("script") != script:
        raise SystemExit(f"{prog}: error: {path}: written by {doc.get('script')}, not {script}")
    return doc

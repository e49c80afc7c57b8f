"""The history of runs: one SQLite index (``$FDQ_HOME/runs.sqlite``) of every run fdq-profile kept,
and ``fdq runs``, which lists it.

The run documents stay the truth: a row is computed from its document alone (:func:`row`), so
``fdq runs --reindex`` rebuilds the same rows from the files. Boards of a fleet finish runs at the
same time, from threads or from several fdq processes: writers take an exclusive lock on a file
beside the index, and each insert is one transaction in WAL mode, so a writer waits for another
instead of failing, and no row is lost.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import sqlite3
import subprocess
import sys
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence

from fdq.device.result import Run
from fdq.host.gate import CONFIG_FIELDS, configuration

INDEX = "runs.sqlite"
BUSY_TIMEOUT_S = 60.0
COLUMNS = ("path", "created", "target", "host", "bundle_sha256", "model", "runtime", "precision", "threads", "side",
           "emulated", "fdq_version", "git_commit", "runtime_versions", "p50_ms", "p90_ms", "p99_ms", "fps",
           "ap_easy", "ap_medium", "ap_hard", "instructions")
_SCHEMA = ("CREATE TABLE IF NOT EXISTS runs (path TEXT PRIMARY KEY, created TEXT, target TEXT, host TEXT, "
           "bundle_sha256 TEXT, model TEXT, runtime TEXT, precision TEXT, threads INTEGER, side INTEGER, "
           "emulated INTEGER, fdq_version TEXT, git_commit TEXT, runtime_versions TEXT, p50_ms REAL, p90_ms REAL, "
           "p99_ms REAL, fps REAL, ap_easy REAL, ap_medium REAL, ap_hard REAL, instructions REAL)")


def index_path() -> Path:
    from fdq.host.zoo import fdq_home

    return fdq_home() / INDEX


@lru_cache(maxsize=1)
def source_commit() -> Optional[str]:
    """The git commit of the fdq code running here, when it runs from a checkout (else None)."""
    try:
        done = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "HEAD"],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def row(run: Run) -> Dict[str, Any]:
    """A run's row, from its document (and file) alone."""
    doc, b, d = run.doc, run.doc["bundle"], run.doc["device"]
    profile = doc.get("profile") or {}
    acc = run.accuracy or {}
    return {
        "path": str(run.path.resolve()) if run.path else None, "created": doc.get("created"), **configuration(run),
        "bundle_sha256": b.get("manifest_sha256"), "emulated": int(run.emulated),
        "fdq_version": profile.get("fdq_version") or b.get("fdq_version"), "git_commit": profile.get("git_commit"),
        "runtime_versions": json.dumps(d.get("runtime_versions") or {}, sort_keys=True),
        "p50_ms": run.p("total"), "p90_ms": run.p("total", "p90"), "p99_ms": run.p("total", "p99"),
        "fps": doc.get("fps"), "ap_easy": acc.get("easy"), "ap_medium": acc.get("medium"),
        "ap_hard": acc.get("hard"), "instructions": run.instructions(),
    }


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Writers one at a time, across processes: an exclusive lock on a file beside the index. SQLite's
    busy timeout does not cover every lock: two processes opening a new index at once both switch it to
    WAL, and the second gets "database is locked" at once (a fleet's first runs did, in a test)."""
    import fcntl  # POSIX, as every host fdq runs on

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _connect(path: Optional[Path] = None) -> sqlite3.Connection:
    path = path or index_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None)  # transactions explicit
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(_SCHEMA)
    return conn


def _insert(conn: sqlite3.Connection, rows: Iterable[Dict[str, Any]]) -> None:
    conn.executemany(f"INSERT OR REPLACE INTO runs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})",
                     ([r[c] for c in COLUMNS] for r in rows))


def record(run: Run, path: Optional[Path] = None) -> Optional[str]:
    """Add one run to the index, in one transaction (``BEGIN IMMEDIATE``: the write lock first).
    A failure is returned as a line, not raised: the run's file is kept either way."""
    try:
        with _writing(path or index_path()):
            conn = _connect(path)
            try:
                conn.execute("BEGIN IMMEDIATE")
                _insert(conn, [row(run)])
                conn.execute("COMMIT")
            finally:
                conn.close()
    except (sqlite3.Error, OSError) as exc:
        return f"{run.path}: kept, but not in the index {path or index_path()} ({exc}); fdq runs --reindex adds it"
    return None


def reindex(folders: Sequence[str] = (), path: Optional[Path] = None) -> int:
    """Rebuild the index from the run files: those it names that still exist, and every run in
    ``folders``. Returns the number of rows."""
    from fdq.device.result import ResultError, read_run

    with _writing(path or index_path()):
        conn = _connect(path)
        try:
            files = {Path(p) for (p,) in conn.execute("SELECT path FROM runs") if p and Path(p).is_file()}
            for folder in folders:
                files.update(p.resolve() for p in Path(folder).glob("*.json") if not p.name.startswith("."))
            runs = []
            for file in sorted(files):
                try:
                    runs.append(read_run(file))
                except ResultError:  # a report's JSON or another file beside the runs
                    continue
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM runs")
            _insert(conn, (row(run) for run in runs))
            conn.execute("COMMIT")
            return len(runs)
        finally:
            conn.close()


def query(where: Optional[Dict[str, Any]] = None, since: Optional[str] = None,
          path: Optional[Path] = None) -> List[Dict[str, Any]]:
    """Rows whose columns equal ``where`` and that were made at ``since`` (ISO time) or later, oldest first."""
    where = where or {}
    unknown = sorted(set(where) - set(COLUMNS))
    if unknown:
        raise ValueError(f"no such field {unknown[0]!r}; fields: {', '.join(CONFIG_FIELDS)}")
    clauses = [f"{column} = ?" for column in where] + (["created >= ?"] if since else [])
    sql = f"SELECT {', '.join(COLUMNS)} FROM runs" + (" WHERE " + " AND ".join(clauses) if clauses else "")
    conn = _connect(path)
    try:
        found = conn.execute(sql + " ORDER BY created, path", [*where.values(), *([since] if since else [])])
        return [dict(zip(COLUMNS, values)) for values in found]
    finally:
        conn.close()


def parse_config(text: str) -> Dict[str, Any]:
    """``--history CONFIG``: a run file (its configuration) or ``field=value,...`` over CONFIG_FIELDS."""
    if text.endswith(".json") and Path(text).is_file():
        from fdq.device.result import read_run

        mine = row(read_run(Path(text)))
        return {column: mine[column] for column in CONFIG_FIELDS}
    config: Dict[str, Any] = {}
    for item in text.split(","):
        field, eq, value = item.partition("=")
        if not eq or field.strip() not in CONFIG_FIELDS:
            raise ValueError(f"--history takes a run file or FIELD=VALUE,... over {', '.join(CONFIG_FIELDS)}; "
                             f"got {item!r}")
        field = field.strip()
        config[field] = int(value) if field in ("threads", "side") and value.strip().isdigit() else value.strip()
    return config


def since_time(text: str) -> str:
    """``--since``: an ISO date or time, or an age (``30m``, ``12h``, ``7d``), as an ISO time in UTC."""
    from fdq.device.cliargs import duration

    try:
        when = _dt.datetime.fromisoformat(text)
    except ValueError:
        age = duration("--since")(text)
        when = _dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(seconds=age)
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return when.astimezone(_dt.timezone.utc).isoformat(timespec="seconds")


def _ap(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def cmd_runs(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    if args.reindex is not None:
        count = reindex(args.reindex)
        print(f"runs: {count} run(s) indexed in {index_path()}")
        return 0
    where = {k: v for k, v in (("model", args.model), ("target", args.target), ("runtime", args.runtime)) if v}
    rows = query(where, args.since)
    table = Table(title=f"fdq runs in {index_path()}")
    for column in ("created", "target", "host", "model", "runtime", "precision", "thr", "side", "p50 ms", "p90 ms",
                   "AP e/m/h", "commit", "run"):
        table.add_column(column, justify="right" if column in ("thr", "side", "p50 ms", "p90 ms") else "left")
    for r in rows:
        table.add_row(str(r["created"]), r["target"], str(r["host"]), r["model"], r["runtime"], r["precision"],
                      str(r["threads"]), str(r["side"]), f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}",
                      " / ".join(_ap(r[f"ap_{s}"]) for s in ("easy", "medium", "hard")),
                      (r["git_commit"] or "-")[:10], Path(r["path"]).name)
    Console(width=None if sys.stdout.isatty() else 220).print(table)
    print(f"runs: {len(rows)} run(s)")
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``runs`` subcommand to ``fdq``'s subparsers."""
    p = subparsers.add_parser("runs", help="the history of profile runs (the SQLite index under FDQ_HOME)",
                              description="The history of profile runs: every run fdq-profile keeps is a row of "
                                          "$FDQ_HOME/runs.sqlite; the run files stay the truth (--reindex).")
    p.add_argument("--model", help="only this model's runs")
    p.add_argument("--target", help="only this target's runs")
    p.add_argument("--runtime", help="only this runtime's runs")
    p.add_argument("--since", type=since_time, metavar="TIME|AGE", help="only runs made since (2026-12-01, 12h, 7d)")
    p.add_argument("--reindex", nargs="*", metavar="RUNS_DIR",
                   help="rebuild the index from the run files it names and those in these folders")
    p.set_defaults(func=cmd_runs)
    return p

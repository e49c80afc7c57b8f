"""Run the device runner on a target's deployed bundle and bring its ``fdq.run/1`` document back.

A run is the runner's own process on the target, started through ``Connection.run``, which stops it
and its children there on Ctrl-C, on the run's time limit or when the connection is cut, over SSH
as on this machine; the runner itself writes nothing when stopped, and nothing is fetched, so no
half result exists on either side. Images for ``--images/--gt`` travel like bundles (only files whose sha256
differs there) under ``data/NAME-HASH/``, with the ground truth as JSON (the board needs no scipy).
"""
from __future__ import annotations

import datetime as _dt
import json
import re
import shlex
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from fdq.calibration.progress import Line, line as progress_line
from fdq.device.atomic import atomic_write_text
from fdq.device.run import PROG as RUNNER

from .deploy import DATA, LIB, RESULTS
from .remote import Connection, RemoteError, by_line

# The run's time limit when --run-timeout is not given: loading (an emulated board imports torch in
# minutes) plus a bound per frame far above any board's, so that only a frozen board reaches it.
RUN_START_S = 900.0
PER_FRAME_S = 10.0
MAX_RUN_S = 7 * 86400.0   # what a wait can be given (poll takes milliseconds in an int)
# The runner's --progress line: frames done, of how many when it knows, and its FPS so far.
_FRAME_LINE = re.compile(rf"^{RUNNER}: frame (\d+)(?:/(\d+))?, ([\d.]+) FPS$")


@dataclass(frozen=True)
class RunSettings:
    """How one run measures (the runner's options); ``frames`` None: the runner's default."""

    frames: Optional[int] = None
    min_seconds: float = 0.0
    warmup: int = 10
    source: str = "synthetic"
    per_op: bool = False
    cooldown: float = 0.0
    max_temp: Optional[float] = None
    run_timeout: Optional[float] = None
    count_instructions: bool = False

    def time_limit(self) -> float:
        """Seconds one run may take on the target before it is stopped there."""
        if self.run_timeout is not None:
            return min(MAX_RUN_S, self.run_timeout)
        frames = self.frames if self.frames is not None else 100
        return min(MAX_RUN_S, RUN_START_S + self.cooldown + self.min_seconds + (frames + self.warmup) * PER_FRAME_S)


@dataclass(frozen=True)
class Dataset:
    """Images and their ground truth as they travel: ``files`` maps a workdir path to a local file."""

    files: Dict[str, Path]
    images: str      # the image folder, relative to the workdir
    gt: str          # the ground truth JSON, relative to the workdir
    count: int


def stage_dataset(images: str, gt: str) -> Dataset:
    """The files that carry ``images`` and the ground truth of exactly those images to a target."""
    from fdq.calibration.labels import subset_ground_truth
    from fdq.device.evaluation import load_ground_truth, save_ground_truth_json
    from fdq.device.images import list_images

    from .bundle_cache import folder_digest
    from .zoo import fdq_home

    items = list_images(images)
    truth = subset_ground_truth(load_ground_truth(gt), [key for key, _ in items])
    local = {f"images/{path.relative_to(images).as_posix()}": path for _, path in items}
    key = folder_digest(local)
    gt_file = fdq_home() / "datasets" / key[:12] / "ground_truth.json"
    save_ground_truth_json(truth, gt_file)  # atomic, and the same bytes for the same images and truth
    local["ground_truth.json"] = gt_file
    folder = f"{DATA}/{Path(images).resolve().name}-{folder_digest(local)[:12]}"
    return Dataset(files={f"{folder}/{name}": path for name, path in local.items()}, images=f"{folder}/images",
                   gt=f"{folder}/ground_truth.json", count=len(items))


# A counting run starts from the same state every time, so that it executes the same instructions: one
# thread (OpenMP's too), a fixed string-hash seed, a fixed, small environment, and the C kernels built
# before it (a build in the run would lay the heap out otherwise). And a fixed malloc mmap threshold:
# glibc's moves with what was freed, so where a big buffer lands would depend on the process's
# history, and code that compares addresses counts differently (QNNPACK rebuilds a convolution's
# indirection buffer when its input is not where it was: slim int8 inference moved between 46 and 53
# million instructions a frame with the environment's size alone; with every buffer of a page or more
# mapped anew, which qemu-user places at a new address, within 0.02 %).
COUNTING_ENV = 'PATH="$PATH" HOME="$HOME" PYTHONHASHSEED=0 OMP_NUM_THREADS=1 MALLOC_MMAP_THRESHOLD_=4096'
KERNELS_FIRST = "from fdq.device.kernels import load_kernels; load_kernels()"


def board_command(conn: Connection, workdir: str, args: List[str], module: str = "fdq.device.run",
                  counting: bool = False) -> str:
    """The deployed ``module`` (the runner, or the demo) in ``workdir``; ``exec`` makes it the
    process that ``Connection.run`` stops on Ctrl-C. ``counting``: the runner under the target's
    instruction counter (the counting qemu), as above."""
    python = conn.target.python
    program = " ".join(shlex.quote(a) for a in (python, "-m", module, *args))
    if not counting:
        return f"cd {shlex.quote(workdir)} && PYTHONPATH={LIB} exec {program}"
    counter = shlex.quote(conn.target.instruction_counter)
    return (f"cd {shlex.quote(workdir)} && PYTHONPATH={LIB} {shlex.quote(python)} -c {shlex.quote(KERNELS_FIRST)} "
            f"&& exec env -i {COUNTING_ENV} PYTHONPATH={LIB} {counter} {program} --count-instructions")


def check_counting(targets: Sequence[Any], threads: Optional[Sequence[int]]) -> None:
    """``--count-instructions`` before anything travels: every target has a counter, one thread."""
    if threads and any(t != 1 for t in threads):
        raise ValueError(f"--count-instructions counts with one thread (the count is shared by every thread): "
                         f"give --threads 1, not {','.join(str(t) for t in threads)} (see --help)")
    for target in targets:
        if not target.instruction_counter:
            raise ValueError(f"--count-instructions needs an emulated ARM board with the instruction-counting qemu "
                             f"(a profile with instruction_counter, as scripts/testboard.sh up arm64 writes); "
                             f"target {target.name} has none")
        if not threads and target.threads != 1:
            raise ValueError(f"--count-instructions counts with one thread and target {target.name} runs "
                             f"{target.threads}: give --threads 1 (see --help)")


def runner_args(remote_bundles: Sequence[str], remote_jsons: Sequence[str], settings: RunSettings, threads: int,
                dataset: Optional[Dataset], thermal_zone: Optional[str]) -> List[str]:
    """The runner's command line for one run (several bundles: interleaved, one JSON each)."""
    args = ["--bundle", *remote_bundles, "--warmup", str(settings.warmup), "--threads", str(threads),
            "--min-seconds", f"{settings.min_seconds:g}", "--cooldown", f"{settings.cooldown:g}"]
    if dataset is not None:
        args += ["--source", dataset.images, "--gt", dataset.gt]
    else:
        args += ["--source", settings.source]
    if settings.frames is not None:
        args += ["--frames", str(settings.frames)]
    if settings.per_op:
        args.append("--per-op")
    if settings.max_temp is not None:
        args += ["--max-temp", f"{settings.max_temp:g}"]
    if thermal_zone:
        args += ["--thermal-zone", thermal_zone]
    return args + ["--json", *remote_jsons]


def frames_shown(line: Line) -> Callable[[str], None]:
    """What takes the runner's stderr lines: its ``--progress`` lines move ``line`` (frames done of the
    total, FPS); every other line (an error) is left to the run's result."""
    def show(text: str) -> None:
        found = _FRAME_LINE.match(text)
        if found:
            done, total = int(found[1]), int(found[2]) if found[2] else None
            line.update(completed=done, total=max(done, total) if total else None, note=f"{float(found[3]):.1f} FPS")
    return show


def profile(conn: Connection, remote_bundles: Sequence[str], settings: RunSettings, threads: int,
            dataset: Optional[Dataset] = None, frames: Line = Line()) -> List[Dict[str, Any]]:
    """Run the runner once on deployed bundles, measured alternately frame by frame when there are
    several, and return their JSON documents (fetched from the target), in the same order. When
    ``frames`` is drawn, the runner streams its frames (``--progress`` on its stderr) into it."""
    workdir = conn.path(conn.target.workdir)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    remote_jsons = [f"{RESULTS}/{PurePosixPath(bundle).name}-t{threads}-{stamp}-{i}.json"
                    for i, bundle in enumerate(remote_bundles)]
    args = runner_args(remote_bundles, remote_jsons, settings, threads, dataset, conn.target.thermal_zone)
    conn.makedirs(str(PurePosixPath(workdir, RESULTS)))
    # Ctrl-C, the time limit or a cut connection: run() stops the runner and its children there.
    streamed = {"on_stderr": by_line(frames_shown(frames))} if frames.drawn else {}
    done = conn.run(board_command(conn, workdir, args + (["--progress"] if frames.drawn else []),
                                  counting=settings.count_instructions),
                    timeout=settings.time_limit() * len(remote_bundles), **streamed)
    if done.returncode != 0:  # its last line that is not a frame line says why (a killed runner says nothing)
        said = replace(done, stderr="\n".join(ln for ln in done.stderr.splitlines() if not _FRAME_LINE.match(ln)))
        raise RemoteError(f"{conn.target.name}: the runner failed: {said.last_error_line()}")
    documents = []
    with tempfile.TemporaryDirectory(prefix="fdq-run-") as tmp:
        for i, remote_json in enumerate(remote_jsons):
            local = Path(tmp) / f"run{i}.json"
            conn.get(str(PurePosixPath(workdir, remote_json)), local)
            documents.append(json.loads(local.read_text(encoding="utf-8")))
    return documents


def run_file_name(doc: Dict[str, Any], target: str) -> str:
    """``TARGET-HOST-BUNDLEHASH-RUNTIME-tTHREADS-TIME.json``: runs of every kind sort and never collide."""
    host = str(doc["device"]["machine"].get("node") or "host").replace("/", "_")
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    return (f"{target}-{host}-{doc['bundle']['manifest_sha256'][:12]}-{doc['bundle']['runtime']}-"
            f"t{doc['device']['threads']}-{stamp}.json")


def save_run(doc: Dict[str, Any], runs: Path, target: str) -> Path:
    """Write one run into the runs folder (atomically, under a new name)."""
    path = runs / run_file_name(doc, target)
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
    return path


# --------------------------------------------------------------------------------------------------
# fdq-profile: bundles for each backend, every target, every thread count, one report
# --------------------------------------------------------------------------------------------------


@dataclass
class Job:
    """One run to make: a local bundle on a target with a thread count; ``interleaved``: bundles
    measured alternately with it, frame by frame, in the same runner (``fdq-profile --interleave``)."""

    target: Any          # fdq.host.targets.Target
    bundle: Path
    threads: int
    interleaved: Tuple[Path, ...] = ()


@dataclass
class Outcome:
    runs: List[Any]      # fdq.device.result.Run, in job order
    failures: List[str]


def check_runs_folder(path: str) -> Path:
    """The runs folder may be new, empty, or one fdq made (runs accumulate there, none is replaced)."""
    from fdq.device.outputs import OutputRefused, is_fdq_output

    folder = Path(path).expanduser().absolute()
    if folder.exists() and (not folder.is_dir() or (any(folder.iterdir()) and not is_fdq_output(folder))):
        raise OutputRefused(f"--runs {path}: exists and is not a runs folder fdq made; choose a new or empty "
                            "folder")
    return folder


def run_jobs(jobs: List[Job], settings: RunSettings, runs_dir: Path, command: str,
             dataset: Optional[Dataset] = None, connect: Any = None, announce: Any = print,
             setup: bool = False, fleet: Sequence[Any] = (), keep_going: Callable[[], bool] = lambda: True,
             on_done: Callable[[Job, Optional[Any]], None] = lambda job, run: None) -> Outcome:
    """Deploy and run every job, target by target; a failed run is reported and the others go on.
    ``setup``: provision each target first (``fdq-deploy --setup``). The hosts of ``fleet`` (the
    --target's, when it names several boards) run at the same time, each on its own board; every
    other target runs alone (a baseline on this machine is not measured beside another run).
    ``keep_going`` is asked before each job (a sweep's --budget-minutes: a run started finishes);
    ``on_done`` hears of each job's run (its last, when interleaved; None: it failed).

    Every finished run is saved in ``runs_dir`` at once, so Ctrl-C keeps what was complete."""
    from fdq.device.outputs import write_marker

    from .fleet import on_each

    if not runs_dir.exists():
        runs_dir.mkdir(parents=True)
        write_marker(runs_dir, {"what": "fdq-profile runs"})
    runs: List[Any] = []
    failures: List[str] = []
    targets = list(dict.fromkeys(job.target for job in jobs))
    together = [t for t in targets if t in fleet] if len(fleet) > 1 else []
    for target in (t for t in targets if t not in together):
        conn = connect(target)
        try:
            _runs, _failures = _target_runs(conn, [j for j in jobs if j.target == target], settings, runs_dir,
                                            command, dataset, announce, setup, keep_going, on_done)
        finally:
            conn.close()
        runs += _runs
        failures += _failures
    for result in on_each(together, lambda conn: _target_runs(conn, [j for j in jobs if j.target == conn.target],
                                                              settings, runs_dir, command, dataset, announce,
                                                              setup, keep_going, on_done)):
        if result.ok:
            runs += result.value[0]
            failures += result.value[1]
        else:
            failures.append(f"{result.target.name}: {result.error}")
            announce(f"fdq-profile: error: {failures[-1]}")
    return Outcome(runs, failures)


def _target_runs(conn: Connection, jobs: List[Job], settings: RunSettings, runs_dir: Path, command: str,
                 dataset: Optional[Dataset], announce: Any, setup: bool,
                 keep_going: Callable[[], bool], on_done: Callable[[Job, Optional[Any]], None]) -> Tuple[List[Any], List[str]]:
    """Every job of one target over one connection: (runs saved, failure lines). On a terminal each
    run is a progress line (a fleet's hosts one each): a spinner while the bundle loads there, then the
    frames the runner streams."""
    from fdq.device.result import Run

    from .bundles import FDQ_VERSION
    from .deploy import deploy, notices
    from .history import record, source_commit
    from .provision import prepare

    target = conn.target
    runs: List[Any] = []
    failures: List[str] = []
    first, prepared = True, False
    for job in jobs:
        if not keep_going():
            break
        try:
            if not prepared:
                prepare(conn, setup)
                prepared = True
            bundles = [job.bundle, *job.interleaved]
            done = deploy(conn, [str(b) for b in bundles], dataset.files if dataset else None)
            remotes = [done.bundles[str(b.resolve())] for b in bundles]
            what = f"{target.name}: {' / '.join(b.name for b in bundles)}, {job.threads} thread(s)"
            for line in notices(done, target.name):
                announce(line)
            announce(f"{what}: {len(done.uploaded)} file(s) sent, {done.unchanged} unchanged")
            cooled = replace(settings, cooldown=0.0) if first else settings  # --cooldown: between runs
            with progress_line(f"{what}: measuring on the target") as frames:
                docs = profile(conn, remotes, cooled, job.threads, dataset, frames)
            first = False
        except (RuntimeError, OSError, ValueError) as exc:  # RemoteError, SetupError, BundleError...
            failures.append(f"{target.name}: {job.bundle.name}: {str(exc).strip().splitlines()[0]}")
            announce(f"fdq-profile: error: {failures[-1]}")
            on_done(job, None)
            continue
        for bundle, doc in zip(bundles, docs):
            doc["profile"] = {"target": target.name, "address": target.address, "command": command,
                              "bundle": str(bundle), "fdq_version": FDQ_VERSION, "git_commit": source_commit()}
            runs.append(Run(doc, save_run(doc, runs_dir, target.name)))
            problem = record(runs[-1])
            if problem:
                announce(f"fdq-profile: warning: {problem}")
        on_done(job, runs[-1])
    return runs, failures

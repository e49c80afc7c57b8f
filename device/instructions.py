"""Instructions executed per frame and stage, counted by the emulator (``fdq-run --count-instructions``).

On an emulated board the runner can run under a qemu that counts every guest instruction
(``scripts/qemu_count``: a TCG plugin, started by the profile's ``instruction_counter``). A count does
not drift like a latency: the same code on the same frames executes the same instructions, so a
count is repeatable run to run and says what a real CPU of that kind would have to execute.

The runner marks each stage boundary with one syscall that no kernel has (``MARK_SYSCALL`` with
``MARK_MAGIC`` first: -ENOSYS, nothing happens); the plugin appends ``CODE FRAME COUNT`` to the file
named by ``$FDQ_COUNT_OUT`` for each, followed by ``CLASS=COUNT`` for each instruction class it decodes
(ASIMD integer multiplies, FP multiply-adds, loads, ...: what a cost model weighs, ``fdq.host.estimate``;
lines without them, from an older plugin, read as a run without classes). The cost of a mark itself
(measured at the start) is taken off every stage, class by class. The counters are shared by the
process's threads and not atomic: count with one thread.

Only the standard library; the marker numbers are those of ``scripts/qemu_count/insn_count.c``.
"""
from __future__ import annotations

import atexit
import ctypes
import os
import statistics
from typing import Any, Callable, Dict, List, NamedTuple, Optional

MARK_SYSCALL = 0x7F0
MARK_MAGIC = 0x66647121  # "fdq!"
OUT_ENV = "FDQ_COUNT_OUT"
CPU_ENV = "FDQ_COUNT_CPU"
STAGES = ("preprocess", "inference", "postprocess", "total")
# Marker codes: the four boundaries of a frame, then the probes and the cold start.
FRAME_START, INFERENCE_START, INFERENCE_END, FRAME_END = 0, 1, 2, 3
PROBE, LOADED, FIRST_FRAME = 9, 10, 11
PROBES = 3
COUNTER = ("guest instructions the emulated CPU executed, counted by qemu's TCG plugin insn_count "
           "(scripts/qemu_count): exact and repeatable, not a time; the kernel, caches and memory are not in it")


class CountingError(RuntimeError):
    """Counting was asked for where no counting emulator runs this process."""


class Mark(NamedTuple):
    """One marker line: its code and frame, the instructions so far, and those per class (may be empty)."""

    code: int
    frame: int
    count: int
    classes: Dict[str, int]


def parse_mark(line: str) -> Mark:
    """``CODE FRAME COUNT [CLASS=COUNT ...]`` as the plugin writes it."""
    fields = line.split()
    code, frame, count = (int(v) for v in fields[:3])
    classes = {name: int(value) for name, value in (field.split("=", 1) for field in fields[3:])}
    return Mark(code, frame, count, classes)


class InstructionCounter:
    """The marks of one run and, at the end, the counts per stage they delimit."""

    def __init__(self) -> None:
        path = os.environ.get(OUT_ENV)
        if not path:
            raise CountingError("--count-instructions needs the instruction-counting qemu of an emulated board: "
                                f"run the runner under the profile's instruction_counter (${OUT_ENV} is not set)")
        self.path = path
        syscall = ctypes.CDLL(None, use_errno=True).syscall
        syscall.restype = ctypes.c_long
        syscall.argtypes = [ctypes.c_long] * 4
        self._syscall = syscall
        for index in range(PROBES):
            self.mark(PROBE, index)
        try:
            probes = [mark for mark in self._lines() if mark.code == PROBE]
        except (FileNotFoundError, ValueError, UnicodeDecodeError):  # the wrapper makes it, the plugin writes it
            probes = []
        if len(probes) < PROBES:
            raise CountingError(f"--count-instructions: no counts arrived in {path}: this process does not run "
                                "under the instruction-counting qemu (the profile's instruction_counter)")
        # Only now is the file known to be the plugin's (made by the counting wrapper for this process):
        # a stray $FDQ_COUNT_OUT naming a file of the user's is never removed.
        atexit.register(self.close)
        self.startup = probes[0].count
        # Two marks in a row differ by what one mark executes: taken off every stage below.
        self.mark_cost = min((_delta(a, b) for a, b in zip(probes, probes[1:])), key=lambda d: d.count)

    def mark(self, code: int, frame: int = 0) -> None:
        """One marker line: the count now, under ``code`` and ``frame``."""
        self._syscall(MARK_SYSCALL, MARK_MAGIC, code, frame)

    def around_inference(self, infer: Callable[..., Any]) -> Callable[..., Any]:
        """``infer`` with its start and end marked (the frame index is that of the enclosing frame mark)."""
        def marked(blob: Any) -> Any:
            self.mark(INFERENCE_START)
            out = infer(blob)
            self.mark(INFERENCE_END)
            return out

        return marked

    def _lines(self) -> List[Mark]:
        with open(self.path, encoding="ascii") as f:
            return [parse_mark(line) for line in f if line.strip()]

    def result(self, warmup: int, threads: int) -> Dict[str, Any]:
        """The ``instructions`` section of ``fdq.run/1``: per stage, per frame and summed."""
        from . import sysinfo

        lines = self._lines()
        cold = {mark.code: mark.count for mark in lines if mark.code in (LOADED, FIRST_FRAME)}
        per_frame = _frame_stages(lines, self.mark_cost)
        classes = sorted(self.mark_cost.classes)
        return {
            "counter": COUNTER,
            "cpu": os.environ.get(CPU_ENV),
            "cpu_features": sysinfo.cpu_features(),
            "threads": threads,
            "hash_seed": os.environ.get("PYTHONHASHSEED"),
            "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
            "frames": len(per_frame),
            "warmup_excluded": warmup,
            "mark_cost": self.mark_cost.count,
            "cold_start": {"startup": self.startup,
                           "load": _difference(cold.get(LOADED), self.startup),
                           "first_frame": _difference(cold.get(FIRST_FRAME), cold.get(LOADED))},
            "per_frame": {stage: count_stats([frame[stage].count for frame in per_frame]) for stage in STAGES},
            # per stage and class, the instructions of each measured frame (they sum to the stage's count)
            "classes": {stage: {name: [frame[stage].classes[name] for frame in per_frame] for name in classes}
                        for stage in STAGES} if classes else None,
        }

    def close(self) -> None:
        """Remove the counts file (the counting wrapper made it for this process alone); at exit."""
        try:
            os.unlink(self.path)
        except OSError:
            pass


def _difference(later: Optional[int], earlier: Optional[int]) -> Optional[int]:
    return later - earlier if later is not None and earlier is not None else None


class Count(NamedTuple):
    """Instructions between two marks, in all and per class."""

    count: int
    classes: Dict[str, int]


def _delta(earlier: Mark, later: Mark) -> Count:
    return Count(later.count - earlier.count, {k: v - earlier.classes.get(k, 0) for k, v in later.classes.items()})


def _less(span: Count, cost: Count) -> Count:
    """``span`` less one mark's ``cost``: never below zero, the classes still summing to the count."""
    if span.count <= cost.count:
        return Count(0, {k: 0 for k in span.classes})
    classes = {k: max(0, v - cost.classes.get(k, 0)) for k, v in span.classes.items()}
    return Count(sum(classes.values()) if classes else span.count - cost.count, classes)


def _sum(counts: List[Count]) -> Count:
    return Count(sum(c.count for c in counts), {k: sum(c.classes[k] for c in counts) for k in counts[0].classes})


def _frame_stages(lines: List[Mark], mark_cost: Count) -> List[Dict[str, Count]]:
    """Per measured frame {stage: instructions}, each stage less the mark that ends it."""
    frames: List[Dict[str, Count]] = []
    bounds: Dict[int, Mark] = {}
    for mark in lines:
        if mark.code == FRAME_START:
            bounds = {FRAME_START: mark}
        elif mark.code in (INFERENCE_START, INFERENCE_END) and bounds:
            bounds[mark.code] = mark
        elif mark.code == FRAME_END and len(bounds) == 3:
            start, infer, infer_end = bounds[FRAME_START], bounds[INFERENCE_START], bounds[INFERENCE_END]
            stages = {"preprocess": _delta(start, infer), "inference": _delta(infer, infer_end),
                      "postprocess": _delta(infer_end, mark)}
            stages = {k: _less(v, mark_cost) for k, v in stages.items()}
            stages["total"] = _sum(list(stages.values()))
            frames.append(stages)
            bounds = {}
    return frames


def count_stats(values: List[int]) -> Dict[str, Any]:
    """median / min / max / mean / total of per-frame counts, plus the raw list."""
    if not values:
        return {"median": None, "min": None, "max": None, "mean": None, "total": 0, "frames": []}
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "mean": statistics.fmean(values), "total": sum(values), "frames": list(values)}

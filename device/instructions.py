"""Instructions executed per frame and stage, counted by the emulator (``fdq-run --count-instructions``).

On an emulated board the runner can run under a qemu that counts every guest instruction
(``scripts/qemu_count``: a TCG plugin, started by the profile's ``instruction_counter``). A count does
not drift like a latency: the same code on the same frames executes the same instructions, so a
count is repeatable run to run and says what a real CPU of that kind would have to execute.

The runner marks each stage boundary with one syscall that no kernel has (``MARK_SYSCALL`` with
``MARK_MAGIC`` first: -ENOSYS, nothing happens); the plugin appends ``CODE FRAME COUNT`` to the file
named by ``$FDQ_COUNT_OUT`` for each. The cost of a mark itself (measured at the start) is taken off
every stage. The counter is shared by the process's threads and not atomic: count with one thread.

Only the standard library; the marker numbers are those of ``scripts/qemu_count/insn_count.c``.
"""
from __future__ import annotations

import atexit
import ctypes
import os
import statistics
from typing import Any, Callable, Dict, List, Optional

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
            probes = [count for code, _, count in self._lines() if code == PROBE]
        except (FileNotFoundError, ValueError, UnicodeDecodeError):  # the wrapper makes it, the plugin writes it
            probes = []
        if len(probes) < PROBES:
            raise CountingError(f"--count-instructions: no counts arrived in {path}: this process does not run "
                                "under the instruction-counting qemu (the profile's instruction_counter)")
        # Only now is the file known to be the plugin's (made by the counting wrapper for this process):
        # a stray $FDQ_COUNT_OUT naming a file of the user's is never removed.
        atexit.register(self.close)
        self.startup = probes[0]
        # Two marks in a row differ by what one mark executes: taken off every stage below.
        self.mark_cost = min(b - a for a, b in zip(probes, probes[1:]))

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

    def _lines(self) -> List[List[int]]:
        with open(self.path, encoding="ascii") as f:
            return [[int(v) for v in line.split()] for line in f if line.strip()]

    def result(self, warmup: int, threads: int) -> Dict[str, Any]:
        """The ``instructions`` section of ``fdq.run/1``: per stage, per frame and summed."""
        from . import sysinfo

        lines = self._lines()
        cold = {code: count for code, _, count in lines if code in (LOADED, FIRST_FRAME)}
        per_frame = _frame_stages(lines, self.mark_cost)
        return {
            "counter": COUNTER,
            "cpu": os.environ.get(CPU_ENV),
            "cpu_features": sysinfo.cpu_features(),
            "threads": threads,
            "hash_seed": os.environ.get("PYTHONHASHSEED"),
            "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
            "frames": len(per_frame),
            "warmup_excluded": warmup,
            "mark_cost": self.mark_cost,
            "cold_start": {"startup": self.startup,
                           "load": _difference(cold.get(LOADED), self.startup),
                           "first_frame": _difference(cold.get(FIRST_FRAME), cold.get(LOADED))},
            "per_frame": {stage: count_stats([frame[stage] for frame in per_frame]) for stage in STAGES},
        }

    def close(self) -> None:
        """Remove the counts file (the counting wrapper made it for this process alone); at exit."""
        try:
            os.unlink(self.path)
        except OSError:
            pass


def _difference(later: Optional[int], earlier: Optional[int]) -> Optional[int]:
    return later - earlier if later is not None and earlier is not None else None


def _frame_stages(lines: List[List[int]], mark_cost: int) -> List[Dict[str, int]]:
    """Per measured frame {stage: instructions}, each stage less the mark that ends it."""
    frames: List[Dict[str, int]] = []
    bounds: Dict[int, int] = {}
    for code, _, count in lines:
        if code == FRAME_START:
            bounds = {FRAME_START: count}
        elif code in (INFERENCE_START, INFERENCE_END) and bounds:
            bounds[code] = count
        elif code == FRAME_END and len(bounds) == 3:
            start, infer, infer_end = bounds[FRAME_START], bounds[INFERENCE_START], bounds[INFERENCE_END]
            stages = {"preprocess": infer - start, "inference": infer_end - infer, "postprocess": count - infer_end}
            stages = {k: max(0, v - mark_cost) for k, v in stages.items()}
            stages["total"] = sum(stages.values())
            frames.append(stages)
            bounds = {}
    return frames


def count_stats(values: List[int]) -> Dict[str, Any]:
    """median / min / max / mean / total of per-frame counts, plus the raw list."""
    if not values:
        return {"median": None, "min": None, "max": None, "mean": None, "total": 0, "frames": []}
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "mean": statistics.fmean(values), "total": sum(values), "frames": list(values)}

"""Raspberry Pi 4 milliseconds estimated from counted instructions: an estimate, never a measurement.

Counted instructions (``fdq-profile --count-instructions`` on the emulated Cortex-A72) times one
cycles-per-instruction figure, over the clock. The CPI is calibrated on one published measurement
(:data:`CALIBRATION`), so the estimate is only as good as that figure carries over to other code:
caches, memory bandwidth, the kernel, other threads and the instruction mix (NEON int8 dot products
against scalar Python) are not modelled, and one CPI is applied to all of them.

Beside it, a Cortex-A72 cycle model over the instruction classes the counting plugin decodes
(:func:`class_cycles`, :func:`bound_cycles`): each class at its issue throughput from ARM's A72
optimization guide, not calibrated on anything, so that an int8 widening multiply-accumulate (one pipe)
and an fp32 FMLA are no longer taken as the same cost. It too is an estimate, never a measurement.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Mapping, Optional

CLOCK_HZ = 1.5e9  # Raspberry Pi 4 Model B, Cortex-A72 at 1.5 GHz


@dataclass(frozen=True)
class Published:
    """A latency measured on a real Pi 4 by others: model inference alone, one thread."""

    model: str
    runtime: str
    dtype: str
    input: str
    ms: float
    source: str


_UPSTREAM = ("Ultra-Light-Fast-Generic-Face-Detector-1MB README (Linzaer): MNN int8, 320x240, 1 thread, "
             "Raspberry Pi 4B at 1.5 GHz")
PUBLISHED = {
    "slim": Published("slim", "mnn", "int8", "320x240", 29.0, _UPSTREAM),
    "rfb": Published("rfb", "mnn", "int8", "320x240", 35.0, _UPSTREAM),
}
CALIBRATION = PUBLISHED["slim"]  # the CPI comes from slim; RFB checks it
METHOD = (f"estimate, not a measurement: counted instructions x one CPI / {CLOCK_HZ / 1e9:g} GHz; the CPI is "
          f"calibrated on {CALIBRATION.model} {CALIBRATION.runtime} {CALIBRATION.dtype} {CALIBRATION.input} "
          f"({CALIBRATION.ms:g} ms published); caches, memory, the OS, threads and the instruction mix are not "
          "modelled")


def cycles_per_instruction(instructions: float, ms: float, clock_hz: float = CLOCK_HZ) -> float:
    """The CPI that makes ``instructions`` take ``ms`` at ``clock_hz``."""
    if instructions <= 0:
        raise ValueError("cannot calibrate a CPI on zero instructions")
    return ms * 1e-3 * clock_hz / instructions


def estimate_ms(instructions: float, cpi: float, clock_hz: float = CLOCK_HZ) -> float:
    """The milliseconds ``instructions`` take at ``cpi`` cycles each and ``clock_hz``."""
    return instructions * cpi / clock_hz * 1e3


# --- A Cortex-A72 cycle model over the instruction classes of scripts/qemu_count/insn_count.c ---
#
# Issue throughput, instructions per cycle, of each class on a Cortex-A72, from ARM's "Cortex-A72
# Software Optimization Guide" (UAN 0016A, 2015), section 3 "Instruction characteristics":
#   3.8/3.9 loads and stores: one load (L pipe) and one store (S pipe) per cycle;
#   3.2/3.3 branches one per cycle (B), integer ALU two per cycle (I0/I1);
#   3.15 ASIMD integer: multiply, multiply-accumulate and their long forms (MUL, MLA, SMULL, SMLAL)
#        D-form one per cycle, on F0 only; MUL/MLA Q-form one every two cycles; shifts and pairwise
#        add-accumulate long (SSHR, SADALP) one per cycle on F1 only; basic arithmetic two per cycle (F0/F1);
#   3.16 FP and ASIMD FP: multiply and multiply-accumulate (FMUL, FMLA, FMADD) scalar and D-form two
#        per cycle (F0/F1). A Q-form FMLA/FMUL takes both 64-bit FP pipes: one per cycle. The guide's text
#        was not reachable from this project's tools (only its first pages); the Q-form figure is
#        the A57 guide's (UAN 0015B, 3.16, "ASIMD FP multiply accumulate, Q-form ... throughput 1") and
#        agrees with vfpbench's measured 8 single-precision FLOP per cycle on an A72 (flatlib, 2015).
# A72_THROUGHPUT and A72_PIPES are these figures; an estimate from them is a model, never a measurement.
A72_THROUGHPUT = {
    "simd_imul": 1.0, "simd_imul_q": 0.5, "simd_fmul": 2.0, "simd_fmul_q": 1.0, "simd_f1": 1.0,
    "simd_other": 2.0, "load": 1.0, "store": 1.0, "branch": 1.0, "scalar": 2.0,
}
A72_DISPATCH = 3  # instructions decoded and dispatched per cycle
CLASS_METHOD = ("estimate, not a measurement: each counted instruction class x its issue cost on a Cortex-A72 "
                "(1/throughput, ARM Cortex-A72 Software Optimization Guide section 3), summed; no overlap of "
                "classes, no latency chains, caches, memory or OS are modelled")
BOUND_METHOD = ("estimate, not a measurement: the busiest Cortex-A72 issue resource (dispatch 3/cycle, F0, F1, "
                "the two FP pipes together, load, store, branch, the two integer pipes) for the counted classes: "
                "a lower bound that assumes perfect overlap")


def class_cycles(classes: Mapping[str, float]) -> float:
    """Cycles if every instruction waits for the one before to issue: sum of count / throughput.

    An upper-side estimate (an out-of-order A72 overlaps loads, integer and SIMD work); its ratios
    between two runs say what the instruction mix costs, which a plain count cannot.
    """
    unknown = set(classes) - set(A72_THROUGHPUT)
    if unknown:
        raise ValueError(f"no Cortex-A72 throughput for the instruction class(es) {sorted(unknown)}")
    return sum(count / A72_THROUGHPUT[name] for name, count in classes.items())


def bound_cycles(classes: Mapping[str, float]) -> float:
    """Cycles of the busiest issue resource, every class overlapping perfectly: a lower bound.

    F0 alone takes the integer multiplies (a Q-form MUL/MLA two cycles), F1 alone the shifts and
    SADALP; a Q-form FP multiply takes both FP pipes for a cycle; the rest of ASIMD takes either.
    """
    c = {name: classes.get(name, 0.0) for name in A72_THROUGHPUT}
    class_cycles(c)  # the same check of the names
    f0 = c["simd_imul"] + 2 * c["simd_imul_q"]
    f1 = c["simd_f1"]
    fp_pipes = (f0 + f1 + c["simd_fmul"] + 2 * c["simd_fmul_q"] + c["simd_other"]) / 2
    return max(sum(c.values()) / A72_DISPATCH, f0, f1, fp_pipes, c["load"], c["store"], c["branch"],
               c["scalar"] / 2)


def run_cycles(doc: Mapping[str, Any], stage: str = "total") -> Optional[float]:
    """The median per frame of ``stage``'s class-sum cycles (:func:`class_cycles`) of a run counted with
    instruction classes; None for a run without them (not counted, or by an older plugin)."""
    classes = ((doc.get("instructions") or {}).get("classes") or {}).get(stage)
    if not classes:
        return None
    frames = len(next(iter(classes.values())))
    return statistics.median(class_cycles({name: counts[i] for name, counts in classes.items()})
                             for i in range(frames))


def cycles_ms(cycles: float, clock_hz: float = CLOCK_HZ) -> float:
    """Milliseconds ``cycles`` take at ``clock_hz``."""
    return cycles / clock_hz * 1e3

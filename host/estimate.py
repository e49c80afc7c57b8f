"""Raspberry Pi 4 milliseconds estimated from counted instructions: an estimate, never a measurement.

Counted instructions (``fdq-profile --count-instructions`` on the emulated Cortex-A72) times one
cycles-per-instruction figure, over the clock. The CPI is calibrated on one published measurement
(:data:`CALIBRATION`), so the estimate is only as good as that figure carries over to other code:
caches, memory bandwidth, the kernel, other threads and the instruction mix (NEON int8 dot products
against scalar Python) are not modelled, and one CPI is applied to all of them.
"""
from __future__ import annotations

from dataclasses import dataclass

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

"""Facts about the machine a measurement ran on, for the results JSON.

Everything here is best effort and cheap: a missing file or tool gives ``None``, never an error,
because the same code runs on a Raspberry Pi, a Jetson, an x86 workstation and under qemu-user.
Only the standard library is needed (``psutil`` is used when importable).
"""
from __future__ import annotations

import glob
import os
import platform
import re
import resource
import shutil
import struct
import subprocess
import sys
from typing import Any, Dict, List, Optional

# Arm Ltd. (implementer 0x41) CPU part numbers of the cores found on common boards.
_ARM_PARTS = {
    "0xb76": "ARM1176", "0xc07": "Cortex-A7", "0xc08": "Cortex-A8", "0xc09": "Cortex-A9",
    "0xc0f": "Cortex-A15", "0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55",
    "0xd07": "Cortex-A57", "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75",
    "0xd0b": "Cortex-A76", "0xd0c": "Neoverse-N1", "0xd0d": "Cortex-A77", "0xd40": "Neoverse-V1",
    "0xd41": "Cortex-A78", "0xd42": "Cortex-A78AE", "0xd44": "Cortex-X1", "0xd46": "Cortex-A510",
    "0xd47": "Cortex-A710", "0xd48": "Cortex-X2", "0xd49": "Neoverse-N2", "0xd4b": "Cortex-A78C",
    "0xd4f": "Neoverse-V2", "0xd80": "Cortex-A520", "0xd81": "Cortex-A720", "0xd82": "Cortex-X4",
}

# platform.machine() -> architecture family, and the binfmt_misc entry names qemu registers for it.
_ARCH_FAMILY = {
    "x86_64": "x86", "amd64": "x86", "i386": "x86", "i686": "x86",
    "aarch64": "arm", "arm64": "arm", "armv7l": "arm", "armv6l": "arm", "armv8l": "arm",
    "riscv64": "riscv", "ppc64le": "ppc", "s390x": "s390",
}
_QEMU_NAMES = {
    "x86_64": ("qemu-x86_64",), "amd64": ("qemu-x86_64",), "i386": ("qemu-i386",), "i686": ("qemu-i386",),
    "aarch64": ("qemu-aarch64",), "arm64": ("qemu-aarch64",), "armv7l": ("qemu-arm",),
    "armv6l": ("qemu-arm",), "armv8l": ("qemu-arm",), "riscv64": ("qemu-riscv64",),
    "ppc64le": ("qemu-ppc64le",), "s390x": ("qemu-s390x",),
}


def _read(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _cpuinfo_fields(text: Optional[str]) -> Dict[str, str]:
    """First value of every ``key : value`` line of /proc/cpuinfo (keys lower-cased)."""
    fields: Dict[str, str] = {}
    for line in (text or "").splitlines():
        key, sep, value = line.partition(":")
        key = key.strip().lower()
        if sep and key and key not in fields:
            fields[key] = value.strip()
    return fields


def _cpuinfo_family(fields: Dict[str, str]) -> Optional[str]:
    """Architecture family that /proc/cpuinfo describes (None when it says too little)."""
    if fields.get("vendor_id") in ("GenuineIntel", "AuthenticAMD", "HygonGenuine", "CentaurHauls"):
        return "x86"
    if "cpu implementer" in fields or "cpu architecture" in fields:
        return "arm"
    if "isa" in fields and fields["isa"].startswith("rv"):
        return "riscv"
    return None


def cpu_info() -> Dict[str, Any]:
    """CPU model, board model (ARM), and core counts."""
    fields = _cpuinfo_fields(_read("/proc/cpuinfo"))
    model = fields.get("model name") or fields.get("processor name") or fields.get("cpu model")
    if model and model.isdigit():  # some ARM kernels put a number in "processor"
        model = None
    if not model and fields.get("cpu implementer") == "0x41":
        part = fields.get("cpu part", "").lower()
        model = _ARM_PARTS.get(part, f"Arm part {part}" if part else None)
    board = fields.get("model")
    if board and board.isdigit():  # x86 "model" is a number, not a board name
        board = None
    if not board:
        tree = _read("/proc/device-tree/model") or _read("/sys/firmware/devicetree/base/model")
        board = tree.strip("\x00\n ") if tree else None
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {"model": model or platform.processor() or None, "hardware": fields.get("hardware"),
            "board": board, "cores": os.cpu_count(), "usable_cores": usable}


def os_name() -> Optional[str]:
    """PRETTY_NAME of /etc/os-release (falls back to ``platform.platform()``)."""
    text = _read("/etc/os-release") or _read("/usr/lib/os-release")
    for line in (text or "").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"').strip("'")
    return platform.platform() or None


def _binfmt_entry(name: str) -> Optional[Dict[str, str]]:
    """Parsed ``/proc/sys/fs/binfmt_misc/<name>`` (None when absent or disabled)."""
    text = _read(f"/proc/sys/fs/binfmt_misc/{name}")
    if not text or not text.startswith("enabled"):
        return None
    out = {"name": name}
    for line in text.splitlines()[1:]:
        key, _, value = line.partition(" ")
        out[key] = value.strip()
    return out


def emulation() -> Dict[str, Any]:
    """Whether this process runs under an emulator (qemu-user) and the evidence, or ``emulated: False``.

    Checks, all cheap and local: ``QEMU_*`` environment variables; the parent process's executable
    (qemu hides its own ``/proc/self/exe`` but not the parent's); ``/proc/cpuinfo`` describing another
    architecture than ``platform.machine()``; ``uname -m`` disagreeing with ``platform.machine()``;
    and an enabled qemu ``binfmt_misc`` handler for this process's own architecture (a native
    kernel has no reason to register one, so it marks a foreign host). None of them can see full
    system emulation (qemu-system), which looks like a slow real machine.
    """
    machine = platform.machine()
    evidence: List[str] = []
    qemu_env = sorted(k for k in os.environ if k.startswith("QEMU_"))
    if qemu_env:
        evidence.append(f"environment sets {', '.join(qemu_env)}")
    try:
        parent = os.readlink(f"/proc/{os.getppid()}/exe")
        if "qemu" in os.path.basename(parent):
            evidence.append(f"parent process runs {parent}")
    except OSError:
        pass
    family = _ARCH_FAMILY.get(machine.lower())
    cpu_family = _cpuinfo_family(_cpuinfo_fields(_read("/proc/cpuinfo")))
    if family and cpu_family and family != cpu_family:
        evidence.append(f"/proc/cpuinfo describes an {cpu_family} CPU but this process is {machine}")
    uname_bin = shutil.which("uname")
    if uname_bin:
        try:
            native = subprocess.run([uname_bin, "-m"], capture_output=True, text=True, timeout=5).stdout.strip()
            if native and native != machine:
                evidence.append(f"`uname -m` says {native}, platform.machine() says {machine}")
        except (OSError, subprocess.SubprocessError):
            pass
    for name in _QEMU_NAMES.get(machine.lower(), ()):
        entry = _binfmt_entry(name)
        if entry:
            evidence.append(f"binfmt_misc {name} is enabled (interpreter {entry.get('interpreter', '?')}): "
                            f"the kernel runs {machine} binaries through qemu")
    if evidence:
        return {"emulated": True, "how": "; ".join(evidence)}
    return {"emulated": False, "how": "no sign of qemu-user (checked QEMU_* env, parent exe, /proc/cpuinfo, "
                                      "uname -m, binfmt_misc); full-system emulation is not detectable"}


def _zone_priority(kind: str) -> int:
    kind = kind.lower()
    for rank, word in enumerate(("cpu", "soc", "x86_pkg", "package", "core", "k10temp", "tctl")):
        if word in kind:
            return rank
    return 99


def _millidegrees(path: str) -> Optional[float]:
    raw = _read(path)
    try:
        return int(raw.strip()) / 1000.0 if raw is not None else None
    except ValueError:
        return None


def cpu_temperature_c(zone: Optional[str] = None) -> Optional[float]:
    """CPU temperature in °C: the file ``zone`` (a profile's ``thermal_zone``) when given, else the
    /sys/class/thermal zone named like a CPU/SoC first; None when nothing is readable."""
    if zone:
        return _millidegrees(zone)
    zones = []
    for folder in sorted(glob.glob("/sys/class/thermal/thermal_zone*")):
        value = _millidegrees(os.path.join(folder, "temp"))
        if value is not None:
            kind = (_read(os.path.join(folder, "type")) or "").strip()
            zones.append((_zone_priority(kind), folder, value))
    return sorted(zones)[0][2] if zones else None


_THROTTLE_BITS = {
    0: "under-voltage now", 1: "arm frequency capped now", 2: "throttled now", 3: "soft temperature limit now",
    16: "under-voltage occurred", 17: "arm frequency capping occurred", 18: "throttling occurred",
    19: "soft temperature limit occurred",
}


def throttled() -> Optional[Dict[str, Any]]:
    """Raspberry Pi ``vcgencmd get_throttled`` as {"value": "0x0", "flags": [...]}; None without vcgencmd."""
    tool = shutil.which("vcgencmd")
    if not tool:
        return None
    try:
        out = subprocess.run([tool, "get_throttled"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"throttled=(0x[0-9a-fA-F]+)", out)
    if not match:
        return None
    value = int(match.group(1), 16)
    return {"value": match.group(1), "flags": [text for bit, text in _THROTTLE_BITS.items() if value >> bit & 1]}


def thermal_state(zone: Optional[str] = None) -> Dict[str, Any]:
    """Temperature and throttling now, for the start and the end of a run."""
    return {"c": cpu_temperature_c(zone), "throttled": throttled()}


def throttling_during(start: Optional[Dict[str, Any]], end: Optional[Dict[str, Any]]) -> List[str]:
    """Throttling flags that are active at the end of a run or appeared during it (the sticky
    "occurred" bits count only when they were not already set at the start)."""
    if not end:
        return []
    before = set((start or {}).get("flags") or [])
    return [flag for flag in end.get("flags") or [] if flag.endswith(" now") or flag not in before]


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB: Linux's ``VmHWM``, the peak of this program's own
    memory. ``ru_maxrss`` survives ``exec``: a runner started by a big process (fdq-profile's local
    target forks it from the host's Python) reported that process's peak. Elsewhere ``ru_maxrss`` (KiB on
    Linux, bytes on macOS)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0


def memory() -> Dict[str, Any]:
    """Peak RSS, and current RSS / total memory from psutil when it is installed."""
    out: Dict[str, Any] = {"peak_rss_mib": round(peak_rss_mib(), 2)}
    try:
        import psutil  # optional on the board
    except ImportError:
        return out
    try:
        out["rss_mib"] = round(psutil.Process().memory_info().rss / 2**20, 2)
        out["total_mib"] = round(psutil.virtual_memory().total / 2**20, 1)
    except Exception:  # psutil can fail in odd sandboxes; the peak above is what matters
        pass
    return out


# Names of the AT_HWCAP / AT_HWCAP2 bits, bit 0 first, as the kernel prints them in /proc/cpuinfo
# (arch/arm64/kernel/cpuinfo.c, bits from arch/arm64/include/uapi/asm/hwcap.h; 32-bit ARM:
# arch/arm/kernel/setup.c). int8 kernels (XNNPACK, ruy, ncnn, onnxruntime) choose code paths by these.
_HWCAP_NAMES = {
    "aarch64": (
        ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop "
         "sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg gcs").split(),
        ("dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svef32mm svef64mm svebf16 "
         "i8mm bf16 dgh rng bti mte ecv afp rpres mte3 sme smei16i64 smef64f64 smei8i32 smef16f32 smeb16f32 "
         "smef32f32 smefa64 wfxt ebf16 sveebf16 cssc rprfm sve2p1 sme2 sme2p1 smei16i32 smebi32i32 smeb16b16 "
         "smef16f16 mops hbc sveb16b16 lrcpc3 lse128 fpmr lut faminmax f8cvt f8fma f8dp4 f8dp2 f8e4m3 f8e5m2 "
         "smelutv2 smef8f16 smef8f32 smesf8fma smesf8dp4 smesf8dp2 poe").split(),
    ),
    "arm": (
        ("swp half thumb 26bit fastmult fpa vfp edsp java iwmmxt crunch thumbee neon vfpv3 vfpv3d16 tls vfpv4 "
         "idiva idivt vfpd32 lpae evtstrm fphp asimdhp asimddp asimdfhm asimdbf16 i8mm").split(),
        "aes pmull sha1 sha2 crc32 sb ssbs".split(),
    ),
}
_AT_HWCAP, _AT_HWCAP2 = 16, 26


def _auxv() -> Dict[int, int]:
    """This process's auxiliary vector {type: value}. Under qemu-user it is the emulated CPU's
    (qemu answers /proc/self/auxv itself), unlike /proc/cpuinfo, which describes the host."""
    try:
        with open("/proc/self/auxv", "rb") as f:
            raw = f.read()
    except OSError:
        return {}
    size = struct.calcsize("2L")  # (type, value) pairs of native unsigned longs
    out: Dict[int, int] = {}
    for key, value in struct.iter_unpack("2L", raw[:len(raw) - len(raw) % size]):
        if key == 0:  # AT_NULL ends it
            break
        out[key] = value
    return out


def cpu_features() -> Optional[List[str]]:
    """The instruction-set features this process can use: on ARM the AT_HWCAP / AT_HWCAP2 bits named
    as in /proc/cpuinfo (a bit without a name as ``hwcap2_bitN``), on x86 the ``flags`` of
    /proc/cpuinfo; None where neither says."""
    machine = platform.machine().lower()
    names = _HWCAP_NAMES.get("aarch64" if machine in ("aarch64", "arm64") else _ARCH_FAMILY.get(machine, ""))
    if names:
        auxv = _auxv()
        if _AT_HWCAP not in auxv:
            return None
        found = []
        for table, key, label in ((names[0], _AT_HWCAP, "hwcap"), (names[1], _AT_HWCAP2, "hwcap2")):
            bits = auxv.get(key, 0)
            found += [table[b] if b < len(table) else f"{label}_bit{b}" for b in range(64) if bits >> b & 1]
        return found
    flags = _cpuinfo_fields(_read("/proc/cpuinfo")).get("flags")
    return flags.split() if flags and _ARCH_FAMILY.get(machine) == "x86" else None


def system_info() -> Dict[str, Any]:
    """Everything above that does not change during a run."""
    uname = platform.uname()
    return {
        "machine": {"system": uname.system, "node": uname.node, "release": uname.release,
                    "version": uname.version, "arch": uname.machine},
        "cpu": cpu_info(),
        "os": os_name(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "emulation": emulation(),
        "cpu_features": cpu_features(),
    }


if __name__ == "__main__":  # pragma: no cover - a quick look on a board
    import json

    print(json.dumps({**system_info(), "temperature_c": cpu_temperature_c(), "throttled": throttled(),
                      "memory": memory()}, indent=2))

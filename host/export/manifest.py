"""What an export says it is: runtime, precision, where its quantization parameters came from, and
the bundle it came from; every format's manifest starts here."""
from __future__ import annotations

import hashlib
from typing import Any, Dict, Optional

from fdq.device.bundle import MANIFEST, Bundle


def precision(bundle: Bundle) -> str:
    """The arithmetic a bundle's model computes in: ``fp32``, ``fp16`` or ``int8``."""
    return str((bundle.manifest.get("backend") or {}).get("dtype") or "fp32")


def label(bundle: Bundle) -> str:
    """``PRECISION RUNTIME bundle PATH (ENGINE)``: how an export's summary names its source."""
    engine = f" ({bundle.engine})" if bundle.engine else ""
    return f"{precision(bundle)} {bundle.runtime} bundle {bundle.path.resolve()}{engine}"


def float_what(bundle: Bundle) -> str:
    """What a float export of ``bundle`` holds: its float model, whatever the bundle's own precision."""
    if precision(bundle) == "fp32":
        return f"the float model of {label(bundle)}"
    return f"float model of {label(bundle)} (its float weights, not its {precision(bundle)} model)"


def identity(manifest: Dict[str, Any], export: Dict[str, Any], params_from: Optional[str], what: str) -> None:
    """Record what the export is, where a reader looks first: the one-line summary the CLI prints,
    and ``quantization.params_from`` (``source bundle``, ``onnxruntime calibration`` or None for float)."""
    manifest["quantization"]["params_from"] = params_from
    export["summary"] = f"{manifest['runtime']} {manifest['backend']['dtype']}: {what}"


def base_manifest(bundle: Bundle, runtime: str, dtype: str, long_side: int) -> Dict[str, Any]:
    """The fields every export's manifest shares: model, input, runtime and precision."""
    spec = bundle.spec
    return {
        "model": {"name": bundle.manifest["model"]["name"], "spec": spec.to_dict()},
        "input": {"long_side": int(long_side), "mean_bgr": list(spec.mean_bgr), "color": "BGR", "layout": "NCHW"},
        "runtime": runtime,
        "backend": {"engine": None, "dtype": dtype},
    }


def source_record(bundle: Bundle) -> Dict[str, Any]:
    """``exported_from``: the source bundle's path, runtime, precision, engine and manifest sha256."""
    backend = bundle.manifest.get("backend") or {}
    return {"path": str(bundle.path.resolve()), "runtime": bundle.runtime, "dtype": backend.get("dtype"),
            "engine": backend.get("engine"),
            "manifest_sha256": hashlib.sha256((bundle.path / MANIFEST).read_bytes()).hexdigest()}

"""``torchscript``: the bundle's files re-saved under a new bundle (same manifest, ``exported_from`` added)."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Dict, Union

from fdq.device.bundle import Bundle
from fdq.host.bundles import write_bundle
from fdq.host.export.manifest import identity, label, precision

_MANIFEST_OWN = ("schema", "files", "fdq_version", "created")  # write_bundle writes them anew


def export_torchscript(bundle: Bundle, out: Union[str, Path], source: Dict[str, Any], force: bool) -> Path:
    """A verified copy of ``bundle`` at ``out``; ``source``: its :func:`~.manifest.source_record`."""
    manifest = {k: v for k, v in bundle.manifest.items() if k not in _MANIFEST_OWN}
    manifest["quantization"] = dict(manifest.get("quantization") or {})
    manifest["exported_from"] = source
    export: Dict[str, Any] = {"tool": "copy"}
    manifest["export"] = export
    int8 = precision(bundle) == "int8"
    identity(manifest, export, "source bundle" if int8 else None,
             f"a verified copy of {label(bundle)}" + (", with its own scales and zero points" if int8 else ""))
    names = list((bundle.manifest.get("files") or {}).keys())

    def write_files(folder: Path) -> None:
        for name in names:
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(bundle.path / name, target)

    return write_bundle(str(out), manifest, write_files, force=force)

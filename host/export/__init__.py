"""Export a bundle's model to the other board runtimes: the format table and the dispatch to each format.

:func:`export_bundle` writes each export as its own verified bundle (``fdq.host.bundles.write_bundle``)
that ``python -m fdq.device.run`` measures like any other. Every export says what it is: its manifest's
``runtime`` and ``backend.dtype``, ``quantization.params_from`` (``source bundle``, ``onnxruntime
calibration``, ``mnn calibration`` or None for a float model) and ``export.summary``, the line
``fdq export`` prints (:mod:`fdq.host.export.manifest`).

One module per format: :mod:`~fdq.host.export.torchscript` (a verified copy),
:mod:`~fdq.host.export.onnx` (fp32, and int8 QDQ with :mod:`~fdq.host.export.onnx_qdq`),
:mod:`~fdq.host.export.ncnn` (fp32, and int8 with :mod:`~fdq.host.export.ncnn_int8`),
:mod:`~fdq.host.export.mnn` and :mod:`~fdq.host.export.executorch`;
they start from :mod:`~fdq.host.export.inputs` and are checked by :mod:`~fdq.host.export.check`.
This module imports none of them until an export runs, so the command line starts without torch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

from fdq.calibration.progress import line as progress_line
from fdq.device.bundle import Bundle, BundleError, load_bundle
from fdq.device.outputs import check_folder_output
from fdq.host.export.manifest import precision, source_record

FORMATS = ("torchscript", "onnx", "onnx-int8", "ncnn", "ncnn-int8", "mnn", "mnn-int8", "executorch")
FLOAT_FORMATS = ("onnx", "ncnn", "mnn", "executorch")  # the float model, whatever the bundle's precision
_ALIASES = {"onnx_int8": "onnx-int8", "onnx:int8": "onnx-int8", "onnx-qdq": "onnx-int8", "onnx_qdq": "onnx-int8"}
PathLike = Union[str, Path]


def _check_request(bundle: Bundle, fmt: str, calib_dir: Optional[PathLike], float_ok: bool) -> None:
    """Refuse, in one line, an export that would not be the model it says it is."""
    source = precision(bundle)
    if fmt in FLOAT_FORMATS and source != "fp32" and not float_ok:
        better = "use --format onnx-int8 for the int8 model, or " if source == "int8" else ""
        raise ValueError(f"bundle {bundle.path} is {source}: --format {fmt} writes an fp32 model (the float weights "
                         f"it came from), not this model; {better}add --float to export that float model (see --help)")
    if float_ok and fmt not in FLOAT_FORMATS:
        raise ValueError(f"--float applies to the float formats {', '.join(FLOAT_FORMATS)}, not {fmt} (see --help)")
    if fmt == "ncnn-int8":
        from fdq.host.export.ncnn_int8 import check_request

        return check_request(bundle, calib_dir)
    if fmt == "mnn-int8":
        if calib_dir is None:
            raise ValueError("mnn-int8 export needs --calib DIR: MNN calibrates its int8 ranges on those images "
                             "(see --help)")
        return
    if fmt == "onnx-int8" and source == "int8":
        if calib_dir is not None:
            raise ValueError(f"onnx-int8 of int8 bundle {bundle.path} carries that bundle's own scales and zero "
                             "points: drop --calib (nothing is recalibrated)")
    elif fmt == "onnx-int8" and calib_dir is None:
        raise ValueError(f"onnx-int8 of {source} bundle {bundle.path} needs --calib DIR: ONNX Runtime calibrates "
                         "its int8 scales on those images (see --help)")
    elif fmt != "onnx-int8" and calib_dir is not None:
        raise ValueError(f"--calib is only used by onnx-int8, ncnn-int8 and mnn-int8, not {fmt}")


def export_bundle(bundle_dir: PathLike, fmt: str, out: PathLike, calib_dir: Optional[PathLike] = None, *,
                  weights: Optional[PathLike] = None, calib_limit: Optional[int] = None, force: bool = False,
                  float_ok: bool = False, keep_float: Sequence[str] = ()) -> Path:
    """Export the model of bundle ``bundle_dir`` as a new ``fmt`` bundle at ``out``; returns its path.

    ``fmt``: ``torchscript`` (a copy), ``onnx`` or ``ncnn`` (fp32; of a non-fp32 bundle only with
    ``float_ok``, since that is the float model it came from) or ``onnx-int8`` (of an int8 bundle: its
    own scales and zero points, no ``calib_dir``; of a float bundle: recalibrated by ONNX Runtime on
    ``calib_dir``). ``weights`` overrides the float weights the bundle records; ``calib_limit`` uses
    only the first N calibration images (sorted). Bad input raises ``ValueError`` with one line,
    before anything is written. The manifest's ``export.summary`` says what the export is. ``mnn`` and
    ``mnn-int8`` (on ``calib_dir``): :mod:`fdq.host.export.mnn`; ``executorch`` (fp32 XNNPACK program):
    :mod:`fdq.host.export.executorch`; ``ncnn-int8`` (``keep_float``: layers left fp32):
    :mod:`fdq.host.export.ncnn_int8`.
    """
    fmt_key = _ALIASES.get(str(fmt).lower(), str(fmt).lower())
    if fmt_key not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r} (choose from: {', '.join(FORMATS)})")
    try:
        bundle = load_bundle(str(bundle_dir))
    except BundleError as exc:
        raise ValueError(str(exc)) from None
    if Path(out).resolve() == bundle.path.resolve():
        raise ValueError(f"export target {out} is the source bundle itself")
    from fdq.host.export import imported

    if imported.is_imported(bundle):
        imported.check_request(bundle, fmt_key, calib_dir, keep_float)
    else:
        _check_request(bundle, fmt_key, calib_dir, float_ok)
    if keep_float and fmt_key != "ncnn-int8":
        raise ValueError(f"--keep-float applies to ncnn-int8, not {fmt_key}")
    check_folder_output(out, force)
    with progress_line(f"fdq: exporting {bundle.path.name} as {fmt_key}"):  # its stages add lines below it
        return _export(bundle, fmt_key, out, calib_dir, weights, calib_limit, force, keep_float)


def _export(bundle: Bundle, fmt_key: str, out: PathLike, calib_dir: Optional[PathLike], weights: Optional[PathLike],
            calib_limit: Optional[int], force: bool, keep_float: Sequence[str]) -> Path:
    """The format's writer for an export :func:`export_bundle` checked."""
    long_side = bundle.long_side
    source = source_record(bundle)
    from fdq.host.export import imported

    if imported.is_imported(bundle):
        return imported.export_imported(bundle, fmt_key, out, source, calib_dir, calib_limit, force)

    if fmt_key == "torchscript":
        from fdq.host.export.torchscript import export_torchscript

        return export_torchscript(bundle, out, source, force)
    if fmt_key == "onnx-int8" and precision(bundle) == "int8":
        from fdq.host.export.onnx import export_onnx_of_int8

        return export_onnx_of_int8(bundle, out, long_side, source, force)
    from fdq.host.export.inputs import calibration_images, float_model

    model, weights_info = float_model(bundle, weights)
    if fmt_key in ("mnn", "mnn-int8"):
        from fdq.host.export.mnn import export_mnn

        calib = calibration_images(calib_dir, calib_limit) if fmt_key == "mnn-int8" else None  # type: ignore[arg-type]
        return export_mnn(bundle, model, weights_info, out, long_side, source, calib, force)
    if fmt_key == "ncnn-int8":
        from fdq.host.export.ncnn_int8 import export_ncnn_int8

        calib = calibration_images(calib_dir, calib_limit) if calib_dir is not None else None
        return export_ncnn_int8(bundle, model, weights_info, out, long_side, source, calib, keep_float, force)
    if fmt_key == "executorch":
        from fdq.host.export.executorch import export_executorch

        return export_executorch(bundle, model, weights_info, out, long_side, source, force)
    if fmt_key in ("onnx", "onnx-int8"):
        from fdq.host.export.onnx import export_onnx

        return export_onnx(bundle, model, weights_info, out, long_side, source,
                           calib_dir if fmt_key == "onnx-int8" else None, calib_limit, force)
    from fdq.host.export.ncnn import export_ncnn

    return export_ncnn(bundle, model, weights_info, out, long_side, source, force)


def summary(bundle_dir: PathLike) -> str:
    """The one line an export's manifest records about what it is."""
    return str(load_bundle(str(bundle_dir), verify=False).manifest["export"]["summary"])

"""``fdq import``: a user's ONNX face detector as a float fdq bundle (runtime onnxruntime).

Everything is checked before anything is written: the file is ONNX, the decoder is known, the
graph's outputs are the ones the decoder reads (by name, then by running the graph once at the
bundle's size and decoding the result), and the model takes that size. The manifest records the
decoder and its parameters (in the spec), the preprocessing, the file's sha256, the graph's inputs
and outputs and the licence the user states. :func:`at_long_side` writes the same import at another
input long side (what the bundle runs at), checked again at that size: the sweep's imported models.

A model whose input has a fixed height and width (most published ONNX files: Ultra-Light-Fast's
``version-slim-320.onnx`` takes 1x3x240x320) is imported at that size, recorded as ``input.fixed_hw``
(as the ncnn export's fixed-size fallback is): every detector letterboxes frames into it
(:func:`fdq.device.preprocess.letterbox`), so it runs at its own long side only, and
:func:`at_long_side` refuses it.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from fdq.device.bundle import MANIFEST, Bundle, sha256_file
from fdq.device.decoders import DECODERS, OutputMismatch, UnknownDecoder, decoder_class
from fdq.device.detector import network_input
from fdq.device.preprocess import normalize
from fdq.device.spec import DetectorSpec
from fdq.host.bundles import write_bundle

MODEL_FILE = "model.onnx"
DEFAULT_LONG_SIDE = 320
# What each decoder's family needs besides the user's options: YuNet's strides and OpenCV's top-k.
DECODER_DEFAULTS: Dict[str, Dict[str, Any]] = {"yunet": {"steps": (8, 16, 32), "top_k": 5000},
                                               "ssd-priors": {}, "ssd-decoded": {}}


@dataclass(frozen=True)
class ImportOptions:
    decoder: str
    name: Optional[str] = None
    input_size: Optional[Tuple[int, int]] = None  # (width, height); None: a fixed model's own, else 4:3 at DEFAULT_LONG_SIDE
    channels: str = "bgr"
    mean: Sequence[float] = (0.0, 0.0, 0.0)  # in the model's channel order
    std: Sequence[float] = (1.0, 1.0, 1.0)
    score_threshold: float = 0.02
    nms_iou: float = 0.4
    licence: Optional[str] = None
    # ssd-priors: the anchors (min sizes, steps, variance, clip) of fdq's model of this name; None: slim's
    # (slim and rfb share them with Ultra-Light-Fast's models; mnet025 has RetinaFace-mnet's).
    priors: Optional[str] = None


def _graph(path: Path) -> Any:
    """The ONNX graph of ``path``; anything else is one line."""
    import onnx

    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path} is not an ONNX model ({reason})") from None
    return model


def _value_infos(values: Any, exclude: Sequence[str] = ()) -> List[Dict[str, Any]]:
    """Name and shape (a dim's number, its symbolic name, or None) of graph inputs or outputs."""
    out = []
    for v in values:
        if v.name in exclude:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in v.type.tensor_type.shape.dim]
        out.append({"name": v.name, "shape": dims})
    return out


def _spec(name: str, options: ImportOptions) -> DetectorSpec:
    if options.channels not in ("bgr", "rgb"):
        raise ValueError(f"--channels {options.channels!r}: choose bgr or rgb")
    flip = (lambda v: tuple(float(x) for x in reversed(v))) if options.channels == "rgb" else \
        (lambda v: tuple(float(x) for x in v))
    if any(float(s) == 0 for s in options.std):
        raise ValueError("--std must not contain 0")
    return DetectorSpec(name=name, decoder=options.decoder, mean_bgr=flip(options.mean), std_bgr=flip(options.std),
                        channels=options.channels, score_threshold=float(options.score_threshold),
                        nms_iou=float(options.nms_iou), **DECODER_DEFAULTS.get(options.decoder, {}),
                        **_priors(options))


def _priors(options: ImportOptions) -> Dict[str, Any]:
    """ssd-priors' anchor fields, from the spec of the fdq model ``options.priors`` names (one place they live)."""
    if options.decoder != "ssd-priors":
        if options.priors is not None:
            raise ValueError(f"--priors is for decoder ssd-priors, not {options.decoder}")
        return {}
    from fdq.models import SPECS

    model = options.priors or "slim"
    if model not in SPECS:
        raise ValueError(f"--priors {model!r}: choose the anchors of {', '.join(SPECS)}")
    spec = SPECS[model]
    return {"min_sizes": spec.min_sizes, "steps": spec.steps, "variance": spec.variance, "clip": spec.clip}


def _input_size(input_info: Dict[str, Any], asked: Optional[Tuple[int, int]],
                multiple: int) -> Tuple[Tuple[int, int], bool]:
    """The (width, height) the bundle is checked and runs at, and whether the graph fixes it: a fixed
    input shape is that size (``--input-size`` may only repeat it), a dynamic one ``asked`` or the default."""
    shape = input_info["shape"]
    if len(shape) != 4 or (shape[1] not in (3, None) and not isinstance(shape[1], str)):
        raise ValueError(f"input {input_info['name']!r} has shape {shape}; fdq feeds a (1, 3, H, W) image")
    fixed = [isinstance(d, int) and d > 0 for d in shape[2:]]
    if not any(fixed):
        return asked or (DEFAULT_LONG_SIDE, DEFAULT_LONG_SIDE * 3 // 4), False
    if not all(fixed):
        raise ValueError(f"input {input_info['name']!r} has shape {shape}: fdq takes a model whose height and "
                         "width are both fixed or both dynamic")
    size = (int(shape[3]), int(shape[2]))
    if asked is not None and tuple(asked) != size:
        raise ValueError(f"--input-size {asked[0]}x{asked[1]}: input {input_info['name']!r} has the fixed size "
                         f"{size[0]}x{size[1]} (frames are letterboxed into it); give that or leave --input-size out")
    if size[0] % multiple or size[1] % multiple:
        raise ValueError(f"input {input_info['name']!r} has the fixed size {size[0]}x{size[1]}, which the decoder "
                         f"pads to multiples of {multiple}: it cannot take that size")
    return size, True


def _check_outputs(session: Any, input_name: str, spec: DetectorSpec, size: Tuple[int, int]) -> Dict[str, Any]:
    """Run the graph once at ``size`` (padded as the runner pads) on a grey image and decode the result:
    a graph whose outputs the decoder cannot read fails here, naming what was expected and found."""
    cls = decoder_class(spec.decoder)
    roles = cls.output_roles(spec)
    found = [o.name for o in session.get_outputs()]
    missing = [r for r in roles if r not in found]
    if missing:
        raise OutputMismatch(f"decoder {spec.decoder} expects outputs {', '.join(roles)}; the graph has "
                             f"{', '.join(found)}")
    decoder = cls(spec)
    width, height = size
    blob, padded = network_input(np.full((height, width, 3), 128, np.uint8), spec, decoder.input_multiple, normalize)
    try:
        raw = session.run(list(roles), {input_name: blob})
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"the model cannot take a {padded[0]}x{padded[1]} input ({reason})") from None
    try:
        decoder.decode(cls.split(raw), padded, 1.0, spec.score_threshold, spec.nms_iou)
    except (ValueError, IndexError) as exc:
        shapes = ", ".join(f"{r} {tuple(a.shape)}" for r, a in zip(roles, raw))
        raise OutputMismatch(f"decoder {spec.decoder} cannot read the graph's outputs at {width}x{height} "
                             f"({exc}); found {shapes}") from None
    return {"input_hw": [padded[1], padded[0]], "outputs": {r: list(a.shape) for r, a in zip(roles, raw)}}


def import_onnx(model_path: str, options: ImportOptions, out: str, force: bool = False) -> Path:
    """Check ``model_path`` against ``options`` and write it as a float onnxruntime bundle at ``out``."""
    if options.decoder not in DECODERS:
        raise UnknownDecoder(f"unknown decoder {options.decoder!r} (known: {', '.join(sorted(DECODERS))})")
    path = Path(model_path)
    graph = _graph(path)
    initializers = [i.name for i in graph.graph.initializer]
    inputs = _value_infos(graph.graph.input, exclude=initializers)
    outputs = _value_infos(graph.graph.output)
    if len(inputs) != 1:
        raise ValueError(f"{path} has {len(inputs)} inputs ({', '.join(i['name'] for i in inputs)}); fdq feeds one image")
    name = options.name or path.stem
    spec = _spec(name, options)
    multiple = decoder_class(spec.decoder)(spec).input_multiple
    size, fixed = _input_size(inputs[0], options.input_size, multiple)
    check = _check_outputs(_session(path), inputs[0]["name"], spec, size)
    roles = decoder_class(spec.decoder).output_roles(spec)
    manifest = {
        "model": {"name": name, "spec": spec.to_dict(),
                  "decoder": {"name": spec.decoder, "params": decoder_class(spec.decoder).params(spec)},
                  "imported": {"source": str(path.resolve()), "sha256": sha256_file(path), "licence": options.licence,
                               "inputs": inputs, "outputs": outputs, "check": check}},
        "input": {"long_side": int(max(size)), "mean_bgr": list(spec.mean_bgr), "std_bgr": list(spec.std_bgr),
                  "color": spec.channels.upper(), "layout": "NCHW", "dynamic_hw": not fixed,
                  **({"fixed_hw": [size[1], size[0]]} if fixed else {}), "pad_to_multiple": multiple},
        "io": {"input": inputs[0]["name"], "outputs": {r: r for r in roles}},
        "runtime": "onnxruntime",
        "backend": {"engine": None, "dtype": "fp32"},
        "quantization": {"level": "float", "params_from": None},
        "calibration": None,
        "export": {"summary": f"onnxruntime fp32: {name} imported from {path.name} (decoder {spec.decoder})"},
        "entry": {"model": MODEL_FILE},
    }

    def write_files(folder: Path) -> None:
        shutil.copyfile(path, folder / MODEL_FILE)

    return write_bundle(out, manifest, write_files, force=force)


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # a failed run is reported in one line by _check_outputs
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def refuse_fixed(bundle: Bundle, long_side: int) -> None:
    """A fixed-size import is never taken at a long side (it has one, as imported): one line naming its size."""
    if bundle.fixed_hw is not None:
        height, width = bundle.fixed_hw
        raise ValueError(f"imported {bundle.manifest['model']['name']} takes a fixed {width}x{height} input "
                         f"(letterboxed): it runs as imported, at long side {max(width, height)} only; asked for "
                         f"{long_side}")


def at_long_side(bundle: Bundle, long_side: int, out: str, force: bool = False) -> Path:
    """Imported float bundle ``bundle`` at input long side ``long_side`` (a 4:3 image, as fdq import
    checks by default) as a new bundle at ``out``: the same graph, provenance and decoder, the size checked
    by running the graph there. A fixed-size import runs at its own size only: refused in one line."""
    refuse_fixed(bundle, long_side)
    imported = dict(bundle.manifest["model"]["imported"])
    model = bundle.file("model")
    check = _check_outputs(_session(model), str(bundle.manifest["io"]["input"]), bundle.spec,
                           (long_side, long_side * 3 // 4))
    skip = {"schema", "files", "fdq_version", "created"}
    manifest = {k: v for k, v in bundle.manifest.items() if k not in skip}
    manifest["model"] = {**manifest["model"], "imported": {**imported, "check": check}}
    manifest["input"] = {**manifest["input"], "long_side": int(long_side)}
    manifest["export"] = {**manifest["export"], "long_side_of_manifest_sha256": sha256_file(bundle.path / MANIFEST)}

    def write_files(folder: Path) -> None:
        shutil.copyfile(model, folder / MODEL_FILE)

    return write_bundle(out, manifest, write_files, force=force)

"""Inference functions for every bundle runtime: TorchScript, ONNX Runtime, NCNN, MNN and ExecuTorch.

:func:`load_inference` turns a verified :class:`~fdq.device.bundle.Bundle` into the
:data:`~fdq.device.detector.InferenceFn` that :class:`~fdq.device.detector.FaceDetector` calls:
a float32 NCHW blob (batch of one) -> the arrays the bundle's decoder reads (ssd-priors:
``(loc (N, 4), scores (N,), landmarks (N, 10))``, ``scores`` being the softmax face probability). A TorchScript bundle whose model takes a
quint8 input (``input.quantized``) also accepts the uint8 blob of
:func:`~fdq.device.kernels.quantize_input_c`: NCHW-shaped, usually a channels-last view, a layout
passed on to the model as is (its int8 convolutions compute in channels-last).

Each runtime is imported only when a bundle asks for it, so a board needs only the one it runs.

Manifest fields read here (besides ``runtime``, ``backend.engine`` and ``entry``):

* ``io.input``: the input blob name (default ``"input"`` for ONNX, ``"in0"`` for NCNN);
* ``io.outputs``: ``{role: name}`` for the decoder's output roles (ssd-priors: ``loc``, ``conf``,
  ``landm``; defaults: the role for ONNX and MNN, ``out0``, ``out1``, ... for NCNN, the pnnx naming);
* entry files: ``model`` (TorchScript ``.pt`` / ``.onnx`` / NCNN ``.bin`` / ``.mnn`` / ExecuTorch ``.pte``)
  and ``param`` (NCNN only);
* ``input.fixed_hw``: the one input size of a model that takes no other (an imported fixed-size ONNX model, an
  NCNN model exported at one size); the detector letterboxes frames into it, and a blob of another size
  is refused in one line before it reaches the runtime; ``backend.dtype`` (``fp32`` turns ncnn's
  fp16 / bf16 storage and arithmetic off, so an fp32 bundle is measured in fp32; ``int8`` does too for
  the layers an ncnn int8 model keeps in float, and loads it with ``use_int8_inference``; MNN's fp32
  bundles ask for its high precision mode for the same reason);
* ``input.min_hw`` / ``input.max_hw``: the input sizes an ExecuTorch program was exported for (its memory
  plan holds up to ``max_hw``).
"""
from __future__ import annotations

import platform
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .bundle import RUNTIME_MODULES, Bundle, BundleError
from .decoders import OutputMismatch, decoder_class
from .detector import FaceDetector, InferenceFn

QNNPACK_INIT_HINT = (" (QNNPACK describes the CPU from /proc/cpuinfo and /sys/devices/system/cpu: in a chroot, "
                     "as on an emulated board, mount /proc and /sys inside it)")
NCNN_INT8_TYPES = ("Convolution", "ConvolutionDepthWise", "InnerProduct")  # the layers ncnn2int8 writes int8
# Default blob names of fdq's own models per runtime: the input, and an output role's name (pnnx numbers
# an ncnn model's outputs out0, out1, ... in role order). The manifest's ``io`` overrides them.
_DEFAULT_INPUT = {"onnxruntime": "input", "ncnn": "in0", "mnn": "input"}


def _default_output(runtime: str, role: str, index: int) -> str:
    return f"out{index}" if runtime == "ncnn" else role


def _io_names(bundle: Bundle) -> Tuple[str, List[str]]:
    """The input blob's name and the output blobs' names in the order the bundle's decoder reads them."""
    io = bundle.manifest.get("io") or {}
    named = io.get("outputs") or {}
    roles = decoder_class(bundle.spec.decoder).output_roles(bundle.spec)
    outputs = [str(named.get(role) or _default_output(bundle.runtime, role, i)) for i, role in enumerate(roles)]
    return str(io.get("input") or _DEFAULT_INPUT[bundle.runtime]), outputs


def _splitter(bundle: Bundle) -> Callable[[Sequence[np.ndarray]], Tuple[np.ndarray, ...]]:
    """Raw outputs in role order -> the decoder's arrays; a shape the decoder cannot read is a BundleError."""
    split = decoder_class(bundle.spec.decoder).split

    def checked(outputs: Sequence[np.ndarray]) -> Tuple[np.ndarray, ...]:
        try:
            return split(outputs)
        except (OutputMismatch, ValueError) as exc:
            raise BundleError(str(exc)) from None
    return checked


def _import(module: str, runtime: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BundleError(f"bundle runtime {runtime} needs the python package '{module}', which is not "
                          f"importable here ({exc})") from None


# --------------------------------------------------------------------------------------------------
# TorchScript
# --------------------------------------------------------------------------------------------------


def _torchscript(bundle: Bundle, threads: int) -> InferenceFn:
    torch = _import("torch", "torchscript")
    torch.set_num_threads(max(1, int(threads)))
    engine = bundle.engine
    if engine:
        supported = list(torch.backends.quantized.supported_engines)
        if engine not in supported:
            raise BundleError(f"bundle needs engine {engine}, this torch supports: {', '.join(supported)}")
        torch.backends.quantized.engine = engine
    path = bundle.file("model")
    try:
        with warnings.catch_warnings():  # torch >= 2.9 deprecates TorchScript; the board output stays clean
            warnings.simplefilter("ignore", DeprecationWarning)
            if engine:
                _consume_quantized_tensor_notice(torch)
            model = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # torch raises RuntimeError / ValueError for corrupt archives
        reason = str(exc).splitlines()[0] if str(exc) else repr(exc)
        if "failed to initialize QNNPACK" in reason:
            reason += QNNPACK_INIT_HINT
        raise BundleError(f"cannot load TorchScript model {path}: {reason}") from None
    model.eval()
    quantized = input_quantization(bundle)

    def to_input(blob: np.ndarray) -> Any:
        """The model's input tensor; a uint8 blob keeps its strides: a channels-last one spares the
        first quantized convolution its NCHW -> NHWC copy."""
        if quantized is None:
            return torch.from_numpy(np.ascontiguousarray(blob, dtype=np.float32))
        scale, zero_point = quantized
        if blob.dtype == np.uint8:  # already quantized by the C kernel: no float pass at all
            return torch._make_per_tensor_quantized_tensor(torch.from_numpy(blob), scale, zero_point)
        return torch.quantize_per_tensor(torch.from_numpy(np.ascontiguousarray(blob, dtype=np.float32)),
                                         scale, zero_point, torch.quint8)

    split = _splitter(bundle)

    def infer(blob: np.ndarray) -> Tuple[np.ndarray, ...]:
        with torch.inference_mode():
            outputs = model(to_input(blob))
        return split([o.numpy() for o in outputs])

    return infer


def _consume_quantized_tensor_notice(torch: Any) -> None:
    """torch >= 2.13 deprecates quantized tensors with a once-per-process notice (a note for fdq's
    maintainers, see docs/ARCHITECTURE.md). Loading an int8 model would print it from C++, where no
    Python filter reaches; one quantized tensor made here under a filter uses up that once."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, message=r"torch\.quantize_per_tensor, ")
        torch._make_per_tensor_quantized_tensor(torch.zeros(1, dtype=torch.uint8), 1.0, 0)


def input_quantization(bundle: Bundle) -> Optional[Tuple[float, int]]:
    """(scale, zero_point) when the bundle's model takes a quint8 input, else None."""
    q = (bundle.manifest.get("input") or {}).get("quantized")
    return (float(q["scale"]), int(q["zero_point"])) if q else None


# --------------------------------------------------------------------------------------------------
# ONNX Runtime
# --------------------------------------------------------------------------------------------------


def _onnxruntime(bundle: Bundle, threads: int) -> InferenceFn:
    ort = _import("onnxruntime", "onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    path = bundle.file("model")
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise BundleError(f"cannot load ONNX model {path}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    input_name, names = _io_names(bundle)
    have = {o.name for o in session.get_outputs()}
    missing = [n for n in names if n not in have]
    if missing or input_name not in {i.name for i in session.get_inputs()}:
        raise BundleError(f"ONNX model {path} lacks the blobs its manifest names "
                          f"(input {input_name!r}, outputs {names}); it has {sorted(have)}")
    split = _splitter(bundle)

    def infer(blob: np.ndarray) -> Tuple[np.ndarray, ...]:
        return split(session.run(names, {input_name: np.ascontiguousarray(blob, dtype=np.float32)}))

    return infer


# --------------------------------------------------------------------------------------------------
# NCNN
# --------------------------------------------------------------------------------------------------


def ncnn_int8_layers(param: str) -> List[str]:
    """The layers of an ncnn .param that hold int8 weights (a nonzero ``int8_scale_term``, key 8)."""
    names = []
    with open(param, encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4 and fields[0] in NCNN_INT8_TYPES and any(
                    f.startswith("8=") and f != "8=0" for f in fields[4 + int(fields[2]) + int(fields[3]):]):
                names.append(fields[1])
    return names


def open_ncnn(param: str, weights: str, threads: int, fp32: bool, int8: bool = False) -> Any:
    """An ncnn Net for a .param/.bin pair (also used by the host's export check).

    ``int8``: the model holds int8 layers and loads with ``use_int8_inference`` on. Loading one with it
    off segfaults, so int8 layers in a model not opened as int8 are refused first, in one line."""
    ncnn = _import("ncnn", "ncnn")
    held = ncnn_int8_layers(param)
    if held and not int8:
        raise BundleError(f"{param} holds int8 layers ({', '.join(held[:3])}{', ...' if len(held) > 3 else ''}) "
                          f"but is not opened as int8 (its manifest's backend.dtype); refused: ncnn would crash")
    net = ncnn.Net()
    net.opt.num_threads = max(1, int(threads))
    net.opt.use_vulkan_compute = False
    if int8:
        net.opt.use_int8_inference = True  # ncnn's default, made explicit: an int8 model must never load without it
    if fp32:
        # ncnn computes in fp16 / bf16 on CPUs that have it unless told not to: an "fp32" bundle
        # must measure fp32 arithmetic, or speed and accuracy would describe another model.
        for flag in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage"):
            if hasattr(net.opt, flag):
                setattr(net.opt, flag, False)
    if net.load_param(str(param)) != 0:
        if int8:
            raise BundleError(f"ncnn {getattr(ncnn, '__version__', '')} here cannot load the int8 model {param} "
                              f"(built without NCNN_INT8?)")
        raise BundleError(f"ncnn cannot load {param}")
    if net.load_model(str(weights)) != 0:
        raise BundleError(f"ncnn cannot load {weights}")
    return net


def run_ncnn(net: Any, input_name: str, output_names: Sequence[str], blob: np.ndarray) -> List[np.ndarray]:
    """One forward pass of a batch-of-one NCHW blob; the named outputs as numpy arrays."""
    ncnn = _import("ncnn", "ncnn")
    ex = net.create_extractor()
    ex.input(input_name, ncnn.Mat(np.ascontiguousarray(blob[0], dtype=np.float32)))
    arrays = []
    for name in output_names:
        ret, mat = ex.extract(name)
        if ret != 0:
            raise BundleError(f"ncnn could not compute output blob {name!r}")
        arrays.append(np.array(mat))
    return arrays


def _ncnn(bundle: Bundle, threads: int) -> InferenceFn:
    dtype = str((bundle.manifest.get("backend") or {}).get("dtype", "fp32"))
    # An int8 bundle's other layers compute in fp32 too: the same arithmetic on the host and the board.
    net = open_ncnn(str(bundle.file("param")), str(bundle.file("model")), threads, dtype in ("fp32", "int8"),
                    int8=dtype == "int8")
    input_name, names = _io_names(bundle)
    split = _splitter(bundle)

    def infer(blob: np.ndarray) -> Tuple[np.ndarray, ...]:
        return split(run_ncnn(net, input_name, names, blob))

    return infer


# --------------------------------------------------------------------------------------------------
# MNN
# --------------------------------------------------------------------------------------------------


def open_mnn(path: str, input_name: str, output_names: Sequence[str], threads: int, fp32: bool) -> Any:
    """An MNN module for a ``.mnn`` file, any input size (also used by the host's export check).

    MNN's own Python API only (``MNN.nn``): its command wrappers (``MNN.tools``) send usage logs to a
    remote service and are never imported by fdq.
    """
    mnn = _import("MNN", "mnn")
    # An explicit runtime manager: without one the module runs extra worker threads whatever
    # ``thread_num`` says (6x the CPU time of one thread per frame here, measured with process_time).
    config = {"numThread": max(1, int(threads)), "precision": "high" if fp32 else "normal"}
    try:
        runtime = mnn.nn.create_runtime_manager((config,))
        module = mnn.nn.load_module_from_file(str(path), [input_name], list(output_names), runtime_manager=runtime)
    except Exception as exc:
        raise BundleError(f"cannot load MNN model {path}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    if module is None:
        raise BundleError(f"cannot load MNN model {path}")
    return module


def run_mnn(module: Any, blob: np.ndarray) -> List[np.ndarray]:
    """One forward pass of a batch-of-one float32 NCHW blob; the outputs in the order the module was opened with."""
    expr = _import("MNN", "mnn").expr
    data = np.ascontiguousarray(blob, dtype=np.float32)
    outputs = module.forward([expr.const(data, list(data.shape), expr.NCHW)])
    return [np.asarray(o.read()) for o in outputs]


def _mnn(bundle: Bundle, threads: int) -> InferenceFn:
    fp32 = str((bundle.manifest.get("backend") or {}).get("dtype", "fp32")) == "fp32"
    input_name, names = _io_names(bundle)
    module = open_mnn(str(bundle.file("model")), input_name, names, threads, fp32)
    split = _splitter(bundle)

    def infer(blob: np.ndarray) -> Tuple[np.ndarray, ...]:
        return split(run_mnn(module, blob))

    return infer


# --------------------------------------------------------------------------------------------------
# ExecuTorch (XNNPACK delegate)
# --------------------------------------------------------------------------------------------------


def open_executorch(path: str, threads: int) -> Any:
    """The ``forward`` method of a ``.pte`` program (also used by the host's export check).

    XNNPACK sizes its thread pool when a program is loaded, so the pool is set first, and only when
    it differs: resetting it under a loaded program has crashed. executorch 1.0 (a board on torch 2.9)
    cannot tell its pool's size; there it is set each time (the runner loads one program per process).
    """
    runtime = _import("executorch.runtime", "executorch")
    pybind = _import("executorch.extension.pybindings.portable_lib", "executorch")
    threads = max(1, int(threads))
    count = getattr(pybind, "_threadpool_get_thread_count", None)
    if count is None or count() != threads:
        pybind._unsafe_reset_threadpool(threads)
    try:
        program = runtime.Runtime.get().load_program(str(path))
        method = program.load_method("forward")
    except Exception as exc:
        raise BundleError(f"cannot load ExecuTorch program {path}: "
                          f"{str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    if method is None:
        raise BundleError(f"ExecuTorch program {path} has no forward method")
    return method


def _executorch(bundle: Bundle, threads: int) -> InferenceFn:
    torch = _import("torch", "executorch")
    # The bindings copy inputs and outputs through libtorch, whose OpenMP pool (one thread a core) then
    # spin-waits after every call beside XNNPACK's own threads: perf showed 44 % of a 1-thread ExecuTorch
    # process in libgomp. Capping torch's pool keeps the run's thread count.
    torch.set_num_threads(max(1, int(threads)))
    method = open_executorch(str(bundle.file("model")), threads)
    low, high = ((bundle.manifest.get("input") or {}).get(k) for k in ("min_hw", "max_hw"))
    split = _splitter(bundle)

    def infer(blob: np.ndarray) -> Tuple[np.ndarray, ...]:
        height, width = blob.shape[2:]
        if (low and min(height, width) < int(low)) or (high and max(height, width) > int(high)):
            raise BundleError(f"this ExecuTorch bundle takes inputs from {low} to {high} pixels a side, "
                              f"got {width}x{height}")
        outputs = method.execute([torch.from_numpy(np.ascontiguousarray(blob, dtype=np.float32))])
        return split([o.numpy() for o in outputs])

    return infer


_LOADERS = {"torchscript": _torchscript, "onnxruntime": _onnxruntime, "ncnn": _ncnn, "mnn": _mnn,
            "executorch": _executorch}
def load_inference(bundle: Bundle, threads: int = 1) -> InferenceFn:
    """The inference function of ``bundle`` for its runtime, using ``threads`` CPU threads.

    Raises :class:`BundleError` (one line) when the runtime is missing, the engine unsupported or
    the model file unreadable.
    """
    try:
        loader = _LOADERS[bundle.runtime]
    except KeyError:
        raise BundleError(f"unsupported runtime {bundle.runtime!r} (choose from: {', '.join(_LOADERS)})") from None
    infer = loader(bundle, threads)
    fixed = bundle.fixed_hw
    if fixed is None:
        return infer

    def fixed_size(blob: np.ndarray) -> Tuple[np.ndarray, ...]:
        if tuple(blob.shape[2:]) != fixed:
            raise BundleError(f"this {bundle.runtime} bundle takes a fixed {fixed[1]}x{fixed[0]} input, "
                              f"got {blob.shape[3]}x{blob.shape[2]}")
        return infer(blob)

    return fixed_size


def bundle_detector(bundle: Bundle, threads: int = 1, long_side: Optional[int] = None,
                    **options: Any) -> FaceDetector:
    """The one way a bundle becomes a detector: the runner, the demo, host evaluation and benchmarks
    all measure exactly this pipeline. ``long_side`` defaults to the bundle's own; frames are resized
    in uint8 (the device path, :func:`fdq.device.preprocess.resize_uint8`) unless ``resize=`` says otherwise;
    the thresholds default to the spec's (fdq's models: 0.02 and 0.4; an imported one: what ``fdq import`` was told).
    A bundle of one input size (``input.fixed_hw``) letterboxes every frame into it; another ``long_side``
    is refused in one line."""
    fixed = bundle.fixed_hw
    if fixed is not None and long_side is not None and int(long_side) != max(fixed):
        raise BundleError(f"bundle {bundle.path} takes a fixed {fixed[1]}x{fixed[0]} input (frames are letterboxed "
                          f"into it): its long side is {max(fixed)}, not {long_side}")
    options.setdefault("resize", "uint8")
    options.setdefault("score_threshold", bundle.spec.score_threshold)
    options.setdefault("nms_threshold", bundle.spec.nms_iou)
    quantized = input_quantization(bundle)
    if quantized is not None and "normalize" not in options:
        from .kernels import quantized_normalizer

        options["normalize"] = quantized_normalizer(*quantized)
    return FaceDetector(load_inference(bundle, threads), bundle.spec, int(bundle.long_side if long_side is None else long_side),
                        fixed_hw=fixed, **options)


def runtime_versions(bundle: Bundle) -> Dict[str, Any]:
    """Versions of the runtime a bundle uses (and numpy / OpenCV / Python), for the results JSON."""
    from importlib import metadata

    out: Dict[str, Any] = {"runtime": bundle.runtime, "python": platform.python_version(),
                           "numpy": np.__version__}
    try:
        import cv2

        out["opencv"] = cv2.__version__
    except ImportError:  # pragma: no cover - preprocess needs it anyway
        out["opencv"] = None
    modules = [RUNTIME_MODULES.get(bundle.runtime)] + (["torch"] if bundle.runtime == "executorch" else [])
    for module in filter(None, modules):  # ExecuTorch's Python runtime links the torch it was built with
        try:  # the installed distribution's version: MNN and executorch set no __version__
            out[module] = metadata.version(module)
        except metadata.PackageNotFoundError:
            out[module] = None
    return out

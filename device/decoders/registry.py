"""The decoder registry: the :class:`Decoder` base every decoder subclasses, ``@register`` and the lookups."""
from __future__ import annotations

from typing import Callable, Dict, Sequence, Tuple, Type, TypeVar, Union

import numpy as np

from ..postprocess import Detections, PostprocessFn
from ..spec import DetectorSpec

Outputs = Tuple[np.ndarray, ...]


class UnknownDecoder(ValueError):
    """A decoder name this runner does not have (a bundle from a newer fdq, or a typo)."""


class OutputMismatch(ValueError):
    """A graph whose outputs are not the ones its decoder reads."""


class Decoder:
    """Base of every decoder. ``input_multiple``: inputs are zero-padded at the bottom and right to a
    multiple of it before inference; ``kernels``: the decode path taken, for result documents."""

    name = ""
    input_multiple = 1
    kernels = "numpy"

    def __init__(self, spec: DetectorSpec, postprocess: Union[str, PostprocessFn] = "auto") -> None:
        self.spec = spec

    @staticmethod
    def output_roles(spec: DetectorSpec) -> Tuple[str, ...]:
        """The graph outputs the decoder reads, in the order the inference function returns them."""
        raise NotImplementedError

    @staticmethod
    def params(spec: DetectorSpec) -> Dict[str, object]:
        """The spec fields this decoder reads: what a manifest records as its parameters."""
        raise NotImplementedError

    @staticmethod
    def split(outputs: Sequence[np.ndarray]) -> Outputs:
        """Raw runtime outputs (batch axis or not, in :meth:`output_roles` order) -> what :meth:`decode` takes."""
        raise NotImplementedError

    def decode(self, outputs: Outputs, input_size: Tuple[int, int], ratio: float,
               score_threshold: float, nms_threshold: float) -> Detections:
        """Detections in original pixels from the outputs for a ``input_size`` (w, h) network input."""
        raise NotImplementedError


DECODERS: Dict[str, Type[Decoder]] = {}
D = TypeVar("D", bound=Type[Decoder])


def register(name: str) -> Callable[[D], D]:
    """Class decorator: make a decoder available under ``name`` (in manifests and ``fdq import --decoder``)."""
    def add(cls: D) -> D:
        if name in DECODERS:
            raise ValueError(f"decoder {name!r} registered twice")
        cls.name = name
        DECODERS[name] = cls
        return cls
    return add


def decoder_class(name: str) -> Type[Decoder]:
    """The decoder registered as ``name``; an unknown name is one line listing the known ones."""
    try:
        return DECODERS[name]
    except KeyError:
        raise UnknownDecoder(f"unknown decoder {name!r} (this fdq knows: {', '.join(sorted(DECODERS))})") from None


def build_decoder(spec: DetectorSpec, postprocess: Union[str, PostprocessFn] = "auto") -> Decoder:
    """The decoder a spec names, ready to decode; ``postprocess`` picks ssd-priors' fast path."""
    return decoder_class(spec.decoder)(spec, postprocess)

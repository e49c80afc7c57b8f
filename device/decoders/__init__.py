"""Decoders: a network's raw outputs -> face detections, one small module per family, registered by name.

The board decodes, so decoders are device code. A bundle's spec names its decoder (``spec.decoder``);
the runtimes hand the graph's outputs over in the order :meth:`Decoder.output_roles` names them, the
decoder's :meth:`Decoder.split` shapes them, and :meth:`Decoder.decode` turns them into
:class:`~fdq.device.postprocess.Detections` in original pixels. A new family is one module here that
subclasses :class:`~fdq.device.decoders.registry.Decoder` under ``@register("name")`` (both in
:mod:`~fdq.device.decoders.registry`), plus its import in this file.
"""
from __future__ import annotations

from . import ssd_decoded, ssd_priors, yunet  # registration: each module registers its decoder
from .registry import (DECODERS, Decoder, OutputMismatch, Outputs, UnknownDecoder, build_decoder, decoder_class,
                       register)

__all__ = ["DECODERS", "Decoder", "OutputMismatch", "Outputs", "UnknownDecoder", "build_decoder", "decoder_class",
           "register", "ssd_decoded", "ssd_priors", "yunet"]

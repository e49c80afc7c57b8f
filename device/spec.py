"""What a runner must know about a detector besides its weights: its decoder and parameters, and its input.

Written into every bundle's manifest and read back by the runner; the model definitions in
``fdq.models`` own the values of fdq's own detectors (one place), ``fdq import`` those of an imported
one; this module only gives them a type. ``decoder`` names a module of :mod:`fdq.device.decoders`,
which reads the fields it needs (ssd-priors: ``min_sizes``, ``steps``, ``variance``, ``clip``; yunet:
``steps`` as its strides and ``top_k``; ssd-decoded: none, its graph decodes). The input: BGR pixels minus ``mean_bgr``, divided by
``std_bgr``, then in the model's ``channels`` order.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Tuple

CHANNELS = ("bgr", "rgb")


@dataclass(frozen=True)
class DetectorSpec:
    name: str
    min_sizes: Tuple[Tuple[int, ...], ...] = ()
    steps: Tuple[int, ...] = ()
    variance: Tuple[float, float] = (0.1, 0.2)
    clip: bool = False
    mean_bgr: Tuple[float, float, float] = (104.0, 117.0, 123.0)
    decoder: str = "ssd-priors"
    std_bgr: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    channels: str = "bgr"
    top_k: int = -1  # candidates NMS considers, best first (-1: all)
    score_threshold: float = 0.02  # the detector's defaults where a caller gives none (the runner and eval do)
    nms_iou: float = 0.4

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["min_sizes"] = [list(s) for s in self.min_sizes]
        for key in ("steps", "variance", "mean_bgr", "std_bgr"):
            d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "DetectorSpec":
        """A spec from a manifest; fields a manifest of an older fdq lacks take the ssd-priors defaults."""
        return cls(name=str(d["name"]),
                   min_sizes=tuple(tuple(int(v) for v in s) for s in d.get("min_sizes", ())),
                   steps=tuple(int(s) for s in d.get("steps", ())),
                   variance=(float(d.get("variance", (0.1, 0.2))[0]), float(d.get("variance", (0.1, 0.2))[1])),
                   clip=bool(d.get("clip", False)),
                   mean_bgr=tuple(float(m) for m in d.get("mean_bgr", (104.0, 117.0, 123.0))),
                   decoder=str(d.get("decoder", "ssd-priors")),
                   std_bgr=tuple(float(m) for m in d.get("std_bgr", (1.0, 1.0, 1.0))),
                   channels=str(d.get("channels", "bgr")),
                   top_k=int(d.get("top_k", -1)),
                   score_threshold=float(d.get("score_threshold", 0.02)),
                   nms_iou=float(d.get("nms_iou", 0.4)))

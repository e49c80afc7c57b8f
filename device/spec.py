"""What a runner must know about a detector besides its weights: anchors, encoding and input mean.

Written into every bundle's manifest and read back by the runner; the model definitions in
``fdq.models`` own the values (one place), this module only gives them a type.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Tuple


@dataclass(frozen=True)
class DetectorSpec:
    name: str
    min_sizes: Tuple[Tuple[int, ...], ...]
    steps: Tuple[int, ...]
    variance: Tuple[float, float] = (0.1, 0.2)
    clip: bool = False
    mean_bgr: Tuple[float, float, float] = (104.0, 117.0, 123.0)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["min_sizes"] = [list(s) for s in self.min_sizes]
        for key in ("steps", "variance", "mean_bgr"):
            d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "DetectorSpec":
        return cls(name=str(d["name"]),
                   min_sizes=tuple(tuple(int(v) for v in s) for s in d["min_sizes"]),
                   steps=tuple(int(s) for s in d["steps"]),
                   variance=(float(d["variance"][0]), float(d["variance"][1])),
                   clip=bool(d.get("clip", False)),
                   mean_bgr=tuple(float(m) for m in d.get("mean_bgr", (104.0, 117.0, 123.0))))

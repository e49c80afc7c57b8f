"""Charts written to files on the host (matplotlib, non-interactive)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from fdq.device.atomic import atomic_output
from fdq.device.evaluation import SETTINGS, voc_ap


def plot_pr_curves(curves: Mapping[str, Any], path: str, title: str = "") -> None:
    """Draw the easy / medium / hard precision-recall curves into one image file.

    ``curves`` is either the result of :func:`fdq.device.evaluation.evaluate` (its APs go in the
    legend) or its ``"curves"`` entry (the APs are then recomputed from the curves with the same
    ``voc_ap``). The file type follows the extension of ``path``; the file is written under a
    temporary name and renamed, so a reader never sees a half-written image.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on a build machine / over SSH
    import matplotlib.pyplot as plt

    if "curves" in curves and isinstance(curves["curves"], Mapping):
        aps = {s: curves.get(s) for s in SETTINGS}
        curves = curves["curves"]
    else:
        aps = {s: None for s in SETTINGS}

    fig, ax = plt.subplots(figsize=(6.0, 5.0), dpi=100)
    try:
        for setting in SETTINGS:
            if setting not in curves:
                continue
            precision = list(curves[setting]["precision"])
            recall = list(curves[setting]["recall"])
            ap = aps[setting]
            if ap is None:
                ap = voc_ap(recall, precision)
            ax.plot(recall, precision, linewidth=2.0, label=f"{setting}: AP {float(ap):.4f}")
        ax.set_xlabel("Recall")
        ax.set_ylabel("Precision")
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(0.0, 1.02)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower left")
        if title:
            ax.set_title(title)
        fig.tight_layout()

        with atomic_output(path) as tmp:
            fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)

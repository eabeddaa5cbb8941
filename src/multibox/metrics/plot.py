"""Precision/recall curves of a VOC evaluation as a PNG (matplotlib, imported lazily, no pyplot state)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from multibox.metrics._inputs import label_name
from multibox.metrics.voc import VOCResult

__all__ = ["plot_pr_curves"]


def plot_pr_curves(
    result: VOCResult,
    class_names: Sequence[str] | Mapping[int, str] | None,
    path: str | Path,
    *,
    dpi: int = 100,
) -> Path:
    """Draw every class's precision/recall curve on one plot and save it as a PNG.

    Classes without ground truth (AP NaN) have no curve; the title says how many were left out.

    Args:
        result: the output of :func:`multibox.metrics.voc_ap`.
        class_names: foreground class names, ``class_names[label - 1]`` for a sequence (no background entry) or
            ``class_names[label]`` for a mapping; None labels the curves "class <label>".
        path: the PNG to write; missing parent folders are created.
        dpi: resolution of the saved image.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("plotting needs matplotlib, which is not installed: pip install 'multibox[eval]'") from err

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A bare Figure on an Agg canvas: no pyplot, no global backend switch, nothing left open.
    fig = Figure(figsize=(8, 6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()

    shown = sorted((label for label, ap in result.ap.items() if not math.isnan(ap)), key=lambda c: -result.ap[c])
    for label in shown:
        recall, precision = result.recall[label], result.precision[label]
        name = label_name(label, class_names)
        # The raw (saw-tooth) curve, one point per ranked detection, started at recall 0 at its first precision.
        xs = [0.0, *recall.tolist()] if len(recall) else [0.0, 0.0]
        ys = [float(precision[0]), *precision.tolist()] if len(precision) else [0.0, 0.0]
        ax.plot(xs, ys, linewidth=1.2, label=f"{name} ({result.ap[label]:.3f})")

    metric = "11-point AP (VOC2007)" if result.use_07_metric else "area AP (VOC2010+)"
    title = f"mAP {result.mean_ap:.4f}: {metric}, IoU > {result.iou_threshold:g}"
    left_out = len(result.ap) - len(shown)
    if left_out:
        title += f"\n{left_out} class(es) without ground truth not shown"
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.grid(True, alpha=0.3)
    if shown:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, ncol=1 if len(shown) <= 25 else 2)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", format="png")
    return path

"""A run's report: what the detector gets right and wrong on the validation images, as files one can look at.

:func:`build_report` runs a checkpoint over a split of the run's data and writes ``<run>/report/``:

- ``report.json``: mAP, the per-class AP table (with ground-truth counts), the confusion matrix with the background
  row/column (:mod:`multibox.metrics.confusion`), the worst images;
- ``pr_curves.png``, ``confusion.png``, ``samples.png`` (images with their ground truth beside the detections) and
  ``worst.png`` (the images with the most missed, false or misclassified boxes);
- ``report.html``: one static page with all of it, the pictures embedded (base64 PNG), no server needed.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["ReportData", "build_report", "render_html"]

_GT_COLOR = (255, 255, 255)


@dataclass
class ReportData:
    """What a report shows (also its ``report.json``)."""

    weights: str
    split: str
    classes: list[str]
    metrics: dict[str, Any]
    per_class: list[dict[str, Any]]
    confusion: dict[str, Any]
    worst: list[dict[str, Any]]
    images: dict[str, str]  # figure name -> PNG file name in the report folder

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def _png_bytes(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _panel(image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor | None,
           classes: Sequence[str], title: str, side: int) -> Any:  # fmt: skip
    """One image with boxes (ground truth in white, detections in class colours with scores), at most ``side``."""
    from PIL import ImageDraw

    from multibox.structures import Detections
    from multibox.viz import draw_detections, to_pil

    h, w = image.shape[-2:]
    scale = side / max(h, w)  # every panel the same size: small images enlarged, large ones reduced
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    base = to_pil(image).resize(size)
    boxes = boxes.float() * scale
    if scores is None:
        img = base.copy()
        draw = ImageDraw.Draw(img)
        for box, label in zip(boxes.tolist(), labels.tolist(), strict=True):
            draw.rectangle(box, outline=_GT_COLOR, width=3)
            draw.text((box[0] + 2, box[1] + 1), classes[label - 1], fill=_GT_COLOR)
    else:
        img = draw_detections(base, Detections(boxes, scores, labels), classes, score_thresh=0.0, line_width=3)
    ImageDraw.Draw(img).text((4, 4), title, fill=(255, 255, 0))
    return img


def _pairs(dataset: Any, indices: Sequence[int], dets: Sequence[Any], targets: Sequence[dict[str, Any]],
           classes: Sequence[str], score: float, side: int = 320) -> Any:  # fmt: skip
    """A picture with one row per image: its ground truth, then its detections at ``score`` or above."""
    from PIL import Image

    rows = []
    for i in indices:
        item = dataset[i]
        if item is None:
            continue
        image = item[0]
        d, t = dets[i], targets[i]
        keep = d.scores >= score
        name = str(t.get("image_id", i))
        left = _panel(image, t["boxes"], t["labels"], None, classes, f"{name}: ground truth", side)
        right = _panel(image, d.boxes[keep], d.labels[keep], d.scores[keep], classes, f"detections >= {score}", side)
        rows.append((left, right))
    if not rows:
        return None
    width = max(a.width + b.width for a, b in rows) + 8
    height = sum(max(a.height, b.height) for a, b in rows) + 4 * len(rows)
    sheet = Image.new("RGB", (width, height), (40, 40, 40))
    y = 0
    for a, b in rows:
        sheet.paste(a, (0, y))
        sheet.paste(b, (a.width + 8, y))
        y += max(a.height, b.height) + 4
    return sheet


def _confusion_png(matrix: torch.Tensor, labels: Sequence[str], path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(labels)
    fig = Figure(figsize=(1.2 + 0.6 * n, 1.0 + 0.6 * n))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    m = matrix.double()
    rows = m / m.sum(1, keepdim=True).clamp(min=1)  # each true class's share
    ax.imshow(rows.numpy(), cmap="Blues", vmin=0, vmax=1)
    for r in range(n):
        for c in range(n):
            value = int(matrix[r, c])
            if value:
                ax.text(c, r, str(value), ha="center", va="center", fontsize=8,
                        color="white" if rows[r, c] > 0.5 else "black")  # fmt: skip
    ax.set_xticks(range(n), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set_xlabel("detected (background: missed)")
    ax.set_ylabel("true (background: false box)")
    fig.savefig(path, dpi=100, bbox_inches="tight", format="png")
    return path


def _per_class(out: Any, classes: Sequence[str], targets: Sequence[dict[str, Any]], conf: Any) -> list[dict]:
    result = out.result
    rows = []
    for k, name in enumerate(classes, start=1):
        ap = result.ap.get(k, float("nan"))
        gt = sum(int((t["labels"] == k).sum()) for t in targets)
        m = conf.matrix
        rows.append({"class": name, "AP": None if math.isnan(ap) else ap, "gt_boxes": gt,
                     "correct": int(m[k, k]), "missed": int(m[k, 0]), "false": int(m[0, k]),
                     "confused": int(m[k, 1:].sum() - m[k, k])})  # fmt: skip
    return rows


def _run_weights(run_dir: Path, weights: str | Path | None) -> str | Path:
    """The checkpoint to report on: ``weights``, else the run's ``best.pt``, else its ``last.pt``.

    Raises:
        FileNotFoundError: no ``config.json`` or checkpoint in ``run_dir``.
    """
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir}: no config.json: not the folder of a training run")
    if weights is None:
        weights = next((run_dir / n for n in ("best.pt", "last.pt") if (run_dir / n).is_file()), None)
        if weights is None:
            raise FileNotFoundError(f"{run_dir}: neither best.pt nor last.pt to report on")
    return weights


def _write_sheets(
    folder: Path,
    dataset: Any,
    sheets: dict[str, list[int]],
    dets: Sequence[Any],
    targets: Sequence[dict[str, Any]],
    classes: list[str],
    score: float,
) -> dict[str, str]:
    """Save each named sheet of (prediction, ground truth) pairs as ``<name>.png``; return name -> file name."""
    images = {}
    # dets/targets are aligned with the readable items: an index maps back only when none was skipped
    aligned = len(targets) == len(dataset)
    for name, indices in sheets.items():
        sheet = _pairs(dataset, indices, dets, targets, classes, score) if aligned and indices else None
        if sheet is not None:
            sheet.save(folder / f"{name}.png")
            images[name] = f"{name}.png"
    return images


def _score(model: Any, dataset: Any, ec: Any, device: str, classes: list[str], score: float) -> tuple[Any, ...]:
    """Run ``model`` over ``dataset``; return its detections, the targets, the AP result and the confusion matrix."""
    from multibox.engine.evaluate import evaluate_detections, predict_dataset
    from multibox.metrics.confusion import confusion_matrix
    from multibox.runtime import resolve_device

    dets, targets, _ = predict_dataset(model, dataset, batch_size=ec.batch_size, device=resolve_device(device),
                                       score_thresh=ec.score_thresh, nms_thresh=ec.nms_thresh,
                                       pre_nms_top_k=ec.pre_nms_top_k, top_k=ec.top_k)  # fmt: skip
    out = evaluate_detections(dets, targets, metric="voc07" if ec.metric == "coco" else ec.metric,
                              iou_threshold=ec.iou_threshold, class_names=classes)  # fmt: skip
    conf = confusion_matrix(dets, targets, len(classes) + 1, score_thresh=score, iou_threshold=ec.iou_threshold)
    return dets, targets, out, conf


def build_report(
    run_dir: str | Path,
    *,
    weights: str | Path | None = None,
    split: str = "val",
    score: float = 0.3,
    samples: int = 8,
    worst: int = 6,
    device: str = "auto",
) -> Path:
    """Write ``<run_dir>/report/`` (see the module docstring) and return its ``report.html``.

    Args:
        run_dir: a training run's folder (its ``config.json`` says where the data is).
        weights: the checkpoint (default ``best.pt``, else ``last.pt``).
        split: ``val`` (default) or ``test``.
        score: the working point of the confusion matrix and the pictures (AP sweeps every score).
        samples: how many images the sample sheet shows (the first ones of the split).
        worst: how many worst images to show.
        device: where to run the model.

    Raises:
        FileNotFoundError: no ``config.json`` or checkpoint in ``run_dir``.
    """
    from multibox.config import config_from_dict
    from multibox.engine.builders import build_dataset
    from multibox.metrics import plot_pr_curves
    from multibox.weights.checkpoint import model_from_checkpoint
    from multibox.weights.io import load_checkpoint

    run_dir = Path(run_dir)
    weights = _run_weights(run_dir, weights)
    config = config_from_dict(json.loads((run_dir / "config.json").read_text()))
    ckpt = load_checkpoint(weights)
    model = model_from_checkpoint(ckpt, weights)
    classes = list(ckpt["classes"])
    dataset = build_dataset(config.data, split, config.model.image_size, classes=tuple(classes))
    dets, targets, out, conf = _score(model, dataset, config.eval, device, classes, score)
    folder = run_dir / "report"
    folder.mkdir(parents=True, exist_ok=True)
    images = {
        "pr_curves": plot_pr_curves(out.result, classes, folder / "pr_curves.png").name,
        "confusion": _confusion_png(conf.matrix, ["background", *classes], folder / "confusion.png").name,
    }
    ranked = sorted(range(len(conf.images)), key=lambda i: (-conf.images[i].errors, i))[:worst]
    ranked = [i for i in ranked if conf.images[i].errors > 0]
    sheets = {"samples": list(range(min(samples, len(targets)))), "worst": ranked}
    images.update(_write_sheets(folder, dataset, sheets, dets, targets, classes, score))
    data = ReportData(
        weights=str(weights), split=split, classes=classes,
        metrics={k: v for k, v in out.items() if isinstance(v, int | float) and not math.isnan(v)},
        per_class=_per_class(out, classes, targets, conf), confusion=conf.to_dict(classes),
        worst=[{"image_id": str(targets[i].get("image_id", i)), **conf.images[i].__dict__} for i in ranked],
        images=images,
    )  # fmt: skip
    (folder / "report.json").write_text(json.dumps(data.to_json(), indent=2))
    page = folder / "report.html"
    page.write_text(render_html(data, folder))
    return page


def _img_tag(folder: Path, name: str | None, alt: str) -> str:
    if name is None:
        return f"<p><i>{html.escape(alt)}: none</i></p>"
    data = base64.b64encode((folder / name).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def render_html(data: ReportData, folder: Path) -> str:
    """The static page of a report; the PNGs of ``folder`` are embedded in it."""
    e = html.escape
    fmt = lambda v: "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    columns = ("class", "AP", "gt_boxes", "correct", "missed", "false", "confused")
    rows = "".join("<tr>" + "".join(f"<td>{e(fmt(r[k]))}</td>" for k in columns) + "</tr>" for r in data.per_class)
    labels = data.confusion["labels"]
    matrix = "".join(
        f"<tr><th>{e(labels[r])}</th>" + "".join(f"<td>{v}</td>" for v in row) + "</tr>"
        for r, row in enumerate(data.confusion["matrix"])
    )
    worst = "".join(
        f"<tr><td>{e(w['image_id'])}</td><td>{w['missed']}</td><td>{w['false']}</td><td>{w['wrong_class']}</td></tr>"
        for w in data.worst
    )
    mean = data.metrics.get("mAP")
    score, iou = data.confusion["score_thresh"], data.confusion["iou_threshold"]
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>multibox report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}img{{max-width:100%;border:1px solid #ddd}}</style>
</head><body>
<h1>Detection report</h1>
<p>weights <code>{e(data.weights)}</code>, split <b>{e(data.split)}</b>, {data.metrics.get("images", "?")} images;
mAP@0.5 <b>{fmt(mean)}</b></p>
<h2>Per-class AP</h2>
<p>correct / missed / false / confused count boxes at score &ge; {score} and IoU &ge; {iou}.</p>
<table><tr><th>class</th><th>AP</th><th>GT boxes</th><th>correct</th><th>missed</th><th>false</th><th>confused</th></tr>
{rows}</table>
<h2>Precision / recall</h2>{_img_tag(folder, data.images.get("pr_curves"), "PR curves")}
<h2>Confusion matrix</h2>
<p>Rows: true class (background row: false boxes); columns: detected class (background column: missed boxes).</p>
<table><tr><th></th>{"".join(f"<th>{e(x)}</th>" for x in labels)}</tr>{matrix}</table>
{_img_tag(folder, data.images.get("confusion"), "confusion matrix")}
<h2>Validation images: ground truth (left) and detections (right)</h2>
{_img_tag(folder, data.images.get("samples"), "samples")}
<h2>Worst images</h2>
<table><tr><th>image</th><th>missed</th><th>false</th><th>wrong class</th></tr>{worst}</table>
{_img_tag(folder, data.images.get("worst"), "worst images")}
</body></html>
"""

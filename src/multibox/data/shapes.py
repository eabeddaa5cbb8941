"""A deterministic synthetic detection set: circles, squares and triangles on noisy, textured backgrounds.

It is the demo's embedded dataset: learnable in minutes on a CPU (objects of 12-60 % of the image side, limited
occlusion; the class is the shape, not the colour), yet not trivial (several colours and sizes, rotated
triangles, gradients, stripes and noise behind). Image ``i`` of seed ``s`` is generated from its own
``numpy.random.default_rng([s, i])``, so items can be produced lazily, in any order, in any worker.

Boxes are tight around the *visible* drawn pixels (any coverage of the 2x-supersampled, anti-aliased shape), in
continuous pixel xyxy: integers, so that :func:`write_voc` and :class:`~multibox.data.VOCDetection` round-trip
them exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["SHAPE_CLASSES", "ShapesDataset", "write_voc"]

#: The classes of :class:`ShapesDataset` (labels 1, 2, 3).
SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle")

# Saturated shape colours and muted background colours (RGB).
_SHAPE_COLOURS = np.array(
    [[220, 40, 40], [40, 170, 60], [40, 80, 220], [235, 200, 30], [200, 60, 200],
     [30, 190, 200], [245, 130, 30], [250, 250, 250], [25, 25, 25]],
    dtype=np.float32,
)  # fmt: skip
_SUPERSAMPLE = 2


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """An ``(h, w, 3)`` float32 background: a flat, gradient or striped base (noise is added to the whole image)."""
    base = rng.uniform(60, 200, size=3).astype(np.float32)
    kind = rng.integers(3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == 0:  # flat
        img = np.broadcast_to(base, (h, w, 3)).copy()
    elif kind == 1:  # linear gradient towards a second colour
        other = rng.uniform(60, 200, size=3).astype(np.float32)
        angle = rng.uniform(0, 2 * math.pi)
        t = (math.cos(angle) * xx / w + math.sin(angle) * yy / h + 1) / 2  # roughly [0, 1]
        img = base + (other - base) * t[..., None]
    else:  # sinusoidal stripes
        period = rng.uniform(6, 24)
        angle = rng.uniform(0, math.pi)
        phase = (math.cos(angle) * xx + math.sin(angle) * yy) * (2 * math.pi / period)
        img = base + rng.uniform(10, 30) * np.sin(phase)[..., None]
    return img.astype(np.float32)


def _outline(cls: int, cx: float, cy: float, size: float, angle: float) -> list[tuple[float, float]] | None:
    """Polygon vertices of a square or triangle (None for a circle), in pixels."""
    if cls == 0:
        return None
    if cls == 1:
        r, start = size / math.sqrt(2), math.pi / 4  # axis-aligned square of side `size` when angle = 0
        n = 4
    else:
        r, start = size / math.sqrt(3), -math.pi / 2  # equilateral triangle of side `size`, apex up when angle = 0
        n = 3
    return [
        (cx + r * math.cos(start + angle + 2 * math.pi * k / n), cy + r * math.sin(start + angle + 2 * math.pi * k / n))
        for k in range(n)
    ]


def _mask(
    cls: int, cx: float, cy: float, size: float, angle: float, half: float, h: int, w: int
) -> tuple[np.ndarray, int, int]:
    """Anti-aliased coverage in [0, 1] of one shape (drawn 2x supersampled, box-filtered), over its region only.

    Returns:
        ``(coverage (rh, rw) float32, x0, y0)``: the region's top-left corner in the image.
    """
    s = _SUPERSAMPLE
    x0, y0 = max(0, math.floor(cx - half) - 1), max(0, math.floor(cy - half) - 1)
    x1, y1 = min(w, math.ceil(cx + half) + 1), min(h, math.ceil(cy + half) + 1)
    img = Image.new("L", ((x1 - x0) * s, (y1 - y0) * s), 0)
    draw = ImageDraw.Draw(img)
    cx, cy = cx - x0, cy - y0
    if cls == 0:
        r = size / 2
        draw.ellipse([(cx - r) * s, (cy - r) * s, (cx + r) * s - 1, (cy + r) * s - 1], fill=255)
    else:
        draw.polygon([(x * s, y * s) for x, y in _outline(cls, cx, cy, size, angle) or []], fill=255)
    return np.asarray(img.reduce(s), dtype=np.float32) / 255.0, x0, y0


def _overlap_ok(box: np.ndarray, boxes: list[np.ndarray], max_overlap: float) -> bool:
    """The intersection with each placed box is at most ``max_overlap`` of either box's area."""
    area = (box[2] - box[0]) * (box[3] - box[1])
    for other in boxes:
        iw = min(box[2], other[2]) - max(box[0], other[0])
        ih = min(box[3], other[3]) - max(box[1], other[1])
        if iw > 0 and ih > 0:
            inter = iw * ih
            if inter > max_overlap * area or inter > max_overlap * (other[2] - other[0]) * (other[3] - other[1]):
                return False
    return True


#: One placed shape: its class index, its approximate box, and its coverage ``(alpha, x0, y0)`` from :func:`_mask`.
_Placed = tuple[int, np.ndarray, tuple[np.ndarray, int, int]]


def _visible(placed: list[_Placed], h: int, w: int) -> list[np.ndarray]:
    """Visible coverage of each shape: its own times what the shapes drawn after it leave uncovered."""
    visible = []
    cover = np.zeros((h, w), dtype=np.float32)
    for _, _, (alpha, x0, y0) in reversed(placed):  # front to back
        region = cover[y0 : y0 + alpha.shape[0], x0 : x0 + alpha.shape[1]]
        visible.append(alpha * (1.0 - region))
        region += alpha * (1.0 - region)
    visible.reverse()
    return visible


class ShapesDataset(Dataset):
    """``num_images`` synthetic images with circles, squares and triangles; items as :class:`VOCDetection`'s.

    Items are ``(uint8 Tensor[3, H, W], {"boxes", "labels", "difficult", "image_id", "orig_size"})`` with labels
    ``1..3`` for :attr:`classes` ``("circle", "square", "triangle")``.

    Args:
        num_images: the dataset's length.
        image_size: ``(H, W)`` in pixels (an int: square).
        seed: generation seed; the same seed gives the same images, boxes and labels.
        min_objects: the fewest shapes per image (0 allows negatives).
        max_objects: the most shapes per image (fewer when they do not fit).
        min_size: the smallest shape (side or diameter) as a fraction of the shorter image side.
        max_size: the largest shape, likewise.
        max_overlap: two shapes' boxes may share at most this fraction of either box's area.
        cache: keep generated items in memory (per process).
    """

    classes: tuple[str, ...] = SHAPE_CLASSES

    def __init__(
        self,
        num_images: int,
        image_size: int | tuple[int, int] = 128,
        seed: int = 0,
        *,
        min_objects: int = 1,
        max_objects: int = 4,
        min_size: float = 0.12,
        max_size: float = 0.6,
        max_overlap: float = 0.2,
        cache: bool = True,
    ) -> None:
        if not 0 <= min_objects <= max_objects:
            raise ValueError(f"need 0 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
        if not 0 < min_size <= max_size <= 1:
            raise ValueError(f"need 0 < min_size <= max_size <= 1, got {min_size}, {max_size}")
        self.num_images = int(num_images)
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.seed = int(seed)
        self.min_objects, self.max_objects = min_objects, max_objects
        self.min_size, self.max_size, self.max_overlap = min_size, max_size, max_overlap
        self.cache = cache
        self._items: dict[int, tuple[Tensor, dict[str, Any]]] = {}

    def __len__(self) -> int:
        return self.num_images

    def image_id(self, index: int) -> str:
        return f"shapes{self.seed}_{index:06d}"

    def _place(self, rng: np.random.Generator, h: int, w: int) -> list[_Placed]:
        """Pick the shapes of one image: ``(class, approximate box, (alpha, x0, y0))`` each, back to front."""
        side = min(h, w)
        placed: list[_Placed] = []  # (class, approximate box, coverage)
        for _ in range(int(rng.integers(self.min_objects, self.max_objects + 1))):
            for _attempt in range(30):
                cls = int(rng.integers(len(SHAPE_CLASSES)))
                size = float(rng.uniform(self.min_size, self.max_size)) * side
                angle = float(rng.uniform(0, 2 * math.pi)) if cls == 2 else 0.0
                half = size / 2 if cls != 2 else size / math.sqrt(3)  # radius of the circumscribed circle
                half = min(half, side / 2 - 1)
                cx = float(rng.uniform(half + 1, w - half - 1))
                cy = float(rng.uniform(half + 1, h - half - 1))
                approx = np.array([cx - half, cy - half, cx + half, cy + half], dtype=np.float32)
                if _overlap_ok(approx, [p[1] for p in placed], self.max_overlap):
                    placed.append((cls, approx, _mask(cls, cx, cy, size, angle, half, h, w)))
                    break
        return placed

    def generate(self, index: int, return_coverage: bool = False) -> tuple[np.ndarray, ...]:
        """Draw image ``index``.

        Args:
            index: the image index.
            return_coverage: also return each object's visible coverage (for checking the boxes).

        Returns:
            ``(image (H, W, 3) uint8, boxes (N, 4) float32 xyxy pixels, labels (N,) int64 in 1..3)``, and with
            ``return_coverage`` ``coverage (N, H, W) float32`` in [0, 1].
        """
        h, w = self.image_size
        rng = np.random.default_rng([self.seed, index])
        img = _background(rng, h, w)
        bg_mean = img.reshape(-1, 3).mean(0)
        placed = self._place(rng, h, w)
        visible = _visible(placed, h, w)
        far = np.linalg.norm(_SHAPE_COLOURS - bg_mean, axis=1) > 90  # colours that stand out from the background
        choices = np.flatnonzero(far) if far.any() else np.arange(len(_SHAPE_COLOURS))
        classes, boxes, coverage = [], [], []
        for (cls, _, (alpha, x0, y0)), seen in zip(placed, visible, strict=True):  # back to front
            colour = _SHAPE_COLOURS[int(rng.choice(choices))] + rng.normal(0, 8, size=3).astype(np.float32)
            region = img[y0 : y0 + alpha.shape[0], x0 : x0 + alpha.shape[1]]
            region += (colour - region) * alpha[..., None]
            ys, xs = np.nonzero(seen > 0)
            if xs.size == 0:
                continue
            classes.append(cls + 1)
            boxes.append([x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1])
            if return_coverage:
                full = np.zeros((h, w), dtype=np.float32)
                full[y0 : y0 + seen.shape[0], x0 : x0 + seen.shape[1]] = seen
                coverage.append(full)
        noise = rng.standard_normal((h, w, 3), dtype=np.float32) * float(rng.uniform(3, 12))
        image = np.clip(img + noise, 0, 255).round().astype(np.uint8)
        out = (
            image,
            np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            np.asarray(classes, dtype=np.int64).reshape(-1),
        )
        if return_coverage:
            return (*out, np.asarray(coverage, dtype=np.float32).reshape(-1, h, w))
        return out

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        if index in self._items:
            image, target = self._items[index]
        else:
            array, boxes, labels = self.generate(index)
            image = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))  # (H, W, 3) -> (3, H, W)
            target = {
                "boxes": torch.from_numpy(boxes),
                "labels": torch.from_numpy(labels),
                "difficult": torch.zeros(len(labels), dtype=torch.bool),
                "image_id": self.image_id(index),
                "orig_size": torch.tensor(self.image_size, dtype=torch.int64),
            }
            if self.cache:
                self._items[index] = (image, target)
        return image.clone(), {k: v.clone() if isinstance(v, Tensor) else v for k, v in target.items()}

    def __repr__(self) -> str:
        return f"ShapesDataset(num_images={self.num_images}, image_size={self.image_size}, seed={self.seed})"


def _voc_xml(
    image_id: str, filename: str, size: tuple[int, int], names: Sequence[str], boxes: Tensor, difficult: Tensor
) -> str:
    h, w = size
    objects = []
    for name, (x1, y1, x2, y2), diff in zip(names, boxes.tolist(), difficult.tolist(), strict=True):
        # Continuous xyxy -> VOC 1-based inclusive corners (see multibox.data.voc).
        objects.append(
            f"\t<object>\n\t\t<name>{escape(name)}</name>\n\t\t<pose>Unspecified</pose>\n\t\t<truncated>0</truncated>\n"
            f"\t\t<difficult>{int(diff)}</difficult>\n\t\t<bndbox>\n\t\t\t<xmin>{round(x1) + 1}</xmin>\n"
            f"\t\t\t<ymin>{round(y1) + 1}</ymin>\n\t\t\t<xmax>{round(x2)}</xmax>\n\t\t\t<ymax>{round(y2)}</ymax>\n"
            "\t\t</bndbox>\n\t</object>\n"
        )
    return (
        f"<annotation>\n\t<folder>JPEGImages</folder>\n\t<filename>{escape(filename)}</filename>\n"
        f"\t<size>\n\t\t<width>{w}</width>\n\t\t<height>{h}</height>\n\t\t<depth>3</depth>\n\t</size>\n"
        f"\t<segmented>0</segmented>\n{''.join(objects)}</annotation>\n"
    )


def write_voc(dataset: Dataset, root: str | Path, split: str, classes: Sequence[str] | None = None) -> list[str]:
    """Write a dataset's items to disk in VOC layout, readable by :class:`~multibox.data.VOCDetection`.

    Images go to ``JPEGImages/<id>.png`` (lossless), annotations to ``Annotations/<id>.xml`` with 1-based
    inclusive corners (``xmin = x1 + 1``, ``xmax = x2``; non-integer boxes are rounded), and the ids to
    ``ImageSets/Main/<split>.txt`` (replaced).

    Args:
        dataset: items ``(uint8 Tensor[3, H, W], target)`` with ``"boxes"`` in pixels and ``"labels"`` in 1..K;
            ``"image_id"`` and ``"difficult"`` are used when present.
        root: the output folder (created).
        split: the split name.
        classes: label ``k`` is written as ``classes[k - 1]``; by default ``dataset.classes``.

    Returns:
        The ids written, in order.
    """
    names = tuple(classes if classes is not None else dataset.classes)  # type: ignore[attr-defined]
    root = Path(root)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ids = []
    for index in range(len(dataset)):  # type: ignore[arg-type]
        image, target = dataset[index]
        image_id = str(target.get("image_id", f"{index:06d}"))
        filename = f"{image_id}.png"
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(root / "JPEGImages" / filename)  # (3, H, W) -> (H, W, 3)
        labels = target["labels"].tolist()
        difficult = target.get("difficult", torch.zeros(len(labels), dtype=torch.bool))
        xml = _voc_xml(
            image_id,
            filename,
            (image.shape[1], image.shape[2]),
            [names[k - 1] for k in labels],
            target["boxes"],
            difficult,
        )
        (root / "Annotations" / f"{image_id}.xml").write_text(xml, encoding="utf-8")
        ids.append(image_id)
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    return ids

"""A deterministic held-out validation split of a training set, kept in a ``split.json`` so that it can be reused.

When a dataset names no validation split, :func:`make_split` draws one from the training images: a seeded random
``fraction`` of them (at least one image, at least one left for training), chosen by image key (:func:`multibox.
data.combine.image_keys`), so that the same images and seed always give the same split whatever their order on
disk. The file is plain JSON: ``{"seed", "val_fraction", "train": [keys], "val": [keys]}``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from multibox.data.checks import DatasetError
from multibox.data.combine import DetectionSubset, image_keys
from multibox.io.regular import read_text

__all__ = ["apply_split", "make_split", "read_split_file", "write_split_file"]


def make_split(keys: Sequence[str], fraction: float = 0.1, seed: int = 0) -> dict[str, Any]:
    """Divide ``keys`` into train and val: ``max(1, round(fraction * n))`` seeded random keys go to val.

    Raises:
        ValueError: fewer than two keys, duplicate keys, or ``fraction`` not in (0, 1).
    """
    if not 0 < fraction < 1:
        raise ValueError(f"the validation fraction must be in (0, 1), got {fraction}")
    ordered = sorted(str(k) for k in keys)
    if len(set(ordered)) != len(ordered):
        raise ValueError("image keys must be unique to make a split")
    if len(ordered) < 2:
        raise ValueError(f"a held-out split needs at least 2 training images, the dataset has {len(ordered)}")
    n_val = min(len(ordered) - 1, max(1, round(fraction * len(ordered))))
    val = set(random.Random(seed).sample(ordered, n_val))
    return {
        "seed": seed,
        "val_fraction": fraction,
        "train": [k for k in ordered if k not in val],
        "val": [k for k in ordered if k in val],
    }


def write_split_file(path: str | Path, split: dict[str, Any]) -> Path:
    """Write ``split`` as JSON to ``path`` (its folder created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(split, indent=1) + "\n")
    return path


def read_split_file(path: str | Path) -> dict[str, Any]:
    """Read and check a ``split.json``.

    Raises:
        DatasetError: unreadable, not JSON, or without ``train``/``val`` lists of strings (the message names the file).
    """
    path = Path(path)
    try:
        split = json.loads(read_text(path))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read the split file: {exc}") from exc
    for part in ("train", "val"):
        keys = split.get(part) if isinstance(split, dict) else None
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise DatasetError(f"{path}: {part!r} must be a list of image keys (strings)")
    overlap = set(split["train"]) & set(split["val"])
    if overlap:
        raise DatasetError(f"{path}: {len(overlap)} image(s) are in both train and val, e.g. {sorted(overlap)[:3]}")
    return split


def apply_split(dataset: Any, split: dict[str, Any], part: str, source: str = "split file") -> DetectionSubset:
    """The items of ``dataset`` that ``split[part]`` names, in the split's order.

    Raises:
        DatasetError: the split names images the dataset does not have (the message names ``source`` and some keys).
    """
    index = {k: i for i, k in enumerate(image_keys(dataset))}
    missing = [k for k in split[part] if k not in index]
    if missing:
        raise DatasetError(
            f"{source}: {len(missing)} {part} image(s) are not in {dataset!r}, e.g. {missing[:3]} (a split made "
            "for other data? delete it to make a new one)"
        )
    return DetectionSubset(dataset, [index[k] for k in split[part]])

"""Shared helpers for the benchmark scripts: timing medians, realistic synthetic SSD outputs, shapes inputs."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from multibox.boxes import encode
from multibox.structures import Prediction


def median_ms(fn: Callable[[], object], repeat: int = 15, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` in milliseconds after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def shapes_inputs(model: torch.nn.Module, n: int, seed: int) -> torch.Tensor:
    """``n`` synthetic shapes images (``seed``) as ``model`` sees them at inference (``Tensor[n, 3, H, W]``)."""
    from multibox.data import ShapesDataset
    from multibox.engine.evaluate import preprocessed_images

    return preprocessed_images(model, ShapesDataset(n, model.preprocess.image_size, seed=seed), n)


def realistic_prediction(priors: torch.Tensor, batch: int, num_classes: int, objects: int = 4, seed: int = 0):
    """Outputs shaped like a trained SSD's: mostly confident background, a few objects seen by many priors.

    Returns:
        ``(Prediction, targets)`` where targets are the planted objects as ``(boxes xyxy [0,1], labels)``.
    """
    g = torch.Generator().manual_seed(seed)
    a = priors.shape[0]
    logits = torch.randn(batch, a, num_classes, generator=g)
    logits[..., 0] += 4.0  # background dominates: typical max class prob ~ 0.01-0.1 away from objects
    deltas = torch.randn(batch, a, 4, generator=g) * 0.5
    targets = []
    centers = priors[:, :2]
    for b in range(batch):
        xy = torch.rand(objects, 2, generator=g) * 0.6 + 0.1
        wh = torch.rand(objects, 2, generator=g) * 0.3 + 0.05
        boxes = torch.cat((xy, xy + wh), 1).clamp(0, 1)
        labels = torch.randint(1, num_classes, (objects,), generator=g)
        for box, label in zip(boxes, labels, strict=True):
            inside = ((centers >= box[:2]) & (centers <= box[2:])).all(1)
            logits[b, inside, label] += 6.0 * torch.rand(int(inside.sum()), generator=g)
            deltas[b, inside] = encode(box.expand(int(inside.sum()), 4), priors[inside]) + 0.1 * torch.randn(
                int(inside.sum()), 4, generator=g
            )
        targets.append((boxes, labels))
    return Prediction(logits, deltas), targets

"""Throughput of the SSD augmentation pipeline (images/s, medians over repeats; nothing is asserted).

Measured on the synthetic shapes set (128x128 in, 128x128 out) and on the shared ``cards`` photos (378x504 and
960x540 in, 300x300 out):

- ``augment``: ``train_transform`` alone on pre-decoded images, in this process (1 and 2 intra-op threads),
- ``eval``: ``eval_transform`` alone,
- ``loader``: ``build_loader(num_workers=2, persistent_workers=True)`` end to end (decode or generate, augment,
  collate; one thread per worker), one epoch of ``--loader-images`` images per run.

Usage: ``python benchmarks/bench_augment.py [--repeats 5] [--images 64]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from multibox.data import ShapesDataset, VOCDetection, build_loader, eval_transform, train_transform

MEAN, STD = (123.0, 117.0, 104.0), (1.0, 1.0, 1.0)


def shared_data_dir() -> Path | None:
    env = os.environ.get("MULTIBOX_SHARED_DATA")
    repo = Path(__file__).resolve().parents[1]
    candidates = ([Path(env)] if env else []) + [repo.parent / "shared" / "data", Path("/work/shared/data")]
    return next((p for p in candidates if (p / "cards").is_dir()), None)


def rate(fn, n: int, repeats: int) -> float:
    """Median images/s of ``fn()`` (which processes ``n`` images) over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return n / statistics.median(times)


def bench_transform(items: list, transform, repeats: int) -> float:
    def run() -> None:
        g = torch.Generator().manual_seed(0)
        for image, target in items:
            transform(image, target["boxes"], target["labels"], g)

    return rate(run, len(items), repeats)


def bench_loader(dataset, transform, n: int, repeats: int) -> float:
    subset = torch.utils.data.Subset(dataset, range(min(n, len(dataset))))
    loader = build_loader(subset, 8, transform, shuffle=True, num_workers=2, seed=0, persistent_workers=True)

    def run() -> None:
        for _ in loader:
            pass

    return rate(run, len(subset), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=64, help="images per run of the in-process measures")
    parser.add_argument("--loader-images", type=int, default=256, help="images per loader epoch")
    args = parser.parse_args()

    sets = [("shapes 128->128", ShapesDataset(max(args.images, args.loader_images), 128, seed=0, cache=False), 128)]
    data = shared_data_dir()
    if data is not None:
        sets.append(("cards  ->300x300", VOCDetection(data / "cards", "train"), 300))
    else:
        print("(cards not found: set MULTIBOX_SHARED_DATA to include the real photos)")

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, medians of {args.repeats} runs of {args.images} images")
    header = f"{'set':<18} {'augment 1thr':>13} {'augment 2thr':>13} {'eval 1thr':>10} {'loader 2 workers':>17}"
    print(header + "  (images/s)")
    for name, dataset, size in sets:
        items = [dataset[i] for i in range(min(args.images, len(dataset)))]
        train, evaluate = train_transform(size, MEAN, STD), eval_transform(size, MEAN, STD)
        torch.set_num_threads(1)
        aug1 = bench_transform(items, train, args.repeats)
        ev1 = bench_transform(items, evaluate, args.repeats)
        torch.set_num_threads(2)
        aug2 = bench_transform(items, train, args.repeats)
        torch.set_num_threads(1)
        loader = bench_loader(dataset, train, args.loader_images, args.repeats)
        print(f"{name:<18} {aug1:>13.1f} {aug2:>13.1f} {ev1:>10.1f} {loader:>17.1f}")


if __name__ == "__main__":
    main()

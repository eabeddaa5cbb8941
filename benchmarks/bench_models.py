"""Forward latency of the registered models on CPU (issue: "Speed and light models"). Prints medians and img/s.

    python benchmarks/bench_models.py [--models ssdlite320_mobilenet_v3 ssd300_resnet50] [--batches 1 8]
                                      [--threads 2] [--repeat 10] [--rounds 3]

Modes, all inside ``torch.inference_mode()`` on the raw model (no post-processing):

* ``fp32``: eager, NCHW (contiguous) weights and inputs;
* ``fp32 channels_last``: weights and inputs in ``torch.channels_last`` (NHWC);
* ``bf16 channels_last``: the same under ``torch.autocast("cpu", dtype=torch.bfloat16)``;
* ``... folded``: the same after :func:`multibox.models.fuse.fold_batch_norms` (BatchNorm folded into the convs).

Each (model, mode, batch) is timed in ``--rounds`` rounds of ``--repeat`` calls, interleaved so that a burst of load
from other processes spoils one round rather than one configuration; the table shows the lowest round median (the
quietest). ``postprocess`` times :func:`multibox.postprocess` on synthetic scores (:func:`common.realistic_prediction`:
a few planted objects, background logit +4) at each ``--score-thresh``; ``end to end`` adds it to the fastest forward
mode. At 91 classes the synthetic scores put tens of thousands of (prior, class) pairs per image above 0.01, far more
than a trained detector, so the 0.01 row is a pessimistic bound; 0.3 is a typical deployment threshold. Random
weights: the forward speed does not depend on them.

Not a test: numbers depend on the machine and its load; record them with the command line. On a shared machine
with more busy threads than cores, OpenMP's barriers make every parallel region wait for a time slice: compare
``--threads 1`` with the default.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_ms, realistic_prediction
from multibox import create_model, postprocess
from multibox.models import SSD
from multibox.models.fuse import fold_batch_norms

MODES = ("fp32", "fp32 channels_last", "bf16 channels_last", "fp32 channels_last folded", "bf16 channels_last folded")


def forward_fn(model: SSD, mode: str, batch: int) -> Callable[[], object]:
    """A closure running one forward pass of ``model`` on a random batch in ``mode`` (sets the weights' layout)."""
    x = torch.randn(batch, 3, *model.image_size)
    fmt = torch.channels_last if "channels_last" in mode else torch.contiguous_format
    model.to(memory_format=fmt)
    x = x.contiguous(memory_format=fmt)
    autocast = (
        (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if mode.startswith("bf16") else contextlib.nullcontext
    )

    def run() -> object:  # call it before another forward_fn() changes the model's memory format
        with autocast():
            return model(x)

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["ssdlite320_mobilenet_v3", "ssd300_resnet50"])
    ap.add_argument("--num-classes", type=int, default=91, help="91 as torchvision's COCO models")
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeat", type=int, default=10, help="timed calls per round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; the lowest round median is reported")
    ap.add_argument("--score-thresh", nargs="+", type=float, default=[0.01, 0.3])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} threads")
    models = {name: create_model(name, args.num_classes).eval() for name in args.models}
    folded = {name: fold_batch_norms(model) for name, model in models.items()}
    configs = [(name, mode, bs) for name in args.models for bs in args.batches for mode in args.modes]
    best: dict[tuple[str, str, int], float] = {}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for key in configs:
                name, mode, bs = key
                repeat = args.repeat if bs == 1 else max(3, args.repeat // 2)
                model = (folded if mode.endswith("folded") else models)[name]
                ms = median_ms(forward_fn(model, mode, bs), repeat=repeat, warmup=2)
                best[key] = min(best.get(key, float("inf")), ms)
        post: dict[tuple[str, int, float], float] = {}
        for name, bs, thresh in itertools.product(args.models, args.batches, args.score_thresh):
            pred, _ = realistic_prediction(models[name].priors, bs, args.num_classes)
            run = functools.partial(postprocess, pred, models[name].priors, score_thresh=thresh)
            post[name, bs, thresh] = min(median_ms(run, repeat=max(3, args.repeat // 2)) for _ in range(args.rounds))
    rows = []
    for name in args.models:
        for bs in args.batches:
            for mode in args.modes:
                ms = best[name, mode, bs]
                rows.append((name, f"forward {mode}", bs, ms))
            fastest = min(args.modes, key=lambda m, n=name, b=bs: best[n, m, b])
            for t in args.score_thresh:
                rows.append((name, f"postprocess, score > {t:g}", bs, post[name, bs, t]))
            for t in args.score_thresh:
                e2e = best[name, fastest, bs] + post[name, bs, t]
                rows.append((name, f"end to end: {fastest} + postprocess > {t:g}", bs, e2e))
    width = max(len(r[0]) for r in rows)
    what = max(len(r[1]) for r in rows)
    print(f"{'model':<{width}}  {'what':<{what}}  {'batch':>5}  {'median ms':>10}  {'img/s':>7}")
    for name, label, bs, ms in rows:
        print(f"{name:<{width}}  {label:<{what}}  {bs:>5}  {ms:>10.2f}  {1000 * bs / ms:>7.1f}")


if __name__ == "__main__":
    main()

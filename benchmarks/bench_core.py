"""Core speed figures (issue: core): forward, post-processing, matching + loss. Prints medians in ms.

    python benchmarks/bench_core.py [--threads 2] [--repeat 15]

Not a test: numbers depend on the machine; record them in benchmarks/README.md with the command line.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_ms, realistic_prediction
from multibox import create_model, multibox_loss, postprocess
from multibox.matching import match, pad_targets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--skip-forward", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} threads")
    model = create_model("ssd300_vgg16", 21).eval()
    priors = model.priors
    rows = []
    with torch.inference_mode():
        if not args.skip_forward:
            for bs in (1, 8):
                x = torch.randn(bs, 3, 300, 300)
                ms = median_ms(lambda x=x: model(x), repeat=max(3, args.repeat // 3), warmup=1)
                rows.append((f"ssd300_vgg16 forward fp32 NCHW, batch {bs}", ms, ms / bs))
        pred, _ = realistic_prediction(priors, 8, 21)
        ms = median_ms(lambda: postprocess(pred, priors), repeat=args.repeat)
        rows.append(("postprocess batch 8, 21 classes (realistic scores)", ms, ms / 8))
        worst = pred._replace(cls_logits=torch.zeros_like(pred.cls_logits))  # every class score 1/21 > 0.01
        ms = median_ms(lambda: postprocess(worst, priors), repeat=args.repeat)
        rows.append(("postprocess batch 8, 21 classes (worst case: 200 cand./class)", ms, ms / 8))
    for bs in (8, 32):
        pred, targets = realistic_prediction(priors, bs, 21, objects=3, seed=bs)
        boxes, _, valid = pad_targets(targets)
        ms = median_ms(lambda b=boxes, v=valid: match(b, v, priors), repeat=args.repeat)
        rows.append((f"matching, batch {bs} (3 objects/image)", ms, ms / bs))
        ms = median_ms(lambda p=pred, t=targets: multibox_loss(p, t, priors), repeat=args.repeat)
        rows.append((f"matching + loss, batch {bs}", ms, ms / bs))
    width = max(len(r[0]) for r in rows)
    print(f"{'what':<{width}}  {'median ms':>10}  {'ms/image':>9}")
    for name, ms, per in rows:
        print(f"{name:<{width}}  {ms:>10.2f}  {per:>9.2f}")


if __name__ == "__main__":
    main()

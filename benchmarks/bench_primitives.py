"""Single torch ops behind the post-processing and loss design choices (medians in ms; nothing asserted).

    python benchmarks/bench_primitives.py [--threads 2] [--repeat 41]

- ``exp`` vs ``exp2`` on SSD300 scores of a batch of 8 (8 x 8732 x 21 float32): why the softmax uses ``exp2``;
- ``log_softmax`` over the 21 classes of a batch of 32 (what the loss computed before) against
  ``multibox.loss.background_loss`` (what hard negative mining now ranks by) and a ``sum(-1)`` vs ``mv`` over the
  class axis;
- reductions over the 3 ground-truth boxes of matching (32 x 3 x 8732): ``max(dim=1)`` vs ``amax(dim=1)`` vs
  ``argmax(dim=1)``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_ms
from multibox.loss import background_loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeat", type=int, default=41)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(8, 8732, 21, generator=g)
    out = torch.empty_like(scores)
    logits32 = torch.randn(32, 8732, 21, generator=g)
    ones = torch.ones(21)
    iou = torch.rand(32, 3, 8732, generator=g)
    rows = [
        ("exp, 8 x 8732 x 21", lambda: torch.exp(scores, out=out)),
        ("exp2, 8 x 8732 x 21", lambda: torch.exp2(scores, out=out)),
        ("log_softmax(-1), 32 x 8732 x 21", lambda: torch.log_softmax(logits32, -1)),
        ("background_loss, 32 x 8732 x 21", lambda: background_loss(logits32)),
        ("sum(-1), 32 x 8732 x 21", lambda: logits32.sum(-1)),
        ("mv(ones), 32 x 8732 x 21", lambda: torch.mv(logits32.view(-1, 21), ones)),
        ("max(dim=1), 32 x 3 x 8732", lambda: iou.max(dim=1)),
        ("amax(dim=1), 32 x 3 x 8732", lambda: iou.amax(dim=1)),
        ("argmax(dim=1), 32 x 3 x 8732", lambda: iou.argmax(dim=1)),
    ]
    capability = torch.backends.cpu.get_cpu_capability()
    print(f"torch {torch.__version__}, {args.threads} threads, CPU capability {capability}")
    width = max(len(r[0]) for r in rows)
    with torch.inference_mode():
        for name, fn in rows:
            print(f"{name:<{width}}  {median_ms(fn, repeat=args.repeat):8.3f}")


if __name__ == "__main__":
    main()

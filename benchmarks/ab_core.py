"""Interleaved A/B of ``postprocess`` or ``multibox_loss`` between a git revision and the working tree (medians in ms;
nothing asserted).

    python benchmarks/ab_core.py --base REV [--what postprocess loss backward] [--calls 41] [--threads 2]

On a noisy host a ratio measured in one process, old and new alternating call by call, is far steadier than two
separate runs of ``bench_core.py``. The revision is checked out into a temporary ``git worktree`` (removed
afterwards); both versions run on the same synthetic SSD300 outputs as ``bench_core.py`` (post-processing of a batch
of 8, realistic: 4 objects per image, worst: all scores tied; matching + loss of batches of 8 and 32 with 3 objects
per image; ``backward``: the loss of a batch of 32 and its gradient, as in training), and each line says whether the
two versions' outputs agree.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _load(src: Path):
    """``multibox`` imported from ``src`` (a fresh import: earlier ``multibox`` modules are dropped)."""
    for name in [k for k in sys.modules if k == "multibox" or k.startswith("multibox.")]:
        del sys.modules[name]
    sys.path.insert(0, str(src))
    try:
        return importlib.import_module("multibox")
    finally:
        sys.path.remove(str(src))


def _same_detections(a, b) -> bool:
    return all(
        torch.equal(x.labels, y.labels)
        and torch.allclose(x.scores, y.scores, atol=1e-6)
        and torch.allclose(x.boxes, y.boxes, atol=1e-6)
        for x, y in zip(a, b, strict=True)
    )


def _same_loss(a, b) -> bool:
    return int(a["num_pos"]) == int(b["num_pos"]) and all(
        torch.allclose(a[k], b[k], rtol=1e-5) for k in ("loc", "conf", "total")
    )


def _ab(name: str, old, new, same, calls: int) -> None:
    """Time ``old()`` and ``new()`` alternately and print both medians, their ratio and ``same(old(), new())``."""
    agree = same(old(), new())
    times: dict[str, list[float]] = {"base": [], "new": []}
    for _ in range(3):
        old(), new()
    for _ in range(calls):
        for key, fn in (("base", old), ("new", new)):
            t0 = time.perf_counter()
            fn()
            times[key].append((time.perf_counter() - t0) * 1e3)
    a, b = statistics.median(times["base"]), statistics.median(times["new"])
    print(f"{name:22s} base {a:6.2f} ms  new {b:6.2f} ms  ratio {b / a:.3f}  same output: {agree}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="git revision to compare against")
    ap.add_argument("--what", nargs="+", choices=("postprocess", "loss", "backward"), default=["postprocess", "loss"])
    ap.add_argument("--calls", type=int, default=41)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from common import realistic_prediction

    with tempfile.TemporaryDirectory(prefix="multibox-ab-") as tmp:
        tree = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), args.base], check=True,
                       capture_output=True)  # fmt: skip
        try:
            old = _load(tree / "src")
            new = _load(ROOT / "src")
            priors = new.create_model("ssd300_vgg16", 21).priors
            if "backward" in args.what:  # the loss as in training: forward and backward to the network's outputs
                p, t = realistic_prediction(priors, 32, 21, objects=3, seed=32)

                def step(mod, p=p, t=t):
                    q = p._replace(cls_logits=p.cls_logits.clone().requires_grad_(),
                                   box_deltas=p.box_deltas.clone().requires_grad_())  # fmt: skip
                    out = mod.multibox_loss(q, t, priors)
                    out["total"].backward()
                    return {**{k: v.detach() for k, v in out.items()}, "grad": q.cls_logits.grad}

                def same_step(a, b):
                    return _same_loss(a, b) and torch.allclose(a["grad"], b["grad"], rtol=1e-4, atol=1e-7)

                _ab("loss+backward batch 32", lambda: step(old), lambda: step(new), same_step, args.calls)
            with torch.inference_mode():
                if "postprocess" in args.what:
                    pred, _ = realistic_prediction(priors, 8, 21)
                    worst = pred._replace(cls_logits=torch.zeros_like(pred.cls_logits))
                    for name, p in (("postprocess realistic", pred), ("postprocess worst", worst)):
                        _ab(name, lambda p=p: old.postprocess(p, priors), lambda p=p: new.postprocess(p, priors),
                            _same_detections, args.calls)  # fmt: skip
                if "loss" in args.what:
                    for bs in (8, 32):
                        p, t = realistic_prediction(priors, bs, 21, objects=3, seed=bs)
                        _ab(f"match+loss batch {bs}", lambda p=p, t=t: old.multibox_loss(p, t, priors),
                            lambda p=p, t=t: new.multibox_loss(p, t, priors), _same_loss, args.calls)  # fmt: skip
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)


if __name__ == "__main__":
    main()

"""Interleaved A/B of ``postprocess`` between a git revision and the working tree (medians in ms; nothing asserted).

    python benchmarks/ab_postprocess.py --base REV [--calls 41] [--threads 2]

On a noisy host a ratio measured in one process, old and new alternating call by call, is far steadier than two
separate runs of ``bench_core.py``. The revision is checked out into a temporary ``git worktree`` (removed
afterwards); both versions run on the same synthetic SSD300 outputs as ``bench_core.py`` (realistic: 4 objects per
image; worst: all scores tied), and the line says whether their detections agree.
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
        return importlib.import_module("multibox"), importlib.import_module("multibox.postprocess")
    finally:
        sys.path.remove(str(src))


def _same(a, b) -> bool:
    return all(
        torch.equal(x.labels, y.labels)
        and torch.allclose(x.scores, y.scores, atol=1e-6)
        and torch.allclose(x.boxes, y.boxes, atol=1e-6)
        for x, y in zip(a, b, strict=True)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="git revision to compare against")
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
            _, old = _load(tree / "src")
            mb, new = _load(ROOT / "src")
            priors = mb.create_model("ssd300_vgg16", 21).priors
            pred, _ = realistic_prediction(priors, 8, 21)
            worst = pred._replace(cls_logits=torch.zeros_like(pred.cls_logits))
            with torch.inference_mode():
                for name, p in (("realistic", pred), ("worst", worst)):
                    same = _same(old.postprocess(p, priors), new.postprocess(p, priors))
                    times: dict[str, list[float]] = {"base": [], "new": []}
                    for _ in range(3):
                        old.postprocess(p, priors), new.postprocess(p, priors)
                    for _ in range(args.calls):
                        for key, mod in (("base", old), ("new", new)):
                            t0 = time.perf_counter()
                            mod.postprocess(p, priors)
                            times[key].append((time.perf_counter() - t0) * 1e3)
                    a, b = statistics.median(times["base"]), statistics.median(times["new"])
                    print(f"{name:10s} base {a:6.2f} ms  new {b:6.2f} ms  ratio {b / a:.3f}  same output: {same}")
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)


if __name__ == "__main__":
    main()

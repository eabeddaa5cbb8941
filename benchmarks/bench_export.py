"""ONNX export figures (issue: export): export time, file size, max |onnxruntime - torch|, and the median latency
of onnxruntime vs PyTorch for ssd300_vgg16 (21 classes) at batch 1 and 8, with and without post-processing.

    python benchmarks/bench_export.py [--threads 2] [--repeat 5] [--out /tmp/bench_export]

The weights are random, with the background logit raised by 5 so that, as with a trained model, only a few
hundred class scores per image pass the 0.01 threshold (NMS work is then realistic rather than 200 candidates for
every class). PyTorch runs ``model(x)`` (+ :func:`multibox.postprocess`) under ``inference_mode``; onnxruntime
runs the exported graph on the CPU execution provider with ``--threads`` intra-op threads; the two are timed
alternately so that both see the same machine load. Not a test: record the numbers with the command line.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from multibox import create_model, export_onnx, postprocess
from multibox.export import random_sample
from multibox.preprocess import IMAGENET_STD


def paired_medians(fn_a: Callable[[], object], fn_b: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Median ms of ``fn_a`` and ``fn_b`` timed alternately (one warm-up each), so that both see the same load."""
    fn_a(), fn_b()
    times_a, times_b = [], []
    for _ in range(repeat):
        for fn, times in ((fn_a, times_a), (fn_b, times_b)):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times_a), statistics.median(times_b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=None, help="folder for the .onnx files (default: a temporary one)")
    args = ap.parse_args()
    import onnxruntime as ort

    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, onnxruntime {ort.__version__}, {platform.processor() or platform.machine()}, "
        f"{args.threads} threads"
    )
    torch.manual_seed(0)
    # ImageNet std keeps the random VGG's logits moderate (no probabilities saturated at exactly 1.0).
    model = create_model("ssd300_vgg16", 21, std=IMAGENET_STD).eval()
    with torch.no_grad():
        for conf in model.head.conf:
            conf.bias.view(-1, 21)[:, 0] += 5.0
    out_dir = Path(args.out or tempfile.mkdtemp(prefix="bench_export_"))
    batches = {bs: random_sample(model, bs, seed=bs) for bs in (1, 8)}
    rows = []
    for post in (False, True):
        kind = "with postprocess" if post else "raw outputs"
        result = export_onnx(model, out_dir / f"ssd300_{'post' if post else 'raw'}.onnx", with_postprocess=post)
        diffs = ", ".join(f"{k} {v:.2e}" for k, v in result.max_abs_diff.items())
        print(
            f"{kind:<17} export {result.export_seconds:6.2f} s, file {result.size_bytes / 2**20:6.1f} MiB, "
            f"max |ort - torch| ({list(result.checked_batches)}): {diffs}"
        )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        session = ort.InferenceSession(str(result.path), opts, providers=["CPUExecutionProvider"])
        for bs, x in batches.items():
            feed = {"images": x.numpy()}

            def run_torch(x=x, post=post):
                with torch.inference_mode():
                    pred = model(x)
                    return postprocess(pred, model.priors) if post else pred

            t_ms, o_ms = paired_medians(run_torch, lambda feed=feed, s=session: s.run(None, feed), args.repeat)
            rows.append((kind, bs, t_ms, o_ms))
    print(f"\n{'ssd300_vgg16':<17}  {'batch':>5}  {'torch ms':>9}  {'ort ms':>9}  {'ort/torch':>9}  {'ort ms/img':>10}")
    for kind, bs, t_ms, o_ms in rows:
        print(f"{kind:<17}  {bs:>5}  {t_ms:>9.1f}  {o_ms:>9.1f}  {o_ms / t_ms:>9.2f}  {o_ms / bs:>10.1f}")


if __name__ == "__main__":
    main()

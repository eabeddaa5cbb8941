"""``multibox bench``: where inference time goes, for each inference path, with an accuracy guard.

For a model and batch sizes it times (median of ``repeat`` runs after warm-up) pre-processing, the network,
post-processing and the whole pipeline, for each inference path of :mod:`multibox.runtime` (``fp32``,
``channels_last``, ``bf16``, ``fp16``, ``compile``, ``int8``) and ``onnxruntime``: the network exported to ONNX
(raw outputs) and run by onnxruntime's CPU provider with as many intra-op threads as torch uses (optional, needs the
``export`` extra); pre- and post-processing as the others;

all under ``torch.inference_mode``. It also measures the machine's matmul peak so that the network's achieved
GFLOP/s can be read against it, and the *agreement* of each path with fp32: VOC AP of the path's detections
scored against the fp32 detections (score >= 0.3) as ground truth.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from multibox.postprocess import postprocess
from multibox.runtime import Runner, available_paths, prepare
from multibox.structures import Detections, Prediction

__all__ = [
    "BenchRow",
    "bench_model",
    "format_table",
    "matmul_peak_gflops",
    "path_agreement",
]


@dataclass
class BenchRow:
    """One line of the table (times in ms per batch; ``img_s`` end to end)."""

    path: str
    batch: int
    pre_ms: float
    net_ms: float
    post_ms: float
    total_ms: float
    img_s: float
    gflops: float
    agreement: float | None = None


def _median_ms(fn: Callable[[], Any], repeat: int, warmup: int, sync: Callable[[], None]) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def matmul_peak_gflops(dtype: torch.dtype = torch.float32, device: str = "cpu", n: int = 2048) -> float:
    """Measured GFLOP/s of an ``n x n`` matmul (the practical peak the convolutions can be read against)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with torch.inference_mode():
        ms = _median_ms(lambda: a @ b, repeat=5, warmup=2, sync=sync)
    return 2 * n**3 / (ms * 1e-3) / 1e9


class _OnnxNetwork:
    """The model's network as an onnxruntime session returning a :class:`Prediction` (CPU tensors)."""

    def __init__(self, model: nn.Module) -> None:
        import onnxruntime as ort

        from multibox.export import export_onnx

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        with tempfile.TemporaryDirectory(prefix="multibox-bench-") as folder:  # the session keeps its own copy
            path = f"{folder}/network.onnx"
            export_onnx(model, path, with_postprocess=False, check=False)
            self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> Prediction:
        cls_logits, box_deltas = self.session.run(None, {self.input_name: x.contiguous().numpy()})
        return Prediction(torch.from_numpy(cls_logits), torch.from_numpy(box_deltas))


def path_agreement(reference: Sequence[Detections], candidate: Sequence[Detections], min_score: float = 0.3) -> float:
    """VOC area AP (IoU 0.5) of ``candidate`` scored against ``reference`` detections as ground truth.

    Reference detections below ``min_score`` are not counted as objects; if no reference detection reaches it (an
    untrained model), the ``10 x images`` best reference detections over all images are the objects instead.
    1.0 means the path finds the same boxes with the same ranking. Classes the reference does not detect are left
    out of the mean (without the warning an evaluation gives for them).
    """
    from multibox.metrics import voc_ap

    if not any(bool((d.scores >= min_score).any()) for d in reference):
        # One threshold over all images (the best 10 per image on average): per-image cut-offs would rank one
        # image's non-objects above another's objects, and a path would not even agree with itself.
        scores = torch.cat([d.scores.float() for d in reference])
        n = min(scores.numel(), 10 * len(reference))
        min_score = float(scores.topk(n).values[-1]) if n else float("inf")
    keep = [(d.scores >= min_score).nonzero().squeeze(1) for d in reference]
    gts = [{"boxes": d.boxes[k], "labels": d.labels[k]} for d, k in zip(reference, keep, strict=True)]
    with warnings.catch_warnings():  # a class the reference never detects has no AP here, as in an evaluation
        warnings.filterwarnings("ignore", message=r".*have detections but no non-difficult ground truth")
        return voc_ap(list(candidate), gts, iou_threshold=0.5, use_07_metric=False).mean_ap


def _runner(model: nn.Module, device: torch.device, path: str, calibration: torch.Tensor | None) -> Runner | None:
    """The runner of one benched path; None (with a warning) for an int8 path that fails its guard."""
    if path == "onnxruntime":
        if device.type != "cpu":
            raise ValueError("the onnxruntime path runs on the CPU; bench it with device='cpu'")
        return Runner(_OnnxNetwork(model.cpu().eval()), path="onnxruntime")
    if path == "int8":
        try:
            return prepare(model, device, path, calibration)
        except ValueError as e:  # e.g. the quantization guard: report and go on with the other paths
            warnings.warn(f"bench: skipped the int8 path: {e}", stacklevel=3)
            return None
    return prepare(model, device, path)


def _input_fn(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 images -> the network's normalised batch, resized as in inference."""
    from multibox.data import eval_transform

    pre = model.preprocess
    transform = eval_transform(pre.image_size, pre.mean, pre.std)
    empty_boxes, empty_labels = torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)

    def inputs(src: torch.Tensor) -> torch.Tensor:
        return torch.stack([transform(im, empty_boxes, empty_labels, None)[0] for im in src])

    return inputs


def _time_batch(
    runner: Runner,
    inputs: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    bs: int,
    device: torch.device,
    priors: torch.Tensor,
    repeat: int,
    warmup: int,
    sync: Callable[[], None],
) -> tuple[float, float, float, float, list[Detections]]:
    """Median pre/net/post/end-to-end ms of one path on the first ``bs`` images, and its detections on all images."""
    src = images[:bs]

    def preprocess(src: torch.Tensor = src, cl: bool = runner.channels_last) -> torch.Tensor:
        x = inputs(src).to(device)
        return x.contiguous(memory_format=torch.channels_last) if cl else x

    with torch.inference_mode():
        x = preprocess()

        def network(x: torch.Tensor = x, runner: Runner = runner) -> Any:
            return runner(x)

        pred = network()
        pre_ms = _median_ms(preprocess, repeat, warmup, sync)
        net_ms = _median_ms(network, repeat, warmup, sync)
        post_ms = _median_ms(lambda pred=pred: postprocess(pred, priors), repeat, warmup, sync)

        def end_to_end(preprocess: Callable[[], torch.Tensor] = preprocess, network: Any = network) -> Any:
            return postprocess(network(preprocess()), priors)

        total_ms = _median_ms(end_to_end, repeat, warmup, sync)
        dets = []  # on all the images, in batches of bs, for the agreement
        for start in range(0, len(images), bs):
            x = preprocess(images[start : start + bs])
            dets += [
                Detections(d.boxes.float().cpu(), d.scores.float().cpu(), d.labels.cpu())
                for d in postprocess(network(x), priors)
            ]
    return pre_ms, net_ms, post_ms, total_ms, dets


def bench_model(
    model: nn.Module,
    images: torch.Tensor,
    *,
    batch_sizes: Sequence[int] = (1, 8),
    paths: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
    repeat: int = 7,
    warmup: int = 2,
    gflops_per_image: float | None = None,
    calibration: torch.Tensor | None = None,
) -> list[BenchRow]:
    """Time pre-processing, network, post-processing and end to end for each path and batch size.

    Args:
        model: an SSD (its ``preprocess`` gives size, mean and std).
        images: ``uint8 Tensor[N, 3, H, W]`` source images (any size; resized as in inference), ``N >= max batch``;
            the first ``batch`` are timed, the agreement is scored on all of them.
        batch_sizes: the batch sizes to time.
        paths: inference paths (default: :func:`multibox.runtime.available_paths`).
        device: where to run.
        repeat: timed runs per measurement (the median is reported).
        warmup: untimed runs first.
        gflops_per_image: the network's cost, to report achieved GFLOP/s (see ``multibox info``).
        calibration: ``uint8 Tensor[M, 3, H, W]`` images for the ``int8`` path's calibration (default: ``images``;
            separate images keep the agreement column honest).

    Returns:
        One :class:`BenchRow` per (path, batch), with ``agreement`` against the fp32 path.
    """
    device = torch.device(device)
    paths = list(paths or available_paths(device))
    if "fp32" not in paths:
        paths.insert(0, "fp32")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    inputs = _input_fn(model)
    priors = model.priors.to(device)
    rows: list[BenchRow] = []
    reference: dict[int, list[Detections]] = {}
    calib = inputs(images if calibration is None else calibration) if "int8" in paths else None
    for path in paths:
        runner = _runner(model, device, path, calib)
        if runner is None:
            continue
        for bs in batch_sizes:
            pre_ms, net_ms, post_ms, total_ms, dets = _time_batch(
                runner, inputs, images, bs, device, priors, repeat, warmup, sync
            )
            if path == "fp32":
                reference[bs] = dets
                agreement = 1.0
            else:
                agreement = path_agreement(reference[bs], dets)
            gf = (gflops_per_image or 0.0) * bs / (net_ms * 1e-3) if gflops_per_image else 0.0
            rows.append(BenchRow(path, bs, pre_ms, net_ms, post_ms, total_ms, bs / (total_ms * 1e-3), gf, agreement))
    return rows


def format_table(rows: Sequence[BenchRow], peaks: dict[str, float] | None = None) -> str:
    """The rows as an aligned text table, with the matmul peaks underneath."""
    head = f"{'path':<14}{'batch':>6}{'pre ms':>10}{'net ms':>10}{'post ms':>10}{'total ms':>10}{'img/s':>9}"
    head += f"{'net GFLOP/s':>13}{'agree':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        agree = "-" if r.agreement is None else f"{r.agreement:.3f}"
        lines.append(
            f"{r.path:<14}{r.batch:>6}{r.pre_ms:>10.1f}{r.net_ms:>10.1f}{r.post_ms:>10.1f}{r.total_ms:>10.1f}"
            f"{r.img_s:>9.1f}{r.gflops:>13.0f}{agree:>8}"
        )
    if peaks:
        lines.append("matmul peak: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()))
    return "\n".join(lines)

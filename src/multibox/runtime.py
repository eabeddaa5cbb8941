"""The inference runtime: load a detector, choose a device and an inference path, and run it.

An inference *path* says how a trained SSD runs its network:

- ``fp32``: eager NCHW float32, the model as trained (the reference);
- ``channels_last``: NHWC memory format, BatchNorm folded into the convolutions (as every path below);
- ``bf16``: ``torch.autocast`` bfloat16 + channels_last, the head in float32 (CPUs with oneDNN, or CUDA);
- ``fp16``: autocast float16 + channels_last (CUDA only);
- ``compile``: ``torch.compile`` of the folded channels_last model, under bf16 autocast where supported;
- ``int8``: the backbone quantized to int8 (:func:`multibox.models.quantize.quantize_int8`, calibrated on
  separate images), the head in float32 (CPU only);
- ``onnxruntime``: the network exported to ONNX and run by onnxruntime; not built here (it needs the export
  layer): :mod:`multibox.engine.bench` times it, :mod:`multibox.onnx_runtime` detects with it.

:func:`prepare` turns a model into a :class:`Runner` for one path; :func:`fastest_path` names the path to use when
speed is asked for. Detection boxes come out relative to the input ([0, 1]);
:meth:`multibox.structures.Detections.to_pixels` maps them to an image's pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from multibox.structures import Prediction
from multibox.user_input import short
from multibox.weights.checkpoint import model_from_checkpoint, read_checkpoint

__all__ = [
    "PATHS",
    "Runner",
    "auto_amp",
    "autocast_context",
    "available_paths",
    "bf16_native",
    "bf16_supported",
    "cpu_flags",
    "fastest_path",
    "load_detector",
    "prepare",
    "resolve_device",
]

PATHS = ("fp32", "channels_last", "bf16", "fp16", "compile", "int8", "onnxruntime")
"""Every inference path's name, in the order :func:`available_paths` lists them."""


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU.

    Raises:
        ValueError: not a device name, or ``cuda`` on a machine without a usable GPU.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device {short(name)} is not a device name; use auto, cpu, cuda or cuda:N") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available on this machine; use cpu or auto")
    return device


def autocast_context(device: torch.device, amp: str) -> Any:
    """``torch.autocast`` for ``amp`` in ``{"none", "bf16", "fp16"}`` (fp16 only on CUDA)."""
    if amp == "none":
        return nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("train.amp=fp16 needs CUDA; use bf16 on the CPU")
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast runs on ``device`` at all (CUDA with bf16, or a CPU build with oneDNN, which emulates it
    on CPUs without bf16 instructions); :func:`bf16_native` says whether it is also fast."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(getattr(torch.backends.mkldnn, "is_available", lambda: False)())


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them in ``/proc/cpuinfo`` (empty elsewhere, or when unreadable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[-1].split())
    return frozenset()


def bf16_native(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware: CUDA with bf16, or a CPU with AMX or AVX512-BF16 (and oneDNN).
    Elsewhere bf16 autocast is emulated and slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bf16_supported(device) and bool(cpu_flags() & {"amx_bf16", "avx512_bf16"})


def auto_amp(device: torch.device) -> str:
    """The mixed precision ``device`` trains well in (``train.amp: auto``): on CUDA bf16 where supported, else fp16;
    on a CPU bf16 where it is native (:func:`bf16_native`), else ``none``."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if bf16_native(device) else "none"


def _onnxruntime_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def available_paths(device: torch.device, compile: bool = False, onnx: bool = False, int8: bool = False) -> list[str]:
    """The inference paths that make sense on ``device`` (``onnx``: add onnxruntime on the CPU if installed;
    ``int8``: add the int8 backbone on the CPU)."""
    paths = ["fp32", "channels_last"]
    if bf16_supported(device):
        paths.append("bf16")
    if device.type == "cuda":
        paths.append("fp16")
    if compile:
        paths.append("compile")
    if int8 and device.type == "cpu":
        paths.append("int8")
    if onnx and device.type == "cpu" and _onnxruntime_available():
        paths.append("onnxruntime")
    return paths


def fastest_path(device: torch.device, int8: bool = False) -> str:
    """The path to run when speed is asked for: ``int8`` if asked (CPU), else ``bf16`` where the device computes
    bf16 natively (:func:`bf16_native`), else ``channels_last``."""
    if int8:
        return "int8"
    return "bf16" if bf16_native(device) else "channels_last"


@dataclass
class Runner:
    """A network ready to run one inference path.

    Attributes:
        module: called on a normalised batch ``Tensor[B, 3, H, W]``, returns a :class:`Prediction`.
        autocast: a factory of the context the forward runs in (autocast or a null context).
        channels_last: whether inputs are given in NHWC memory format.
        path: the path's name (one of :data:`PATHS`, or a caller's own name for a hand-built runner).
    """

    module: Callable[[torch.Tensor], Prediction]
    autocast: Callable[[], Any] = nullcontext
    channels_last: bool = False
    path: str = "fp32"

    def __call__(self, images: torch.Tensor) -> Prediction:
        """The raw prediction for ``images`` (already on the runner's device)."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            return self.module(images)


def _autocast_dtype(path: str, device: torch.device) -> torch.dtype | None:
    if path == "bf16" or (path == "compile" and bf16_supported(device)):
        return torch.bfloat16
    if path == "fp16":
        return torch.float16
    return None


def prepare(model: nn.Module, device: torch.device, path: str, calibration: torch.Tensor | None = None) -> Runner:
    """A :class:`Runner` of ``model`` for ``path`` on ``device``.

    Every path but the ``fp32`` reference runs a copy with BatchNorm folded into the preceding convolutions (exact
    up to rounding), in NHWC; the autocast paths keep the head in float32 (``SSD.head_fp32``). ``model`` itself is
    only moved to ``device`` and put in eval mode.

    Args:
        model: an SSD.
        device: where to run.
        path: one of :data:`PATHS` but ``onnxruntime``.
        calibration: normalised images ``Tensor[M, 3, H, W]`` to calibrate the ``int8`` path with (better not the
            evaluated ones); required for it, ignored otherwise.

    Raises:
        ValueError: an unknown path, or ``int8`` off the CPU or without calibration.
    """
    if path not in PATHS or path == "onnxruntime":
        raise ValueError(f"unknown inference path {path!r}; use one of {[p for p in PATHS if p != 'onnxruntime']}")
    if path == "int8":
        from multibox.models.quantize import quantize_int8

        if device.type != "cpu":
            raise ValueError("the int8 path runs on the CPU; use device='cpu'")
        if calibration is None:
            raise ValueError("the int8 path needs calibration images")
        return Runner(quantize_int8(model.cpu(), calibration), nullcontext, True, path)
    from multibox.models.fuse import fold_batch_norms

    model = model.to(device).eval()
    if path == "fp32":
        return Runner(model, nullcontext, False, path)
    net = fold_batch_norms(model).to(memory_format=torch.channels_last)
    dtype = _autocast_dtype(path, device)

    def autocast() -> Any:
        return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()

    if dtype is not None:
        net.head_fp32 = True  # the folded copy's attribute; the caller's model is untouched
    if path == "compile":
        net = torch.compile(net)
    return Runner(net, autocast, True, path)


def load_detector(weights: str | Path) -> tuple[nn.Module, list[str]]:
    """A model (on the CPU) and its class names from a multibox checkpoint.

    Raises:
        CheckpointError: the file is not a readable multibox checkpoint or its weights do not fit its model.
    """
    ckpt = read_checkpoint(weights)
    return model_from_checkpoint(ckpt, weights), list(ckpt["classes"])

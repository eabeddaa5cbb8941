"""int8 inference on a CPU: static post-training quantization of an SSD's backbone.

The backbone (and its extra layers) is by far the largest part of an SSD's cost, and on CPUs with AVX512-VNNI
(or AMX) its convolutions run faster in int8 than in float32 (``multibox bench --int8`` measures it).
:func:`quantize_int8` traces the backbone with ``torch.fx``, observes the activation ranges on calibration images,
and converts it to quantized modules (per-channel int8 weights, uint8 activations,
``torch.backends.quantized.engine``'s kernels); layers without a quantized kernel (the L2Norm of conv4_3, for
instance) run in float between dequantize/quantize steps.
The head stays in float32, so the class scores and box offsets carry the backbone's rounding only.

Activations are observed with the full 8 bits on CPUs with VNNI or AMX: torch's x86 configuration uses 7 bits
(``reduce_range=True``), because the pre-VNNI instruction (``vpmaddubsw``) adds pairs of products in 16 bits and
could saturate with 8-bit inputs, while VNNI's ``vpdpbusd`` accumulates in 32 bits; the accuracy of 7 against 8
bits on trained models is in ``benchmarks/README.md`` (``benchmarks/int8_variants.py``). Which layers' rounding
costs the most on given weights (candidates for ``keep_float``): ``benchmarks/int8_sensitivity.py``.

torch 2.13 marks its FX quantization API as deprecated in favour of the ``torchao`` package; it is complete and
stable in the pinned version, and this module keeps its warnings out of the user's output.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["cpu_has_vnni", "feature_error", "int8_qconfig_mapping", "quantize_int8"]


def cpu_has_vnni(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU has 8-bit dot products that accumulate in 32 bits (AVX512-VNNI, AVX-VNNI or AMX-INT8).

    Read from the ``flags`` line of ``cpuinfo`` (Linux); False where it cannot be read, which keeps torch's safe
    7-bit default.
    """
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    except OSError:
        pass
    return False


def int8_qconfig_mapping(
    backbone: nn.Module, engine: str, *, eight_bit: bool | None = None, keep_float: Sequence[str] | None = None
):
    """The ``QConfigMapping`` :func:`quantize_int8` uses: torch's default for ``engine``, with 8-bit activations
    where they are safe and the modules named in ``keep_float`` left in float.

    Args:
        backbone: the module that will be quantized.
        engine: the quantized engine (``torch.backends.quantized.engine``).
        eight_bit: True: observe activations with the full 8 bits; False: torch's setting for ``engine`` (7 bits
            on x86/fbgemm, 8 on onednn/qnnpack); None (default): 8 bits on x86/fbgemm when :func:`cpu_has_vnni`.
        keep_float: qualified names of ``backbone`` submodules to run in float (default: none), e.g. the stem
            convolution (``"conv1"`` of ResNet-50), a trade of speed for accuracy. A name that is not a submodule
            raises ``ValueError``.
    """
    from torch.ao.quantization import HistogramObserver, QConfig, get_default_qconfig_mapping

    mapping = get_default_qconfig_mapping(engine)
    if eight_bit is None:
        eight_bit = engine in ("x86", "fbgemm") and cpu_has_vnni()
    if eight_bit:  # the global setting covers convolutions, linear layers and ReLUs
        weight = mapping.global_qconfig.weight
        mapping.set_global(QConfig(activation=HistogramObserver.with_args(reduce_range=False), weight=weight))
    names = dict(backbone.named_modules())
    for name in keep_float or ():
        if name not in names:
            raise ValueError(f"keep_float: {type(backbone).__name__} has no submodule {name!r}")
        mapping.set_module_name(name, None)
    return mapping


def quantize_int8(
    model: nn.Module,
    calibration: Tensor,
    *,
    max_error: float = 0.5,
    batch_size: int = 8,
    eight_bit: bool | None = None,
    keep_float: Sequence[str] | None = None,
) -> nn.Module:
    """A copy of ``model`` whose backbone runs in int8; ``model`` itself is only put in eval mode.

    Args:
        model: an :class:`~multibox.models.ssd.SSD` on the CPU (BatchNorms are folded into the convolutions first).
        calibration: ``Tensor[N, 3, H, W]`` float images normalised as the model expects (``model.preprocess``),
            representative of the data; the activation ranges are observed on them. A few dozen are plenty.
        max_error: the largest relative L2 error of any feature map on the calibration images that is accepted. A
            guard against a broken quantization (activations below the int8 step, say), not an accuracy test (a map
            far off can still give good detections, see ``benchmarks/README.md``); judge the detections
            (``multibox bench``'s agreement column, ``multibox eval --int8``).
        batch_size: calibration batch size.
        eight_bit, keep_float: see :func:`int8_qconfig_mapping` (defaults: 8-bit activations where the CPU has
            VNNI, nothing kept in float).

    Returns:
        The quantized copy (in eval mode). It runs under ``torch.inference_mode`` on the CPU, with NCHW or
        channels_last input.

    Raises:
        ValueError: if the model is not on the CPU, the CPU build has no quantized engine, the calibration set is
            empty or of the wrong size, the backbone cannot be traced, or the int8 features differ from the float
            ones by more than ``max_error`` (then int8 is not a faithful fast path for these weights).
    """
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    from multibox.models.fuse import fold_batch_norms

    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("int8 quantization runs on the CPU: move the model there first (model.cpu())")
    engine = torch.backends.quantized.engine
    if engine not in ("x86", "fbgemm", "onednn", "qnnpack"):
        raise ValueError(f"this torch build has no quantized CPU engine (engine {engine!r})")
    size = tuple(getattr(model, "image_size", calibration.shape[-2:]))
    if calibration.dim() != 4 or calibration.shape[0] == 0 or tuple(calibration.shape[-2:]) != size:
        raise ValueError(
            f"calibration must be a non-empty Tensor[N, 3, {size[0]}, {size[1]}], got {list(calibration.shape)}"
        )
    net = fold_batch_norms(model.eval())
    backbone = net.backbone
    calibration = calibration.float()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"torch\.ao\.")
        warnings.filterwarnings("ignore", message=r".*(torchao|deprecat|quantiz).*")
        mapping = int8_qconfig_mapping(backbone, engine, eight_bit=eight_bit, keep_float=keep_float)
        try:
            prepared = prepare_fx(copy.deepcopy(backbone), mapping, (calibration[:1],))
        except Exception as e:  # torch.fx raises many types when it cannot trace a forward
            raise ValueError(f"cannot quantize {type(backbone).__name__}: torch.fx could not trace it ({e})") from e
        with torch.no_grad():
            for start in range(0, calibration.shape[0], batch_size):
                prepared(calibration[start : start + batch_size])
        quantized = convert_fx(prepared)
    error = feature_error(backbone, quantized, calibration[:batch_size])
    if error > max_error:
        raise ValueError(
            f"int8 changes {type(backbone).__name__}'s features by {error:.1%} (relative L2) on the calibration "
            f"images, more than max_error={max_error:.0%}: int8 is not a faithful fast path for these weights"
        )
    net.backbone = quantized
    return net.eval()


def feature_error(reference: nn.Module, candidate: nn.Module, images: Tensor) -> float:
    """The largest relative L2 error ``|f' - f| / |f|`` over the source maps of two backbones on ``images``."""
    with torch.inference_mode():
        ref, out = reference(images), candidate(images)
    return max(float((o.float() - r).norm() / r.norm().clamp(min=1e-12)) for o, r in zip(out, ref, strict=True))

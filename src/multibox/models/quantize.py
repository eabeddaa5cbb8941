"""int8 inference on a CPU: static post-training quantization of an SSD's backbone.

The backbone (and its extra layers) is by far the largest part of an SSD's cost, and on CPUs with AVX512-VNNI
(or AMX) its convolutions run faster in int8 than in float32 (``multibox bench --int8`` measures it).
:func:`quantize_int8` traces the backbone with ``torch.fx``, observes the activation ranges on calibration images,
and converts it to quantized modules (per-channel int8 weights, uint8 activations,
``torch.backends.quantized.engine``'s kernels); layers without a quantized kernel (the L2Norm of conv4_3, for
instance) run in float between dequantize/quantize steps.
The head stays in float32, so the class scores and box offsets carry the backbone's rounding only.

Three steps beyond torch's defaults, the first two on by default (``benchmarks/int8_variants.py`` compares them):

- the engine (:func:`int8_engine`): ``onednn`` on CPUs with VNNI or AMX, whose kernels also fuse a convolution
  with the residual add after it (MBConv blocks); ``x86`` otherwise;
- graph rewrites before quantization (:mod:`multibox.models.fuse_int8`): a convolution and its ReLU6 quantized as
  one op whose output scale spans the clamped range only, TF-"same" paddings folded into the convolutions;
- empirical bias correction (:func:`correct_int8_bias`, ``bias_correction=True``): each quantized convolution's
  bias shifted by its mean output error per channel on calibration images, layer after layer. It lowers the
  error of the outputs on average, which the background dominates; on a fine-tuned detector it moved the
  detections further from fp32's (``benchmarks/README.md``), hence off by default.

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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "BIAS_CORRECTION_IMAGES",
    "EngineBound",
    "correct_int8_bias",
    "cpu_has_vnni",
    "feature_error",
    "int8_engine",
    "int8_qconfig_mapping",
    "quantize_int8",
    "quantized_engine",
]

#: Calibration images (the first ones) on which :func:`quantize_int8` measures the bias errors.
BIAS_CORRECTION_IMAGES = 16


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


def int8_engine(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The quantized engine :func:`quantize_int8` uses by default: ``onednn`` on CPUs with VNNI or AMX
    (:func:`cpu_has_vnni`; its kernels fuse a convolution with the residual add), else ``x86`` (``fbgemm``,
    ``qnnpack``: the first this torch build supports).

    Raises:
        ValueError: the torch build has no quantized CPU engine.
    """
    supported = torch.backends.quantized.supported_engines
    if "onednn" in supported and cpu_has_vnni(cpuinfo):
        return "onednn"
    for engine in ("x86", "fbgemm", "qnnpack"):
        if engine in supported:
            return engine
    raise ValueError(f"this torch build has no quantized CPU engine (engines {supported})")


@contextmanager
def quantized_engine(engine: str) -> Iterator[None]:
    """Set ``torch.backends.quantized.engine`` inside the block, restore it after."""
    if engine not in torch.backends.quantized.supported_engines:
        raise ValueError(
            f"quantized engine {engine!r} is not in this torch build ({torch.backends.quantized.supported_engines})"
        )
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


class EngineBound(nn.Module):
    """A quantized module run under the quantized engine its weights were packed for (onednn's fused conv + add
    has no x86 kernel, say), whatever ``torch.backends.quantized.engine`` says outside.

    Attributes:
        module: the quantized module.
        engine: its engine.
    """

    def __init__(self, module: nn.Module, engine: str) -> None:
        super().__init__()
        self.module, self.engine = module, engine

    def forward(self, x: Tensor) -> Any:
        """``module(x)`` under ``engine``."""
        with quantized_engine(self.engine):
            return self.module(x)

    def extra_repr(self) -> str:
        return f"engine={self.engine!r}"


def quantize_int8(
    model: nn.Module,
    calibration: Tensor,
    *,
    engine: str | None = None,
    fuse: bool = True,
    bias_correction: bool = False,
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
        engine: the quantized engine to calibrate for and run with; None: :func:`int8_engine` (onednn on CPUs
            with VNNI/AMX, x86 otherwise). The quantized backbone sets it around its own forward
            (:class:`EngineBound`), so the global setting does not matter afterwards.
        fuse: rewrite the backbone first (:func:`~multibox.models.fuse_int8.prepare_for_int8`: identities dropped,
            TF-"same" paddings folded into the convolutions at the calibration images' size, conv + ReLU6 quantized
            as one op). The int8 backbone then serves that input size only, as the SSD does.
        bias_correction: after conversion, shift each quantized convolution's bias by its mean output error per
            channel on the first :data:`BIAS_CORRECTION_IMAGES` calibration images (:func:`correct_int8_bias`).
        max_error: the largest relative L2 error of any feature map on the calibration images that is accepted. A
            guard against a broken quantization (activations below the int8 step, say), not an accuracy test (a map
            far off can still give good detections, see ``benchmarks/README.md``); judge the detections
            (``multibox bench``'s agreement column, ``multibox eval --int8``).
        batch_size: calibration batch size.
        eight_bit, keep_float: see :func:`int8_qconfig_mapping` (defaults: 8-bit activations where the CPU has
            VNNI, nothing kept in float). ``keep_float`` names modules of the backbone.

    Returns:
        The quantized copy (in eval mode). It runs under ``torch.inference_mode`` on the CPU, with NCHW or
        channels_last input.

    Raises:
        ValueError: if the model is not on the CPU, the engine is not in this torch build, the calibration set is
            empty or of the wrong size, the backbone cannot be traced, or the int8 features differ from the float
            ones by more than ``max_error`` (then int8 is not a faithful fast path for these weights).
    """
    from multibox.models.fuse import fold_batch_norms

    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("int8 quantization runs on the CPU: move the model there first (model.cpu())")
    engine = int8_engine() if engine is None else engine
    size = tuple(getattr(model, "image_size", calibration.shape[-2:]))
    if calibration.dim() != 4 or calibration.shape[0] == 0 or tuple(calibration.shape[-2:]) != size:
        raise ValueError(
            f"calibration must be a non-empty Tensor[N, 3, {size[0]}, {size[1]}], got {list(calibration.shape)}"
        )
    net = fold_batch_norms(model.eval())
    backbone = net.backbone
    calibration = calibration.float()
    with quantized_engine(engine), warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"torch\.ao\.")
        warnings.filterwarnings("ignore", message=r".*(torchao|deprecat|quantiz).*")
        quantized = _calibrate_and_convert(backbone, calibration, engine, fuse, bias_correction, batch_size,
                                           eight_bit, keep_float)  # fmt: skip
        error = feature_error(backbone, quantized, calibration[:batch_size])
    if error > max_error:
        raise ValueError(
            f"int8 changes {type(backbone).__name__}'s features by {error:.1%} (relative L2) on the calibration "
            f"images, more than max_error={max_error:.0%}: int8 is not a faithful fast path for these weights"
        )
    net.backbone = EngineBound(quantized, engine)
    return net.eval()


def _calibrate_and_convert(
    backbone: nn.Module,
    calibration: Tensor,
    engine: str,
    fuse: bool,
    bias_correction: bool,
    batch_size: int,
    eight_bit: bool | None,
    keep_float: Sequence[str] | None,
) -> nn.Module:
    """The int8 backbone (:func:`quantize_int8`'s steps, under ``engine`` already set)."""
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    from multibox.models.fuse_int8 import prepare_for_int8

    source = prepare_for_int8(backbone, calibration[:1]) if fuse else copy.deepcopy(backbone)
    mapping = int8_qconfig_mapping(source, engine, eight_bit=eight_bit, keep_float=keep_float)
    prepare_config, convert_config, backend_config = _fx_configs(engine)
    try:
        prepared = prepare_fx(source, mapping, (calibration[:1],), prepare_config, backend_config=backend_config)
    except Exception as e:  # torch.fx raises many types when it cannot trace a forward
        raise ValueError(f"cannot quantize {type(backbone).__name__}: torch.fx could not trace it ({e})") from e
    n_bias = min(BIAS_CORRECTION_IMAGES, calibration.shape[0]) if bias_correction else 0
    with torch.no_grad(), _ReferenceMeans(prepared, _quantizable_convs(prepared)) as reference:
        for start in range(0, calibration.shape[0], batch_size):
            batch = calibration[start : start + batch_size]
            reference.collect(batch[: max(n_bias - start, 0)])  # the float outputs' channel means
            prepared(batch)
    quantized = convert_fx(prepared, convert_custom_config=convert_config, backend_config=backend_config)
    if n_bias:
        correct_int8_bias(quantized, reference.means, calibration[:n_bias])
    return quantized


def _fx_configs(engine: str) -> tuple[Any, Any, Any]:
    """``(prepare custom config, convert custom config, backend config)`` for ``engine``: :class:`ConvClamp2d`
    quantized as one op; onednn's backend config (conv + add fusions) for onednn, torch's native one otherwise."""
    from torch.ao.quantization.backend_config import get_native_backend_config, get_onednn_backend_config
    from torch.ao.quantization.fx.custom_config import ConvertCustomConfig, PrepareCustomConfig

    from multibox.models.fuse_int8 import ConvClamp2d, ObservedConvClamp2d, QuantizedConvClamp2d

    prepare = PrepareCustomConfig().set_float_to_observed_mapping(ConvClamp2d, ObservedConvClamp2d)
    convert = ConvertCustomConfig().set_observed_to_quantized_mapping(ObservedConvClamp2d, QuantizedConvClamp2d)
    backend = get_onednn_backend_config() if engine == "onednn" else get_native_backend_config()
    return prepare, convert, backend


def _quantizable_convs(prepared: nn.Module) -> dict[str, nn.Module]:
    """The modules of a prepared (observed) backbone that convert to quantized convolutions: convolutions and the
    fused modules built on one (conv + ReLU, conv + add, :class:`ConvClamp2d`), by qualified name."""
    from torch.ao.nn.intrinsic import _FusedModule

    return {
        name: m
        for name, m in prepared.named_modules()
        if isinstance(m, nn.Conv2d) or (isinstance(m, _FusedModule) and isinstance(m[0], nn.Conv2d))
    }


class _ReferenceMeans:
    """Forward hooks that average the float outputs of ``modules`` per channel over the images passed to
    :meth:`collect` (the first images of the next forward): ``means[name]`` is ``Tensor[C]``."""

    def __init__(self, prepared: nn.Module, modules: dict[str, nn.Module]) -> None:
        self.modules, self.count = modules, 0
        self.sums: dict[str, Tensor] = {}
        self.pixels: dict[str, int] = {}
        self.handles: list[Any] = []

    def __enter__(self) -> _ReferenceMeans:
        for name, module in self.modules.items():
            self.handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()

    def collect(self, images: Tensor) -> None:
        """Count the first ``len(images)`` images of the next forward (0: none)."""
        self.count = images.shape[0]

    def _hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Tensor) -> None:
            if self.count == 0 or not isinstance(output, Tensor) or output.dim() != 4:
                return
            out = output[: self.count].detach().float()  # (B, C, H, W) -> (b, C, H, W)
            self.sums[name] = self.sums.get(name, 0) + out.sum(dim=(0, 2, 3))
            self.pixels[name] = self.pixels.get(name, 0) + out.shape[0] * out.shape[2] * out.shape[3]

        return hook

    @property
    def means(self) -> dict[str, Tensor]:
        return {name: total / self.pixels[name] for name, total in self.sums.items()}


def correct_int8_bias(
    quantized: nn.Module, reference_means: dict[str, Tensor], images: Tensor, min_samples: int = 256
) -> int:
    """Empirical bias correction (Nagel et al. 2019, "Data-Free Quantization", §4.2, measured on data): shift each
    quantized convolution's bias by the mean per-channel difference between its int8 output and the float one.

    The convolutions are corrected in execution order within one forward of ``images``, each before the layers
    after it run, so a correction also accounts for the errors upstream ones left.

    Args:
        quantized: a converted (int8) module, changed in place.
        reference_means: qualified name -> ``Tensor[C]``, the float model's per-channel output mean on ``images``
            at the module of the same name (the fused module's output: after its ReLU, clamp or residual add).
        images: ``Tensor[N, 3, H, W]`` float inputs, the ones the means were measured on.
        min_samples: a convolution is corrected only where each channel's mean is taken over at least this many
            values (``N * H' * W'``); on the small maps of an SSD's last extra layers (1x1, 2x2) a few images give
            means too noisy to correct by (their sampling noise outweighs the rounding's bias).

    Returns:
        How many convolutions were corrected.
    """
    from torch.ao.nn import quantized as nnq

    convs = {n: m for n, m in quantized.named_modules() if isinstance(m, nnq.Conv2d) and n in reference_means}

    inputs: dict[str, tuple] = {}
    corrected: list[str] = []

    def keep_inputs(name: str) -> Any:
        def keep(module: nnq.Conv2d, args: tuple) -> tuple:
            inputs[name] = args  # the module runs on copies: onednn's conv + add may write into its residual input
            return tuple(a.clone() if isinstance(a, Tensor) else a for a in args)

        return keep

    def hook(name: str) -> Any:
        def correct(module: nnq.Conv2d, args: Any, output: Tensor) -> Tensor | None:
            if output.shape[0] * output.shape[2] * output.shape[3] < min_samples:
                inputs.pop(name)
                return None
            corrected.append(name)
            shift = output.dequantize().mean(dim=(0, 2, 3)) - reference_means[name]  # (B, C, H, W) -> (C,)
            bias = module.bias()
            module.set_weight_bias(module.weight(), (torch.zeros_like(shift) if bias is None else bias) - shift)
            return module.forward(*inputs.pop(name))  # the corrected output for the layers after it (no hooks)

        return correct

    handles = [m.register_forward_pre_hook(keep_inputs(n)) for n, m in convs.items()]
    handles += [m.register_forward_hook(hook(n)) for n, m in convs.items()]
    try:
        with torch.no_grad():
            quantized(images)
    finally:
        for handle in handles:
            handle.remove()
    return len(corrected)


def feature_error(reference: nn.Module, candidate: nn.Module, images: Tensor) -> float:
    """The largest relative L2 error ``|f' - f| / |f|`` over the source maps of two backbones on ``images``."""
    with torch.inference_mode():
        ref, out = reference(images), candidate(images)
    return max(float((o.float() - r).norm() / r.norm().clamp(min=1e-12)) for o, r in zip(out, ref, strict=True))

"""Graph rewrites that make a float backbone quantize well, applied before :func:`~.quantize.quantize_int8`.

Each rewrite works on a ``torch.fx`` trace of the (BatchNorm-folded) backbone and keeps its float function:

- :func:`drop_identities`: the ``nn.Identity`` left where a BatchNorm was folded sits between a convolution and its
  activation and would keep torch's quantizer from fusing the two.
- :func:`fold_same_padding`: at a fixed input size a TF-"same" padding (:func:`~.efficientnet_lite.pad_same`,
  a float op between dequantize and quantize in an int8 graph) becomes the convolution's own zero padding. The
  stride-2 "same" padding of an even size is one pixel longer after than before, which ``nn.Conv2d``'s symmetric
  padding cannot express; it is folded exactly by padding one more pixel before and growing the kernel by a zero
  row (column) in front, so that every output still sees the same input pixels with the same weights.
- :func:`fuse_conv_clamp`: a convolution followed by ReLU6 (or ``hardtanh``/``clamp`` with constant bounds)
  becomes one :class:`ConvClamp2d`. Quantized separately, the convolution's output scale must cover its whole
  pre-activation range (often -20..30) of which the ReLU6 keeps only [0, 6], a small fraction of the 256 levels;
  quantized as one op (:class:`QuantizedConvClamp2d`), the output is observed after the clamp, so its scale
  spans [0, 6] and the requantization's saturation does the clamp for free.

:func:`prepare_for_int8` applies all three.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ConvClamp2d",
    "ObservedConvClamp2d",
    "QuantizedConvClamp2d",
    "drop_identities",
    "fold_same_padding",
    "fuse_conv_clamp",
    "prepare_for_int8",
]


class ConvClamp2d(nn.Conv2d):
    """A ``nn.Conv2d`` whose output is clamped to ``[lo, hi]`` (ReLU6: ``lo=0, hi=6``).

    ``(B, C_in, H, W) -> (B, C_out, H', W')`` as the convolution.
    """

    def __init__(self, *args, lo: float = 0.0, hi: float = 6.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not lo < hi:
            raise ValueError(f"ConvClamp2d needs lo < hi, got lo={lo}, hi={hi}")
        self.lo, self.hi = float(lo), float(hi)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, lo: float, hi: float) -> ConvClamp2d:
        """A :class:`ConvClamp2d` sharing ``conv``'s configuration with copies of its weight and bias."""
        new = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
            lo=lo,
            hi=hi,
        )
        new.load_state_dict(conv.state_dict())
        return new.train(conv.training)

    def forward(self, x: Tensor) -> Tensor:
        """``clamp(conv(x), lo, hi)``."""
        return super().forward(x).clamp(self.lo, self.hi)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, lo={self.lo}, hi={self.hi}"


class ObservedConvClamp2d(ConvClamp2d):
    """:class:`ConvClamp2d` during calibration (torch's custom-module API: its output observer is inserted after it,
    on the clamped values)."""

    @classmethod
    def from_float(cls, module: ConvClamp2d, use_precomputed_fake_quant: bool = False) -> ObservedConvClamp2d:
        observed = copy.deepcopy(module)
        observed.__class__ = cls
        return observed


class QuantizedConvClamp2d:
    """Converts an :class:`ObservedConvClamp2d` into torch's quantized ``Conv2d`` (``from_observed``).

    Weights quantized by the qconfig's weight observer (per channel for x86/onednn), the output by the
    calibration's observer of the clamped values. With ``lo == 0`` the output's zero point is 0, and its largest
    level is at most the observed maximum: the requantization's saturation to ``[0, 255]`` clamps.
    """

    @classmethod
    def from_observed(cls, observed: ObservedConvClamp2d) -> nn.Module:
        from torch.ao.nn import quantized as nnq

        weight_observer = observed.qconfig.weight()
        weight_observer(observed.weight)
        w_scale, w_zero = weight_observer.calculate_qparams()
        if weight_observer.qscheme in (torch.per_channel_symmetric, torch.per_channel_affine):
            qweight = torch.quantize_per_channel(
                observed.weight.float(), w_scale.double(), w_zero.long(), weight_observer.ch_axis, torch.qint8
            )
        else:
            qweight = torch.quantize_per_tensor(observed.weight.float(), float(w_scale), int(w_zero), torch.qint8)
        q = nnq.Conv2d(
            observed.in_channels,
            observed.out_channels,
            observed.kernel_size,
            observed.stride,
            observed.padding,
            observed.dilation,
            observed.groups,
            observed.bias is not None,
            observed.padding_mode,
        )
        q.set_weight_bias(qweight, None if observed.bias is None else observed.bias.detach().float())
        scale, zero_point = observed.activation_post_process.calculate_qparams()
        q.scale, q.zero_point = float(scale), int(zero_point)
        return q


def _single_user(node: torch.fx.Node) -> torch.fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def drop_identities(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """``gm`` with every ``nn.Identity`` call removed (its users take its input); changed in place and returned."""
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and isinstance(modules[node.target], nn.Identity):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def _same_padding_of(node: torch.fx.Node) -> tuple[int, int] | None:
    """``(kernel_size, stride)`` when ``node`` calls :func:`~.efficientnet_lite.pad_same` with constants."""
    from multibox.models.efficientnet_lite import pad_same

    if node.op != "call_function" or node.target is not pad_same or len(node.args) != 3:
        return None
    _, k, s = node.args
    return (k, s) if isinstance(k, int) and isinstance(s, int) else None


def _padded_conv(conv: nn.Conv2d, pads: Sequence[tuple[int, int]]) -> nn.Conv2d | None:
    """The ``padding=0`` convolution ``conv`` after a zero padding ``pads = ((top, bottom), (left, right))``, as one
    convolution with symmetric padding (a zero row/column in front of the kernel where ``after == before + 1``);
    None where that cannot be done."""
    if conv.padding != (0, 0) or conv.padding_mode != "zeros" or conv.dilation != (1, 1):
        return None
    if any(after - before not in (0, 1) for before, after in pads):
        return None
    grow = [after - before for before, after in pads]
    new = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        (conv.kernel_size[0] + grow[0], conv.kernel_size[1] + grow[1]),
        conv.stride,
        (pads[0][1], pads[1][1]),
        groups=conv.groups,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, :, grow[0] :, grow[1] :] = conv.weight  # (O, I/g, k, k) -> (O, I/g, k + gh, k + gw)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new.train(conv.training)


def fold_same_padding(gm: torch.fx.GraphModule, example: Tensor) -> torch.fx.GraphModule:
    """Fold each TF-"same" padding that feeds only a ``padding=0`` convolution into the convolution, for inputs of
    ``example``'s size (other sizes would need other paddings: the folded graph is for that size only).

    Changed in place and returned. A padding that cannot be folded (another user, a dilated convolution, a
    padding longer before than after) stays as it is.
    """
    from torch.fx.passes.shape_prop import ShapeProp

    from multibox.models.efficientnet_lite import same_padding

    with torch.no_grad():
        ShapeProp(gm).propagate(example)
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        ks = _same_padding_of(node)
        user = _single_user(node)
        if ks is None or user is None or user.op != "call_module" or type(modules[user.target]) is not nn.Conv2d:
            continue
        conv = modules[user.target]
        if (conv.kernel_size, conv.stride) != ((ks[0], ks[0]), (ks[1], ks[1])):
            continue
        h, w = node.args[0].meta["tensor_meta"].shape[-2:]
        folded = _padded_conv(conv, (same_padding(h, *ks), same_padding(w, *ks)))
        if folded is None:
            continue
        parent, _, name = user.target.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, name, folded)
        node.replace_all_uses_with(node.args[0])
        gm.graph.erase_node(node)
    gm.recompile()
    return gm


def _clamp_bounds(node: torch.fx.Node, modules: dict[str, nn.Module]) -> tuple[float, float] | None:
    """``(lo, hi)`` when ``node`` clamps its only tensor input to constant bounds (ReLU6, hardtanh, clamp)."""
    if node.op == "call_module":
        m = modules[node.target]
        if isinstance(m, nn.ReLU6):
            return 0.0, 6.0
        if isinstance(m, nn.Hardtanh):
            return float(m.min_val), float(m.max_val)
        return None
    if node.op == "call_function" and node.target in (F.relu6,):
        return 0.0, 6.0
    if node.op == "call_function" and node.target is F.hardtanh:
        lo = node.args[1] if len(node.args) > 1 else node.kwargs.get("min_val", -1.0)
        hi = node.args[2] if len(node.args) > 2 else node.kwargs.get("max_val", 1.0)
    elif (node.op == "call_method" and node.target == "clamp") or node.target is torch.clamp:
        lo = node.args[1] if len(node.args) > 1 else node.kwargs.get("min")
        hi = node.args[2] if len(node.args) > 2 else node.kwargs.get("max")
    else:
        return None
    if isinstance(lo, int | float) and isinstance(hi, int | float) and lo < hi:
        return float(lo), float(hi)
    return None


def fuse_conv_clamp(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Replace each ``nn.Conv2d`` whose only user clamps it (ReLU6, hardtanh, clamp; constant bounds) by one
    :class:`ConvClamp2d`; changed in place and returned."""
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or type(modules.get(node.target)) is not nn.Conv2d:
            continue
        user = _single_user(node)
        bounds = None if user is None or user.args[:1] != (node,) else _clamp_bounds(user, modules)
        if bounds is None:
            continue
        parent, _, name = node.target.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, name, ConvClamp2d.from_conv(modules[node.target], *bounds))
        user.replace_all_uses_with(node)
        gm.graph.erase_node(user)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def prepare_for_int8(backbone: nn.Module, example: Tensor | None = None) -> torch.fx.GraphModule:
    """A traced copy of ``backbone`` (BatchNorms already folded) with identities dropped, "same" paddings folded
    for ``example``'s size (skipped when None) and conv + ReLU6 fused into :class:`ConvClamp2d`.

    Raises:
        ValueError: if ``torch.fx`` cannot trace ``backbone``.
    """
    try:
        gm = torch.fx.symbolic_trace(copy.deepcopy(backbone).eval())
    except Exception as e:  # torch.fx raises many types when it cannot trace a forward
        raise ValueError(f"cannot rewrite {type(backbone).__name__}: torch.fx could not trace it ({e})") from e
    drop_identities(gm)
    if example is not None:
        fold_same_padding(gm, example)
    return fuse_conv_clamp(gm)

"""Which layers' int8 rounding costs accuracy: per-layer sensitivity of a checkpoint's int8 backbone (figures only).

    python benchmarks/int8_sensitivity.py WEIGHTS [--images 16] [--top 12] [--bits 8]

The backbone is prepared for int8 with fake quantization (``torch.ao``'s QAT modules: per-channel int8 weights,
activations observed with a histogram on shapes images, seed 321, as ``quantize_int8`` does), so each quantizer
can be switched off on its own. Printed: the relative L2 error of the class logits on other shapes images (seed
999) with everything quantized, with the weights alone, then for each activation quantizer the error with that
one left in float (sorted, largest gain first; named by the layer whose output it rounds), and for each top-level
backbone module the error with all the activations it produces left in float. A layer whose gain is a large part
of the total error is a candidate for ``quantize_int8(..., keep_float=[name])``; when the gains are all small the
error is spread over the network and only keeping whole stages in float (or quantization-aware training) helps.
Like ``int8_variants.py`` it draws its images from the synthetic shapes set, so it suits checkpoints trained on
shapes; for other data the figures only say how the network treats out-of-domain images.
"""

from __future__ import annotations

import argparse
import copy
import sys
import warnings
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import shapes_inputs
from multibox.models.fuse import fold_batch_norms
from multibox.runtime import load_detector


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights")
    ap.add_argument("--images", type=int, default=16, help="test images (the error is measured on them)")
    ap.add_argument("--calibration", type=int, default=32)
    ap.add_argument("--top", type=int, default=12, help="activation quantizers to print")
    ap.add_argument("--bits", type=int, choices=(7, 8), default=8, help="activation bits")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")  # torch.ao's deprecation notices
    from torch.ao.quantization import FakeQuantize, HistogramObserver, QConfig, get_default_qat_qconfig_mapping
    from torch.ao.quantization.fake_quantize import FakeQuantizeBase
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    model = load_detector(args.weights)[0].eval()

    test, calibration = shapes_inputs(model, args.images, 999), shapes_inputs(model, args.calibration, 321)
    net = fold_batch_norms(model)
    mapping = get_default_qat_qconfig_mapping(torch.backends.quantized.engine)
    activation = FakeQuantize.with_args(
        observer=HistogramObserver, quant_min=0, quant_max=2**args.bits - 1, dtype=torch.quint8
    )
    mapping.set_global(QConfig(activation=activation, weight=mapping.global_qconfig.weight))
    backbone = prepare_qat_fx(copy.deepcopy(net.backbone).train(), mapping, (calibration[:1],))
    weights = [
        m for n, m in backbone.named_modules() if isinstance(m, FakeQuantizeBase) and n.endswith("weight_fake_quant")
    ]
    producers, acts = {}, {}  # activation quantizer -> the layer whose output it rounds, the quantizer module
    for node in backbone.graph.nodes:
        module = backbone.get_submodule(node.target) if node.op == "call_module" else None
        if isinstance(module, FakeQuantizeBase) and all(module is not q for q in acts.values()):
            src = node.args[0]  # a quantizer shared by several nodes (torch reuses some) is counted once
            producers[node.target] = {"call_module": src.target, "placeholder": "(input)"}.get(src.op, src.name)
            acts[node.target] = module
    for q in acts.values():  # observe float activations, as post-training quantization does
        q.disable_fake_quant()
    with torch.no_grad():
        for i in range(0, len(calibration), 8):
            backbone(calibration[i : i + 8])
    for q in [*acts.values(), *weights]:
        q.disable_observer()
    for q in acts.values():
        q.enable_fake_quant()
    net.backbone = backbone.eval()
    with torch.no_grad():
        reference = torch.cat([model(test[i : i + 8]).cls_logits for i in range(0, len(test), 8)])

    def error(floats: list) -> float:
        for q in floats:
            q.disable_fake_quant()
        with torch.no_grad():
            out = torch.cat([net(test[i : i + 8]).cls_logits for i in range(0, len(test), 8)])
        for q in floats:
            q.enable_fake_quant()
        return float((out - reference).norm() / reference.norm())

    total = error([])
    n_act, n_weight = len(acts), len(weights)
    print(f"{n_act} activation, {n_weight} weight quantizers; class-logit relative L2 error, {len(test)} images:")
    print(f"  everything quantized {total:.4f}; weights only {error(list(acts.values())):.4f}", flush=True)
    ranked = sorted((error([q]), name) for name, q in acts.items())
    print(f"activation quantizers left in float one at a time (top {args.top} of {len(ranked)}):")
    for e, name in ranked[: args.top]:
        print(f"  {producers[name]:32s} {e:.4f}  gain {total - e:+.4f}")
    print(f"  sum of all {len(ranked)} gains {sum(total - e for e, _ in ranked):+.4f}")
    stages = defaultdict(list)
    for name, q in acts.items():
        stages[producers[name].split(".")[0]].append(q)
    print("all activations of a top-level module left in float:")
    for e, stage, n in sorted((error(qs), stage, len(qs)) for stage, qs in stages.items()):
        print(f"  {stage:32s} {e:.4f}  gain {total - e:+.4f}  ({n} quantizers)")


if __name__ == "__main__":
    main()

"""Agreement of int8 variants with fp32 on a trained checkpoint (nothing asserted; figures for benchmarks/README.md).

    python benchmarks/int8_variants.py WEIGHTS [--images 64] [--variants default torch stem-float,calib128 ...]

For each variant, ``multibox.models.quantize.quantize_int8`` calibrates on shapes images (seed 321) and the int8
detections on other shapes images (seed 999) are scored against the fp32 ones (``path_agreement``: VOC area AP at
IoU 0.5, 1.0 = the same boxes and ranking); beside it the relative L2 error of the int8 class logits on those
images and the int8 network's median time per batch of 8.
A variant is one or more of these, joined by commas: ``default`` (``quantize_int8``'s defaults: 8-bit activations
on a CPU with VNNI, everything quantized, 32 calibration images); ``torch`` (torch's own x86 defaults: 7-bit
activations); ``bits7`` / ``bits8`` (activation bits); ``stem-float`` (keep the first convolution in float);
``float:NAME[+NAME...]`` (keep those backbone submodules in float, e.g. ``float:layer3``,
``float:layer3.4+layer3.5``); ``calibN`` (N calibration images); ``x86`` / ``fbgemm`` / ``onednn`` (the quantized
engine, for calibration and inference; torch's onednn configuration has 8-bit activations, ``bits7`` does not
change it).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_ms, shapes_inputs
from multibox import postprocess
from multibox.engine.bench import path_agreement
from multibox.models.quantize import quantize_int8
from multibox.runtime import load_detector

ENGINES = ("x86", "fbgemm", "onednn")


def parse_variant(variant: str) -> dict:
    """``"onednn,calib128"`` -> the settings it names (unknown parts exit with a message)."""
    spec = {"calib": 32, "eight_bit": None, "stem": False, "float": [], "engine": torch.backends.quantized.engine}
    for part in variant.split(","):
        if part == "default":
            pass
        elif part == "torch":
            spec["eight_bit"] = False
        elif part in ("bits7", "bits8"):
            spec["eight_bit"] = part == "bits8"
        elif part == "stem-float":
            spec["stem"] = True
        elif part.startswith("calib") and part[len("calib") :].isdigit():
            spec["calib"] = int(part[len("calib") :])
        elif part in ENGINES:
            spec["engine"] = part
        elif part.startswith("float:"):
            spec["float"] += part[len("float:") :].split("+")
        else:
            raise SystemExit(f"unknown variant part {part!r} in {variant!r}")
    return spec


def stem_name(backbone: torch.nn.Module) -> str:
    return next(n for n, m in backbone.named_modules() if isinstance(m, torch.nn.Conv2d))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--variants", nargs="+", default=["default"])
    ap.add_argument("--repeat", type=int, default=5, help="timed batches of 8 per variant")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # torch.ao's deprecation notices
    model = load_detector(args.weights)[0].eval()
    specs = [parse_variant(v) for v in args.variants]

    test = shapes_inputs(model, args.images, 999)

    def run(net: torch.nn.Module) -> tuple[list, torch.Tensor]:
        """(detections, class logits) on the test images."""
        with torch.inference_mode():
            outs = [net(test[i : i + 8]) for i in range(0, len(test), 8)]
        return [d for o in outs for d in postprocess(o, model.priors)], torch.cat([o.cls_logits for o in outs])

    def net_ms(net: torch.nn.Module) -> float:
        x = test[:8].contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return median_ms(lambda: net(x), repeat=args.repeat, warmup=1)

    reference, ref_logits = run(model)
    default_engine = torch.backends.quantized.engine
    for variant, spec in zip(args.variants, specs, strict=True):
        keep_float = ([stem_name(model.backbone)] if spec["stem"] else []) + spec["float"]
        torch.backends.quantized.engine = spec["engine"]
        try:
            t0 = time.perf_counter()
            q = quantize_int8(
                model,
                shapes_inputs(model, spec["calib"], 321),
                max_error=10.0,
                eight_bit=spec["eight_bit"],
                keep_float=keep_float,
            )
            seconds = time.perf_counter() - t0
            detections, logits = run(q)
            agreement = path_agreement(reference, detections)
            error = float((logits - ref_logits).norm() / ref_logits.norm())
            ms = net_ms(q)
        finally:
            torch.backends.quantized.engine = default_engine
        print(
            f"{variant:24s} agreement {agreement:.4f}  logits error {error:.4f}  net {ms:7.1f} ms / batch 8  "
            f"(quantized in {seconds:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()

"""Agreement of int8 variants with fp32 on a trained checkpoint (nothing asserted; figures for the issue note).

    python benchmarks/int8_variants.py WEIGHTS [--images 64] [--variants default range8 float:layer3 ...]

For each variant, ``multibox.models.quantize.quantize_int8`` calibrates on shapes images (seed 321) and the int8
detections on other shapes images (seed 999) are scored against the fp32 ones (``path_agreement``: VOC area AP at
IoU 0.5, 1.0 = the same boxes and ranking). Variants: ``default``; ``calib128`` (128 calibration images instead of
32); ``minmax`` (min/max activation observer instead of the histogram one); ``range8`` (8-bit activations instead of
torch's 7-bit x86 default); ``float:NAME[+NAME...]`` (those
backbone submodules kept in float, e.g. ``float:conv1``, ``float:layer3``, ``float:layer3.4+layer3.5``). The
variants are made by wrapping torch's default qconfig mapping, which ``quantize_int8`` asks for.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
import torch.ao.quantization as tq

from multibox import postprocess
from multibox.data import ShapesDataset
from multibox.engine.bench import path_agreement
from multibox.engine.inference import load_detector
from multibox.models.quantize import quantize_int8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--variants", nargs="+", default=["default"])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # torch.ao's deprecation notices
    model = load_detector(args.weights)[0].eval()
    pre = model.preprocess

    def batch(n: int, seed: int) -> torch.Tensor:
        ds = ShapesDataset(n, pre.image_size, seed=seed)
        return pre.normalize(torch.stack([ds[i][0] for i in range(n)]).float())

    test = batch(args.images, 999)

    def detect(net: torch.nn.Module) -> list:
        with torch.inference_mode():
            return [d for i in range(0, len(test), 8) for d in postprocess(net(test[i : i + 8]), model.priors)]

    reference = detect(model)
    default_mapping = tq.get_default_qconfig_mapping
    for variant in args.variants:
        calib_n, keep_float, observer = 32, [], None
        if variant == "calib128":
            calib_n = 128
        elif variant == "minmax":
            observer = tq.observer.MinMaxObserver.with_args(reduce_range=True)
        elif variant == "range8":
            observer = tq.observer.HistogramObserver.with_args(reduce_range=False)
        elif variant.startswith("float:"):
            keep_float = variant[len("float:") :].split("+")
        elif variant != "default":
            raise SystemExit(f"unknown variant {variant!r}")

        def mapping(engine: str, keep_float=keep_float, observer=observer):
            m = default_mapping(engine)
            if observer is not None:
                m.set_global(tq.QConfig(activation=observer, weight=m.global_qconfig.weight))
            for name in keep_float:
                m.set_module_name(name, None)
            return m

        tq.get_default_qconfig_mapping = mapping
        try:
            t0 = time.perf_counter()
            q = quantize_int8(model, batch(calib_n, 321), max_error=10.0)
            seconds = time.perf_counter() - t0
        finally:
            tq.get_default_qconfig_mapping = default_mapping
        print(f"{variant:28s} agreement {path_agreement(reference, detect(q)):.4f}  (quantized in {seconds:.0f} s)")


if __name__ == "__main__":
    main()

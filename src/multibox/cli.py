"""``multibox`` command line: thin adapters, one library function per verb, and the one place that turns errors into
messages for users (:func:`main`: one line naming the file, step or setting and what to do, and an exit code per
kind of failure, :class:`ExitCode`; ``--debug`` or ``MULTIBOX_DEBUG=1`` adds the traceback)."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from multibox.cli_errors import EXIT_CODES_HELP, ExitCode, describe

__all__ = ["EXIT_CODES_HELP", "ExitCode", "build_parser", "main"]


def _short(text: str) -> str:
    from multibox.user_input import short

    return short(text)


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {_short(text)}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def _fraction(text: str) -> float:
    """A probability or threshold: a finite number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {_short(text)}") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {_short(text)}")
    return value


class _ImageSize(argparse.Action):
    """``--image-size H [W]``: one or two positive integers."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values, option=None) -> None:
        if len(values) > 2:
            parser.error(f"argument {option}: expected H or H W, got {len(values)} values")
        setattr(namespace, self.dest, values)


def _image_size(p: argparse.ArgumentParser, help_: str = "H [W]") -> None:
    p.add_argument("--image-size", type=_int_at_least(1), nargs="+", default=None, action=_ImageSize, help=help_)


class _Parser(argparse.ArgumentParser):
    """argparse with its messages cut short (they quote the values given)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        from multibox.user_input import clip

        super().error(clip(message, 500))


_BENCH_PATHS = ["fp32", "channels_last", "bf16", "fp16", "compile", "int8", "onnxruntime"]

EXAMPLES = {
    "demo": "example:\n  multibox demo                      # ~5 CPU minutes, writes runs/demo/\n"
    "  multibox demo --iters 200 --out /tmp/demo",
    "train": "example:\n  multibox train --data ../shared/data/raccoon --time 10m\n"
    "  multibox train --data my_yolo/data.yaml --model ssdlite320_efficientnet_lite0 --epochs 50\n"
    "  multibox train ssd_tiny_shapes --set train.max_iters=300 --set train.out_dir=runs/t\n"
    "  multibox train ssd300_vgg16_voc --set data.root=VOCdevkit/VOC2007 --resume auto",
    "eval": "example:\n  multibox eval --weights runs/demo/last.pt\n"
    "  multibox eval --weights runs/demo/last.pt --int8 32    # int8 backbone, calibrated on 32 training images\n"
    "  multibox eval --weights last.pt --config ssd300_vgg16_voc --set data.root=VOC2007 --metric voc",
    "detect": "example:\n  multibox detect photos/ img.jpg --weights runs/demo/last.pt --out runs/detect\n"
    "  multibox detect clip.mp4 videos/ --weights best.pt   # annotated videos + per-frame JSON (extra: video)\n"
    "  multibox detect img.jpg --onnx model.onnx         # onnxruntime only, no torch needed",
    "export": "example:\n  multibox export --weights runs/demo/last.pt --out model.onnx\n"
    "  multibox export --weights last.pt --out raw.onnx --raw --image-size 300 400",
    "convert": "example:\n  multibox convert ssd300_mAP_77.43_v2.pth --from ssd.pytorch --out ssd300_voc.pt\n"
    "  multibox convert vgg16_reducedfc.pth --from ssd.pytorch-base --out base.pt\n"
    "  multibox convert ssdlite320_mobilenet_v3_large_coco-a79551df.pth --from torchvision --out ssdlite_coco.pt\n"
    "  multibox convert runs/demo/last.pt --to-safetensors --out last.safetensors",
    "info": "example:\n  multibox info ssd300_vgg16 --num-classes 21\n  multibox info ssd_tiny --image-size 128",
    "bench": "example:\n  multibox bench ssd300_vgg16 --batch-sizes 1 8 --onnx\n"
    "  multibox bench ssd_tiny --weights runs/demo/last.pt --paths fp32 bf16",
    "serve": "example:\n  multibox serve --weights runs/demo/last.pt --port 8000     # then open http://127.0.0.1:8000/\n"
    "  multibox serve --onnx model.onnx --host 0.0.0.0 --workers 2\n"
    "  curl --data-binary @img.jpg 'http://127.0.0.1:8000/v1/detect?score=0.5'",
    "scan": "example:\n  multibox scan ../shared/data/cards --split train\n"
    "  multibox scan ../shared/data/raccoon --decode",
    "report": "example:\n  multibox report runs/raccoon-1            # rebuilds runs/raccoon-1/report/report.html\n"
    "  multibox report runs/raccoon-1 --split test --score 0.5",
    "anchors": "example:\n  multibox anchors ../shared/data/cards --model ssd300_vgg16\n"
    "  multibox anchors ../shared/data/raccoon --model ssd_tiny --image-size 128 --clusters 5",
}


def _parser(sub: argparse._SubParsersAction, name: str, help_: str) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name,
        help=help_,
        description=help_,
        epilog=EXAMPLES.get(name),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks of errors")
    return p


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every verb."""
    p = _Parser(
        prog="multibox",
        description="Single Shot MultiBox Detectors in plain PyTorch.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--debug", action="store_true", help="show the traceback of an error (also: MULTIBOX_DEBUG=1)")
    sub = p.add_subparsers(dest="verb", required=True)

    d = _parser(sub, "demo", "train ssd_tiny on synthetic shapes on the CPU, evaluate it and draw detections")
    d.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    d.add_argument("--iters", type=_int_at_least(1), default=None, help="training steps (default: the preset's)")
    d.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    d.add_argument("--no-progress", action="store_true")

    t = _parser(sub, "train", "train a detector on your own data (--data) or from a preset name or YAML config")
    t.add_argument(
        "config",
        nargs="?",
        default=None,
        help="preset name (multibox.config.list_presets()) or YAML path; a dataset folder means --data",
    )
    t.add_argument("--data", default=None, help="a VOC folder, COCO .json, YOLO data.yaml/folder or dataset YAML")
    t.add_argument("--model", default=None, help="with --data: a registered model (default: the fine-tuning preset's)")
    t.add_argument("--epochs", type=_int_at_least(1), default=None, help="with --data: passes over the data")
    t.add_argument("--time", default=None, help="with --data: wall-clock budget (90s, 10m, 1.5h), then evaluate")
    t.add_argument("--imgsz", type=_int_at_least(32), default=None, help="with --data: input side in pixels")
    t.add_argument("--device", default="auto", help="with --data: auto, cpu, cuda, cuda:N")
    t.add_argument("--out", default="runs", help="with --data: runs go to OUT/<data name>-N (default: runs)")
    t.add_argument("--split", default=None, help="with --data: reuse the split.json of an earlier run")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    t.add_argument("--resume", default=None, help="checkpoint to continue from, or 'auto' (out_dir/last.pt)")
    t.add_argument("--no-progress", action="store_true")

    e = _parser(sub, "eval", "evaluate a checkpoint (VOC07 11-point, VOC area or COCO AP)")
    e.add_argument("--weights", required=True)
    e.add_argument("--config", default=None, help="preset/YAML for the data (default: the checkpoint's config)")
    e.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    e.add_argument("--metric", choices=["voc07", "voc", "coco"], default=None)
    e.add_argument("--out", default=None, help="folder for metrics.json and pr_curves.png")
    e.add_argument("--device", default="auto")
    e.add_argument("--fast", action="store_true", help="BatchNorm folded, channels_last, bf16 where supported")
    e.add_argument("--int8", type=_int_at_least(0), default=0, metavar="N",
                   help="int8 backbone (CPU) calibrated on the first N training images (e.g. 32)")  # fmt: skip

    det = _parser(sub, "detect", "detect objects in images; writes JSON and annotated pictures")
    det.add_argument("inputs", nargs="+", help="image files, video files (.mp4, .mov, ...) and/or folders of them")
    src = det.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", help="a multibox checkpoint")
    src.add_argument("--onnx", help="a model written by `multibox export` (runs on onnxruntime, without torch)")
    det.add_argument("--out", default="runs/detect")
    det.add_argument("--score", type=_fraction, default=0.3, help="lowest score reported, in [0, 1] (default 0.3)")
    det.add_argument("--batch-size", type=_int_at_least(1), default=8)
    det.add_argument("--device", default="auto")
    det.add_argument("--fast", action="store_true", help="BatchNorm folded, channels_last, bf16 where supported")
    det.add_argument("--on-error", choices=["skip", "raise"], default="skip",
                     help="an unreadable input: skip it with a warning and go on (exit code 1 at the end), or stop "
                     "(exit code 3) (default: skip)")  # fmt: skip

    x = _parser(sub, "export", "export a checkpoint to ONNX and check it against onnxruntime")
    x.add_argument("--weights", required=True, help="a multibox checkpoint")
    x.add_argument("--out", required=True, help="the .onnx file to write")
    _image_size(x, "H [W] (default: the checkpoint's)")
    x.add_argument("--opset", type=_int_at_least(13), default=17, help="ONNX opset, at least 13 (default 17)")
    x.add_argument("--raw", action="store_true", help="raw cls_logits/box_deltas outputs, no post-processing")
    x.add_argument("--static-batch", action="store_true", help="fix the batch size to 1")
    x.add_argument("--score", type=_fraction, default=0.01, help="score threshold in the graph (default 0.01)")
    x.add_argument("--nms", type=_fraction, default=0.45, help="NMS IoU threshold (default 0.45)")
    x.add_argument("--pre-nms-top-k", type=_int_at_least(1), default=200)
    x.add_argument("--top-k", type=_int_at_least(1), default=200, help="detections per image (default 200)")
    x.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")

    c = _parser(
        sub,
        "convert",
        "convert ssd.pytorch, torchvision (ssd300_vgg16, ssdlite320_mobilenet_v3_large) or ImageNet VGG16 weights, "
        "or save as safetensors",
    )
    c.add_argument("source", help="the weights file to convert")
    c.add_argument("--out", required=True)
    layouts = "ssd.pytorch, ssd.pytorch-base, torchvision or imagenet-vgg16"
    c.add_argument("--from", dest="layout", default=None, help=f"{layouts} (default: guessed from the keys)")
    c.add_argument("--to-safetensors", action="store_true", help="save a multibox checkpoint as safetensors")
    c.add_argument(
        "--num-classes", type=_int_at_least(2), default=None, help="classes incl. background (default: inferred)"
    )
    c.add_argument("--classes", default=None, help="comma-separated class names to store")
    c.add_argument("--input-order", choices=["rgb", "bgr"], default=None, help="channel order the source expects")

    i = _parser(sub, "info", "parameters, priors, feature maps and FLOPs of a registered model")
    i.add_argument("model")
    i.add_argument("--num-classes", type=_int_at_least(2), default=21, help="incl. background (default 21)")
    _image_size(i)

    b = _parser(sub, "bench", "time pre-processing, network, post-processing per inference path; accuracy guard")
    b.add_argument("model", help="registered model name (ignored with --weights)")
    b.add_argument("--weights", default=None, help="a checkpoint (trained weights make the agreement meaningful)")
    b.add_argument("--num-classes", type=_int_at_least(2), default=21, help="incl. background (default 21)")
    b.add_argument("--batch-sizes", type=_int_at_least(1), nargs="+", default=[1, 8])
    b.add_argument("--paths", nargs="+", default=None, choices=_BENCH_PATHS, help=" ".join(_BENCH_PATHS))
    b.add_argument("--compile", action="store_true", help="also time torch.compile")
    b.add_argument("--onnx", action="store_true", help="also time onnxruntime (CPU; needs the export extra)")
    b.add_argument("--int8", action="store_true", help="also time the int8 backbone (CPU; calibrated on 32 images)")
    b.add_argument(
        "--images",
        default=None,
        metavar="DIR",
        help="time and score agreement on these photos (all of them, up to --max-images) instead of shapes",
    )
    b.add_argument(
        "--calibration",
        default=None,
        metavar="DIR",
        help="calibrate int8 on these photos (better other ones than --images; default: shapes images)",
    )
    b.add_argument("--max-images", type=_int_at_least(1), default=64, metavar="N",
                   help="at most N photos from each folder (default 64)")  # fmt: skip
    b.add_argument("--repeat", type=_int_at_least(1), default=7)
    b.add_argument("--device", default="cpu")

    rp = _parser(sub, "report", "(re)build a run's report: per-class AP, PR curves, confusion matrix, worst images")
    rp.add_argument("run_dir", help="a training run's folder (with config.json and best.pt or last.pt)")
    rp.add_argument("--weights", default=None, help="the checkpoint (default: best.pt, else last.pt)")
    rp.add_argument("--split", choices=["val", "test"], default="val")
    rp.add_argument("--score", type=_fraction, default=0.3, help="working point of the confusion matrix (default 0.3)")
    rp.add_argument("--device", default="auto")

    an = _parser(sub, "anchors", "how well a model's priors cover a dataset's boxes (IoU >= 0.5), and better priors")
    an.add_argument("root", help="a dataset: VOC folder, COCO .json, YOLO data.yaml or folder, dataset YAML")
    an.add_argument("--split", default=None, help="split name (default: every annotation file)")
    an.add_argument("--model", default="ssd300_vgg16")
    _image_size(an)
    an.add_argument("--priors", default=None, choices=["voc300", "coco300", "voc512", "coco512"], help="prior preset")
    an.add_argument("--clusters", type=_int_at_least(1), default=6, help="k of the k-means suggestion")

    s = _parser(sub, "scan", "check a dataset (VOC, COCO, YOLO) and report every problem at once")
    s.add_argument("root", help="a VOC folder, COCO .json (its images found beside it) or YOLO data.yaml/folder")
    s.add_argument("--split", default=None, help="split name (default: every annotation file)")
    s.add_argument(
        "--decode",
        action="store_true",
        help="also decode every image's pixels (finds corrupt data and bad PNG CRCs; truncated files are found "
        "from their headers and last bytes either way)",
    )
    _serve_parser(sub)
    return p


def _positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {_short(text)}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {_short(text)}")
    return value


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    sv = _parser(sub, "serve", "HTTP detection service (POST /v1/detect, a web page at /) with dynamic batching")
    src = sv.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", help="a multibox checkpoint")
    src.add_argument("--onnx", help="a model written by `multibox export` (runs on onnxruntime)")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: all)")
    sv.add_argument("--port", type=_int_at_least(0), default=8000, help="TCP port (default 8000)")
    sv.add_argument("--max-batch", type=_int_at_least(1), default=8, help="most images per run (1: no batching)")
    sv.add_argument("--max-wait-ms", type=_positive_number, default=5.0,
                    help="how long a request waits for others to batch with (default 5)")  # fmt: skip
    sv.add_argument("--max-queue", type=_int_at_least(1), default=64,
                    help="requests waiting beyond which the server answers 503 (default 64)")  # fmt: skip
    sv.add_argument("--workers", type=_int_at_least(1), default=1, help="server processes (default 1)")
    sv.add_argument("--device", default="auto")
    sv.add_argument("--fast", action="store_true",
                    help="the fastest path that agrees with fp32: int8 / bf16 on the CPU, AMP on CUDA")  # fmt: skip
    sv.add_argument("--max-body-mb", type=_positive_number, default=20.0, help="largest request body (default 20)")
    sv.add_argument("--max-pixels", type=_int_at_least(1), default=50_000_000,
                    help="largest width x height accepted, checked before decoding (default 50000000)")  # fmt: skip


def _cmd_demo(a: argparse.Namespace) -> int:
    from multibox.engine.demo import run_demo

    s = run_demo(a.out, max_iters=a.iters, overrides=tuple(a.overrides), progress=not a.no_progress)
    print(
        f"demo: VOC07 mAP@0.5 = {s['mAP_voc07']:.4f} (area AP {s['mAP_area']:.4f}) on {s['val_images']} held-out images"
    )
    print(
        f"      trained {s['train_steps']} steps in {s['train_seconds']} s ({s['train_images_per_second']} img/s, "
        f"{100 * s['train_data_wait_fraction']:.1f}% of it waiting for data)"
    )
    for key in ("checkpoint", "metrics", "pr_curves", "detections"):
        print(f"      {key:<11} {s[key]}")
    return 0


def _cmd_train(a: argparse.Namespace) -> int:
    from multibox.config import list_presets, load_config
    from multibox.engine.train import train

    if a.data is not None or (a.config is not None and os.path.isdir(a.config) and a.config not in list_presets()):
        return _train_own_data(a)  # (a folder named like a preset does not hide the preset)
    if a.config is None:
        raise ValueError("multibox train needs a preset/YAML config or --data PATH (a dataset)")
    given = [f"--{k}" for k in ("model", "epochs", "time", "imgsz", "split") if getattr(a, k) is not None]
    if given:
        raise ValueError(f"{', '.join(given)} go with --data; with a config use --set (e.g. train.epochs=10)")

    r = train(load_config(a.config, a.overrides), resume=a.resume, progress=not a.no_progress, log=print)
    print(
        f"trained to step {r.step}; checkpoint: {r.checkpoint}; last loss {r.last_loss.get('loss', float('nan')):.4f}; "
        f"{r.images_per_second:.1f} img/s, {100 * r.data_wait_fraction:.1f}% of the time waiting for data"
    )
    if r.stop_reason:
        print(f"stopped early: {r.stop_reason}")
    if r.best is not None:
        last = r.evaluations[-1][1] if r.evaluations else {}
        key = "AP" if "AP" in last else "mAP"
        print(f"validation {key}: {last.get(key, float('nan')):.4f} at the end, best {r.best[1]:.4f} at step "
              f"{r.best[0]} ({r.best_checkpoint})")  # fmt: skip
    if r.skipped_when_built:
        print(f"{r.skipped_when_built} training image(s) could not be used and were left out (see the warnings)")
    if r.skipped_images:
        print(
            f"training batches left out {r.skipped_images} image read(s) that failed (an image counts each time it "
            "is drawn; see the warnings)"
        )
    return int(ExitCode.SKIPPED) if r.skipped_when_built or r.skipped_images else 0


def _train_own_data(a: argparse.Namespace) -> int:
    from multibox.engine.owndata import parse_duration, plan_run, train_own_data

    if a.data is not None and a.config is not None:
        raise ValueError(f"give either a config ({a.config}) or --data ({a.data}), not both")
    if a.epochs is not None and a.time is not None:
        raise ValueError("give --epochs or --time, not both")
    plan = plan_run(a.data or a.config, model=a.model, epochs=a.epochs,
                    minutes=parse_duration(a.time) if a.time else None, image_size=a.imgsz, device=a.device,
                    out=a.out, split_file=a.split, overrides=tuple(a.overrides))  # fmt: skip
    r = train_own_data(plan, progress=not a.no_progress, log=print)
    for line in r.summary():
        print(line)
    if r.train.skipped_images:
        print(f"{r.train.skipped_images} training image(s) could not be read and were skipped (see the warnings)")
        return int(ExitCode.SKIPPED)
    return 0


def _cmd_eval(a: argparse.Namespace) -> int:
    from multibox.config import config_from_dict, load_config
    from multibox.engine.builders import build_dataset
    from multibox.engine.evaluate import evaluate
    from multibox.runtime import resolve_device
    from multibox.weights.checkpoint import model_from_checkpoint
    from multibox.weights.io import load_checkpoint

    ckpt = load_checkpoint(a.weights)
    if a.config is None and "config" not in ckpt:
        raise ValueError(f"{a.weights} holds no training config to take the data from; pass --config")
    if a.config is not None:
        cfg = load_config(a.config, a.overrides)
    else:
        cfg = config_from_dict(ckpt["config"])
        if a.overrides:
            from multibox.config import config_to_dict

            cfg = load_config(None, [*_flatten(config_to_dict(cfg)), *a.overrides])
    model = model_from_checkpoint(ckpt, a.weights)
    data = build_dataset(cfg.data, "val", cfg.model.image_size)
    ev = cfg.eval
    calibration = None
    if a.int8:  # calibrated on training images, not on the evaluated ones
        from multibox.engine.evaluate import preprocessed_images

        calibration = preprocessed_images(model, build_dataset(cfg.data, "train", cfg.model.image_size), a.int8)
    out = evaluate(
        model,
        data,
        metric=a.metric or ev.metric,
        iou_threshold=ev.iou_threshold,
        out_dir=a.out,
        batch_size=ev.batch_size,
        score_thresh=ev.score_thresh,
        nms_thresh=ev.nms_thresh,
        pre_nms_top_k=ev.pre_nms_top_k,
        top_k=ev.top_k,
        device=resolve_device(a.device),
        fast=a.fast,
        int8_calibration=calibration,
    )
    width = max(len(k) for k in out)
    for k, v in out.items():
        print(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    if out.get("skipped"):
        print(f"{out['skipped']} image(s) could not be read and were left out of the metric (see the warnings)")
        return int(ExitCode.SKIPPED)
    return 0


def _flatten(tree: dict, prefix: str = "") -> list[str]:
    items = []
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "kwargs":
            items += _flatten(v, key + ".")
        else:
            items.append(f"{key}={json.dumps(v)}")
    return items


def _cmd_detect(a: argparse.Namespace) -> int:
    videos: list = []
    if a.weights:  # (--onnx runs without torch: its inputs are pictures)
        from multibox.engine.video import find_videos

        videos, a.inputs = find_videos(a.inputs)
    if videos:
        _detect_videos(a, videos)
        if not a.inputs:
            return 0
    options = {"out_dir": a.out, "batch_size": a.batch_size, "score_thresh": a.score, "on_error": a.on_error}
    if a.onnx:
        from multibox.onnx_runtime import detect_onnx

        results = detect_onnx(a.onnx, a.inputs, **options)
    else:
        from multibox.engine.inference import detect

        results = detect(a.weights, a.inputs, device=a.device, fast=a.fast, **options)
    written = f"{a.out}/detections.json" + (f", {a.out}/skipped.json" if results.skipped else "")
    print(f"{results.summary()}; written to {written} and the annotated images under {a.out}/")
    return ExitCode.SKIPPED if results.skipped else ExitCode.OK


def _detect_videos(a: argparse.Namespace, videos: list) -> None:
    from multibox.engine.video import detect_video
    from multibox.runtime import load_detector

    model, names = load_detector(a.weights)
    for path in videos:
        r = detect_video(model, path, a.out, class_names=names, batch_size=a.batch_size, score_thresh=a.score,
                         device=a.device)  # fmt: skip
        print(f"{path}: {r['frames']} frames, {r['detections']} detections -> {r['output']}, {r['json']}")


def _cmd_export(a: argparse.Namespace) -> int:
    from multibox.export import export_checkpoint

    size = None if not a.image_size else tuple(a.image_size) if len(a.image_size) == 2 else a.image_size[0]
    result = export_checkpoint(
        a.weights,
        a.out,
        image_size=size,
        opset=a.opset,
        dynamic_batch=not a.static_batch,
        with_postprocess=not a.raw,
        score_thresh=a.score,
        nms_thresh=a.nms,
        pre_nms_top_k=a.pre_nms_top_k,
        top_k=a.top_k,
        check=not a.no_check,
    )
    print(result.summary())
    return 0


def _cmd_convert(a: argparse.Namespace) -> int:
    from multibox.weights import convert_file

    options = {"num_classes": a.num_classes, "input_order": a.input_order}
    if a.classes:
        options["classes"] = a.classes.split(",")
    print(convert_file(a.source, a.out, layout=a.layout, to_safetensors=a.to_safetensors, **options))
    return 0


def _cmd_info(a: argparse.Namespace) -> int:
    from multibox.engine.inference import model_info
    from multibox.models import create_model

    kwargs = {}
    if a.image_size:
        kwargs["image_size"] = tuple(a.image_size) if len(a.image_size) == 2 else a.image_size[0]
    info = model_info(create_model(a.model, a.num_classes, **kwargs))
    print(f"model         {a.model}")
    print(f"num_classes   {info['num_classes']} (incl. background)")
    print(f"image_size    {info['image_size'][0]}x{info['image_size'][1]}")
    print(f"parameters    {info['parameters']:,}")
    print(f"priors        {info['priors']}")
    print(f"feature_maps  {' '.join(f'{h}x{w}' for h, w in info['feature_maps'])}")
    print(f"GFLOPs        {info['gflops']:.2f} (per image, 2 x multiply-adds)")
    return 0


def _folder_images(folder: str, limit: int):
    """The first ``limit`` photos under ``folder`` (sorted) as ``uint8 Tensor[N, 3, H, W]``, each resized to the
    first one's size so that they batch (the bench still times the model's own resize from that size)."""
    import torch
    import torch.nn.functional as F

    from multibox.data.image_io import read_image
    from multibox.files import find_images

    found = find_images([folder]).images[:limit]
    photos = [read_image(im.path).contiguous() for im in found]
    h, w = photos[0].shape[-2:]
    resized = [
        p if p.shape[-2:] == (h, w)
        else F.interpolate(p[None].float(), size=(h, w), mode="bilinear", antialias=True)[0].round().clamp(0, 255)
        for p in photos
    ]  # fmt: skip
    return torch.stack([p.to(torch.uint8) for p in resized])


def _cmd_bench(a: argparse.Namespace) -> int:
    import torch

    from multibox.data import ShapesDataset
    from multibox.engine.bench import bench_model, format_table, matmul_peak_gflops
    from multibox.engine.inference import model_info
    from multibox.models import create_model
    from multibox.runtime import available_paths, load_detector, resolve_device

    device = resolve_device(a.device)
    model = load_detector(a.weights)[0] if a.weights else create_model(a.model, a.num_classes)
    info = model_info(model)
    h, w = model.preprocess.image_size

    def shapes_images(n: int, seed: int) -> torch.Tensor:
        shapes = ShapesDataset(n, (h, w), seed=seed)
        return torch.stack([shapes[i][0] for i in range(n)])

    images = _folder_images(a.images, a.max_images) if a.images else shapes_images(max(a.batch_sizes), seed=123)
    if len(images) < max(a.batch_sizes):
        raise ValueError(f"--images {a.images}: {len(images)} photos, fewer than the batch size {max(a.batch_sizes)}")
    paths = a.paths or available_paths(device, compile=a.compile, onnx=a.onnx, int8=a.int8)
    # int8 calibrates on other images than the timed ones, so that the agreement is not measured on them.
    calibration = None
    if "int8" in paths:
        calibration = _folder_images(a.calibration, min(a.max_images, 32)) if a.calibration else shapes_images(32, 321)
    rows = bench_model(model, images, batch_sizes=a.batch_sizes, paths=paths, device=device, repeat=a.repeat,
                       gflops_per_image=info["gflops"], calibration=calibration)  # fmt: skip
    peaks = {"fp32": matmul_peak_gflops(torch.float32, device.type)}
    if "bf16" in paths:
        peaks["bf16"] = matmul_peak_gflops(torch.bfloat16, device.type)
    name = info.get("name", a.model)
    print(f"{name}: {info['gflops']:.2f} GFLOPs/image, {info['priors']} priors, input {h}x{w}, "
          f"{torch.get_num_threads()} threads, device {device}")  # fmt: skip
    print(format_table(rows, peaks))
    return 0


def _cmd_anchors(a: argparse.Namespace) -> int:
    from multibox.data import VOCDetection, anchor_coverage, normalized_targets, suggest_priors
    from multibox.engine.owndata import open_dataset
    from multibox.models import create_model
    from multibox.priors import PRIOR_PRESETS

    if os.path.isdir(os.path.join(a.root, "Annotations")) or not os.path.exists(a.root):
        data = VOCDetection(a.root, split=a.split)
    else:
        data = open_dataset(a.root, a.split or "train")
    kwargs: dict = {}
    if a.image_size:
        kwargs["image_size"] = tuple(a.image_size) if len(a.image_size) == 2 else a.image_size[0]
    if a.priors:
        kwargs["prior_spec"] = PRIOR_PRESETS[a.priors]
    model = create_model(a.model, len(data.classes) + 1, **kwargs)
    boxes, labels = normalized_targets(data)
    print(f"{a.model} ({model.num_priors} priors) on {a.root} ({len(data)} images)")
    print(anchor_coverage(boxes, labels, model.priors, data.classes))
    print(suggest_priors(boxes, k=a.clusters, num_maps=len(model.feature_maps)))
    return 0


def _cmd_report(a: argparse.Namespace) -> int:
    from multibox.engine.report import build_report

    page = build_report(a.run_dir, weights=a.weights, split=a.split, score=a.score, device=a.device)
    print(f"report written to {page} (and report.json, PNGs beside it)")
    return 0


def _cmd_serve(a: argparse.Namespace) -> int:
    from multibox.serve.server import ServeOptions, serve

    options = ServeOptions(
        weights=a.weights, onnx=a.onnx, host=a.host, port=a.port, max_batch=a.max_batch, max_wait_ms=a.max_wait_ms,
        max_queue=a.max_queue, workers=a.workers, fast=a.fast, device=a.device, max_body_mb=a.max_body_mb,
        max_pixels=a.max_pixels,
    )  # fmt: skip
    serve(options)
    return 0


def _cmd_scan(a: argparse.Namespace) -> int:
    from multibox.data import scan_dataset
    from multibox.engine.owndata import detect_format

    src = detect_format(a.root) if os.path.isfile(a.root) and a.root.lower().endswith(".json") else None
    if src is not None:  # COCO: its image folder is found beside the JSON
        report = scan_dataset(src.data["train_images"], annotation_json=src.data["train_annotations"], decode=a.decode)
    else:  # a VOC folder or a YOLO dataset
        report = scan_dataset(a.root, split=a.split, decode=a.decode)
    print(report)
    return 0 if report.ok else 1


_COMPUTE_VERBS = frozenset({"demo", "train", "eval", "detect", "bench", "report", "serve"})

_HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "demo": _cmd_demo,
    "train": _cmd_train,
    "eval": _cmd_eval,
    "detect": _cmd_detect,
    "export": _cmd_export,
    "convert": _cmd_convert,
    "info": _cmd_info,
    "scan": _cmd_scan,
    "anchors": _cmd_anchors,
    "report": _cmd_report,
    "bench": _cmd_bench,
    "serve": _cmd_serve,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``multibox`` command: run a verb and turn any failure into one message and an
    :class:`ExitCode` (see :data:`EXIT_CODES_HELP`)."""
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False) or os.environ.get("MULTIBOX_DEBUG", "") not in ("", "0")
    with warnings.catch_warnings():
        if not debug:
            warnings.showwarning = _warning_printer(args.verb)
        try:
            if args.verb in _COMPUTE_VERBS:
                from multibox.memory import tune_malloc

                tune_malloc()  # reuse freed tensor memory instead of page-faulting it back in every step (glibc)
            return int(_HANDLERS[args.verb](args))
        except BrokenPipeError:  # the reader of our output went away (`multibox scan ... | head`): stop quietly
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # so that the interpreter's final flush does not fail again
            return int(ExitCode.OK)
        except (Exception, KeyboardInterrupt) as e:
            code, message = describe(e, args.verb)
            if debug:
                traceback.print_exc()
            print(f"multibox {args.verb}: {message}", file=sys.stderr)
            return int(code)


def _warning_printer(verb: str) -> Callable[..., None]:
    """Warnings as ``multibox <verb>: warning: <message>`` lines on stderr (no source line)."""

    def show(
        message: Warning | str, category: Any, filename: str, lineno: int, file: TextIO | None = None, line: Any = None
    ) -> None:
        from multibox.user_input import clip

        print(f"multibox {verb}: warning: {clip(str(message), 2000)}", file=file or sys.stderr)

    return show


if __name__ == "__main__":
    sys.exit(main())

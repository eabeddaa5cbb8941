"""The ``multibox`` command's argument parser: one ``_add_<verb>`` function per verb, the argument types that
check values as they are parsed (one-line messages, no traceback), and the usage :data:`EXAMPLES` of every verb.
Imports nothing heavy: the CLI starts without torch."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from multibox.cli_errors import EXIT_CODES_HELP

__all__ = ["EXAMPLES", "build_parser"]


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
    for add in (
        _add_demo,
        _add_train,
        _add_eval,
        _add_detect,
        _add_export,
        _add_convert,
        _add_info,
        _add_bench,
        _add_report,
        _add_anchors,
        _add_scan,
        _add_serve,
    ):
        add(sub)
    return p


def _add_demo(sub: argparse._SubParsersAction) -> None:
    """The `demo` verb's arguments."""
    d = _parser(sub, "demo", "train ssd_tiny on synthetic shapes on the CPU, evaluate it and draw detections")
    d.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    d.add_argument("--iters", type=_int_at_least(1), default=None, help="training steps (default: the preset's)")
    d.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    d.add_argument("--no-progress", action="store_true")


def _add_train(sub: argparse._SubParsersAction) -> None:
    """The `train` verb's arguments."""
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


def _add_eval(sub: argparse._SubParsersAction) -> None:
    """The `eval` verb's arguments."""
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


def _add_detect(sub: argparse._SubParsersAction) -> None:
    """The `detect` verb's arguments."""
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


def _add_export(sub: argparse._SubParsersAction) -> None:
    """The `export` verb's arguments."""
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


def _add_convert(sub: argparse._SubParsersAction) -> None:
    """The `convert` verb's arguments."""
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


def _add_info(sub: argparse._SubParsersAction) -> None:
    """The `info` verb's arguments."""
    i = _parser(sub, "info", "parameters, priors, feature maps and FLOPs of a registered model")
    i.add_argument("model")
    i.add_argument("--num-classes", type=_int_at_least(2), default=21, help="incl. background (default 21)")
    _image_size(i)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    """The `bench` verb's arguments."""
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


def _add_report(sub: argparse._SubParsersAction) -> None:
    """The `report` verb's arguments."""
    rp = _parser(sub, "report", "(re)build a run's report: per-class AP, PR curves, confusion matrix, worst images")
    rp.add_argument("run_dir", help="a training run's folder (with config.json and best.pt or last.pt)")
    rp.add_argument("--weights", default=None, help="the checkpoint (default: best.pt, else last.pt)")
    rp.add_argument("--split", choices=["val", "test"], default="val")
    rp.add_argument("--score", type=_fraction, default=0.3, help="working point of the confusion matrix (default 0.3)")
    rp.add_argument("--device", default="auto")


def _add_anchors(sub: argparse._SubParsersAction) -> None:
    """The `anchors` verb's arguments."""
    an = _parser(sub, "anchors", "how well a model's priors cover a dataset's boxes (IoU >= 0.5), and better priors")
    an.add_argument("root", help="a dataset: VOC folder, COCO .json, YOLO data.yaml or folder, dataset YAML")
    an.add_argument("--split", default=None, help="split name (default: every annotation file)")
    an.add_argument("--model", default="ssd300_vgg16")
    _image_size(an)
    an.add_argument("--priors", default=None, choices=["voc300", "coco300", "voc512", "coco512"], help="prior preset")
    an.add_argument("--clusters", type=_int_at_least(1), default=6, help="k of the k-means suggestion")


def _add_scan(sub: argparse._SubParsersAction) -> None:
    """The `scan` verb's arguments."""
    s = _parser(sub, "scan", "check a dataset (VOC, COCO, YOLO) and report every problem at once")
    s.add_argument("root", help="a VOC folder, COCO .json (its images found beside it) or YOLO data.yaml/folder")
    s.add_argument("--split", default=None, help="split name (default: every annotation file)")
    s.add_argument(
        "--decode",
        action="store_true",
        help="also decode every image's pixels (finds corrupt data and bad PNG CRCs; truncated files are found "
        "from their headers and last bytes either way)",
    )


def _positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {_short(text)}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {_short(text)}")
    return value


def _add_serve(sub: argparse._SubParsersAction) -> None:
    """The `serve` verb's arguments."""
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

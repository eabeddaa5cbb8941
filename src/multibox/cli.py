"""``multibox`` command line: thin adapters, one library function per verb, and the one place that turns errors into
messages for users (:func:`main`: one line naming the file, step or setting and what to do, and an exit code per
kind of failure, :class:`ExitCode`; ``--debug`` or ``MULTIBOX_DEBUG=1`` adds the traceback)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from multibox.cli_errors import EXIT_CODES_HELP, ExitCode, describe
from multibox.cli_parser import _BENCH_PATHS, EXAMPLES, build_parser  # noqa: F401 (_BENCH_PATHS: tests import it here)

__all__ = ["EXAMPLES", "EXIT_CODES_HELP", "ExitCode", "build_parser", "main"]


def _cmd_demo(a: argparse.Namespace) -> int:
    from multibox.engine.demo import run_demo

    s = run_demo(a.out, max_iters=a.iters, overrides=tuple(a.overrides), progress=not a.no_progress)
    print(
        f"demo: VOC07 mAP@0.5 = {s['mAP_voc07']:.4f} (area AP {s['mAP_area']:.4f}) on {s['val_images']} held-out images"
    )
    print(
        f"      trained {s['train_steps']} steps in {s['train_seconds']} s ({s['train_images_per_second']} img/s, "
        f"amp {s['train_amp']}, "
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

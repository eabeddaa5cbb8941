"""The training loop: SGD + warmup + schedule, AMP, gradient accumulation, exact resume, DDP, logging.

``train(config)`` is what ``multibox train`` calls. Under ``torchrun`` (``WORLD_SIZE > 1``) it trains with
DistributedDataParallel (gloo on CPU, nccl on CUDA); only rank 0 logs and writes checkpoints.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from multibox.config import Config, config_to_dict
from multibox.engine.builders import build_dataset, build_model, build_optimizer, resolve_device
from multibox.engine.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from multibox.engine.sampling import ResumableBatchSampler
from multibox.engine.schedule import LRFactor
from multibox.loss import multibox_loss

__all__ = ["NonFiniteLossError", "TrainResult", "autocast_context", "model_args", "train"]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message names the step and the images of the batch."""


@dataclass
class TrainResult:
    """What a finished run leaves behind."""

    checkpoint: Path | None
    step: int
    last_loss: dict[str, float]
    images_per_second: float
    out_dir: Path
    data_wait_fraction: float = 0.0
    """The share of the run's wall time spent waiting for the next batch (the loader not keeping up)."""


def model_args(model: nn.Module) -> dict[str, Any]:
    """The model's build arguments as plain values (``model.config_dict()``), for a safe checkpoint."""
    return model.config_dict()


def autocast_context(device: torch.device, amp: str) -> Any:
    """``torch.autocast`` for ``amp`` in ``{"none", "bf16", "fp16"}`` (fp16 only on CUDA)."""
    if amp == "none":
        return nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("train.amp=fp16 needs CUDA; use bf16 on the CPU")
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeds the legacy global state that user code may use
    torch.manual_seed(seed)


def _distributed() -> tuple[int, int, bool]:
    """``(rank, world_size, initialised_here)``; starts the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        return dist.get_rank(), dist.get_world_size(), True
    return dist.get_rank(), dist.get_world_size(), False


class _Logger:
    """JSONL (always) and TensorBoard (if installed) on rank 0."""

    def __init__(self, out_dir: Path, enabled: bool, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.file = None
        self.tb = None
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        self.file = (out_dir / "metrics.jsonl").open("a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tb"))
            except ImportError:
                self.tb = None

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, **values}) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


def train(
    config: Config,
    *,
    resume: str | Path | None = None,
    progress: bool = True,
    callbacks: Sequence[Callable[[int, dict[str, float]], None]] = (),
) -> TrainResult:
    """Train a detector as ``config`` says.

    Args:
        config: the run (see :mod:`multibox.config`).
        resume: a checkpoint written by a previous run of the same config to continue from (``"auto"``: the
            ``last.pt`` of ``train.out_dir`` if it exists).
        progress: show a tqdm bar with loss, lr and images/s.
        callbacks: called as ``fn(step, losses)`` after every optimizer step (rank 0 and others alike).

    Returns:
        The :class:`TrainResult`; the final checkpoint is ``<out_dir>/last.pt``.

    Raises:
        NonFiniteLossError: the loss became NaN/inf (the message names the step and image ids).
    """
    tc = config.train
    rank, world, owns_pg = _distributed()
    device = resolve_device(tc.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    out_dir = Path(tc.out_dir)
    _seed_everything(tc.seed)

    raw_train = build_dataset(config.data, "train", config.model.image_size)
    classes = tuple(raw_train.classes)
    num_classes = config.model.num_classes or len(classes) + 1
    if num_classes != len(classes) + 1:
        raise ValueError(
            f"model.num_classes is {num_classes} but the dataset has {len(classes)} classes (+1 background = "
            f"{len(classes) + 1}); leave model.num_classes unset to take it from the data"
        )
    model = build_model(config.model, num_classes)
    if tc.init_weights:
        init = load_checkpoint(tc.init_weights)
        state = init.get("model", init)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or len(missing) == len(model.state_dict()):
            raise ValueError(f"{tc.init_weights}: weights do not fit {config.model.name} (unexpected {unexpected[:5]})")
    pre = model.preprocess
    from multibox.data import eval_transform, train_transform

    if config.data.augment:
        dc = config.data
        transform = train_transform(
            pre.image_size, pre.mean, pre.std, expand_ratio=dc.expand_ratio, photometric=dc.photometric
        )
    else:
        transform = eval_transform(pre.image_size, pre.mean, pre.std)
    from multibox.data.loader import TransformedDataset, collate

    dataset = TransformedDataset(raw_train, transform, seed=tc.seed)

    model.to(device)
    if tc.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, tc)
    micro = tc.batch_size // world
    if micro * world != tc.batch_size:
        raise ValueError(f"train.batch_size {tc.batch_size} is not divisible by the {world} processes")
    if micro % tc.grad_accum:
        raise ValueError(f"the per-process batch {micro} is not divisible by train.grad_accum {tc.grad_accum}")
    micro //= tc.grad_accum
    probe = ResumableBatchSampler(len(dataset), micro, tc.seed, rank=rank, world_size=world)
    max_iters = tc.max_iters
    if tc.epochs is not None:
        max_iters = max(1, tc.epochs * probe.batches_per_epoch // tc.grad_accum)
    factor = LRFactor(
        schedule=tc.schedule,
        max_iters=max_iters,
        warmup_iters=tc.warmup_iters,
        warmup_factor=tc.warmup_factor,
        milestones=tc.milestones,
        gamma=tc.gamma,
        min_factor=tc.min_lr_factor,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    scaler = torch.amp.GradScaler(device.type, enabled=tc.amp == "fp16")

    step = 0
    if resume == "auto":
        resume = out_dir / "last.pt" if (out_dir / "last.pt").is_file() else None
    if resume is not None:
        ckpt = load_checkpoint(resume, map_location=device)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        step = int(ckpt["step"])
        restore_rng_state(ckpt["rng"])

    train_model: nn.Module = model
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    sampler = ResumableBatchSampler(
        len(dataset), micro, tc.seed, rank=rank, world_size=world, start_batch=step * tc.grad_accum
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=config.data.num_workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        persistent_workers=config.data.num_workers > 0,
    )
    priors = model.priors.to(device)
    logger = _Logger(out_dir, enabled=rank == 0)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(config_to_dict(config), indent=2))

    def checkpoint_dict() -> dict[str, Any]:
        return {
            "model": model.state_dict(),
            "model_args": model_args(model),
            "preprocess": {"image_size": list(pre.image_size), "mean": list(pre.mean), "std": list(pre.std)},
            "classes": list(classes),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "step": step,
            "rng": capture_rng_state(),
            "config": config_to_dict(config),
        }

    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=max_iters, initial=step, desc="train", dynamic_ncols=True)
    batches = iter(loader)
    model.train()
    last: dict[str, float] = {}
    seen, t_start, ckpt_path, wait_total = 0, time.perf_counter(), None, 0.0
    try:
        while step < max_iters:
            optimizer.zero_grad(set_to_none=True)
            sums = {"loss": 0.0, "loc": 0.0, "conf": 0.0}
            t0 = time.perf_counter()
            wait = 0.0
            for k in range(tc.grad_accum):
                t_wait = time.perf_counter()
                images, items = next(batches)
                wait += time.perf_counter() - t_wait
                ids = [t.get("image_id") for t in items]
                images = images.to(device, non_blocking=True)
                if tc.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                targets = [(t["boxes"].to(device), t["labels"].to(device)) for t in items]
                sync = k == tc.grad_accum - 1 or world == 1
                with nullcontext() if sync else train_model.no_sync(), autocast_context(device, tc.amp):
                    pred = train_model(images)
                losses = multibox_loss(pred, targets, priors)
                if not torch.isfinite(losses["total"]):
                    raise NonFiniteLossError(
                        f"non-finite loss at step {step} (loc={float(losses['loc'].detach())}, "
                        f"conf={float(losses['conf'].detach())}); "
                        f"images of the batch: {list(ids)}. Check these annotations (`multibox scan`) or lower train.lr"
                    )
                scaler.scale(losses["total"] / tc.grad_accum).backward()
                for key, name in (("loss", "total"), ("loc", "loc"), ("conf", "conf")):
                    sums[key] += float(losses[name].detach()) / tc.grad_accum
                seen += images.shape[0] * world
            if tc.clip_grad_norm is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), tc.clip_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            dt = time.perf_counter() - t0
            wait_total += wait
            last = {
                **sums,
                "lr": optimizer.param_groups[0]["lr"],
                "img_s": tc.batch_size / max(dt, 1e-9),
                "data_wait": wait / max(dt, 1e-9),
            }
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{sums['loss']:.3f}", lr=f"{last['lr']:.2e}", img_s=f"{last['img_s']:.1f}")
            if step % tc.log_every == 0 or step == max_iters:
                logger.log(step, {f"train/{k}": v for k, v in last.items()})
            if rank == 0 and ((tc.ckpt_every and step % tc.ckpt_every == 0) or step == max_iters):
                ckpt_path = save_checkpoint(out_dir / "last.pt", checkpoint_dict())
            for fn in callbacks:
                fn(step, last)
    finally:
        if bar is not None:
            bar.close()
        logger.close()
        if owns_pg:
            dist.destroy_process_group()
    elapsed = time.perf_counter() - t_start
    return TrainResult(ckpt_path, step, last, seen / max(elapsed, 1e-9), out_dir, wait_total / max(elapsed, 1e-9))

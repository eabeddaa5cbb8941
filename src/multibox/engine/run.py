"""A training run composed from a config: data, model (priors fitted to the data), optimizer, schedule, resume state.

:func:`build_run` is the only place a training config is read; the :class:`~multibox.engine.trainer.
Trainer` and its hooks take the :class:`TrainingRun` it returns. Under ``torchrun`` (``WORLD_SIZE > 1``) the model is
wrapped in DistributedDataParallel (gloo on CPU, nccl on CUDA) and each rank reads its own shard of the batches.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from multibox.config import Config
from multibox.engine.builders import build_dataset, build_model, build_optimizer
from multibox.engine.rng import restore_rng_state
from multibox.engine.sampling import ResumableBatchSampler
from multibox.engine.schedule import LRFactor
from multibox.runtime import auto_amp, resolve_device
from multibox.weights.checkpoint import load_model_state
from multibox.weights.io import CheckpointError, load_checkpoint

__all__ = ["TrainingRun", "build_run", "fit_model_priors", "freeze_modules", "set_train_mode"]


@dataclass
class TrainingRun:
    """Everything a training loop needs, built from a config.

    Attributes:
        config: the run's config.
        model: the SSD being trained (unwrapped).
        train_model: ``model`` or its DistributedDataParallel wrapper (what the forward pass calls).
        loader: endless batches ``(images Tensor[b, 3, H, W], targets)`` starting at ``step``.
        optimizer, scheduler, scaler: SGD/AdamW, the LambdaLR of ``lr_factor``, the fp16 grad scaler.
        lr_factor: the schedule (its ``max_iters`` may be lowered by a time budget).
        device: where training runs.
        amp: the mixed precision the steps run in (``train.amp``, with ``auto`` resolved for ``device``).
        classes: the foreground class names (label ``k`` is ``classes[k - 1]``).
        priors: ``Tensor[A, 4]`` the model's default boxes on ``device``.
        step: optimizer steps already taken (non-zero when resumed).
        max_iters: the step to stop at.
        micro_batch: images per forward pass and process.
        rank, world: this process's DDP rank and the number of processes.
        owns_process_group: whether the run started the process group (and must end it).
        out_dir: where checkpoints and logs go.
        prior_fit: what :func:`fit_model_priors` decided (None when the config names fixed priors, or on resume).
        elapsed_s: training seconds spent before this run (from a resumed checkpoint), for the time budget.
        resume_state: the resumed checkpoint's entries that hooks keep (``ema``...), empty on a fresh start.
        skipped_when_built: training images the reader left out when it was built (unreadable or unusable files,
            ``data.on_error=skip``; it warned naming them).
    """

    config: Config
    model: nn.Module
    train_model: nn.Module
    loader: Any
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    lr_factor: LRFactor
    device: torch.device
    classes: tuple[str, ...]
    priors: Tensor
    step: int
    max_iters: int
    micro_batch: int
    rank: int = 0
    world: int = 1
    owns_process_group: bool = False
    out_dir: Path = field(default_factory=lambda: Path("runs/exp"))
    prior_fit: Any = None
    elapsed_s: float = 0.0
    resume_state: dict[str, Any] = field(default_factory=dict)
    skipped_when_built: int = 0
    amp: str = "none"

    @property
    def is_main(self) -> bool:
        """Whether this process logs and writes files (rank 0)."""
        return self.rank == 0


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
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        return dist.get_rank(), dist.get_world_size(), True
    return dist.get_rank(), dist.get_world_size(), False


def _device(name: str, world: int) -> torch.device:
    device = resolve_device(name)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


def set_train_mode(model: nn.Module, freeze_bn: bool, frozen: tuple[str, ...] = ()) -> None:
    """``model.train()``; with ``freeze_bn`` the backbone's BatchNorm layers stay in eval mode, and so do those of
    the ``frozen`` modules (name prefixes).

    Frozen layers normalise with their (pretrained) running statistics and do not update them; their affine
    weights still learn unless their module is frozen. That is the usual fine-tuning choice when batches are small
    or unlike the pretraining data, where batch statistics are noisy estimates of the population's.
    """
    model.train()
    for name, m in model.named_modules():
        if not isinstance(m, nn.modules.batchnorm._BatchNorm):
            continue
        if (freeze_bn and name.startswith("backbone.")) or _under(name, frozen):
            m.eval()


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def freeze_modules(model: nn.Module, prefixes: tuple[str, ...]) -> int:
    """Stop training the parameters of the modules named by ``prefixes``; returns how many tensors were frozen.

    Raises:
        ValueError: a prefix names no module of the model.
    """
    names = {name for name, _ in model.named_modules()}
    unknown = [p for p in prefixes if p not in names]
    if unknown:
        raise ValueError(f"train.freeze: the model has no module(s) {unknown}; e.g. {sorted(names)[1:6]}")
    frozen = 0
    for name, p in model.named_parameters():
        if _under(name, prefixes):
            p.requires_grad_(False)
            frozen += 1
    return frozen


def fit_model_priors(model: nn.Module, dataset: Any, config: Config) -> tuple[nn.Module, Any]:
    """Measure how the model's default boxes cover ``dataset``'s boxes and refit them if ``model.priors`` says so.

    ``model.priors`` ``auto`` refits only when coverage is poor (:func:`~multibox.data.prior_fit.fit_prior_spec`),
    ``fit`` searches anyway (the fitted spec must still win clearly). A refitted model is rebuilt with the fitted
    spec, which its ``config_dict()`` (and so every checkpoint) records.

    Returns:
        ``(model, fit)``: the model to train and the :class:`~multibox.data.prior_fit.PriorFit`.
    """
    from multibox.data import normalized_targets
    from multibox.data.prior_fit import fit_prior_spec

    boxes, labels = normalized_targets(dataset)
    fit = fit_prior_spec(
        boxes,
        labels,
        list(dataset.classes),
        model.prior_spec,
        model.image_size,
        model.feature_maps,
        force=config.model.priors == "fit",
        seed=config.train.seed,
    )
    if fit.changed:
        model = build_model(config.model, model.num_classes, prior_spec=fit.spec)
    return model, fit


def _num_classes(config: Config, classes: tuple[str, ...]) -> int:
    num_classes = config.model.num_classes or len(classes) + 1
    if num_classes != len(classes) + 1:
        raise ValueError(
            f"model.num_classes is {num_classes} but the dataset has {len(classes)} classes (+1 background = "
            f"{len(classes) + 1}); leave model.num_classes unset to take it from the data"
        )
    return num_classes


def _init_from(model: nn.Module, path: str, name: str) -> None:
    init = load_checkpoint(path)
    state = init.get("model", init)
    missing, unexpected = load_model_state(model, state, path, strict=False)
    if unexpected or len(missing) == len(model.state_dict()):
        raise ValueError(f"{path}: weights do not fit {name} (unexpected {unexpected[:5]})")


def _train_dataset(config: Config, raw: Any, model: nn.Module) -> Any:
    from multibox.data import eval_transform, train_transform
    from multibox.data.loader import TransformedDataset

    pre, dc = model.preprocess, config.data
    if hasattr(raw, "decode_max_side"):  # large JPEGs decoded no larger than the augmentation can use
        from multibox.data import train_decode_side

        raw.decode_max_side = train_decode_side(pre.image_size)
    if dc.augment:
        transform = train_transform(
            pre.image_size, pre.mean, pre.std, expand_ratio=dc.expand_ratio, photometric=dc.photometric
        )
    else:
        transform = eval_transform(pre.image_size, pre.mean, pre.std)
    return TransformedDataset(raw, transform, seed=config.train.seed)


def _micro_batch(config: Config, world: int) -> int:
    tc = config.train
    micro = tc.batch_size // world
    if micro * world != tc.batch_size:
        raise ValueError(f"train.batch_size {tc.batch_size} is not divisible by the {world} processes")
    if micro % tc.grad_accum:
        raise ValueError(f"the per-process batch {micro} is not divisible by train.grad_accum {tc.grad_accum}")
    return micro // tc.grad_accum


def _lr_factor(config: Config, batches_per_epoch: int) -> LRFactor:
    tc = config.train
    max_iters = tc.max_iters
    if tc.epochs is not None:
        max_iters = max(1, tc.epochs * batches_per_epoch // tc.grad_accum)
    return LRFactor(
        schedule=tc.schedule,
        max_iters=max_iters,
        warmup_iters=tc.warmup_iters,
        warmup_factor=tc.warmup_factor,
        milestones=tc.milestones,
        gamma=tc.gamma,
        min_factor=tc.min_lr_factor,
    )


def _model(config: Config, raw: Any, num_classes: int, resume_ckpt: dict | None) -> tuple[nn.Module, Any]:
    """The network: rebuilt from the checkpoint being resumed (its priors included), or built and fitted."""
    if resume_ckpt is not None:
        from multibox.weights.checkpoint import model_from_checkpoint

        return model_from_checkpoint(resume_ckpt), None
    model = build_model(config.model, num_classes)
    fit = None
    if config.model.priors in ("auto", "fit"):
        model, fit = fit_model_priors(model, raw, config)
    if config.train.init_weights:
        _init_from(model, config.train.init_weights, config.model.name)
    return model, fit


# What a checkpoint needs to continue a run (last.pt has them; best.pt and converted weights hold the model only).
_TRAINING_STATE = ("optimizer", "scheduler", "step", "rng")


def _resumable(ckpt: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """``ckpt`` if it holds a training state to continue from, else a :class:`CheckpointError` saying what to do."""
    missing = [k for k in _TRAINING_STATE if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"{path}: cannot resume from it: it holds model weights without a training state (no {', '.join(missing)}"
            f"); resume from a run's last.pt, or start from these weights with --set train.init_weights={path}"
        )
    return ckpt


def build_run(config: Config, resume: str | Path | None = None) -> TrainingRun:
    """Compose a training run from ``config``.

    Args:
        config: the run.
        resume: a checkpoint of a previous run of the same config to continue from; ``"auto"``: the ``last.pt`` of
            ``train.out_dir`` if it exists (else a fresh start).

    Raises:
        ValueError: a class count that disagrees with the data, batch sizes that do not divide, bad weights.
        DatasetError: (a ``ValueError``) no image of the training set has a box.
    """
    from multibox.data.checks import skipped_when_built

    tc = config.train
    rank, world, owns_pg = _distributed()
    device = _device(tc.device, world)
    out_dir = Path(tc.out_dir)
    _seed_everything(tc.seed)
    ckpt = _resume_checkpoint(resume, out_dir, device)
    raw = _training_set(config)
    classes = tuple(raw.classes)
    model, fit = _model(config, raw, _num_classes(config, classes), ckpt)
    dataset = _train_dataset(config, raw, model)
    _place_model(model, tc, device)
    optimizer = build_optimizer(model, tc)
    micro = _micro_batch(config, world)
    probe = ResumableBatchSampler(len(dataset), micro, tc.seed, rank=rank, world_size=world)
    factor = _lr_factor(config, probe.batches_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    amp = auto_amp(device) if tc.amp == "auto" else tc.amp
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    step, elapsed = _restore_training_state(ckpt, optimizer, scheduler, scaler)
    factor = scheduler.lr_lambdas[0]  # the same object, its state restored with the scheduler's
    train_model: nn.Module = model
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    sampler = ResumableBatchSampler(
        len(dataset), micro, tc.seed, rank=rank, world_size=world, start_batch=step * tc.grad_accum
    )
    return TrainingRun(
        config=config,
        model=model,
        train_model=train_model,
        loader=_loader(dataset, sampler, config.data.num_workers, device),
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        lr_factor=factor,
        device=device,
        amp=amp,
        classes=classes,
        priors=model.priors.to(device),
        step=step,
        max_iters=factor.max_iters,
        micro_batch=micro,
        rank=rank,
        world=world,
        owns_process_group=owns_pg,
        out_dir=out_dir,
        prior_fit=fit,
        elapsed_s=elapsed,
        resume_state={k: ckpt[k] for k in ("ema",) if ckpt is not None and k in ckpt},
        skipped_when_built=skipped_when_built(raw),
    )


def _resume_checkpoint(resume: str | Path | None, out_dir: Path, device: torch.device) -> dict[str, Any] | None:
    """The checkpoint to continue from (``"auto"``: ``out_dir/last.pt`` if it exists), checked to hold a training
    state; None for a fresh start."""
    if resume == "auto":
        resume = out_dir / "last.pt" if (out_dir / "last.pt").is_file() else None
    return _resumable(load_checkpoint(resume, map_location=device), resume) if resume is not None else None


def _training_set(config: Config) -> Any:
    """The raw training set; a DatasetError (exit 3) when it has no image or no box."""
    from multibox.data.checks import DatasetError

    raw = build_dataset(config.data, "train", config.model.image_size)
    if len(raw) == 0:  # data problems (exit 3), as VOCDetection's own checks
        raise DatasetError(f"the training set {raw!r} has no image (an empty split file, or every file skipped?)")
    if hasattr(raw, "num_boxes") and raw.num_boxes() == 0:
        raise DatasetError(f"no image of the training set {raw!r} has a box: there is nothing to learn")
    return raw


def _place_model(model: nn.Module, tc: Any, device: torch.device) -> None:
    """Freeze the configured modules and move the model to the device (channels_last if asked)."""
    freeze_modules(model, tc.freeze)
    model.to(device)
    if tc.channels_last:
        model.to(memory_format=torch.channels_last)


def _restore_training_state(
    ckpt: dict[str, Any] | None, optimizer: Any, scheduler: Any, scaler: torch.amp.GradScaler
) -> tuple[int, float]:
    """Load the optimizer, schedule, scaler and RNG states of the run being resumed; its step and elapsed seconds
    (0, 0.0 for a fresh start)."""
    if ckpt is None:
        return 0, 0.0
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    restore_rng_state(ckpt["rng"])
    return int(ckpt["step"]), float(ckpt.get("elapsed_s", 0.0))


def _loader(
    dataset: Any, sampler: ResumableBatchSampler, num_workers: int, device: torch.device
) -> torch.utils.data.DataLoader:
    """The training DataLoader over ``sampler``'s batches."""
    from multibox.data.loader import collate

    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
    )

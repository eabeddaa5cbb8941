"""Checkpoints: atomic writes, safe loading, full training state including every RNG.

A checkpoint is a dict of tensors and plain Python values (no pickled classes), so that it loads with
``torch.load(..., weights_only=True)``. It holds the model's state and build arguments (so that the network can
be rebuilt without the config), the preprocessing (mean, std, input size) and class names that travel with the
weights, and, for resuming, the optimizer, scheduler, grad scaler, step and RNG states.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CHECKPOINT_VERSION",
    "capture_rng_state",
    "load_checkpoint",
    "load_safetensors",
    "model_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
    "save_safetensors",
]


#: The version of the checkpoint layout written by :func:`model_checkpoint` (absent in older checkpoints: 0).
CHECKPOINT_VERSION = 1


def model_checkpoint(
    model: torch.nn.Module, classes: list[str] | tuple[str, ...], config: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    """What inference needs of a trained model: weights, build arguments, preprocessing, class names (and config).

    Args:
        model: an SSD built by a registered builder (``model.config_dict()`` rebuilds it).
        classes: the foreground class names, label ``k`` is ``classes[k - 1]``.
        config: the training config as plain dicts, if any.
        **extra: further plain entries (the training state of a ``last.pt``, the metrics of a ``best.pt``).

    Returns:
        ``{"format_version", "model", "model_args", "preprocess", "classes", ["config"], ...}``.
    """
    ckpt: dict[str, Any] = {
        "format_version": CHECKPOINT_VERSION,
        "model": model.state_dict(),
        "model_args": model.config_dict(),
        "preprocess": model.preprocess.to_dict(),
        "classes": list(classes),
    }
    if config is not None:
        ckpt["config"] = config
    ckpt.update(extra)
    return ckpt


def capture_rng_state() -> dict[str, Any]:
    """The state of Python's, NumPy's and torch's (CPU and CUDA) generators, as tensors and ints."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 - the legacy global state is what users seed
    state: dict[str, Any] = {
        "python": {"version": version, "mt": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Undo :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["mt"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, checkpoint: dict[str, Any]) -> Path:
    """Write ``checkpoint`` to ``path`` atomically: a temporary file in the same folder, fsync, then rename.

    A crash mid-write leaves the previous checkpoint intact, never a truncated file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``: tensors and plain values only).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is truncated, not a torch checkpoint, or holds something other than a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises RuntimeError/UnpicklingError/EOFError/... for bad files
        raise ValueError(f"{path}: cannot be read as a torch checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(ckpt).__name__}")
    return ckpt


def save_safetensors(
    path: str | Path, state_dict: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> Path:
    """Save weights as safetensors (metadata: string to string, e.g. the JSON of the model's build arguments)."""
    try:
        from safetensors.torch import save_file
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "saving safetensors needs the 'safetensors' package: pip install 'multibox[safetensors]'"
        ) from e
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    save_file(tensors, str(path), metadata=metadata or {})
    return path


def load_safetensors(path: str | Path) -> dict[str, Any]:
    """Load a safetensors file as ``{"model": state_dict, "metadata": {...}}``.

    The metadata entries ``model_args``, ``classes`` and ``preprocess`` (JSON, as ``multibox convert
    --to-safetensors`` writes them) are also returned decoded at the top level, as in a ``.pt`` checkpoint.
    """
    try:
        from safetensors import safe_open
    except ImportError as e:  # pragma: no cover
        raise ImportError(
            "reading safetensors needs the 'safetensors' package: pip install 'multibox[safetensors]'"
        ) from e
    try:
        with safe_open(str(path), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
            metadata = f.metadata() or {}
    except Exception as e:
        raise ValueError(f"{path}: cannot be read as safetensors ({type(e).__name__}: {e})") from e
    ckpt: dict[str, Any] = {"model": state, "metadata": metadata}
    for key in ("model_args", "classes", "preprocess"):
        if key in metadata:
            try:
                ckpt[key] = json.loads(metadata[key])
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: metadata {key!r} is not valid JSON ({e})") from e
    return ckpt

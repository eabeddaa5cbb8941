"""Weight files: atomic, checksummed ``.pt`` writes, safe loading, ``.safetensors`` both ways.

A file is a dict of tensors and plain Python values (no pickled classes), so that it loads with
``torch.load(..., weights_only=True)``: a file that would run code when unpickled is refused, and nothing in it
runs. What a multibox checkpoint holds is defined in :mod:`multibox.weights.checkpoint`; this module reads and
writes any such dict (also the foreign weights the converters read).

Integrity. :func:`save_checkpoint` stores ``model_sha256``, a SHA-256 over the model state's names, dtypes, shapes
and bytes (:func:`state_dict_sha256`), and :func:`load_checkpoint` checks it: torch's zip container does not notice
flipped bytes inside a tensor (its CRC-32 is not verified on load), the checksum does. Weights that are NaN or
infinite are refused on load. Checkpoints written before the checksum existed load without the check.

Writes go to a temporary file ``.<name>~<host>~<pid>~<random>.tmp`` in the same folder, then replace the target.
A killed write leaves that file behind; the next successful save of the same target removes such orphans when
their writer is gone (same host, process no longer running) or, when that cannot be known (another host, or the
older ``.<name>.<random>.tmp`` names), when they are older than :data:`ORPHAN_AGE_S`.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import pickle
import re
import socket
import stat
import tempfile
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from multibox.cli_errors import interrupt_behind
from multibox.files import OutputWriteError, write_error
from multibox.io.regular import file_kind

__all__ = [
    "ORPHAN_AGE_S",
    "CheckpointError",
    "load_checkpoint",
    "load_safetensors",
    "save_checkpoint",
    "save_safetensors",
    "state_dict_sha256",
    "verify_checkpoint",
]


#: Temporary files of unknown writers older than this (seconds) are orphans of a killed write.
ORPHAN_AGE_S = 3600.0


class CheckpointError(ValueError):
    """A checkpoint cannot be used: unreadable, refused (code in it), corrupt, non-finite, or not fitting the model;
    the message names the file."""


def state_dict_sha256(state: Mapping[str, Any]) -> str:
    """SHA-256 (hex) over a state dict's names, dtypes, shapes and bytes, in name order.

    Entries that are not tensors contribute their name and type name only.
    """
    h = hashlib.sha256()
    for name in sorted(state):
        value = state[name]
        h.update(name.encode() + b"\0")
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous().reshape(-1)
            h.update(f"{t.dtype}{list(value.shape)}".encode() + b"\0")
            h.update(memoryview(t.view(torch.uint8).numpy()))
        else:
            h.update(type(value).__name__.encode() + b"\0")
    return h.hexdigest()


def _model_state(ckpt: Mapping[str, Any]) -> Mapping[str, Any] | None:
    state = ckpt.get("model")
    return state if isinstance(state, Mapping) and all(isinstance(k, str) for k in state) else None


def _temp_prefix(path: Path) -> str:
    return f".{path.name}~{socket.gethostname()}~{os.getpid()}~"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _is_orphan(tmp: Path, target: Path, now: float) -> bool:
    m = re.fullmatch(rf"\.{re.escape(target.name)}~(.+)~(\d+)~\w+\.tmp", tmp.name)
    if m and m.group(1) == socket.gethostname():
        return int(m.group(2)) != os.getpid() and not _alive(int(m.group(2)))
    try:
        return now - tmp.stat().st_mtime > ORPHAN_AGE_S
    except OSError:
        return False


def _remove_orphans(path: Path) -> None:
    """Delete temporary files of earlier, killed writes of ``path`` (see the module docstring)."""
    now, removed, name = time.time(), [], glob.escape(path.name)
    for tmp in [*path.parent.glob(f".{name}~*.tmp"), *path.parent.glob(f".{name}.*.tmp")]:
        if _is_orphan(tmp, path, now):
            try:
                tmp.unlink()
            except OSError:  # gone already, or not ours to delete
                continue
            removed.append(tmp.name)
    if removed:
        shown = ", ".join(removed[:3]) + (", ..." if len(removed) > 3 else "")
        warnings.warn(
            f"removed {len(removed)} temporary file(s) of interrupted writes of {path}: {shown}", stacklevel=3
        )


def save_checkpoint(path: str | Path, checkpoint: dict[str, Any]) -> Path:
    """Write ``checkpoint`` to ``path`` atomically: a temporary file in the same folder, fsync, then rename.

    The model state's checksum is stored as ``model_sha256``. A crash mid-write leaves the previous checkpoint
    intact, never a truncated file; orphan temporary files of earlier killed writes are removed after a success.

    Raises:
        multibox.files.OutputWriteError: (an ``OSError``) the file cannot be written (disk full, read-only, no
            permission); the message names the file, and the previous checkpoint is still there.
    """
    path = Path(path)
    state = _model_state(checkpoint)
    if state is not None:
        checkpoint = {**checkpoint, "model_sha256": state_dict_sha256(state)}
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        interrupt = interrupt_behind(e)
        if interrupt is not None and interrupt is not e:
            # Ctrl-C inside torch.save: its zip writer's exit then fails on the half-written record; the cause is the
            # Ctrl-C, so that is what the caller gets (not the writer's RuntimeError).
            raise interrupt from None
        if isinstance(e, OSError):
            err = write_error(path, e, "checkpoint")
            if path.is_file():
                err.args = (f"{err.args[0]}; the previous {path.name} is intact",)
            raise err from e
        raise
    _remove_orphans(path)
    return path


def _refused(path: Path, e: Exception) -> CheckpointError:
    """The error for a file ``torch.load(weights_only=True)`` refused: more than tensors and plain values, or not a
    pickle at all. Nothing in the file ran (the restricted unpickler stops before calling anything)."""
    m = re.search(r"GLOBAL ([\w.]+)", str(e))
    if m:
        return CheckpointError(
            f"{path}: refused: it asks to call {m.group(1)} when loaded. multibox checkpoints are tensors and plain "
            "values, loaded without running anything from the file (weights_only); nothing in this file was run"
        )
    reason = re.search(r"Unsupported [^\n]*", str(e))
    detail = f" ({reason.group(0).strip()[:100]})" if reason else ""
    return CheckpointError(
        f"{path}: cannot be read as a torch checkpoint: not a pickle of tensors and plain values{detail}; nothing in "
        "this file was run"
    )


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", verify: bool = True) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``: tensors and plain values only; no code in it runs).

    Args:
        path: a ``.pt`` checkpoint (or ``.safetensors``).
        map_location: where the tensors go.
        verify: check the model state's checksum (when the file has one) and that its weights are finite.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: (a ``ValueError``) the file is not a regular file, is truncated or not a torch checkpoint,
            holds something other than a dict, would run code when unpickled, fails its checksum or has
            NaN/infinite weights.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {path} does not exist") from None
    if not stat.S_ISREG(mode):  # a named pipe would block the read forever
        raise CheckpointError(f"{path}: cannot be read as a checkpoint: not a regular file: {file_kind(mode)}")
    if path.suffix == ".safetensors":
        ckpt = load_safetensors(path)
    else:
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                ckpt = torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as e:
            if "Weights only load failed" in str(e):
                raise _refused(path, e) from e
            raise CheckpointError(f"{path}: cannot be read as a torch checkpoint (UnpicklingError: {e})") from e
        except Exception as e:  # torch raises RuntimeError/EOFError/... for bad files
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
            raise CheckpointError(f"{path}: cannot be read as a torch checkpoint ({type(e).__name__}: {first})") from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(ckpt).__name__}")
    if verify:
        verify_checkpoint(ckpt, path)
    return ckpt


def verify_checkpoint(ckpt: Mapping[str, Any], source: str | Path = "checkpoint") -> None:
    """Check a loaded checkpoint's ``model_sha256`` (if it has one) and that its model weights are finite.

    Raises:
        CheckpointError: the checksum differs (the file is corrupt) or a weight is NaN/infinite (the message names
            ``source`` and the first bad tensor).
    """
    state = _model_state(ckpt)
    if state is None:
        return
    expected = ckpt.get("model_sha256")
    if expected is not None and state_dict_sha256(state) != expected:
        raise CheckpointError(
            f"{source}: corrupt: its weights do not match the checksum stored with them (the file changed after it "
            "was written: a disk or copy error?); use another copy of it"
        )
    for name, t in state.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise CheckpointError(
                f"{source}: weight {name} has {bad} NaN/infinite value(s) of {t.numel()}: the model diverged "
                "before this checkpoint was written; use an earlier checkpoint"
            )


def save_safetensors(
    path: str | Path, state_dict: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> Path:
    """Save weights as safetensors (metadata: string to string, e.g. the JSON of the model's build arguments).

    Raises:
        multibox.files.OutputWriteError: (an ``OSError``) the file cannot be written; the message names it.
    """
    try:
        from safetensors.torch import save_file
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "saving safetensors needs the 'safetensors' package: pip install 'multibox[safetensors]'"
        ) from e
    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata=metadata or {})
    except OSError as e:
        raise write_error(path, e, "safetensors file") from e
    except Exception as e:  # safetensors' own error for a failed write (SafetensorError: "I/O error: ...")
        raise OutputWriteError(f"cannot write safetensors file {path}: {e}") from e
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
        raise CheckpointError(f"{path}: cannot be read as safetensors ({type(e).__name__}: {e})") from e
    ckpt: dict[str, Any] = {"model": state, "metadata": metadata}
    for key in ("model_args", "classes", "preprocess"):
        if key in metadata:
            try:
                ckpt[key] = json.loads(metadata[key])
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{path}: metadata {key!r} is not valid JSON ({e})") from e
    return ckpt

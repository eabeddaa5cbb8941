"""What the command line says about an exception: its :class:`~multibox.cli.ExitCode` and one message for users.

Kinds are recognised by the names of the exception's classes (its MRO), so that this module imports neither torch
nor the modules that define them (``multibox detect --onnx`` runs without torch). An error raised in a DataLoader
worker arrives re-raised by torch with the worker's whole traceback as its message; :func:`unwrap_worker_error`
takes the original message back out of it.
"""

from __future__ import annotations

import errno
import re
import traceback
from enum import IntEnum
from pathlib import Path

from multibox.user_input import clip

__all__ = ["EXIT_CODES_HELP", "ExitCode", "describe", "interrupt_behind", "unwrap_worker_error"]


class ExitCode(IntEnum):
    """What ``multibox`` returns: one code per kind of outcome."""

    OK = 0
    SKIPPED = 1  # finished, but some inputs were skipped (detect, eval, train) or problems found (scan)
    USAGE = 2  # bad command-line argument or setting (argparse's code too)
    BAD_INPUT = 3  # an input file is missing, unreadable or invalid (image, dataset, checkpoint, model)
    DIVERGED = 4  # training stopped: the loss became NaN or infinite
    WRITE_FAILED = 5  # an output cannot be written: disk full, read-only, no permission
    MISSING_PACKAGE = 6  # an optional package is not installed
    LOCKED = 7  # the output folder is in use by another training run
    OUT_OF_MEMORY = 8  # out of memory (RAM or GPU)
    CHECK_FAILED = 9  # export: onnxruntime disagrees with PyTorch
    INTERNAL = 70  # a bug in multibox (sysexits' EX_SOFTWARE)
    INTERRUPTED = 130  # Ctrl-C (the shells' 128 + SIGINT)


#: The ``--help`` epilog of ``multibox``.
EXIT_CODES_HELP = """exit codes:
  0    success
  1    finished, but some inputs were skipped (detect, eval, train) or problems were found (scan)
  2    bad command-line argument or setting
  3    missing, unreadable or invalid input file (image, dataset, checkpoint, model)
  4    training stopped: the loss became NaN or infinite
  5    cannot write an output (disk full, read-only file system, no permission)
  6    an optional package is not installed
  7    the output folder is in use by another training run
  8    out of memory
  9    export check: onnxruntime disagrees with PyTorch
  70   internal error (a bug): rerun with --debug and report it
  130  interrupted (Ctrl-C)
Errors print one line, without a traceback; `multibox --debug VERB ...` or MULTIBOX_DEBUG=1 adds it."""

_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}
# Errors about a file's contents (UnicodeError, JSONDecodeError: a reader that did not name the file; still the file).
# (ConversionError, weights that do not have the layout `convert --from` names, is a bad argument: exit 2.)
_BAD_FILE = {"CheckpointError", "DatasetError", "BadInputError", "OnnxModelError", "UnicodeError", "JSONDecodeError"}
_WORKER = re.compile(r"\ACaught (\w+) in DataLoader worker process (\d+)\.\nOriginal Traceback", re.S)
_MESSAGE_LIMIT = 2000


def unwrap_worker_error(text: str) -> tuple[str, str] | None:
    """``(exception type name, original message)`` of a message torch's DataLoader built around a worker's error,
    or None when ``text`` is not one."""
    m = _WORKER.match(text)
    if m is None:
        return None
    last = text.rsplit("Traceback (most recent call last):", 1)[-1]
    lines = last.splitlines()
    # The traceback's frames are indented; the exception line (and its continuation lines) are not.
    start = next((i for i, line in enumerate(lines) if line and not line.startswith(" ")), len(lines))
    tail = "\n".join(lines[start:]).strip()
    name, _, message = tail.partition(": ")
    return name.rsplit(".", 1)[-1] or m.group(1), f"{message or tail} (in DataLoader worker {m.group(2)})"


def _where(e: BaseException) -> str:
    frames = traceback.extract_tb(e.__traceback__)
    if not frames:
        return ""
    f = frames[-1]
    return f" (at {Path(f.filename).name}:{f.lineno} in {f.name})"


def _kind(names: set[str], e: BaseException, message: str) -> tuple[ExitCode, str]:
    """``(code, prefix)`` of an exception whose classes are ``names``."""
    if "KeyboardInterrupt" in names:
        return ExitCode.INTERRUPTED, "interrupted"
    if "FloatingPointError" in names:
        return ExitCode.DIVERGED, "training stopped: "
    if "RunLockedError" in names:
        return ExitCode.LOCKED, "error: "
    if "OutputWriteError" in names or (isinstance(e, OSError) and e.errno in _NO_ROOM):
        return ExitCode.WRITE_FAILED, "error: "
    if "MemoryError" in names or "OutOfMemoryError" in names:
        return ExitCode.OUT_OF_MEMORY, "out of memory: "
    if "DataLoader worker" in message and "killed by signal" in message:
        return ExitCode.OUT_OF_MEMORY, "out of memory? "
    if "ImportError" in names and not (getattr(e, "name", None) or "").startswith("multibox"):
        return ExitCode.MISSING_PACKAGE, "missing package: "
    if "ExportMismatchError" in names:
        return ExitCode.CHECK_FAILED, "export check failed: "
    if "ConfigError" in names:
        return ExitCode.USAGE, "error: "
    if names & _BAD_FILE or "OSError" in names:
        return ExitCode.BAD_INPUT, "error: "
    if "ValueError" in names:
        return ExitCode.USAGE, "error: "
    return ExitCode.INTERNAL, "internal error: "


_HINTS = {
    ExitCode.DIVERGED: " Checkpoints written before this step are intact (--resume auto continues from the last one).",
    ExitCode.MISSING_PACKAGE: " Install it (pip install 'multibox[all]' brings every optional package).",
    ExitCode.OUT_OF_MEMORY: " Lower the batch size (train.batch_size, eval.batch_size, --batch-size) or "
    "data.num_workers.",
    ExitCode.INTERNAL: " This is a bug in multibox: rerun with --debug (or MULTIBOX_DEBUG=1) for the traceback and "
    "report it.",
}


def interrupt_behind(e: BaseException) -> KeyboardInterrupt | None:
    """The ``KeyboardInterrupt`` that ``e`` is, or that was being handled when ``e`` was raised (its ``__context__``
    chain), if any: a clean-up that failed because Ctrl-C cut its work short is still a Ctrl-C."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, KeyboardInterrupt):
            return cur
        seen.add(id(cur))
        cur = cur.__context__
    return None


def describe(e: BaseException, verb: str) -> tuple[ExitCode, str]:
    """The exit code and the one-line message (without the ``multibox <verb>: `` prefix) for ``e``.

    Args:
        e: what ended the verb.
        verb: the command (``train``, ``detect``...), for verb-specific advice.
    """
    names = {cls.__name__ for cls in type(e).__mro__}
    if interrupt_behind(e) is not None:
        names.add("KeyboardInterrupt")
    message = str(e) if not isinstance(e, KeyError) else str(e.args[0] if e.args else "")
    unwrapped = unwrap_worker_error(message)
    if unwrapped is not None:
        original, message = unwrapped
        names.add(original)
        if original in ("FileNotFoundError", "PermissionError", "IsADirectoryError"):
            names.add("OSError")
    code, prefix = _kind(names, e, message)
    if code == ExitCode.INTERRUPTED:
        resume = " (continue with --resume auto from the last checkpoint)" if verb in ("train", "demo") else ""
        return code, f"interrupted{resume}"
    if code == ExitCode.INTERNAL:
        message = f"{type(e).__name__}: {message}{_where(e)}"
    if not message:
        message = type(e).__name__
    text = clip(f"{prefix}{message}", _MESSAGE_LIMIT).rstrip()
    if code in _HINTS:
        text += ("" if text.endswith(".") else ".") + _HINTS[code]
    return code, text

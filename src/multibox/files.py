"""Image files for detection: finding them, naming their outputs, their JSON records, and the loop over batches.

Shared by :func:`multibox.engine.inference.detect` (PyTorch) and :func:`multibox.onnx_runtime.detect_onnx`
(onnxruntime); torch-free, so that ``multibox detect --onnx`` runs where torch is not installed.

What :func:`find_images` does with what it is given or finds:

- a file given by name is read whatever its suffix (the user asked for it);
- a folder is walked recursively in sorted order; files with an image suffix (:data:`IMAGE_SUFFIXES`, any case) are
  read, every other file is reported as skipped ("not an image suffix"), and so are named pipes, sockets and
  devices ("not a regular file", never opened: a pipe would block), empty files and broken links; links to
  folders are not followed (reported);
- ignored without a word: names starting with a dot (hidden files and folders), the sidecar files that file
  browsers write (:data:`IGNORED_NAMES`), and the output folder when it lies inside an input folder (so that a
  second run does not read the first one's pictures);
- a path that does not exist is reported as skipped ("no such file or folder").

Outputs keep the input's path relative to the folder it was found in (a file given by name: its name), so that
``a/x.jpg`` and ``b/x.jpg`` of one folder give ``a/x_det.jpg`` and ``b/x_det.jpg``; names that would still
coincide (``x.jpg`` and ``x.png``, or two folders with the same files) get ``_det_2.jpg``, ``_det_3.jpg``, ... in the
order of processing. Each record in ``detections.json`` names its output file.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "IGNORED_NAMES",
    "IMAGE_SUFFIXES",
    "BadInputError",
    "DetectionResults",
    "FoundImages",
    "InputImage",
    "OnError",
    "OutputWriteError",
    "Skipped",
    "SkippedInputWarning",
    "assign_outputs",
    "detection_record",
    "find_images",
    "run_detection",
    "write_error",
    "writing",
]

#: File suffixes read from a folder (compared case-insensitively).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
#: Sidecar files of file browsers, ignored in folders (as are names starting with a dot).
IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini", "ehthumbs.db"})
#: What to do with an input that cannot be read: report it and go on, or stop with its error.
OnError = Literal["skip", "raise"]

# errno values that mean the output cannot be written for lack of room.
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class BadInputError(OSError):
    """An input file that cannot be processed (with ``on_error="raise"``); the message names it and why."""


class OutputWriteError(OSError):
    """An output could not be written (disk full, read-only, no permission); the message names the file (``errno``
    and ``filename`` are those of the failed write)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else super().__str__()


class SkippedInputWarning(UserWarning):
    """An input file was skipped; the message names it and why."""


def write_error(path: str | Path, exc: OSError, what: str = "file") -> OutputWriteError:
    """An :class:`OutputWriteError` for ``exc`` raised while writing ``path``, saying why in plain words."""
    reason = exc.strerror or str(exc)
    if exc.errno in _NO_ROOM:
        reason = f"disk full ({reason})"
    elif exc.errno == errno.EROFS:
        reason = "read-only file system"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        reason = "permission denied"
    elif exc.errno == errno.EEXIST and exc.filename is not None:  # mkdir(exist_ok=True) met a file
        reason = f"{exc.filename} is a file, not a folder"
    elif exc.errno == errno.ENOTDIR:
        reason = "a part of its path is a file, not a folder"
    err = OutputWriteError(f"cannot write {what} {path}: {reason}")
    err.errno, err.strerror, err.filename = exc.errno, exc.strerror, str(path)
    return err


@contextmanager
def writing(path: str | Path, what: str = "file") -> Iterator[None]:
    """A block that writes ``path``: an ``OSError`` in it becomes :func:`write_error`'s :class:`OutputWriteError`."""
    try:
        yield
    except OutputWriteError:
        raise
    except OSError as e:
        raise write_error(path, e, what) from e


@dataclass(frozen=True)
class InputImage:
    """An image file to process.

    Attributes:
        path: the file.
        name: its path relative to the folder it was found in (a file given by name: its name).
    """

    path: Path
    name: Path


@dataclass(frozen=True)
class Skipped:
    """An input that was not processed: ``reason`` is a short category, ``detail`` the specifics."""

    path: Path
    reason: str
    detail: str = ""

    def problem(self) -> str:
        """``"<path>: <reason> (<detail>)"``."""
        return f"{self.path}: {self.reason}" + (f" ({self.detail})" if self.detail else "")

    def __str__(self) -> str:
        return f"{self.path}: skipped: {self.reason}" + (f" ({self.detail})" if self.detail else "")

    def to_dict(self) -> dict[str, str]:
        return {"image": str(self.path), "reason": self.reason, "detail": self.detail}


class DetectionResults(list):
    """The per-image records of a detection run (a list), with the inputs that were skipped.

    Attributes:
        skipped: :class:`Skipped` inputs, in the order met.
    """

    def __init__(self, records: Iterable[dict[str, Any]] = (), skipped: Iterable[Skipped] = ()) -> None:
        super().__init__(records)
        self.skipped: list[Skipped] = list(skipped)

    def summary(self) -> str:
        """``"3 images processed (12 detections); 2 skipped (1 cannot decode, 1 not an image suffix)"``."""
        n = sum(len(r["detections"]) for r in self)
        text = f"{_count(len(self), 'image')} processed ({_count(n, 'detection')})"
        if self.skipped:
            counts: dict[str, int] = {}
            for s in self.skipped:
                counts[s.reason] = counts.get(s.reason, 0) + 1
            text += f"; {len(self.skipped)} skipped ({', '.join(f'{v} {k}' for k, v in counts.items())})"
        return text


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _ignored(name: str) -> bool:
    return name.startswith(".") or name.lower() in IGNORED_NAMES


def _check_file(path: Path, name: Path, require_suffix: bool) -> InputImage | Skipped:
    """A found or given file as an :class:`InputImage`, or why it is skipped (never opens it)."""
    if require_suffix and path.suffix.lower() not in IMAGE_SUFFIXES:
        return Skipped(path, "not an image suffix", path.suffix or "no suffix")
    try:
        st = path.stat()  # follows links
    except FileNotFoundError:
        return Skipped(path, "broken link" if path.is_symlink() else "no such file or folder")
    except OSError as e:
        return Skipped(path, "unreadable", e.strerror or str(e))
    if not stat.S_ISREG(st.st_mode):
        return Skipped(path, "not a regular file", "a named pipe, socket or device is never opened")
    if st.st_size == 0:
        return Skipped(path, "empty file", "0 bytes")
    return InputImage(path, name)


def _walk(folder: Path, exclude: Path | None) -> Iterable[InputImage | Skipped]:
    errors: list[OSError] = []  # folders os.walk cannot list

    def unreadable() -> Iterable[Skipped]:
        while errors:
            e = errors.pop(0)
            yield Skipped(Path(e.filename or folder), "unreadable folder", e.strerror or str(e))

    for dirpath, dirnames, filenames in os.walk(folder, onerror=errors.append, followlinks=False):
        yield from unreadable()
        here = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            sub = here / d
            if _ignored(d) or (exclude is not None and sub.resolve() == exclude):
                continue
            if sub.is_symlink():
                yield Skipped(sub, "link to a folder", "not followed")
                continue
            keep.append(d)
        dirnames[:] = keep
        for f in sorted(filenames):
            if not _ignored(f):
                yield _check_file(here / f, (here / f).relative_to(folder), require_suffix=True)
    yield from unreadable()


@dataclass
class FoundImages:
    """What :func:`find_images` found: the images to process and the inputs skipped."""

    images: list[InputImage]
    skipped: list[Skipped]


def find_images(inputs: Iterable[str | Path], exclude: str | Path | None = None) -> FoundImages:
    """The image files among ``inputs`` and inside the folders among them, and what was skipped (see the module).

    Args:
        inputs: files and folders.
        exclude: a folder not to look into (the output folder).

    Raises:
        FileNotFoundError: nothing to process was found (the message lists what was skipped, at most 5).
    """
    inputs = list(inputs)
    out = Path(exclude).resolve() if exclude is not None else None
    found = FoundImages([], [])
    for item in inputs:
        p = Path(item)
        entries = _walk(p, out) if p.is_dir() else [_check_file(p, Path(p.name), require_suffix=False)]
        for entry in entries:
            (found.images if isinstance(entry, InputImage) else found.skipped).append(entry)
    if not found.images:
        skipped = found.skipped
        shown = "; ".join(s.problem() for s in skipped[:5]) + (f"; {len(skipped) - 5} more" if len(skipped) > 5 else "")
        where = ", ".join(str(i) for i in inputs[:5]) + (", ..." if len(inputs) > 5 else "")
        raise FileNotFoundError(f"no image files to read in {where}" + (f" ({shown})" if shown else ""))
    return found


def assign_outputs(images: Sequence[InputImage]) -> list[Path]:
    """The annotated picture of each image, relative to the output folder: ``<name without suffix>_det.jpg``, or
    ``_det_2.jpg``, ``_det_3.jpg``... where that name is taken already (compared without case)."""
    used: set[str] = set()
    outputs = []
    for im in images:
        base = im.name.parent / f"{im.name.stem}_det"
        candidate, k = base.with_name(base.name + ".jpg"), 1
        while str(candidate).casefold() in used:
            k += 1
            candidate = base.with_name(f"{base.name}_{k}.jpg")
        used.add(str(candidate).casefold())
        outputs.append(candidate)
    return outputs


def detection_record(image: str | Path, width: int, height: int, det: Any, names: Sequence[str]) -> dict[str, Any]:
    """The JSON record of one image's detections (boxes in its pixels), shared by the torch and onnxruntime paths.

    Args:
        image: the image file.
        width, height: its size in pixels.
        det: anything with ``boxes [N, 4]``, ``scores [N]``, ``labels [N]`` that have ``tolist()`` (tensors, arrays).
        names: foreground class names (``names[label - 1]``).
    """
    return {
        "image": str(image),
        "width": int(width),
        "height": int(height),
        "detections": [
            {
                "box": [round(float(v), 2) for v in box],
                "score": round(float(score), 4),
                "label": int(label),
                "class": names[label - 1] if 0 < label <= len(names) else str(label),
            }
            for box, score, label in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist(), strict=True)
        ],
    }


@dataclass
class _Job:
    """One detection run's settings and what it has produced so far."""

    names: Sequence[str]
    out: Path | None
    draw: bool
    score_thresh: float
    on_error: OnError
    results: DetectionResults = field(default_factory=DetectionResults)

    def skip(self, item: Skipped) -> None:
        if self.on_error == "raise":
            raise BadInputError(f"{item.problem()}; on_error='skip' (--on-error skip) goes on without it")
        warnings.warn(str(item), SkippedInputWarning, stacklevel=2)
        self.results.skipped.append(item)

    def write_json(self, name: str, value: Any) -> None:
        if self.out is None:
            return
        path = self.out / name
        try:
            path.write_text(json.dumps(value, indent=2))
        except OSError as e:
            raise write_error(path, e) from e

    def save_picture(self, image: Any, det: Any, output: Path) -> None:
        from multibox.viz import draw_detections

        path = self.out / output
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            draw_detections(image, det, self.names, self.score_thresh).save(path, quality=90)
        except OSError as e:
            raise write_error(path, e, "annotated image") from e


def _read_all(job: _Job, chunk: Sequence[tuple[InputImage, Path]], read: Callable[[Path], Any]) -> list[tuple]:
    """``(input, output, image)`` of the files of ``chunk`` that decode; the others skipped (or raised)."""
    ok = []
    for item, output in chunk:
        try:
            ok.append((item, output, read(item.path)))
        except (OSError, ValueError) as e:
            detail = str(e).removeprefix(f"{item.path}: ").removeprefix("cannot decode image: ")
            job.skip(Skipped(item.path, "cannot decode", detail))
    return ok


def run_detection(
    found: FoundImages,
    read: Callable[[Path], Any],
    detect_batch: Callable[[list[Any]], list[tuple[int, int, Any]]],
    *,
    batch_size: int,
    names: Sequence[str],
    out_dir: str | Path | None,
    draw: bool,
    score_thresh: float,
    on_error: OnError = "skip",
) -> DetectionResults:
    """The batch loop of both detect paths: read, detect, record and draw, skipping inputs that cannot be read.

    Args:
        found: :func:`find_images`' result (its skipped inputs are reported here).
        read: decodes a file (raises ``OSError``/``ValueError`` naming it when it cannot).
        detect_batch: images -> per image ``(width, height, detections in its pixels)`` (``boxes``, ``scores``,
            ``labels`` with ``tolist()``).
        batch_size: images per ``detect_batch`` call.
        names: foreground class names.
        out_dir: where ``detections.json``, ``skipped.json`` (when something was skipped; else an earlier one is
            removed) and, with ``draw``, the annotated pictures go (None: nowhere).
        draw: write annotated pictures.
        score_thresh: the lowest score drawn.
        on_error: ``skip`` (warn with :class:`SkippedInputWarning` and go on) or ``raise`` (:class:`BadInputError`).

    Returns:
        The records of the processed images (each with its ``"output"`` picture, or None), and ``skipped``.
    """
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = Path(out_dir) if out_dir is not None else None
    job = _Job(names, out, draw and out is not None, score_thresh, on_error)
    for item in found.skipped:
        job.skip(item)
    if out is not None:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise write_error(out, e, "folder") from e
    pairs = list(zip(found.images, assign_outputs(found.images), strict=True))
    for start in range(0, len(pairs), batch_size):
        batch = _read_all(job, pairs[start : start + batch_size], read)
        if not batch:
            continue
        for (item, output, image), (w, h, det) in zip(batch, detect_batch([b[2] for b in batch]), strict=True):
            record = detection_record(item.path, w, h, det, names)
            record["output"] = str(out / output) if job.draw else None
            job.results.append(record)
            if job.draw:
                job.save_picture(image, det, output)
    job.write_json("detections.json", list(job.results))
    if job.results.skipped:
        job.write_json("skipped.json", [s.to_dict() for s in job.results.skipped])
    elif out is not None:
        (out / "skipped.json").unlink(missing_ok=True)  # an earlier run's, which would mislead
    return job.results

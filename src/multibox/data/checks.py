"""Errors, warnings and box checks shared by the dataset readers and :func:`multibox.data.scan_dataset`.

Policy: a file that cannot be used is an error that names the file (or, with
``on_error="skip"``, is skipped and reported with its reason); a box that can be repaired is repaired (clipped) or
dropped (degenerate), and building a dataset emits at most ONE :class:`DatasetWarning` that says how many and in
which files. An image that only fails when an item is read (:func:`unusable_item`) raises, or under ``"skip"``
makes the item ``None`` with a warning that names the file and the reason; :func:`multibox.data.collate` leaves
such items out of the batch.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from multibox.boxes import is_valid_box

__all__ = [
    "BoxCheck",
    "DatasetError",
    "DatasetWarning",
    "Issue",
    "IssueLog",
    "OnError",
    "check_boxes",
    "skipped_when_built",
    "unusable_item",
]

OnError = Literal["raise", "skip"]

#: Issue kinds that leave an image out of a dataset when it is built (``on_error="skip"``).
_SKIPPED_IMAGE_KINDS = ("skipped_file", "bad_entry")

#: How many file names a summary line lists before "and N more".
_MAX_FILES_LISTED = 5


class DatasetError(ValueError):
    """A dataset file cannot be used: malformed, missing, or naming an unknown class. The message names the file."""


class DatasetWarning(UserWarning):
    """Something in a dataset was repaired or dropped (boxes clipped, degenerate boxes, skipped files)."""


@dataclass(frozen=True)
class Issue:
    """One problem found in one file.

    Attributes:
        kind: a short machine-readable category (``"degenerate_box"``, ``"missing_image"``, ...).
        file: the file concerned (annotation or image), as a string.
        message: what is wrong, for a human.
        count: how many occurrences (e.g. boxes) the issue covers in that file.
        severity: ``"error"`` (the file cannot be used), ``"warning"`` (repaired or dropped) or ``"info"``.
    """

    kind: str
    file: str
    message: str
    count: int = 1
    severity: Literal["error", "warning", "info"] = "warning"

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


# What each kind of issue did, for the one-line summary of a dataset.
_DESCRIPTIONS = {
    "degenerate_box": "dropped {n} degenerate box(es) (xmax <= xmin or ymax <= ymin)",
    "non_finite_box": "dropped {n} box(es) with a NaN or infinite coordinate",
    "box_outside": "clipped {n} box(es) that extend outside the image",
    "box_outside_dropped": "dropped {n} box(es) entirely outside the image",
    "size_mismatch": "found {n} annotation(s) whose stated size differs from the image's",
    "skipped_file": "skipped {n} unreadable file(s)",
    "bad_entry": "skipped {n} image(s) with an unusable entry",
    "dropped_annotation": "dropped {n} annotation(s) that belong to no usable image",
}


class IssueLog:
    """Collects the issues of one dataset and summarises them in one warning."""

    def __init__(self) -> None:
        self.issues: list[Issue] = []

    def add(self, issue: Issue) -> None:
        self.issues.append(issue)

    def extend(self, issues: Iterable[Issue]) -> None:
        self.issues.extend(issues)

    def __len__(self) -> int:
        return len(self.issues)

    def by_kind(self) -> dict[str, list[Issue]]:
        out: dict[str, list[Issue]] = defaultdict(list)
        for issue in self.issues:
            out[issue.kind].append(issue)
        return dict(out)

    def skipped_images(self) -> int:
        """How many images were left out: distinct files of ``skipped_file`` and ``bad_entry`` issues."""
        return len({i.file for i in self.issues if i.kind in _SKIPPED_IMAGE_KINDS})

    def summary(self) -> str:
        """One line per kind of issue: what was done, how many times, in which files."""
        lines = []
        for kind, issues in self.by_kind().items():
            n = sum(i.count for i in issues)
            files = list(dict.fromkeys(i.file for i in issues))
            if issues[0].severity == "error":  # a skipped file: say why (the message names the file)
                listed = "; ".join(dict.fromkeys(i.message for i in issues[:_MAX_FILES_LISTED]))
            else:
                listed = ", ".join(files[:_MAX_FILES_LISTED])
            more = f" and {len(files) - _MAX_FILES_LISTED} more" if len(files) > _MAX_FILES_LISTED else ""
            what = _DESCRIPTIONS.get(kind, kind.replace("_", " ") + " x{n}").format(n=n)
            lines.append(f"{what} in {len(files)} file(s): {listed}{more}")
        return "; ".join(lines)

    def warn(self, owner: str, stacklevel: int = 3) -> None:
        """Emit one :class:`DatasetWarning` for everything collected (nothing when there is nothing)."""
        if self.issues:
            warnings.warn(f"{owner}: {self.summary()}", DatasetWarning, stacklevel=stacklevel)


def skipped_when_built(dataset: object) -> int:
    """How many images a dataset reader left out when it was built (it warned naming them): its ``log``'s
    :meth:`IssueLog.skipped_images`, 0 for a dataset without one."""
    log = getattr(dataset, "log", None)
    return log.skipped_images() if isinstance(log, IssueLog) else 0


def unusable_item(owner: str, index: int, exc: Exception, on_error: OnError) -> None:
    """Apply a reader's error policy to item ``index`` whose image failed when the item was read.

    Args:
        owner: the dataset, for the message (its ``repr``).
        index: the item.
        exc: the error; its message names the file and the reason.
        on_error: ``"raise"`` or ``"skip"``.

    Returns:
        None (the item is left out) after a :class:`DatasetWarning` naming the file and the reason, under ``"skip"``.

    Raises:
        DatasetError: under ``"raise"``, with the error's message.
    """
    if on_error == "raise":
        raise DatasetError(str(exc)) from exc
    warnings.warn(f"{owner}: skipped item {index}: {exc}", DatasetWarning, stacklevel=3)
    return None


@dataclass(frozen=True)
class BoxCheck:
    """The outcome of :func:`check_boxes` for one image.

    Attributes:
        boxes: ``Tensor[N, 4]`` float32 xyxy pixels, clipped into the image (rows where ``keep`` is False are
            meaningless).
        keep: ``Tensor[N]`` bool, the boxes to keep.
        degenerate: how many boxes were dropped as degenerate (no positive width or height).
        clipped: how many kept boxes were clipped into the image.
        outside: how many boxes were dropped because they lie entirely outside the image.
        non_finite: how many boxes were dropped because a coordinate is NaN or infinite.
    """

    boxes: Tensor
    keep: Tensor
    degenerate: int
    clipped: int
    outside: int
    non_finite: int = 0

    def issues(self, file: str) -> list[Issue]:
        """The :class:`Issue` entries this check amounts to for ``file``."""
        out = []
        if self.non_finite:
            message = f"{self.non_finite} box(es) with a NaN or infinite coordinate dropped"
            out.append(Issue("non_finite_box", file, message, self.non_finite))
        if self.degenerate:
            out.append(Issue("degenerate_box", file, f"{self.degenerate} degenerate box(es) dropped", self.degenerate))
        if self.clipped:
            out.append(Issue("box_outside", file, f"{self.clipped} box(es) outside the image clipped", self.clipped))
        if self.outside:
            out.append(
                Issue("box_outside_dropped", file, f"{self.outside} box(es) entirely outside dropped", self.outside)
            )
        return out


def check_boxes(boxes: Tensor, width: float, height: float, degenerate: Tensor | None = None) -> BoxCheck:
    """Drop degenerate boxes and clip the others into ``[0, width] x [0, height]``.

    Args:
        boxes: ``Tensor[N, 4]`` xyxy in continuous pixel coordinates.
        width: image width in pixels.
        height: image height in pixels.
        degenerate: ``Tensor[N]`` bool marking boxes the format itself calls degenerate (VOC's ``xmax <= xmin``);
            by default, boxes without positive width and height. Boxes with a NaN or infinite coordinate are
            dropped and counted apart (``non_finite``).

    Returns:
        A :class:`BoxCheck`; a clipped box that ends up with no area (entirely outside) is dropped.
    """
    non_finite = ~torch.isfinite(boxes.reshape(-1, 4)).all(-1)
    boxes = boxes.to(torch.float32).reshape(-1, 4)
    bad = ~is_valid_box(boxes)
    if degenerate is not None:
        bad = bad | degenerate
    clipped = boxes.clone()
    clipped[:, 0::2] = clipped[:, 0::2].clamp(0, width)
    clipped[:, 1::2] = clipped[:, 1::2].clamp(0, height)
    moved = (clipped != boxes).any(-1) & ~bad
    gone = moved & ~is_valid_box(clipped)
    keep = ~bad & ~gone
    degenerate_count = int((bad & ~non_finite).sum())
    return BoxCheck(clipped, keep, degenerate_count, int((moved & ~gone).sum()), int(gone.sum()), int(non_finite.sum()))

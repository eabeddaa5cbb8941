"""Fixtures for the data tests: where the shared real datasets are, and a VOC-layout builder for tmp_path."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def shared_data_dir() -> Path | None:
    """``$MULTIBOX_SHARED_DATA``, else the first existing of ``<repo>/../shared/data`` and ``/work/shared/data``."""
    env = os.environ.get("MULTIBOX_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates += [REPO.parent / "shared" / "data", Path("/work/shared/data")]
    return next((p for p in candidates if (p / "cards").is_dir() and (p / "raccoon").is_dir()), None)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip(
            "shared datasets (cards, raccoon) not found: set MULTIBOX_SHARED_DATA or place them at ../shared/data"
        )
    return path


def voc_xml(
    filename: str | None,
    size: tuple[int, int] | None,
    objects: Sequence[tuple],
) -> str:
    """A VOC annotation; objects are ``(name, xmin, ymin, xmax, ymax)`` or ``(..., difficult)``."""
    parts = ["<annotation>", "<folder>JPEGImages</folder>"]
    if filename is not None:
        parts.append(f"<filename>{filename}</filename>")
    if size is not None:
        parts.append(f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>")
    for obj in objects:
        name, x1, y1, x2, y2, *rest = obj
        difficult = int(rest[0]) if rest else 0
        parts.append(
            f"<object><name>{name}</name><difficult>{difficult}</difficult>"
            f"<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        )
    parts.append("</annotation>")
    return "\n".join(parts)


def write_image(path: Path, size: tuple[int, int], mode: str = "RGB", seed: int = 0, exif_orientation: int = 1) -> None:
    """A random image of ``size = (width, height)`` in ``mode``, optionally with an EXIF orientation tag."""
    rng = np.random.default_rng(seed)
    w, h = size
    rgb = Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
    img = (
        rgb.convert(mode) if mode not in ("I;16",) else Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    )
    kwargs = {}
    if exif_orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif
    img.save(path, **kwargs)


@pytest.fixture
def make_voc(tmp_path: Path) -> Callable[..., Path]:
    """Build a VOC layout under tmp_path.

    Call with ``items``: dicts with ``id``, ``size`` (w, h), ``objects``, and optionally ``image`` (file name, None
    for no image), ``filename`` (the XML's; default the image name), ``mode``, ``xml`` (raw text replacing the
    annotation), ``exif``. Returns the root.
    """

    def build(items: Sequence[dict], split: str = "train", root: Path | None = None) -> Path:
        root = root or tmp_path / "voc"
        for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        for k, item in enumerate(items):
            image = item.get(
                "image", f"{item['id']}.jpg" if item.get("mode", "RGB") in ("RGB", "L", "CMYK") else f"{item['id']}.png"
            )
            if image is not None:
                write_image(root / "JPEGImages" / image, item["size"], item.get("mode", "RGB"), k, item.get("exif", 1))
            xml = item.get("xml") or voc_xml(
                item.get("filename", image), item.get("ann_size", item["size"]), item["objects"]
            )
            (root / "Annotations" / f"{item['id']}.xml").write_text(xml)
        with open(root / "ImageSets" / "Main" / f"{split}.txt", "a") as f:
            f.writelines(f"{item['id']}\n" for item in items)
        return root

    return build


@pytest.fixture
def unjam():
    """If a read blocks on a FIFO (the bug this guards against), open it for writing after 10 s so that the test
    fails with a wrong result instead of hanging."""
    timers = []

    def arm(fifo: Path) -> None:
        def release() -> None:
            with contextlib.suppress(OSError):  # no reader blocked on it: nothing to release
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

        timer = threading.Timer(10.0, release)
        timer.start()
        timers.append(timer)

    yield arm
    for timer in timers:
        timer.cancel()

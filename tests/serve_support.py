"""Shared by the service's tests: a real uvicorn server on a free loopback port, a tiny checkpoint, test images."""

from __future__ import annotations

import io
import re
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import torch
import uvicorn
from PIL import Image

from multibox.models import create_model
from multibox.weights.checkpoint import model_checkpoint
from multibox.weights.io import save_checkpoint

CLASSES = ["circle", "square"]


def tiny_checkpoint(folder: Path) -> Path:
    """An untrained ssd_tiny (seeded; its scores reach ~0.8 on noise images) saved as training saves one."""
    torch.manual_seed(0)
    model = create_model("ssd_tiny", 3, image_size=(64, 96), width=4).eval()
    return save_checkpoint(folder / "tiny.pt", model_checkpoint(model, CLASSES))


def noise_image(h: int, w: int, seed: int) -> np.ndarray:
    """A random RGB ``uint8 [h, w, 3]`` image."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def encode(array: np.ndarray, fmt: str, **options) -> bytes:
    """``array`` encoded as ``fmt`` (PNG, JPEG, WEBP)."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt, **options)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A well-formed PNG (signature, IHDR, IEND, correct CRCs) that declares ``width x height`` and holds no pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def free_port() -> int:
    with free_socket() as sock:
        return sock.getsockname()[1]


class LiveServer:
    """``app`` on uvicorn in a thread, listening on a free loopback port (``url``); a context manager."""

    def __init__(self, app) -> None:
        self.app = app
        self.sock = free_socket()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=10, access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> tuple[dict[str, str], dict[tuple[str, frozenset], float]]:
    """``(types, samples)`` of Prometheus text: ``types[family] = "counter"/...``, ``samples[(name, labels)]``.

    Raises:
        AssertionError: a line that is neither a comment nor a well-formed sample, or a sample of a family without
            a TYPE line.
    """
    types: dict[str, str] = {}
    samples: dict[tuple[str, frozenset], float] = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types[name] = kind
            continue
        if line.startswith("#") or not line:
            continue
        m = _SAMPLE.match(line)
        assert m is not None, f"not a sample line: {line!r}"
        name, labels, value = m.groups()
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
        assert family in types, f"{name} has no TYPE line"
        samples[(name, frozenset(_LABEL.findall(labels or "")))] = float(value)
    return types, samples

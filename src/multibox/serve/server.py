"""``multibox serve``: the app on uvicorn, one process or several.

Shutdown is graceful: on SIGTERM or Ctrl-C uvicorn stops accepting connections, waits for the requests in flight
(up to ``GRACEFUL_SHUTDOWN_S``), then the batcher runs whatever is still queued before the process exits. With
``workers > 1`` uvicorn starts that many processes sharing the port, each with its own model, batcher and metrics,
and torch's threads are divided between them.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["GRACEFUL_SHUTDOWN_S", "ServeOptions", "app_from_environment", "build_app", "serve"]

GRACEFUL_SHUTDOWN_S = 30
_ENV = "MULTIBOX_SERVE_OPTIONS"


@dataclass(frozen=True)
class ServeOptions:
    """Everything ``multibox serve`` is given (plain types: it travels to worker processes as JSON)."""

    weights: str | None = None
    onnx: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 8
    max_wait_ms: float = 5.0
    max_queue: int = 64
    workers: int = 1
    fast: bool = False
    device: str = "auto"
    max_body_mb: float = 20.0
    max_pixels: int = 50_000_000


def build_app(options: ServeOptions) -> Any:
    """Load the model and build the FastAPI app for ``options`` (raises the model's loading errors)."""
    from multibox.serve.app import create_app
    from multibox.serve.backend import load_backend
    from multibox.serve.uploads import UploadLimits

    backend = load_backend(options.weights, options.onnx, device=options.device, fast=options.fast)
    limits = UploadLimits(int(options.max_body_mb * 1024 * 1024), options.max_pixels)
    return create_app(backend, max_batch=options.max_batch, max_wait_ms=options.max_wait_ms,
                      max_queue=options.max_queue, limits=limits)  # fmt: skip


def app_from_environment() -> Any:
    """The app of a uvicorn worker process, from the options the parent left in the environment."""
    import torch

    options = ServeOptions(**json.loads(os.environ[_ENV]))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // options.workers))
    return build_app(options)


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``, or an error saying the address is unusable."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e} (choose another --port or --host)") from e
    return sock


def _announce(info: Any, options: ServeOptions) -> None:
    host = f"[{options.host}]" if ":" in options.host else options.host
    logging.getLogger("uvicorn.error").info(
        "multibox serve: %s (%s) on http://%s:%d/ (max batch %d, max wait %g ms, %d worker(s))",
        info.name, info.runtime, host, options.port, options.max_batch, options.max_wait_ms, options.workers,
    )  # fmt: skip


def serve(options: ServeOptions, log_level: str = "info") -> None:
    """Run the service until SIGTERM or Ctrl-C (see the module docstring).

    Raises:
        ValueError: the address cannot be listened on, or a bad option; CheckpointError / OnnxModelError /
            OSError: the model cannot be loaded (checked before the server starts, also with several workers).
    """
    import uvicorn

    sock = _listen(options.host, options.port)
    common = {"log_level": log_level, "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S, "access_log": False}
    if options.workers == 1:
        app = build_app(options)
        config = uvicorn.Config(app, **common)  # configures uvicorn's loggers
        _announce(app.state.info, options)
        uvicorn.Server(config).run(sockets=[sock])
        return
    sock.close()
    app = build_app(options)  # fail here, with one message, rather than in every worker
    uvicorn.Config(app, **common)
    _announce(app.state.info, options)
    del app
    os.environ[_ENV] = json.dumps(asdict(options))
    uvicorn.run("multibox.serve.server:app_from_environment", factory=True, host=options.host, port=options.port,
                workers=options.workers, **common)  # fmt: skip

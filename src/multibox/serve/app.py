"""The HTTP API (FastAPI): detection with dynamic batching, health, model description, metrics and the page.

Routes:

- ``POST /v1/detect?score=0.3&max_detections=100``: the body is an image (JPEG, PNG or WebP; raw, or the file of a
  ``multipart/form-data`` form); the answer ``{"width", "height", "detections": [{"box": [x1, y1, x2, y2] (pixels
  of the image), "score", "label", "class"}], "score_threshold", "max_detections"}``. Refusals are JSON
  ``{"error": message}``: 400 malformed (empty, truncated, corrupt, a bad option), 413 too large (body or pixels),
  415 not an accepted format, 503 overloaded (with ``Retry-After``), 500 a failure of the model.
- ``GET /healthz``: ``{"status": "ok"}`` once the model is loaded.
- ``GET /v1/model``: :class:`~multibox.serve.backend.ModelInfo` as JSON.
- ``GET /metrics``: Prometheus text (:mod:`multibox.serve.metrics`).
- ``GET /``: the page (:mod:`multibox.serve.page`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from multibox.serve.backend import Backend
from multibox.serve.batcher import Batcher, Overloaded
from multibox.serve.metrics import ServiceMetrics
from multibox.serve.page import page_html
from multibox.serve.uploads import UploadError, UploadLimits, decode_upload, read_limited
from multibox.structures import Detections

__all__ = ["DEFAULT_MAX_DETECTIONS", "DEFAULT_SCORE", "create_app"]

DEFAULT_SCORE = 0.3
DEFAULT_MAX_DETECTIONS = 100
_ROUTES = frozenset({"/", "/healthz", "/metrics", "/v1/detect", "/v1/model"})
log = logging.getLogger("multibox.serve")


@dataclass(frozen=True)
class _Job:
    """One request's image as the network's input, its size ``(H, W)`` and its options."""

    input: Any
    size: tuple[int, int]
    score: float
    max_detections: int


def run_jobs(backend: Backend, jobs: Sequence[_Job]) -> list[Detections]:
    """One network run for ``jobs``, each one's detections cut to its own options.

    The batch is post-processed with the lowest score threshold and the largest count asked; keeping a request's
    detections above its own threshold, up to its own count, gives what it alone would get: NMS never lets a box
    suppress a higher-scored one, so boxes below a threshold change nothing above it.
    """
    score = min(j.score for j in jobs)
    top_k = max(j.max_detections for j in jobs)
    dets = backend.run([j.input for j in jobs], [j.size for j in jobs], score, top_k)
    out = []
    for d, job in zip(dets, jobs, strict=True):
        keep = (d.scores > job.score).nonzero().squeeze(1)[: job.max_detections]
        out.append(Detections(d.boxes[keep], d.scores[keep], d.labels[keep]))
    return out


def _options(query: Mapping[str, str], max_detections: int) -> tuple[float, int]:
    """``(score, max_detections)`` from the query string.

    Raises:
        UploadError: 400 naming the option and the accepted range.
    """
    from multibox.user_input import short

    raw_score = query.get("score", str(DEFAULT_SCORE))
    try:
        score = float(raw_score)
    except ValueError:
        score = math.nan
    if not (math.isfinite(score) and 0.0 <= score <= 1.0):
        raise UploadError(400, f"score must be a number in [0, 1], got {short(raw_score)}")
    raw_count = query.get("max_detections", str(min(DEFAULT_MAX_DETECTIONS, max_detections)))
    try:
        count = int(raw_count)
    except ValueError:
        count = 0
    if not 1 <= count <= max_detections:
        raise UploadError(400, f"max_detections must be an integer in [1, {max_detections}], got {short(raw_count)}")
    return score, count


async def _image_bytes(request: Request, body: bytes) -> bytes:
    """The image in ``body``: the body itself, or the (first) file of a multipart form."""
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        return body

    async def replay() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=16)
    except Exception as e:  # python-multipart's and starlette's parse errors
        raise UploadError(400, f"malformed multipart form: {e}") from None
    files = [v for v in form.values() if isinstance(v, UploadFile)]
    if not files:
        raise UploadError(400, "the multipart form holds no file: send the image as a file field (e.g. 'image')")
    data = await files[0].read()
    if not data:
        raise UploadError(400, f"the form's file {files[0].filename or ''!r} is empty (0 bytes)")
    return data


def _json(det: Detections, classes: Sequence[str], size: tuple[int, int], score: float, count: int) -> dict:
    h, w = size
    items = []
    for box, s, label in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist(), strict=True):
        name = classes[label - 1] if 0 < label <= len(classes) else str(label)
        items.append({"box": [round(v, 2) for v in box], "score": round(s, 5), "label": label, "class": name})
    return {"width": w, "height": h, "detections": items, "score_threshold": score, "max_detections": count}


class _CountResponses:
    """ASGI middleware: every response counted by route and status; ``/v1/detect``'s latency observed."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0, status = time.perf_counter(), 500

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            path = scope["path"] if scope["path"] in _ROUTES else "other"
            seconds = time.perf_counter() - t0 if path == "/v1/detect" else None
            self.metrics.record_request(path, status, seconds)


def create_app(
    backend: Backend,
    *,
    max_batch: int = 8,
    max_wait_ms: float = 5.0,
    max_queue: int = 64,
    limits: UploadLimits | None = None,
) -> FastAPI:
    """The service around ``backend`` (see the module docstring).

    Args:
        backend: the detector (:func:`multibox.serve.backend.load_backend`).
        max_batch: the most images per network run (1: no dynamic batching).
        max_wait_ms: how long a request waits for others to join its batch.
        max_queue: the most requests waiting; more are refused with 503.
        limits: body size and pixel limits.
    """
    limits = limits or UploadLimits()
    info = backend.info
    metrics = ServiceMetrics(queue_depth=lambda: batcher.depth())
    batcher: Batcher[_Job, Detections] = Batcher(
        lambda jobs: run_jobs(backend, jobs), max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue,
        on_batch=metrics.record_batch,
    )  # fmt: skip

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.close()  # uvicorn has waited for the requests in flight; finish what is still queued

    app = FastAPI(title="multibox", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.metrics, app.state.batcher, app.state.info = metrics, batcher, info

    @app.post("/v1/detect")
    async def detect(request: Request) -> Response:
        try:
            score, count = _options(request.query_params, info.max_detections)
            if batcher.full():  # refuse before reading and decoding
                raise Overloaded(f"overloaded: {batcher.depth()} requests are already waiting", batcher.retry_after())
            body = await read_limited(request.stream(), request.headers.get("content-length"), limits.max_body_bytes)
            image = await run_in_threadpool(decode_upload, await _image_bytes(request, body), limits)
            size = (int(image.shape[-2]), int(image.shape[-1]))
            job = _Job(await run_in_threadpool(backend.prepare, image), size, max(score, info.min_score), count)
            det = await batcher.submit(job)
        except UploadError as e:
            return JSONResponse({"error": str(e)}, status_code=e.status)
        except ClientDisconnect:  # the client went away while sending: nobody to answer
            return Response(status_code=400)
        except Overloaded as e:
            return JSONResponse({"error": str(e)}, status_code=503, headers={"Retry-After": str(e.retry_after)})
        except Exception as e:  # a failure of the model: the request fails, the server goes on
            log.exception("detection failed")
            return JSONResponse({"error": f"internal error: {type(e).__name__}: {e}"}, status_code=500)
        return JSONResponse(_json(det, info.classes, size, job.score, count))

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", "queue_depth": batcher.depth()}

    @app.get("/v1/model")
    async def model() -> dict:
        return {**info.to_dict(), "max_batch": max_batch, "max_wait_ms": max_wait_ms, "max_queue": max_queue,
                "max_body_bytes": limits.max_body_bytes, "max_pixels": limits.max_pixels}  # fmt: skip

    @app.get("/metrics")
    async def metrics_text() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/")
    async def index() -> HTMLResponse:
        return HTMLResponse(page_html(info.name, info.classes))

    app.add_middleware(_CountResponses, metrics=metrics)
    return app

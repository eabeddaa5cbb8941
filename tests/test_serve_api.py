"""``multibox serve``'s API over HTTP against a real uvicorn on a loopback port: the library's own detections, bad
input refused with the right status and message, overload, dynamic batching, metrics."""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from multibox.engine.inference import detect
from multibox.serve.app import create_app
from multibox.serve.backend import TorchBackend
from multibox.serve.uploads import UploadLimits
from serve_support import (
    CLASSES,
    LiveServer,
    encode,
    noise_image,
    parse_prometheus,
    png_header_only,
    tiny_checkpoint,
)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def backend(weights):
    return TorchBackend(weights, device="cpu")


@pytest.fixture(scope="module")
def server(backend):
    limits = UploadLimits(max_body_bytes=256 * 1024, max_pixels=4_000_000)
    with LiveServer(create_app(backend, max_batch=8, max_wait_ms=5, limits=limits)) as live:
        yield live


def _library(weights, path, score=0.3, top_k=100):
    """``multibox.detect``'s record of one file (scores rounded to 4 decimals); top_k as the API's default."""
    (record,) = detect(weights, [path], score_thresh=score, top_k=top_k, draw=False, device="cpu")
    return record


def _same_detections(got: list[dict], expected: list[dict]) -> None:
    assert len(got) == len(expected) > 0
    for g, e in zip(got, expected, strict=True):
        assert g["class"] == e["class"] and g["label"] == e["label"]
        assert g["score"] == pytest.approx(e["score"], abs=1e-4)
        assert np.allclose(g["box"], e["box"], atol=0.02), (g["box"], e["box"])


@pytest.mark.parametrize(("fmt", "size"), [("PNG", (120, 90)), ("JPEG", (64, 96)), ("WEBP", (200, 150))])
def test_detect_returns_the_librarys_boxes_in_image_pixels(server, weights, tmp_path, fmt, size):
    data = encode(noise_image(*size, seed=size[0]), fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    path = tmp_path / f"img.{fmt.lower()}"
    path.write_bytes(data)
    expected = _library(weights, path)
    r = httpx.post(f"{server.url}/v1/detect", content=data, headers={"content-type": f"image/{fmt.lower()}"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["height"], body["width"]) == size == (expected["height"], expected["width"])
    _same_detections(body["detections"], expected["detections"])
    assert all(0 <= b["box"][0] <= b["box"][2] <= size[1] and b["box"][3] <= size[0] for b in body["detections"])
    # the same image as the file of a multipart form
    r = httpx.post(f"{server.url}/v1/detect", files={"image": (path.name, data, f"image/{fmt.lower()}")})
    assert r.status_code == 200, r.text
    _same_detections(r.json()["detections"], expected["detections"])


def test_score_and_max_detections_options(server, weights, tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(encode(noise_image(100, 100, seed=5), "PNG"))
    low = _library(weights, path, score=0.05)["detections"]
    assert len(low) > 7
    r = httpx.post(f"{server.url}/v1/detect", params={"score": 0.05, "max_detections": 7}, content=path.read_bytes())
    assert r.status_code == 200
    assert r.json()["max_detections"] == 7 and r.json()["score_threshold"] == 0.05
    _same_detections(r.json()["detections"], low[:7])
    everything = httpx.post(f"{server.url}/v1/detect", params={"score": 0.05}, content=path.read_bytes()).json()
    scores = [d["score"] for d in everything["detections"]]
    assert scores == sorted(scores, reverse=True) and scores[9] > scores[10]
    threshold = (scores[9] + scores[10]) / 2
    r = httpx.post(f"{server.url}/v1/detect", params={"score": threshold}, content=path.read_bytes())
    assert r.json()["detections"] == everything["detections"][:10]
    for params, message in [
        ({"score": "2"}, "score must be a number in [0, 1], got '2'"),
        ({"score": "nan"}, "score must be a number in [0, 1]"),
        ({"max_detections": "0"}, "max_detections must be an integer in [1, 200], got '0'"),
        ({"max_detections": "many"}, "max_detections must be an integer in [1, 200], got 'many'"),
    ]:
        r = httpx.post(f"{server.url}/v1/detect", params=params, content=path.read_bytes())
        assert r.status_code == 400 and message in r.json()["error"], (params, r.text)


def _bad_inputs() -> list[tuple[str, bytes, dict, int, str]]:
    """(name, body, headers, status, message)."""
    jpeg = encode(noise_image(60, 80, seed=1), "JPEG", quality=90)
    png = bytearray(encode(noise_image(40, 40, seed=2), "PNG"))
    png[60] ^= 0xFF  # inside the IDAT chunk: its CRC no longer matches
    return [
        ("truncated JPEG", jpeg[: len(jpeg) // 2], {}, 400, "truncated: the JPEG has no end-of-image marker"),
        ("text file", b"name,score\nsquare,0.9\n" * 20, {}, 415, "the body is not a JPEG, PNG or WebP image"),
        ("30000x30000 PNG header", png_header_only(30000, 30000), {}, 413,
         "image of 30000x30000 = 900000000 pixels is larger than the limit of 4000000 pixels (refused before "
         "decoding)"),
        ("empty body", b"", {}, 400, "empty request body"),
        ("huge body", b"\xff\xd8\xff" + bytes(600 * 1024), {}, 413,
         "request body of 614403 bytes is larger than the limit of 262144 bytes"),
        ("corrupt PNG", bytes(png), {}, 400, "corrupt: PNG chunk IDAT at byte 33 has a bad CRC"),
        ("PNG header cut", png_header_only(10, 10)[:20], {}, 400, "the PNG header is truncated or malformed"),
        ("form without a file", b'--XX\r\nContent-Disposition: form-data; name="note"\r\n\r\nhi\r\n--XX--\r\n',
         {"content-type": "multipart/form-data; boundary=XX"}, 400, "the multipart form holds no file"),
    ]  # fmt: skip


@pytest.mark.parametrize(("name", "body", "headers", "status", "message"), _bad_inputs(), ids=lambda v: v)
def test_bad_input_gets_its_status_and_message(server, monkeypatch, name, body, headers, status, message):
    import multibox.data.image_io as image_io

    decoded = []
    real = image_io.decode_image_bytes
    monkeypatch.setattr(image_io, "decode_image_bytes", lambda *a, **k: decoded.append(1) or real(*a, **k))
    r = httpx.post(f"{server.url}/v1/detect", content=body, headers=headers)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert message in r.json()["error"]
    if status in (413, 415) or name == "empty body":
        assert not decoded  # refused from the size, the header or the first bytes, before any pixel is decoded
    # the server goes on
    ok = httpx.post(f"{server.url}/v1/detect", content=encode(noise_image(30, 30, seed=0), "PNG"))
    assert ok.status_code == 200 and httpx.get(f"{server.url}/healthz").json()["status"] == "ok"


def test_a_streamed_body_is_cut_at_the_limit(server):
    def chunks():
        yield b"\x89PNG\r\n\x1a\n"
        for _ in range(100):
            yield bytes(8192)

    r = httpx.post(f"{server.url}/v1/detect", content=chunks())  # chunked: no Content-Length
    assert r.status_code == 413 and "larger than the limit of 262144 bytes" in r.json()["error"]


def test_model_health_and_page(server):
    info = httpx.get(f"{server.url}/v1/model").json()
    assert info["name"] == "ssd_tiny" and info["classes"] == CLASSES and info["input_size"] == [64, 96]
    assert info["runtime"] == "torch fp32 cpu" and info["max_batch"] == 8 and info["max_pixels"] == 4_000_000
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok", "queue_depth": 0}
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<script>" in page.text and "circle, square" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing loaded from elsewhere


class _GatedBackend:
    """A backend whose runs wait for ``gate``; ``entered`` is set when a run starts; ``sizes`` records batches."""

    def __init__(self, inner) -> None:
        self.inner, self.info = inner, inner.info
        self.gate, self.entered = threading.Event(), threading.Event()
        self.sizes: list[int] = []

    def prepare(self, image):
        return self.inner.prepare(image)

    def run(self, inputs, sizes, score, top_k):
        self.sizes.append(len(inputs))
        self.entered.set()
        assert self.gate.wait(30)
        return self.inner.run(inputs, sizes, score, top_k)


def _wait_until(condition, timeout=20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_overload_gets_503_with_retry_after_and_nothing_is_lost(backend):
    gated = _GatedBackend(backend)
    data = encode(noise_image(50, 50, seed=3), "PNG")
    with LiveServer(create_app(gated, max_batch=1, max_wait_ms=0, max_queue=2)) as live, ThreadPoolExecutor(4) as pool:
        url = f"{live.url}/v1/detect"
        first = pool.submit(httpx.post, url, content=data, timeout=60)
        assert gated.entered.wait(30)  # the first request is running (held at the gate)
        queued = [pool.submit(httpx.post, url, content=data, timeout=60) for _ in range(2)]
        _wait_until(lambda: httpx.get(f"{live.url}/healthz").json()["queue_depth"] == 2)
        refused = httpx.post(url, content=data)
        assert refused.status_code == 503
        assert int(refused.headers["retry-after"]) >= 1
        assert "overloaded: 2 requests are already waiting" in refused.json()["error"]
        gated.gate.set()
        answers = [f.result() for f in [first, *queued]]
        assert [a.status_code for a in answers] == [200, 200, 200]
        assert answers[0].json() == answers[1].json() == answers[2].json()
        _, samples = parse_prometheus(httpx.get(f"{live.url}/metrics").text)
        assert samples[("multibox_requests_total", frozenset({("path", "/v1/detect"), ("status", "503")}))] == 1
        assert samples[("multibox_rejected_total", frozenset())] == 1
    assert gated.sizes == [1, 1, 1]


def test_concurrent_requests_are_batched_and_split_back(backend, weights, tmp_path):
    gated = _GatedBackend(backend)
    images = [encode(noise_image(40 + 10 * i, 60 + 5 * i, seed=10 + i), "PNG") for i in range(7)]
    expected = []
    for i, data in enumerate(images):
        (tmp_path / f"{i}.png").write_bytes(data)
        expected.append(_library(weights, tmp_path / f"{i}.png")["detections"])
    with LiveServer(create_app(gated, max_batch=8, max_wait_ms=50)) as live, ThreadPoolExecutor(7) as pool:
        url = f"{live.url}/v1/detect"
        first = pool.submit(httpx.post, url, content=images[0], timeout=60)
        assert gated.entered.wait(30)  # held: the other six queue up meanwhile and go as one batch
        rest = [pool.submit(httpx.post, url, content=data, timeout=60) for data in images[1:]]
        _wait_until(lambda: httpx.get(f"{live.url}/healthz").json()["queue_depth"] == 6)
        gated.gate.set()
        answers = [f.result() for f in [first, *rest]]
        metrics = httpx.get(f"{live.url}/metrics").text
    assert gated.sizes == [1, 6]
    for answer, exp in zip(answers, expected, strict=True):
        assert answer.status_code == 200
        _same_detections(answer.json()["detections"], exp)  # each request gets its own image's detections
    _, samples = parse_prometheus(metrics)

    def bucket(le: str) -> float:
        return samples[("multibox_batch_size_bucket", frozenset({("le", le)}))]

    assert bucket("1") == 1 and bucket("2") == bucket("4") == 1 and bucket("8") == bucket("+Inf") == 2
    assert samples[("multibox_batch_size_sum", frozenset())] == 7
    assert samples[("multibox_batch_size_count", frozenset())] == 2


def test_metrics_are_prometheus_text_with_the_right_counts(backend):
    data = encode(noise_image(50, 50, seed=4), "PNG")
    with LiveServer(create_app(backend)) as live:
        for body in (data, data, b"", b"plain text"):
            httpx.post(f"{live.url}/v1/detect", content=body)
        httpx.get(f"{live.url}/healthz")
        httpx.get(f"{live.url}/nowhere")
        r = httpx.get(f"{live.url}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    types, samples = parse_prometheus(r.text)
    assert types == {
        "multibox_requests_total": "counter",
        "multibox_rejected_total": "counter",
        "multibox_request_duration_seconds": "histogram",
        "multibox_batch_size": "histogram",
        "multibox_queue_depth": "gauge",
    }
    requests = {dict(labels)["path"] + " " + dict(labels)["status"]: v
                for (name, labels), v in samples.items() if name == "multibox_requests_total"}  # fmt: skip
    assert requests == {"/v1/detect 200": 2, "/v1/detect 400": 1, "/v1/detect 415": 1, "/healthz 200": 1,
                        "other 404": 1}  # fmt: skip
    latency = [(dict(k[1])["le"], v) for k, v in samples.items() if k[0] == "multibox_request_duration_seconds_bucket"]
    counts = [v for _, v in latency]
    assert counts == sorted(counts) and latency[-1] == ("+Inf", 4)  # cumulative, every detect request counted
    assert samples[("multibox_request_duration_seconds_count", frozenset())] == 4
    assert 0 < samples[("multibox_request_duration_seconds_sum", frozenset())] < math.inf
    assert samples[("multibox_batch_size_count", frozenset())] == 2  # the two images, run one at a time
    assert samples[("multibox_queue_depth", frozenset())] == 0

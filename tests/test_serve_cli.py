"""``multibox serve`` as a process: graceful shutdown finishes the requests in flight; start-up errors are one line;
an exported ONNX file serves the same boxes as onnxruntime's own detect."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from multibox.cli import main
from serve_support import CLASSES, LiveServer, encode, free_port, free_socket, noise_image, tiny_checkpoint

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("serve_cli"))


def _start(args: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "multibox", "serve", *args, "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the server did not start: {proc.communicate()[0]}")
        time.sleep(0.1)


def test_sigterm_finishes_the_requests_in_flight(weights):
    # a long batching wait keeps the requests in the server while it is told to stop
    proc, url = _start(["--weights", str(weights), "--max-wait-ms", "1500", "--max-batch", "8"])
    data = encode(noise_image(40, 50, seed=0), "PNG")
    answers: list[httpx.Response] = []
    clients = [threading.Thread(target=lambda: answers.append(httpx.post(f"{url}/v1/detect", content=data,
                                                                          timeout=30))) for _ in range(3)]  # fmt: skip
    for c in clients:
        c.start()
    time.sleep(0.5)  # the three are waiting for their batch
    proc.send_signal(signal.SIGTERM)
    for c in clients:
        c.join(30)
    out, _ = proc.communicate(timeout=30)
    # uvicorn re-raises the signal once shut down, so the process ends as SIGTERM's default action would end it
    assert proc.returncode == -signal.SIGTERM, out
    assert [a.status_code for a in answers] == [200, 200, 200], out
    assert len(answers[0].json()["detections"]) > 0
    assert "Waiting for application shutdown" in out and "Traceback" not in out
    with pytest.raises(httpx.TransportError):  # gone: nothing listens any more
        httpx.get(f"{url}/healthz", timeout=2)


def test_startup_errors_are_one_line(weights, tmp_path, capsys):
    assert main(["serve", "--weights", str(tmp_path / "missing.pt")]) == 3
    err = capsys.readouterr().err
    assert err.startswith("multibox serve: error: ") and "missing.pt" in err and "Traceback" not in err
    assert err.count("\n") == 1
    sock = free_socket()  # a port in use
    sock.listen()
    try:
        port = sock.getsockname()[1]
        assert main(["serve", "--weights", str(weights), "--port", str(port)]) == 2
    finally:
        sock.close()
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "choose another --port" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as e:
        main(["serve", "--weights", str(weights), "--max-batch", "0"])
    assert e.value.code == 2 and "--max-batch: must be >= 1, got 0" in capsys.readouterr().err


def test_onnx_file_serves_what_onnxruntime_detects(weights, tmp_path):
    pytest.importorskip("onnxruntime")
    from multibox.onnx_runtime import detect_onnx
    from multibox.serve.app import create_app
    from multibox.serve.backend import OnnxBackend

    onnx = tmp_path / "tiny.onnx"
    assert main(["export", "--weights", str(weights), "--out", str(onnx)]) == 0
    path = tmp_path / "img.png"
    path.write_bytes(encode(noise_image(70, 110, seed=3), "PNG"))
    (expected,) = detect_onnx(onnx, [path], score_thresh=0.3, draw=False)
    backend = OnnxBackend(onnx)
    assert backend.info.name == "ssd_tiny" and backend.info.classes == tuple(CLASSES)
    assert backend.info.runtime == "onnxruntime CPUExecutionProvider" and backend.info.min_score == 0.01
    with LiveServer(create_app(backend)) as live:
        r = httpx.post(f"{live.url}/v1/detect", params={"max_detections": 200}, content=path.read_bytes())
        low = httpx.post(f"{live.url}/v1/detect", params={"score": 0}, content=path.read_bytes()).json()
    got = r.json()["detections"]
    assert len(got) == len(expected["detections"]) > 0
    for g, e in zip(got, expected["detections"], strict=True):
        assert g["class"] == e["class"] and g["score"] == pytest.approx(e["score"], abs=1e-4)
        assert np.allclose(g["box"], e["box"], atol=0.02)
    assert low["score_threshold"] == 0.01  # the graph has nothing below the threshold it was exported with

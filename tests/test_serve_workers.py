"""``multibox serve --workers 2`` as real processes on a loopback port: each worker answers on its own (the other
one stopped with SIGSTOP, so only it can accept), both together answer concurrent requests with the library's
boxes, and SIGTERM to the parent ends every worker and frees the port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from multibox.engine.inference import detect
from serve_support import encode, free_port, noise_image, tiny_checkpoint

SRC = str(Path(__file__).resolve().parents[1] / "src")
START_S = 240  # two workers each import torch and load the model: generous for a loaded 2-core host


def _children(pid: int) -> list[int]:
    """The worker processes of ``pid`` (multiprocessing's spawned children, not its resource tracker)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"spawn_main" in cmdline:
            found.append(int(entry))
    return sorted(found)


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _start_two_workers(weights: Path, log: Path) -> tuple[subprocess.Popen, str, list[int]]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "multibox", "serve", "--weights", str(weights), "--port", str(port),
           "--workers", "2", "--max-wait-ms", "20"]  # fmt: skip
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_S
    while log.read_text().count("Application startup complete") < 2:  # one line per worker
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait(30)
            raise AssertionError(f"the two workers did not start:\n{log.read_text()}")
        time.sleep(0.2)
    workers = _children(proc.pid)
    assert len(workers) == 2, (workers, log.read_text())
    return proc, f"http://127.0.0.1:{port}", workers


def _post_all(url: str, bodies: list[bytes]) -> list[httpx.Response]:
    """``bodies`` posted concurrently, each on its own connection."""
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda b: httpx.post(f"{url}/v1/detect", content=b, timeout=120), bodies))


def _same_detections(got: list[dict], expected: list[dict]) -> None:
    assert len(got) == len(expected) > 0
    for g, e in zip(got, expected, strict=True):
        assert g["class"] == e["class"] and g["score"] == pytest.approx(e["score"], abs=1e-4)
        assert np.allclose(g["box"], e["box"], atol=0.02), (g["box"], e["box"])


@pytest.mark.slow
def test_two_workers_answer_and_sigterm_stops_them_all(tmp_path):
    weights = tiny_checkpoint(tmp_path)
    paths = []
    for i, (h, w) in enumerate([(40, 50), (64, 96), (90, 70), (33, 120)]):
        paths.append(tmp_path / f"img{i}.png")
        paths[-1].write_bytes(encode(noise_image(h, w, seed=i), "PNG"))
    expected = [r["detections"] for r in detect(weights, paths, score_thresh=0.3, top_k=100, draw=False, device="cpu")]
    bodies = [p.read_bytes() for p in paths]
    proc, url, workers = _start_two_workers(weights, tmp_path / "serve.log")
    try:
        assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200
        for stopped in workers:  # only the other worker can accept these connections
            os.kill(stopped, signal.SIGSTOP)
            try:
                alone = _post_all(url, bodies[:2])
            finally:
                os.kill(stopped, signal.SIGCONT)
            assert [r.status_code for r in alone] == [200, 200]
            for r, e in zip(alone, expected[:2], strict=True):
                _same_detections(r.json()["detections"], e)
        answers = _post_all(url, bodies * 2)  # 8 at once, both workers up
        assert [r.status_code for r in answers] == [200] * 8
        for r, e in zip(answers, expected * 2, strict=True):
            _same_detections(r.json()["detections"], e)
        assert _children(proc.pid) == workers  # neither was restarted by uvicorn's health check
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
    log = (tmp_path / "serve.log").read_text()
    assert proc.returncode in (0, -signal.SIGTERM), log
    assert "Traceback" not in log and "Stopping parent process" in log
    deadline = time.monotonic() + 30  # the parent joined them; their exit may still be reaped by init
    while any(_running(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_running(w) for w in workers), log
    with pytest.raises(httpx.TransportError):  # nothing listens any more
        httpx.get(f"{url}/healthz", timeout=2)

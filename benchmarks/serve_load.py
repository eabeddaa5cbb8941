"""Load test of ``multibox serve`` on the loopback interface: dynamic batching on and off.

For each setting a server process is started on 127.0.0.1 (a free port), K concurrent clients post the same image
to ``/v1/detect`` for T seconds (at most ``--max-requests`` in all), and the script prints requests/s, the p50 and
p99 latency, the errors, and the batch-size histogram the server reports in ``/metrics``; then the throughput gain
of batching. Every request must be answered with 200 (the script exits 1 otherwise).

Without ``--weights`` it builds an untrained checkpoint of ``--model`` (seeded) in a temporary folder: throughput
does not depend on the weights, only on the network.

    taskset -c 1 python benchmarks/serve_load.py --clients 16 --seconds 10
    python benchmarks/serve_load.py --weights runs/demo/last.pt --fast --image photo.jpg
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

SRC = str(Path(__file__).resolve().parents[1] / "src")


def make_checkpoint(model_name: str, folder: Path) -> Path:
    """A seeded checkpoint of a registered model (21 classes) whose detection head is untrained."""
    import torch

    from multibox.models import create_model
    from multibox.weights.checkpoint import model_checkpoint
    from multibox.weights.io import save_checkpoint

    torch.manual_seed(0)
    model = create_model(model_name, 21).eval()  # the builder's defaults: an SSDLite gets its ImageNet backbone
    return save_checkpoint(folder / f"{model_name}.pt", model_checkpoint(model, [f"c{i}" for i in range(1, 21)]))


def test_image(width: int, height: int) -> bytes:
    """A synthetic-shapes JPEG of ``width x height``."""
    from PIL import Image

    from multibox.data import ShapesDataset

    image = ShapesDataset(1, (height, width), seed=0)[0][0]
    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def request_image(spec: str) -> tuple[bytes, int, int]:
    """``(bytes, width, height)`` of the posted image: the file ``spec`` as it is, or a synthetic ``WxH`` JPEG."""
    from PIL import Image

    path = Path(spec)
    if path.is_file():
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            return data, im.width, im.height
    if not re.fullmatch(r"\d+x\d+", spec):
        raise SystemExit(f"--image {spec}: neither an image file nor WxH")
    width, height = (int(v) for v in spec.split("x"))
    return test_image(width, height), width, height


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(weights: Path, max_batch: int, max_wait_ms: float, fast: bool, queue: int) -> tuple:
    port = free_port()
    cmd = [sys.executable, "-m", "multibox", "serve", "--weights", str(weights), "--port", str(port),
           "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms), "--max-queue", str(queue)]  # fmt: skip
    if fast:
        cmd.append("--fast")
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the server did not start: {proc.communicate()[1][-2000:]}")


async def load(url: str, image: bytes, clients: int, seconds: float, max_requests: int) -> tuple[list, dict]:
    """``(latencies in s, {status: count})`` of ``clients`` loops posting ``image`` for ``seconds``."""
    latencies: list[float] = []
    statuses: dict[int | str, int] = {}
    end = time.perf_counter() + seconds
    sent = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def one_client() -> None:
            nonlocal sent
            while time.perf_counter() < end and sent < max_requests:
                sent += 1
                t0 = time.perf_counter()
                try:
                    r = await client.post("/v1/detect", content=image, headers={"content-type": "image/jpeg"})
                    key: int | str = r.status_code
                except httpx.HTTPError as e:
                    key = type(e).__name__
                latencies.append(time.perf_counter() - t0)
                statuses[key] = statuses.get(key, 0) + 1

        await asyncio.gather(*(one_client() for _ in range(clients)))
    return latencies, statuses


def batch_histogram(metrics: str) -> dict[str, int]:
    """Non-cumulative batch-size counts per bucket from the server's /metrics."""
    cumulative = [
        (le, int(float(v))) for le, v in re.findall(r'multibox_batch_size_bucket\{le="([^"]+)"\} (\S+)', metrics)
    ]
    out, previous = {}, 0
    for le, total in cumulative:
        if total - previous:
            out[f"<={le}"] = total - previous
        previous = total
    return out


def run_setting(args: argparse.Namespace, weights: Path, image: bytes, max_batch: int) -> dict:
    proc, url = start_server(weights, max_batch, args.max_wait_ms, args.fast, args.max_queue)
    try:
        runtime = httpx.get(f"{url}/v1/model").json()["runtime"]
        asyncio.run(load(url, image, args.clients, min(2.0, args.seconds), args.max_requests))  # warm-up
        warm = httpx.get(f"{url}/metrics").text
        t0 = time.perf_counter()
        latencies, statuses = asyncio.run(load(url, image, args.clients, args.seconds, args.max_requests))
        elapsed = time.perf_counter() - t0
        metrics = httpx.get(f"{url}/metrics").text
    finally:
        proc.terminate()
        proc.wait(60)
    hist = batch_histogram(metrics)
    for key, n in batch_histogram(warm).items():  # the measured period only
        hist[key] -= n
    latencies.sort()
    return {
        "max_batch": max_batch, "runtime": runtime, "requests": len(latencies), "rps": len(latencies) / elapsed,
        "p50_ms": 1e3 * statistics.median(latencies), "p99_ms": 1e3 * latencies[int(0.99 * (len(latencies) - 1))],
        "errors": sum(n for k, n in statuses.items() if k != 200), "statuses": statuses,
        "batches": {k: v for k, v in hist.items() if v},
    }  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", type=Path, default=None, help="a checkpoint (default: an untrained --model)")
    p.add_argument("--model", default="ssd_tiny")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--max-requests", type=int, default=20000, help="upper bound on requests per setting")
    p.add_argument("--max-batch", type=int, default=8, help="the batching setting (compared with 1)")
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--max-queue", type=int, default=256)
    p.add_argument("--image", default="640x480", help="WxH of a synthetic posted JPEG, or the path of an image file")
    p.add_argument("--fast", action="store_true")
    args = p.parse_args()
    image, width, height = request_image(args.image)
    with tempfile.TemporaryDirectory(prefix="multibox-load-") as folder:
        weights = args.weights or make_checkpoint(args.model, Path(folder))
        cpus = sorted(os.sched_getaffinity(0))
        print(f"{weights}: {args.clients} clients x {args.seconds:g} s, {width}x{height} image "
              f"({len(image)} bytes), CPU affinity {cpus}, max wait {args.max_wait_ms} ms")  # fmt: skip
        rows = [run_setting(args, weights, image, b) for b in (1, args.max_batch)]
    head = ("max batch", "runtime", "requests", "req/s", "p50 ms", "p99 ms", "errors")
    print("{:>9} {:<18} {:>8} {:>8} {:>8} {:>8} {:>6}  batches".format(*head))
    for r in rows:
        batches = " ".join(f"{k}:{v}" for k, v in r["batches"].items())
        print(f"{r['max_batch']:>9} {r['runtime']:<18} {r['requests']:>8} {r['rps']:>8.1f} {r['p50_ms']:>8.1f} "
              f"{r['p99_ms']:>8.1f} {r['errors']:>6}  {batches}")  # fmt: skip
    print(f"throughput gain of dynamic batching: {rows[1]['rps'] / rows[0]['rps']:.2f}x")
    if any(r["errors"] for r in rows):
        print(f"ERRORS: {[r['statuses'] for r in rows]}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The service's parts on their own: image sizes from headers, the batcher, per-request options in a shared batch,
the Prometheus histogram."""

from __future__ import annotations

import asyncio
import io

import pytest
import torch
from PIL import Image

from multibox.serve.app import _Job, run_jobs
from multibox.serve.backend import TorchBackend
from multibox.serve.batcher import Batcher, Overloaded
from multibox.serve.metrics import Histogram
from multibox.serve.uploads import UploadError, check_header, header_size
from serve_support import encode, noise_image, png_header_only, tiny_checkpoint


def _webp_with_alpha(h: int, w: int) -> bytes:
    rgba = Image.fromarray(noise_image(h, w, seed=1)).convert("RGBA")
    buf = io.BytesIO()
    rgba.save(buf, "WEBP", exif=Image.Exif().tobytes())  # alpha + EXIF: the extended (VP8X) layout
    return buf.getvalue()


@pytest.mark.parametrize(("h", "w"), [(1, 1), (37, 53), (300, 17)])
def test_header_size_matches_pillow(h, w):
    image = noise_image(h, w, seed=0)
    cases = {
        "PNG": encode(image, "PNG"),
        "JPEG": encode(image, "JPEG"),
        "JPEG progressive": encode(image, "JPEG", progressive=True),
        "WebP lossy": encode(image, "WEBP", quality=80),
        "WebP lossless": encode(image, "WEBP", lossless=True),
        "WebP extended": _webp_with_alpha(h, w),
    }
    for name, data in cases.items():
        fmt, size = header_size(data)
        assert fmt == name.split()[0] and size == Image.open(io.BytesIO(data)).size == (w, h), name
    assert data[12:16] == b"VP8X"


def test_check_header_refuses_before_decoding():
    assert check_header(png_header_only(2000, 1000), max_pixels=2_000_000) == ("PNG", (2000, 1000))
    with pytest.raises(UploadError, match=r"2001x1000 = 2001000 pixels is larger than the limit of 2000000") as e:
        check_header(png_header_only(2001, 1000), max_pixels=2_000_000)
    assert e.value.status == 413
    with pytest.raises(UploadError, match="declares an empty image") as e:
        check_header(png_header_only(0, 10), max_pixels=100)
    assert e.value.status == 400
    with pytest.raises(UploadError, match="not a JPEG, PNG or WebP") as e:
        check_header(encode(noise_image(4, 4, seed=0), "GIF"), max_pixels=100)
    assert e.value.status == 415
    jpeg = encode(noise_image(8, 8, seed=0), "JPEG")
    sof = jpeg.index(b"\xff\xc0")
    with pytest.raises(UploadError, match="JPEG header is truncated or malformed") as e:
        check_header(jpeg[: sof + 6], max_pixels=100)  # cut inside the frame header
    assert e.value.status == 400


def test_histogram_buckets_by_hand():
    h = Histogram("x", "help", (1, 2, 4))
    for v in (0.5, 1, 1.5, 4, 9):
        h.observe(v)
    lines = h.lines()
    assert lines[2:] == ['x_bucket{le="1"} 2', 'x_bucket{le="2"} 3', 'x_bucket{le="4"} 4', 'x_bucket{le="+Inf"} 5',
                         "x_sum 16", "x_count 5"]  # fmt: skip


async def _batches(items: list[int], max_batch: int, max_queue: int = 64) -> tuple[list[list[int]], list]:
    seen: list[list[int]] = []
    batcher: Batcher[int, int] = Batcher(lambda b: (seen.append(list(b)), [10 * x for x in b])[1],
                                         max_batch=max_batch, max_wait_ms=50, max_queue=max_queue)  # fmt: skip
    batcher.start()
    results = await asyncio.gather(*(batcher.submit(x) for x in items), return_exceptions=True)
    await batcher.close()
    return seen, results


def test_batcher_gathers_up_to_max_batch_and_answers_each():
    seen, results = asyncio.run(_batches(list(range(11)), max_batch=4))
    assert seen == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    assert results == [10 * x for x in range(11)]


def test_batcher_refuses_beyond_its_queue():
    seen, results = asyncio.run(_batches(list(range(5)), max_batch=8, max_queue=3))
    assert seen == [[0, 1, 2]]
    assert results[:3] == [0, 10, 20]
    assert all(isinstance(r, Overloaded) and r.retry_after >= 1 for r in results[3:])


def test_batcher_close_runs_what_is_queued_then_refuses():
    async def scenario():
        seen = []
        batcher: Batcher[int, int] = Batcher(lambda b: (seen.append(list(b)), b)[1], max_batch=2, max_wait_ms=1000)
        batcher.start()
        pending = [asyncio.ensure_future(batcher.submit(x)) for x in range(3)]
        await asyncio.sleep(0)  # submitted
        await batcher.close()  # does not wait the full second for a third item
        with pytest.raises(Overloaded, match="shutting down"):
            await batcher.submit(9)
        return seen, [p.result() for p in pending]

    seen, results = asyncio.run(scenario())
    assert seen == [[0, 1], [2]] and results == [0, 1, 2]


def test_a_failing_batch_fails_its_requests_only():
    async def scenario():
        calls = []

        def run(batch):
            calls.append(list(batch))
            if -1 in batch:
                raise RuntimeError("boom")
            return batch

        batcher: Batcher[int, int] = Batcher(run, max_batch=2, max_wait_ms=20)
        batcher.start()
        bad = await asyncio.gather(batcher.submit(-1), batcher.submit(2), return_exceptions=True)
        good = await batcher.submit(3)
        await batcher.close()
        return bad, good

    bad, good = asyncio.run(scenario())
    assert all(isinstance(b, RuntimeError) for b in bad) and good == 3


def test_requests_with_different_options_in_one_batch_get_what_they_would_alone(tmp_path):
    backend = TorchBackend(tiny_checkpoint(tmp_path), device="cpu")
    images = [torch.from_numpy(noise_image(60 + 7 * i, 80, seed=i)).permute(2, 0, 1) for i in range(4)]
    options = [(0.3, 100), (0.05, 5), (0.75, 200), (0.0, 50)]
    jobs = [_Job(backend.prepare(im), tuple(im.shape[-2:]), s, k) for im, (s, k) in zip(images, options, strict=True)]
    together = run_jobs(backend, jobs)
    for job, got in zip(jobs, together, strict=True):
        (alone,) = backend.run([job.input], [job.size], job.score, job.max_detections)
        assert 0 < len(alone.scores) <= job.max_detections and bool((alone.scores > job.score).all())
        assert torch.equal(got.labels, alone.labels)
        torch.testing.assert_close(got.scores, alone.scores, atol=1e-5, rtol=0)
        torch.testing.assert_close(got.boxes, alone.boxes, atol=1e-3, rtol=0)

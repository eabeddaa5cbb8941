"""The service's counters in the Prometheus text exposition format (version 0.0.4), without a client library.

Exposed at ``GET /metrics``:

- ``multibox_requests_total{path, status}``: responses by route and HTTP status;
- ``multibox_request_duration_seconds``: latency of ``POST /v1/detect`` (histogram, from the request's arrival to
  its response, whatever the status);
- ``multibox_batch_size``: images per network run (histogram; a batch > 1 is dynamic batching at work);
- ``multibox_queue_depth``: requests waiting for a batch (gauge, read when scraped);
- ``multibox_rejected_total``: requests refused with 503 because the queue was full.

With ``--workers N`` every worker process keeps its own numbers (a scrape sees the worker that answered it).
"""

from __future__ import annotations

import bisect
import math
import threading
from collections import Counter
from collections.abc import Callable, Sequence

__all__ = ["BATCH_BUCKETS", "LATENCY_BUCKETS", "Histogram", "ServiceMetrics"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    if not pairs:
        return ""
    escaped = (v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for _, v in pairs)
    return "{" + ",".join(f'{k}="{v}"' for (k, _), v in zip(pairs, escaped, strict=True)) + "}"


class Histogram:
    """Cumulative-bucket histogram: ``observe`` a value, ``lines`` renders ``_bucket``, ``_sum`` and ``_count``.

    Args:
        name: the metric's name.
        help_: its HELP text.
        buckets: upper bounds (inclusive), increasing; ``+Inf`` is added.
    """

    def __init__(self, name: str, help_: str, buckets: Sequence[float]) -> None:
        self.name, self.help = name, help_
        self.bounds = tuple(float(b) for b in buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Count one value."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self) -> list[str]:
        """The histogram's exposition lines."""
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        running = 0
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += n
            out.append(f'{self.name}_bucket{{le="{_number(bound)}"}} {running}')
        out += [f"{self.name}_sum {_number(self.sum)}", f"{self.name}_count {self.count}"]
        return out


class ServiceMetrics:
    """The numbers of one server process (thread-safe).

    Args:
        queue_depth: called at each scrape for the number of requests waiting.
    """

    def __init__(self, queue_depth: Callable[[], int] = lambda: 0) -> None:
        self._lock = threading.Lock()
        self._queue_depth = queue_depth
        self.requests: Counter[tuple[str, int]] = Counter()
        self.rejected = 0
        self.latency = Histogram(
            "multibox_request_duration_seconds", "Latency of POST /v1/detect in seconds.", LATENCY_BUCKETS
        )
        self.batch_size = Histogram("multibox_batch_size", "Images per network run.", BATCH_BUCKETS)

    def record_request(self, path: str, status: int, seconds: float | None = None) -> None:
        """Count a response (and its latency when given)."""
        with self._lock:
            self.requests[(path, status)] += 1
            if status == 503:
                self.rejected += 1
            if seconds is not None:
                self.latency.observe(seconds)

    def record_batch(self, size: int) -> None:
        """Count a network run of ``size`` images."""
        with self._lock:
            self.batch_size.observe(size)

    def render(self) -> str:
        """Everything, as Prometheus text (ends with a newline)."""
        with self._lock:
            lines = ["# HELP multibox_requests_total Responses by route and HTTP status.",
                     "# TYPE multibox_requests_total counter"]  # fmt: skip
            for (path, status), n in sorted(self.requests.items()):
                lines.append(f"multibox_requests_total{_labels([('path', path), ('status', str(status))])} {n}")
            lines += ["# HELP multibox_rejected_total Requests refused with 503 because the queue was full.",
                      "# TYPE multibox_rejected_total counter", f"multibox_rejected_total {self.rejected}"]  # fmt: skip
            lines += self.latency.lines() + self.batch_size.lines()
        lines += ["# HELP multibox_queue_depth Requests waiting for a batch.", "# TYPE multibox_queue_depth gauge",
                  f"multibox_queue_depth {int(self._queue_depth())}"]  # fmt: skip
        return "\n".join(lines) + "\n"

"""Prometheus text-format metrics for the server (a few counters and histograms; no client library needed)."""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import defaultdict

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
REQUEST_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def label_value(value: str) -> str:
    """A label value as the text format writes it: backslash, double quote and line feed escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Histogram:
    """Cumulative-bucket histogram as Prometheus exposes it."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # last slot: +Inf
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        out, cumulative = [], 0
        sep = "," if labels else ""
        for bound, count in zip((*self.buckets, "+Inf"), self.counts, strict=True):
            cumulative += count
            out.append(f'{name}_bucket{{{labels}{sep}le="{bound}"}} {cumulative}')
        suffix = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{suffix} {self.total:.6f}", f"{name}_count{suffix} {self.n}"]
        return out


class Metrics:
    """Thread-safe request, document, latency and batch-size metrics."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency: dict[str, Histogram] = {}
        self.documents = 0
        self.forward_passes = 0
        self.batch_rows = Histogram(ROW_BUCKETS)
        self.batch_requests = Histogram(REQUEST_BUCKETS)
        self._inflight = 0
        self._queued = 0

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(path, status)] += 1
            self.latency.setdefault(path, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def observe_batch(self, rows: int, requests: int) -> None:
        with self._lock:
            self.forward_passes += 1
            self.batch_rows.observe(rows)
            self.batch_requests.observe(requests)

    def add_documents(self, n: int) -> None:
        with self._lock:
            self.documents += n

    def inflight(self, delta: int) -> None:
        with self._lock:
            self._inflight += delta

    def set_queued(self, documents: int) -> None:
        with self._lock:
            self._queued = documents

    def render(self) -> str:
        with self._lock:
            lines = [
                "# HELP tuner_requests_total HTTP requests by path and status code.",
                "# TYPE tuner_requests_total counter",
            ]
            for (path, status), n in sorted(self.requests.items()):
                lines.append(f'tuner_requests_total{{path="{label_value(path)}",code="{status}"}} {n}')
            lines += [
                "# HELP tuner_documents_total Documents scored.",
                "# TYPE tuner_documents_total counter",
                f"tuner_documents_total {self.documents}",
                "# HELP tuner_forward_passes_total Forward passes run by the batching worker.",
                "# TYPE tuner_forward_passes_total counter",
                f"tuner_forward_passes_total {self.forward_passes}",
                "# HELP tuner_inflight_requests Requests being handled now.",
                "# TYPE tuner_inflight_requests gauge",
                f"tuner_inflight_requests {self._inflight}",
                "# HELP tuner_queued_documents Documents queued or being scored (503 past --max-queued-documents).",
                "# TYPE tuner_queued_documents gauge",
                f"tuner_queued_documents {self._queued}",
                "# HELP tuner_request_duration_seconds Request latency by path.",
                "# TYPE tuner_request_duration_seconds histogram",
            ]
            for path, hist in sorted(self.latency.items()):
                lines += hist.lines("tuner_request_duration_seconds", f'path="{label_value(path)}"')
            lines += [
                "# HELP tuner_batch_rows Documents per forward pass.",
                "# TYPE tuner_batch_rows histogram",
                *self.batch_rows.lines("tuner_batch_rows"),
                "# HELP tuner_batch_requests Distinct requests sharing one forward pass.",
                "# TYPE tuner_batch_requests histogram",
                *self.batch_requests.lines("tuner_batch_requests"),
            ]
        return "\n".join(lines) + "\n"

"""Latency and throughput measurement shared by the onnxruntime and PyTorch runs.

Both runtimes go through the same functions with the same inputs, so a difference in
the figures comes from the runtime and not from the harness. The scheme follows
onnxruntime_perf_test and MLPerf's single-stream scenario: warm-up runs that are not
recorded, then a fixed count of timed batch-1 runs, each timed on its own with
``time.perf_counter_ns``. Throughput follows MLPerf's offline scenario: whole batches
back to back, reported as images per second.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

RunFunction = Callable[[np.ndarray], Any]

# Batches timed per batch size are at least this many, so that the per-batch spread
# is defined even when a large batch alone exceeds the requested image count.
MIN_THROUGHPUT_BATCHES = 3
# Untimed runs at each new batch size: the first run at a new shape allocates buffers.
THROUGHPUT_WARMUP_BATCHES = 2


@dataclass
class LatencyStats:
    """Summary of per-run latencies, in milliseconds."""

    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    min_ms: float
    mean_ms: float
    std_ms: float

    @classmethod
    def from_ns(cls, latencies_ns: np.ndarray) -> "LatencyStats":
        values_ms = np.asarray(latencies_ns, dtype=np.float64) / 1e6
        # Nearest-rank ("lower") percentiles report a latency that a run actually had.
        p50, p90, p99 = np.percentile(values_ms, [50, 90, 99], method="lower")
        return cls(
            runs=int(values_ms.size),
            p50_ms=float(p50),
            p90_ms=float(p90),
            p99_ms=float(p99),
            max_ms=float(values_ms.max()),
            min_ms=float(values_ms.min()),
            mean_ms=float(values_ms.mean()),
            std_ms=float(values_ms.std(ddof=1)) if values_ms.size > 1 else 0.0,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ThroughputResult:
    """Back-to-back batches of one size: images per second and the per-batch latencies."""

    batch_size: int
    batches: int
    images: int
    total_s: float
    images_per_s: float
    batch_latencies_ns: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        per_batch = self.images_per_batch_per_s()
        return {
            "batch_size": self.batch_size,
            "batches": self.batches,
            "images": self.images,
            "total_s": self.total_s,
            "images_per_s": self.images_per_s,
            "images_per_s_std": float(per_batch.std(ddof=1)) if per_batch.size > 1 else 0.0,
            "batch_latency": LatencyStats.from_ns(self.batch_latencies_ns).to_dict(),
        }

    def images_per_batch_per_s(self) -> np.ndarray:
        return self.batch_size / (self.batch_latencies_ns.astype(np.float64) / 1e9)


def make_batch(pool: np.ndarray, batch_size: int, start: int = 0) -> np.ndarray:
    """Take ``batch_size`` consecutive samples from ``pool``, wrapping around its end.

    The result is a new C-contiguous array, so every runtime reads the same memory layout.
    """
    indices = (start + np.arange(batch_size)) % len(pool)
    return np.ascontiguousarray(pool[indices])


def time_call_ns(run: RunFunction, batch: np.ndarray) -> int:
    start = time.perf_counter_ns()
    run(batch)
    return time.perf_counter_ns() - start


def measure_batch1_latency(run: RunFunction, pool: np.ndarray, warmup: int, runs: int) -> np.ndarray:
    """Return the latencies in nanoseconds of ``runs`` batch-1 runs after ``warmup`` untimed ones.

    Run i uses sample i of the pool (modulo its length). Each single-sample batch is cut
    out before its timer starts, so the slicing is not part of the latency.
    """
    singles = [make_batch(pool, 1, index) for index in range(min(len(pool), max(warmup, runs)))]
    for index in range(warmup):
        run(singles[index % len(singles)])

    latencies = np.empty(runs, dtype=np.int64)
    for index in range(runs):
        latencies[index] = time_call_ns(run, singles[index % len(singles)])
    return latencies


def measure_throughput(run: RunFunction, pool: np.ndarray, batch_size: int, images: int) -> ThroughputResult:
    """Run whole batches of ``batch_size`` back to back for about ``images`` images.

    The batch count is ``ceil(images / batch_size)``, at least MIN_THROUGHPUT_BATCHES.
    """
    batch = make_batch(pool, batch_size)
    for _ in range(THROUGHPUT_WARMUP_BATCHES):
        run(batch)

    batches = max(MIN_THROUGHPUT_BATCHES, math.ceil(images / batch_size))
    latencies = np.empty(batches, dtype=np.int64)
    for index in range(batches):
        latencies[index] = time_call_ns(run, batch)

    total_s = float(latencies.sum()) / 1e9
    return ThroughputResult(
        batch_size=batch_size,
        batches=batches,
        images=batches * batch_size,
        total_s=total_s,
        images_per_s=batches * batch_size / total_s,
        batch_latencies_ns=latencies,
    )


@dataclass
class BenchmarkSettings:
    """Run counts and inputs shared by every runtime in one benchmark."""

    warmup: int
    runs: int
    batch_sizes: list[int]
    throughput_images: int
    seed: int


@dataclass
class RuntimeResult:
    """Everything measured for one model in one runtime (onnxruntime or PyTorch eager).

    ``load_ms`` is the session creation for onnxruntime and the checkpoint load for
    PyTorch. ``details`` records the runtime's settings (provider, threads, ...).
    """

    runtime: str
    model_path: str
    load_ms: float
    first_run_ms: float
    batch1_latencies_ns: np.ndarray
    throughput: list[ThroughputResult]
    skipped_batch_sizes: list[int]
    details: dict[str, Any]

    @property
    def batch1(self) -> LatencyStats:
        return LatencyStats.from_ns(self.batch1_latencies_ns)

    def throughput_at(self, batch_size: int) -> ThroughputResult | None:
        return next((result for result in self.throughput if result.batch_size == batch_size), None)


def measure_steady_state(
    run: RunFunction,
    pool: np.ndarray,
    settings: BenchmarkSettings,
    batch_sizes: list[int],
) -> tuple[np.ndarray, list[ThroughputResult]]:
    """Measure batch-1 latency and the throughput at each of ``batch_sizes`` on ``pool``.

    Returns the batch-1 latencies in nanoseconds and one ThroughputResult per batch size.
    """
    latencies = measure_batch1_latency(run, pool, settings.warmup, settings.runs)
    throughput = [measure_throughput(run, pool, batch_size, settings.throughput_images) for batch_size in batch_sizes]
    return latencies, throughput

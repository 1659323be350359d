"""Decoding and preprocessing an image set in parallel worker processes.

Decoding a 1200x900 PNG costs about 15 ms, far more than a small CNN's inference, so
grading and cache building spread it over processes. ``decode_all`` decodes each image once.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from evaluate.datasets import ImageSet
from evaluate.preprocessing import Recipe, to_canvas

log = logging.getLogger(__name__)

# Images per task sent to a worker: large enough to amortise the inter-process
# round trip, small enough to keep every worker busy near the end.
CHUNK_SIZE = 32

_worker_set: ImageSet | None = None
_worker_recipe: Recipe | None = None


@dataclass
class DecodedChunk:
    """Canvases of some samples, and the samples that could not be decoded."""

    indices: np.ndarray
    canvases: np.ndarray
    failures: list[tuple[int, str]]


def available_cpus() -> int:
    """Return the CPUs this process may run on (its affinity), not the host's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _init_worker(image_set: ImageSet, recipe: Recipe) -> None:
    global _worker_set, _worker_recipe
    _worker_set, _worker_recipe = image_set, recipe


def _decode_chunk(indices: list[int]) -> DecodedChunk:
    assert _worker_set is not None and _worker_recipe is not None
    return decode_indices(_worker_set, _worker_recipe, indices)


def decode_indices(image_set: ImageSet, recipe: Recipe, indices: list[int]) -> DecodedChunk:
    """Decode and preprocess the given samples in this process."""
    canvases, done, failures = [], [], []
    for index in indices:
        try:
            canvases.append(to_canvas(image_set.read(index), recipe))
            done.append(index)
        except (OSError, ValueError, SyntaxError) as error:
            # PIL raises all three for damaged files; a bad file must not stop the run.
            failures.append((index, f"{type(error).__name__}: {error}"))
    stacked = np.stack(canvases) if canvases else np.zeros((0, recipe.size, recipe.size), np.uint8)
    return DecodedChunk(np.array(done, dtype=np.int64), stacked, failures)


def iter_decoded(image_set: ImageSet, recipe: Recipe, workers: int | None = None) -> Iterator[DecodedChunk]:
    """Yield decoded chunks in sample order, decoding with ``workers`` processes.

    ``workers`` defaults to the CPUs available to this process. IDX sets, whose pixels
    are already in memory, are processed here without workers.
    """
    count = len(image_set)
    chunks = [list(range(start, min(start + CHUNK_SIZE, count))) for start in range(0, count, CHUNK_SIZE)]
    workers = available_cpus() if workers is None else max(1, workers)
    if workers == 1 or image_set.pixels is not None or len(chunks) <= 1:
        for chunk in chunks:
            yield decode_indices(image_set, recipe, chunk)
        return

    # fork starts workers in milliseconds and shares the listing; spawn would re-import.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    context = multiprocessing.get_context(method)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(image_set, recipe)) as pool:
        yield from pool.map(_decode_chunk, chunks)


def decode_all(
    image_set: ImageSet,
    recipe: Recipe,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> DecodedChunk:
    """Decode a whole image set; ``progress`` is called with the count of samples done."""
    parts = []
    for chunk in iter_decoded(image_set, recipe, workers):
        parts.append(chunk)
        if progress is not None:
            progress(len(chunk.indices) + len(chunk.failures))
    indices = np.concatenate([p.indices for p in parts]) if parts else np.zeros(0, np.int64)
    canvases = np.concatenate([p.canvases for p in parts]) if parts else np.zeros((0, recipe.size, recipe.size), np.uint8)
    failures = [f for p in parts for f in p.failures]
    for index, reason in failures:
        log.warning("skipped %s: %s", image_set.members[index], reason)
    return DecodedChunk(indices, canvases, failures)

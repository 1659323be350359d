"""Running a model over an image set: parallel decoding overlapped with batched inference.

Worker processes decode chunks ahead of the inference loop (``iter_decoded`` submits
every chunk at once and yields them in order), so while this process runs a batch, the
workers keep decoding the next ones.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from evaluate.datasets import ImageSet
from evaluate.decoding import DecodedChunk, iter_decoded
from evaluate.errors import InputError
from evaluate.preprocessing import Recipe, normalize
from evaluate.session import LoadedModel

log = logging.getLogger(__name__)

# Skipped files logged one by one before the rest are only counted, so a folder of
# thousands of broken files does not flood the terminal.
MAX_LOGGED_SKIPS = 10


@dataclass
class Predictions:
    """The logits of every decoded sample, the samples that failed, and where time went."""

    indices: np.ndarray
    logits: np.ndarray
    failures: list[tuple[int, str]]
    # Seconds the inference loop spent waiting for decoded images; with several workers
    # most decoding overlaps inference and is not counted here.
    decode_seconds: float
    # Seconds spent normalising batches and in session.run.
    inference_seconds: float
    wall_seconds: float
    # Seconds from the start of decoding to the first batch's logits; None when nothing decoded.
    first_batch_seconds: float | None


def sample_path(image_set: ImageSet, index: int) -> str:
    """Return a sample's location: a file path, ``ARCHIVE.zip/MEMBER``, or ``FOLDER/idx:N``."""
    member = image_set.members[index]
    if image_set.kind == "folder":
        return str(Path(image_set.root) / member)
    return f"{image_set.source}/{member}"


def _timed(chunks: Iterable[DecodedChunk], clock: list[float]) -> Iterator[DecodedChunk]:
    """Yield from chunks, adding the time spent waiting for each one to ``clock[0]``."""
    iterator = iter(chunks)
    while True:
        start = time.perf_counter()
        try:
            chunk = next(iterator)
        except StopIteration:
            return
        finally:
            clock[0] += time.perf_counter() - start
        yield chunk


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def infer(model: LoadedModel, canvases: np.ndarray, recipe: Recipe, fixed_batch: int | None = None) -> np.ndarray:
    """Return the logits for uint8 canvases, padding batches for a model with a fixed batch size."""
    inputs = normalize(canvases, recipe)
    try:
        if fixed_batch is None:
            return model.run(inputs)
        outputs = []
        for start in range(0, len(inputs), fixed_batch):
            part = inputs[start : start + fixed_batch]
            padded = np.zeros((fixed_batch, *part.shape[1:]), dtype=np.float32)
            padded[: len(part)] = part
            outputs.append(model.run(padded)[: len(part)])
        return np.concatenate(outputs)
    except (ort_errors.InvalidArgument, ort_errors.Fail, ort_errors.RuntimeException) as error:
        raise InputError(
            f"{model.path}: inference failed on input of shape {list(inputs.shape)} ({_one_line(error)}); "
            "check that the input size and layout fit the model"
        ) from error


def _check_logits(model: LoadedModel, logits: np.ndarray, num_classes: int) -> None:
    if logits.ndim != 2 or logits.shape[1] != num_classes:
        raise InputError(
            f"{model.path}: the model's first output has shape {list(logits.shape)}, "
            f"expected [N, {num_classes}] logits, one for each class; pass --classes with one name for each output"
        )


class _SkipLog:
    """Logs files that failed to decode, or raises on the first one in strict mode."""

    def __init__(self, image_set: ImageSet, strict: bool) -> None:
        self.image_set = image_set
        self.strict = strict
        self.count = 0

    def add(self, failures: list[tuple[int, str]]) -> None:
        for index, reason in failures:
            path = sample_path(self.image_set, index)
            if self.strict:
                raise InputError(
                    f"{path}: cannot decode image ({reason}); fix or remove the file, or drop --strict to skip it"
                )
            self.count += 1
            if self.count <= MAX_LOGGED_SKIPS:
                log.warning("skipped %s: %s", path, reason)

    def close(self) -> None:
        unlogged = self.count - MAX_LOGGED_SKIPS
        if unlogged > 0:
            log.warning("skipped %d more files that could not be decoded; --json lists them all", unlogged)


def predict(
    model: LoadedModel,
    image_set: ImageSet,
    recipe: Recipe,
    num_classes: int,
    batch_size: int = 256,
    workers: int | None = None,
    strict: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Predictions:
    """Decode every sample and run the model on batches of ``batch_size``.

    ``progress`` is called with the number of samples finished, decoded or skipped.
    Raises InputError for a file that fails to decode in ``strict`` mode, and when the
    model rejects the inputs or returns outputs that do not fit ``num_classes``.
    """
    batch_dim = model.input_shape[0] if model.input_shape else None
    fixed_batch = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else None
    skips = _SkipLog(image_set, strict)
    wait_clock = [0.0]
    inference_seconds = 0.0
    first_batch_seconds: float | None = None
    indices: list[np.ndarray] = []
    logits: list[np.ndarray] = []
    failures: list[tuple[int, str]] = []
    pending: list[np.ndarray] = []
    pending_count = 0

    def run_batch(canvases: np.ndarray) -> None:
        nonlocal inference_seconds, first_batch_seconds
        start = time.perf_counter()
        batch_logits = infer(model, canvases, recipe, fixed_batch)
        inference_seconds += time.perf_counter() - start
        _check_logits(model, batch_logits, num_classes)
        logits.append(batch_logits.astype(np.float32, copy=False))
        if first_batch_seconds is None:
            first_batch_seconds = time.perf_counter() - started

    started = time.perf_counter()
    with contextlib.closing(iter_decoded(image_set, recipe, workers)) as chunks:
        for chunk in _timed(chunks, wait_clock):
            skips.add(chunk.failures)
            failures.extend(chunk.failures)
            indices.append(chunk.indices)
            if len(chunk.indices):
                pending.append(chunk.canvases)
                pending_count += len(chunk.indices)
            # The first chunk goes to the model at once, so a model that rejects the
            # inputs fails before a whole batch is decoded. Later batches are full.
            while pending_count >= batch_size or (pending_count and not logits):
                canvases = np.concatenate(pending)
                run_batch(canvases[:batch_size])
                rest = canvases[batch_size:]
                pending, pending_count = ([rest] if len(rest) else []), len(rest)
            if progress is not None:
                progress(len(chunk.indices) + len(chunk.failures))
    if pending_count:
        run_batch(np.concatenate(pending))
    skips.close()

    return Predictions(
        indices=np.concatenate(indices) if indices else np.zeros(0, np.int64),
        logits=np.concatenate(logits) if logits else np.zeros((0, num_classes), np.float32),
        failures=failures,
        decode_seconds=wait_clock[0],
        inference_seconds=inference_seconds,
        wall_seconds=time.perf_counter() - started,
        first_batch_seconds=first_batch_seconds,
    )

"""End-to-end grading time of an image set, and the single-thread decode baseline.

The end-to-end run is the grading path itself: ``open_image_set`` lists the set and
``evaluate.grading.predict`` decodes it in worker processes while this process runs the
model on each batch, so every image is decoded once. The baseline decodes the same
files in one thread without preprocessing or inference. An end-to-end time below the
baseline shows that the parallel pipeline hides more than its own overhead.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evaluate.datasets import ImageSet, open_image_set
from evaluate.decoding import available_cpus
from evaluate.errors import InputError
from evaluate.grade_command import decode_processes
from evaluate.grading import predict
from evaluate.model_spec import ModelSpec, labels_in_model_order
from evaluate.session import LoadedModel

log = logging.getLogger(__name__)

# Preprocessed samples kept from the end-to-end run to serve as latency and throughput
# inputs; a cap, so that a large set does not hold all its inputs in memory twice.
MAX_KEPT_INPUTS = 4096


@dataclass
class PipelineRun:
    """Timings of one end-to-end pass over an image set, in seconds."""

    wall_s: float
    listing_s: float
    decode_wait_s: float
    inference_s: float
    images: int
    failed: int
    first_batch_s: float | None
    first_batch_since_process_start_s: float | None
    top1: float | None

    def to_dict(self) -> dict[str, Any]:
        record = dataclasses.asdict(self)
        record["images_per_s"] = self.images / self.wall_s if self.wall_s > 0 else None
        return record


@dataclass
class PipelineResult:
    """Repeated end-to-end passes of one model over one image set."""

    data_path: str
    source_kind: str
    # Decoding processes started; 0 when decoding ran in this process (IDX sets, 1 worker).
    decode_processes: int
    batch_size: int
    runs: list[PipelineRun]
    # Normalised inputs from the last pass (at most MAX_KEPT_INPUTS), reused as benchmark inputs.
    inputs: np.ndarray = field(repr=False)


@dataclass
class RecordingModel(LoadedModel):
    """A LoadedModel that notes when its first batch finished and keeps the inputs it ran."""

    keep: int = 0
    first_batch_at: float | None = None
    first_batch_since_process_start_s: float | None = None
    kept: list[np.ndarray] = field(default_factory=list)
    kept_count: int = 0

    @classmethod
    def wrapping(cls, model: LoadedModel, keep: int) -> "RecordingModel":
        values = {item.name: getattr(model, item.name) for item in dataclasses.fields(LoadedModel)}
        return cls(**values, keep=keep)

    def run(self, inputs: np.ndarray) -> np.ndarray:
        logits = super().run(inputs)
        if self.first_batch_at is None:
            self.first_batch_at = time.perf_counter()
            self.first_batch_since_process_start_s = seconds_since_process_start()
        if self.kept_count < self.keep:
            part = inputs[: self.keep - self.kept_count].copy()
            self.kept.append(part)
            self.kept_count += len(part)
        return logits


def seconds_since_process_start() -> float | None:
    """Return how long ago this process started, from /proc; None where /proc is missing.

    The start time in /proc has the kernel's clock-tick resolution (usually 10 ms).
    """
    try:
        with open("/proc/self/stat", encoding="ascii") as handle:
            # The command name in field 2 may contain spaces, so split after its ")".
            fields = handle.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime", encoding="ascii") as handle:
            uptime_s = float(handle.read().split()[0])
    except (OSError, IndexError, ValueError):
        return None
    start_ticks = int(fields[19])  # "starttime", field 22 of stat; fields[0] is field 3
    return uptime_s - start_ticks / os.sysconf("SC_CLK_TCK")


def run_pipeline_once(
    model: LoadedModel, spec: ModelSpec, path: str | Path, split: str, workers: int, batch_size: int
) -> tuple[PipelineRun, np.ndarray, ImageSet]:
    """Grade the image set at ``path`` once, as ``python -m evaluate`` does.

    Returns the timings, the kept normalised inputs and the opened image set.
    """
    recorder = RecordingModel.wrapping(model, keep=MAX_KEPT_INPUTS)
    start = time.perf_counter()
    image_set = open_image_set(path, class_names=spec.class_names, split=split)
    listing_s = time.perf_counter() - start
    predictions = predict(
        recorder, image_set, spec.recipe, num_classes=len(spec.class_names), batch_size=batch_size, workers=workers
    )
    wall_s = time.perf_counter() - start

    images = len(predictions.indices)
    if images == 0:
        raise InputError(f"{path}: none of its {len(image_set)} images could be decoded; check that they are image files")
    top1 = None
    if image_set.labelled:
        labels = labels_in_model_order(image_set, spec.class_names)[predictions.indices]
        top1 = float((predictions.logits.argmax(axis=1) == labels).mean())
    run = PipelineRun(
        wall_s=wall_s,
        listing_s=listing_s,
        decode_wait_s=predictions.decode_seconds,
        inference_s=predictions.inference_seconds,
        images=images,
        failed=len(predictions.failures),
        first_batch_s=None if recorder.first_batch_at is None else recorder.first_batch_at - start,
        first_batch_since_process_start_s=recorder.first_batch_since_process_start_s,
        top1=top1,
    )
    return run, np.concatenate(recorder.kept), image_set


def run_pipeline(
    model: LoadedModel,
    spec: ModelSpec,
    path: str | Path,
    split: str,
    workers: int | None,
    batch_size: int,
    repeats: int,
) -> PipelineResult:
    """Grade the image set ``repeats`` times with ``workers`` decoding processes."""
    workers = available_cpus() if workers is None else workers
    runs = []
    for repeat in range(repeats):
        run, inputs, image_set = run_pipeline_once(model, spec, path, split, workers, batch_size)
        log.info("end-to-end pass %d/%d over %s: %.3f s", repeat + 1, repeats, path, run.wall_s)
        runs.append(run)
    processes = decode_processes(image_set, workers)
    return PipelineResult(str(path), image_set.kind, processes, batch_size, runs, inputs)


def measure_decode_baseline(path: str | Path, spec: ModelSpec, split: str, repeats: int) -> list[float] | None:
    """Time decoding every image of the set in this one thread, without preprocessing.

    Returns one time in seconds per repeat, or None for an MNIST IDX set, whose pixels
    are already in memory so that there is nothing to decode.
    """
    image_set = open_image_set(path, class_names=spec.class_names, split=split)
    if image_set.pixels is not None:
        return None
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for index in range(len(image_set)):
            try:
                image_set.read(index)
            except (OSError, ValueError, SyntaxError):
                pass  # the end-to-end run already reported every file that fails to decode
        times.append(time.perf_counter() - start)
        log.info("single-thread decode of %d images: %.3f s", len(image_set), times[-1])
    return times

"""Speed benchmark of ONNX models in onnxruntime, optionally beside PyTorch eager.

``run_benchmark(args)`` serves ``python -m evaluate --model M.onnx --benchmark [PATH]``,
with the flags of ``evaluate.cli`` and ``evaluate.benchmark_cli``. For each model it
records session creation and first-run time, batch-1 latency percentiles and the
throughput at each batch size. With PATH it also grades the image set end to end and
times a single-thread decode of the same files. With ``--torch`` it measures the
checkpoint in PyTorch eager on the same inputs. Only ``--torch`` imports torch.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from evaluate.benchmark_pipeline import measure_decode_baseline, run_pipeline
from evaluate.cli import preprocessing_flags
from evaluate.decoding import available_cpus
from evaluate.benchmark_report import (
    ModelBenchmark,
    build_report,
    describe_environment,
    load_average,
    render_table,
    write_h5,
)
from evaluate.benchmark_timing import BenchmarkSettings, RuntimeResult, make_batch, measure_steady_state, time_call_ns
from evaluate.errors import InputError
from evaluate.outputs import check_output_path, write_json
from evaluate.model_spec import ModelSpec, check_model_fits, resolve_spec
from evaluate.session import LoadedModel, open_model

log = logging.getLogger(__name__)

# Distinct random samples the benchmark cycles through when no data path is given.
RANDOM_POOL_SIZE = 256
# Samples on which the PyTorch and onnxruntime logits are compared.
AGREEMENT_SAMPLES = 64

_NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
}


def parse_batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(size < 1 for size in sizes):
        raise InputError(f"--batch-sizes {text!r} is invalid; give positive integers separated by commas, e.g. 1,8,32")
    return sorted(set(sizes))


def settings_from_args(args: argparse.Namespace) -> BenchmarkSettings:
    """Validate the flags before anything is measured; raise InputError on a bad value."""
    checks = [
        ("--warmup", args.warmup, 0),
        ("--runs", args.runs, 1),
        ("--throughput-images", args.throughput_images, 1),
        ("--repeats", args.repeats, 1),
    ]
    for flag, value, minimum in checks:
        if value < minimum:
            raise InputError(f"{flag} {value} is invalid; it must be at least {minimum}")
    if not args.model:
        raise InputError("--model is missing; pass the .onnx file to measure, e.g. --model model.onnx")
    for flag, path in (("--json", args.json), ("--h5", args.h5)):
        if path is not None:
            check_output_path(path, flag)
    return BenchmarkSettings(
        warmup=args.warmup,
        runs=args.runs,
        batch_sizes=parse_batch_sizes(args.batch_sizes),
        throughput_images=args.throughput_images,
        seed=args.seed,
    )


def input_spec(model: LoadedModel, input_size: int | None) -> tuple[tuple[int, ...], np.dtype]:
    """Return the shape of one sample (without the batch axis) and the input dtype.

    A symbolic height or width takes ``input_size`` (--input-size), else the size of
    the model's preprocessing recipe. A symbolic channel axis takes one grey channel.
    """
    model_input = model.session.get_inputs()[0]
    dtype = _NUMPY_TYPES.get(model_input.type)
    if dtype is None:
        raise InputError(f"{model.path}: input type {model_input.type} is not supported; the benchmark feeds float tensors")
    shape = list(model.input_shape[1:])
    size = input_size or (model.metadata.recipe.size if model.metadata is not None else None)
    if len(shape) == 3:
        shape = [dim if isinstance(dim, int) else default for dim, default in zip(shape, (1, size, size))]
    if not all(isinstance(dim, int) and dim > 0 for dim in shape):
        raise InputError(
            f"{model.path}: input shape {model.input_shape} has symbolic dimensions besides the batch axis; "
            "pass --input-size, or export the model with a fixed sample shape"
        )
    return tuple(shape), np.dtype(dtype)


def random_pool(shape: tuple[int, ...], dtype: np.dtype, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((RANDOM_POOL_SIZE, *shape)).astype(dtype)


def supported_batch_sizes(model: LoadedModel, batch_sizes: list[int]) -> tuple[list[int], list[int]]:
    """Split batch sizes into those the model's batch axis accepts and those it does not."""
    batch_dim = model.input_shape[0] if model.input_shape else None
    if isinstance(batch_dim, int):
        return [size for size in batch_sizes if size == batch_dim], [size for size in batch_sizes if size != batch_dim]
    return list(batch_sizes), []


def check_pool_shape(model: LoadedModel, pool: np.ndarray, shape: tuple[int, ...]) -> None:
    if tuple(pool.shape[1:]) != shape:
        raise InputError(
            f"{model.path}: the preprocessing recipe makes inputs of shape {tuple(pool.shape[1:])} but the model "
            f"takes {shape}; the model's metadata does not match its graph, export it again"
        )


@dataclass
class MeasuredModel:
    """One measured ONNX model, the inputs it was measured on, and its logits on some of them.

    The onnxruntime session itself is not kept: PyTorch is measured after it is closed,
    so that no idle onnxruntime thread pool shares the CPUs with PyTorch's threads.
    """

    benchmark: ModelBenchmark
    # The class names and recipe used to grade PATH, or None without PATH.
    spec: ModelSpec | None
    pool: np.ndarray
    inputs: dict[str, Any]
    # The pool's first AGREEMENT_SAMPLES samples (or one fixed-size batch) and the model's logits on them.
    reference_inputs: np.ndarray
    reference_logits: np.ndarray


def benchmark_model(path: Path, args: argparse.Namespace, settings: BenchmarkSettings) -> MeasuredModel:
    """Measure one ONNX model in onnxruntime, and grade PATH end to end when given."""
    start = time.perf_counter()
    model = open_model(path, provider=args.provider, threads=args.threads)
    load_ms = (time.perf_counter() - start) * 1e3
    shape, dtype = input_spec(model, args.input_size)
    pool = random_pool(shape, dtype, settings.seed)
    # The first run comes before any data is decoded, so it always takes a random sample.
    first_run_ms = time_call_ns(model.run, make_batch(pool, 1)) / 1e6

    pipeline, spec = None, None
    description: dict[str, Any] = {"source": "random", "distribution": "standard normal", "seed": settings.seed}
    if args.path is not None:
        spec = resolve_spec(model, preprocessing_flags(args))
        check_model_fits(model, spec)
        pipeline = run_pipeline(model, spec, args.path, args.split, args.workers, args.batch_size, args.repeats)
        pool = pipeline.inputs.astype(dtype, copy=False)
        check_pool_shape(model, pool, shape)
        description = {"source": "data", "data_path": str(args.path), "images": len(pool)}
    description.update(shape=list(shape), dtype=str(dtype))

    batch_sizes, skipped = supported_batch_sizes(model, settings.batch_sizes)
    if skipped:
        log.warning("%s: batch axis is fixed to %s, so batch sizes %s are skipped", path, model.input_shape[0], skipped)
    latencies, throughput = measure_steady_state(model.run, pool, settings, batch_sizes)
    result = RuntimeResult(
        runtime="onnxruntime",
        model_path=str(path),
        load_ms=load_ms,
        first_run_ms=first_run_ms,
        batch1_latencies_ns=latencies,
        throughput=throughput,
        skipped_batch_sizes=skipped,
        details={
            "provider": model.provider,
            "intra_op_threads": model.intra_op_threads,
            "graph_optimization_level": model.optimization_level,
        },
    )
    reference_inputs = agreement_batch(model, pool)
    reference_logits = model.run(reference_inputs)
    benchmark = ModelBenchmark(onnxruntime=result, pipeline=pipeline)
    return MeasuredModel(benchmark, spec, pool, description, reference_inputs, reference_logits)


def agreement_batch(model: LoadedModel, pool: np.ndarray) -> np.ndarray:
    """Return the samples on which PyTorch's logits are compared: one batch the model accepts."""
    batch_dim = model.input_shape[0] if model.input_shape else None
    count = batch_dim if isinstance(batch_dim, int) else min(len(pool), AGREEMENT_SAMPLES)
    return make_batch(pool, count)


def torch_agreement(torch_logits: np.ndarray, onnx_logits: np.ndarray) -> dict[str, Any] | None:
    """Compare two models' logits on the same samples; return None when their shapes differ."""
    if torch_logits.shape != onnx_logits.shape:
        return None
    return {
        "samples": int(len(onnx_logits)),
        "max_abs_logit_difference": float(np.abs(torch_logits - onnx_logits).max()),
        "top1_agreement": float((torch_logits.argmax(axis=1) == onnx_logits.argmax(axis=1)).mean()),
    }


def warn_if_loaded(load: list[float] | None) -> None:
    """Log a warning when other processes already keep the available CPUs busy."""
    cpus = available_cpus()
    if load is not None and load[0] > cpus:
        log.warning(
            "1-minute load average %.1f exceeds the %d CPUs available: other processes share the CPUs, "
            "so the figures will be disturbed; benchmark on an idle machine for figures to keep",
            load[0],
            cpus,
        )


def run_benchmark(args: argparse.Namespace) -> int:
    """Run the benchmark the parsed flags describe, print the table and write the files.

    Returns the exit code (0). Raises InputError, with a one-line message, for bad input.
    """
    settings = settings_from_args(args)
    load_at_start = load_average()
    measured = [benchmark_model(path, args, settings) for path in args.model]
    models = [item.benchmark for item in measured]

    torch_result, torch_version, agreement = None, None, [None] * len(models)
    if args.torch is not None:
        torch_result, torch_version, agreement = benchmark_torch(args.torch, measured, settings)

    baseline_s = None
    if measured[0].spec is not None:
        baseline_s = measure_decode_baseline(args.path, measured[0].spec, args.split, args.repeats)

    # Warned after the measurements, so that a bad input still ends in one error line.
    warn_if_loaded(load_at_start)
    environment = describe_environment(torch_version, load_at_start)
    report = build_report(environment, settings, measured[0].inputs, models, torch_result, agreement, baseline_s)
    render_table(report, Console())
    if args.json is not None:
        write_json(args.json, report)
    if args.h5 is not None:
        write_h5(args.h5, report, models, torch_result)
    return 0


def benchmark_torch(
    checkpoint: str, measured: list[MeasuredModel], settings: BenchmarkSettings
) -> tuple[RuntimeResult, str, list[dict[str, Any] | None]]:
    """Measure the checkpoint on the first model's inputs and compare its logits with every model's."""
    from evaluate import benchmark_torch as torch_side  # only --torch may import torch

    first = measured[0].benchmark.onnxruntime
    if first.details["provider"] != "CPUExecutionProvider":
        # NOTE: the checkpoint always runs on the CPU, so these ratios compare devices, not runtimes.
        log.warning(
            "%s runs on %s but PyTorch on the CPU; use --provider cpu to compare the runtimes",
            first.model_path,
            first.details["provider"],
        )
    batch_sizes = [entry.batch_size for entry in first.throughput]
    threads = int(first.details["intra_op_threads"])
    result, runner = torch_side.benchmark_checkpoint(checkpoint, measured[0].pool, settings, batch_sizes, threads)

    agreement = []
    for item in measured:
        try:
            torch_logits = runner.logits(item.reference_inputs)
        except RuntimeError as error:  # torch rejects inputs of another model's shape
            log.warning("cannot compare %s with %s: %s", checkpoint, item.benchmark.onnxruntime.model_path, error)
            agreement.append(None)
            continue
        agreement.append(torch_agreement(torch_logits, item.reference_logits))
    return result, torch_side.torch_version(), agreement

"""The benchmark's record: machine description, JSON and HDF5 files, and the Rich table.

``docs/benchmarks.md`` documents the JSON schema that ``build_report`` produces.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

from evaluate.benchmark_pipeline import PipelineResult
from evaluate.benchmark_timing import BenchmarkSettings, RuntimeResult
from evaluate.decoding import available_cpus
from evaluate.outputs import atomic_path

log = logging.getLogger(__name__)

SCHEMA = "inkbench.benchmark/1"


@dataclass
class ModelBenchmark:
    """The onnxruntime measurements of one ``--model``, and its end-to-end runs with PATH."""

    onnxruntime: RuntimeResult
    pipeline: PipelineResult | None = None


def cpu_model() -> str:
    """Return the CPU's model name from /proc/cpuinfo, else from the platform module."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                # x86 names it "model name"; some ARM kernels only give "Hardware" or "Processor".
                if key.strip() in ("model name", "Hardware", "Processor") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def load_average() -> list[float] | None:
    """Return the 1, 5 and 15 minute load averages, or None where the OS has none."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def describe_environment(torch_version: str | None, load_at_start: list[float] | None) -> dict[str, Any]:
    """Describe the machine, its load before and after the run, and the software versions."""
    return {
        "cpu_model": cpu_model(),
        "cpus_in_affinity": available_cpus(),
        "cpus_on_host": os.cpu_count(),
        "load_average_at_start": load_at_start,
        "load_average_1_5_15_min": load_average(),
        "onnxruntime_version": ort.__version__,
        "numpy_version": np.__version__,
        "torch_version": torch_version,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def runtime_record(result: RuntimeResult) -> dict[str, Any]:
    batch1 = result.batch1
    record: dict[str, Any] = {
        "model": result.model_path,
        **result.details,
        "load_ms": result.load_ms,
        "first_run_ms": result.first_run_ms,
    }
    for name, value in batch1.to_dict().items():
        record["batch1_" + name] = value
    record["throughput"] = [entry.to_dict() for entry in result.throughput]
    record["skipped_batch_sizes"] = result.skipped_batch_sizes
    return record


def ratio_record(torch_result: RuntimeResult, onnx_result: RuntimeResult) -> dict[str, Any]:
    """Return how many times faster onnxruntime is than PyTorch on each figure.

    Latency ratios are torch time / onnxruntime time and throughput ratios are
    onnxruntime images/s / torch images/s, so a value above 1 always favours onnxruntime.
    """
    torch_batch1, onnx_batch1 = torch_result.batch1, onnx_result.batch1
    ratios: dict[str, Any] = {
        "batch1_p50": torch_batch1.p50_ms / onnx_batch1.p50_ms,
        "batch1_p90": torch_batch1.p90_ms / onnx_batch1.p90_ms,
        "batch1_p99": torch_batch1.p99_ms / onnx_batch1.p99_ms,
        "batch1_mean": torch_batch1.mean_ms / onnx_batch1.mean_ms,
        "first_run": torch_result.first_run_ms / onnx_result.first_run_ms,
    }
    throughput = {}
    for onnx_entry in onnx_result.throughput:
        torch_entry = torch_result.throughput_at(onnx_entry.batch_size)
        if torch_entry is not None:
            throughput[str(onnx_entry.batch_size)] = onnx_entry.images_per_s / torch_entry.images_per_s
    ratios["throughput"] = throughput
    return ratios


def mean_std(values: list[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else 0.0


def pipeline_record(pipeline: PipelineResult, baseline_s: list[float] | None) -> dict[str, Any]:
    wall_mean, wall_std = mean_std([run.wall_s for run in pipeline.runs])
    record: dict[str, Any] = {
        "data_path": pipeline.data_path,
        "source_kind": pipeline.source_kind,
        "decode_processes": pipeline.decode_processes,
        "batch_size": pipeline.batch_size,
        "repeats": len(pipeline.runs),
        "wall_s_mean": wall_mean,
        "wall_s_std": wall_std,
        "runs": [run.to_dict() for run in pipeline.runs],
        "baseline_decode_s_mean": None,
        "baseline_decode_s_std": None,
        "end_to_end_over_baseline_decode": None,
    }
    if baseline_s:
        baseline_mean, baseline_std = mean_std(baseline_s)
        record["baseline_decode_s_mean"] = baseline_mean
        record["baseline_decode_s_std"] = baseline_std
        record["end_to_end_over_baseline_decode"] = wall_mean / baseline_mean
    return record


def build_report(
    environment: dict[str, Any],
    settings: BenchmarkSettings,
    input_description: dict[str, Any],
    models: list[ModelBenchmark],
    torch_result: RuntimeResult | None,
    torch_agreement: list[dict[str, Any] | None],
    baseline_s: list[float] | None,
) -> dict[str, Any]:
    """Assemble the JSON report; the top-level entries repeat the first model's."""
    entries = []
    for index, model in enumerate(models):
        entry: dict[str, Any] = {"onnxruntime": runtime_record(model.onnxruntime)}
        if torch_result is not None:
            entry["ratio"] = ratio_record(torch_result, model.onnxruntime)
            entry["torch_agreement"] = torch_agreement[index]
        if model.pipeline is not None:
            entry["pipeline"] = pipeline_record(model.pipeline, baseline_s)
        entries.append(entry)

    benchmark: dict[str, Any] = {
        "environment": environment,
        "settings": {
            "warmup": settings.warmup,
            "runs": settings.runs,
            "batch_sizes": settings.batch_sizes,
            "throughput_images": settings.throughput_images,
            "seed": settings.seed,
        },
        "inputs": input_description,
        **entries[0],
        "torch": None if torch_result is None else runtime_record(torch_result),
        "models": entries,
    }
    return {"schema": SCHEMA, "benchmark": benchmark}


def write_h5(
    path: str | Path,
    report: dict[str, Any],
    models: list[ModelBenchmark],
    torch_result: RuntimeResult | None,
) -> None:
    """Write every raw latency, in nanoseconds, to an HDF5 file (layout in docs/benchmarks.md).

    The file appears complete or not at all: it is written beside ``path`` and renamed.
    """
    import h5py  # imported here because only --h5 needs it, and it adds to start-up time

    def write_runtime(group: Any, result: RuntimeResult) -> None:
        group.attrs["model"] = result.model_path
        group.attrs["runtime"] = result.runtime
        group.create_dataset("batch1_latency_ns", data=result.batch1_latencies_ns)
        batches = group.create_group("batch_latency_ns")
        for entry in result.throughput:
            batches.create_dataset(f"batch_size_{entry.batch_size}", data=entry.batch_latencies_ns)

    with atomic_path(Path(path)) as temporary:
        with h5py.File(temporary, "w") as file:
            file.attrs["schema"] = SCHEMA
            file.attrs["report_json"] = json.dumps(report)
            for index, model in enumerate(models):
                write_runtime(file.create_group(f"onnxruntime/{index}"), model.onnxruntime)
                if model.pipeline is not None:
                    walls = np.array([run.wall_s for run in model.pipeline.runs])
                    file.create_dataset(f"pipeline/{index}/wall_s", data=walls)
            if torch_result is not None:
                write_runtime(file.create_group("torch"), torch_result)


def format_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def render_table(report: dict[str, Any], console: Console | None = None) -> None:
    """Print the report as one Rich table: a column per model, and one for PyTorch."""
    console = console or Console()
    benchmark = report["benchmark"]
    columns = [entry["onnxruntime"] for entry in benchmark["models"]]
    headers = [Path(column["model"]).name for column in columns]
    if benchmark["torch"] is not None:
        columns.append(benchmark["torch"])
        headers.append(f"torch: {Path(benchmark['torch']['model']).name}")

    table = Table(title="inkbench benchmark", caption=environment_caption(benchmark))
    table.add_column("measure")
    for header in headers:
        table.add_column(header, justify="right", overflow="fold")

    def add_row(label: str, cells: list[str]) -> None:
        table.add_row(label, *cells, *([""] * (len(headers) - len(cells))))

    add_runtime_rows(add_row, columns, benchmark["settings"])
    if benchmark["torch"] is not None:
        add_ratio_rows(add_row, benchmark["models"])
    if any("pipeline" in entry for entry in benchmark["models"]):
        add_pipeline_rows(add_row, benchmark["models"])
    console.print(table)


def environment_caption(benchmark: dict[str, Any]) -> str:
    environment, settings = benchmark["environment"], benchmark["settings"]
    load_text = "unknown"
    if environment["load_average_1_5_15_min"] is not None:
        start = " ".join(f"{value:.2f}" for value in environment["load_average_at_start"])
        end = " ".join(f"{value:.2f}" for value in environment["load_average_1_5_15_min"])
        load_text = f"{start} at start, {end} at end"
    return (
        f"{environment['cpu_model']}, {environment['cpus_in_affinity']} CPUs in affinity, "
        f"load {load_text}; onnxruntime {environment['onnxruntime_version']}, "
        f"numpy {environment['numpy_version']}, torch {environment['torch_version'] or '-'}, "
        f"Python {environment['python_version']}; {settings['warmup']} warm-up + {settings['runs']} runs; "
        f"inputs: {benchmark['inputs']['source']}; {environment['date_utc']}"
    )


def add_runtime_rows(add_row: Callable[[str, list[str]], None], columns: list[dict[str, Any]], settings: dict) -> None:
    # "CPUExecutionProvider" becomes "CPU", so that three model columns fit 80 characters.
    providers = [column.get("provider", "torch eager").removesuffix("ExecutionProvider") for column in columns]
    add_row("provider", providers)
    add_row("intra-op threads", [str(column["intra_op_threads"]) for column in columns])
    add_row("graph optimisation", [column.get("graph_optimization_level", "-") for column in columns])
    add_row("session creation / load (ms)", [format_ms(column["load_ms"]) for column in columns])
    add_row("first run (ms)", [format_ms(column["first_run_ms"]) for column in columns])
    for name in ("p50", "p90", "p99", "max"):
        add_row(f"batch-1 {name} (ms)", [format_ms(column[f"batch1_{name}_ms"]) for column in columns])
    add_row(
        "batch-1 mean ± std (ms)",
        [f"{column['batch1_mean_ms']:.3f} ± {column['batch1_std_ms']:.3f}" for column in columns],
    )
    for batch_size in settings["batch_sizes"]:
        cells = []
        for column in columns:
            entry = next((item for item in column["throughput"] if item["batch_size"] == batch_size), None)
            cells.append("-" if entry is None else format_number(entry["images_per_s"], 0))
        add_row(f"throughput bs {batch_size} (images/s)", cells)


def add_ratio_rows(add_row: Callable[[str, list[str]], None], entries: list[dict[str, Any]]) -> None:
    add_row("torch / onnxruntime p50", [format_number(entry["ratio"]["batch1_p50"], 2) for entry in entries])
    add_row("torch / onnxruntime mean", [format_number(entry["ratio"]["batch1_mean"], 2) for entry in entries])
    batch_sizes = entries[0]["ratio"]["throughput"].keys()
    for batch_size in batch_sizes:
        add_row(
            f"onnxruntime / torch images/s, bs {batch_size}",
            [format_number(entry["ratio"]["throughput"].get(batch_size), 2) for entry in entries],
        )
    add_row(
        "max |logit difference| vs torch",
        [format_logit_difference(entry["torch_agreement"]) for entry in entries],
    )


def format_logit_difference(agreement: dict[str, Any] | None) -> str:
    return "-" if agreement is None else f"{agreement['max_abs_logit_difference']:.2e}"


def add_pipeline_rows(add_row: Callable[[str, list[str]], None], entries: list[dict[str, Any]]) -> None:
    pipelines = [entry.get("pipeline") for entry in entries]

    def cells(extract: Callable[[dict[str, Any]], str]) -> list[str]:
        return ["-" if pipeline is None else extract(pipeline) for pipeline in pipelines]

    def first_run(pipeline: dict[str, Any]) -> dict[str, Any]:
        return pipeline["runs"][0]

    add_row("end-to-end images", cells(lambda p: f"{first_run(p)['images']} ({first_run(p)['failed']} failed)"))
    add_row("decoding processes", cells(lambda p: str(p["decode_processes"])))
    add_row("listing (s)", cells(lambda p: format_number(first_run(p)["listing_s"], 3)))
    add_row("waiting for decode + preprocess (s)", cells(lambda p: format_number(first_run(p)["decode_wait_s"], 3)))
    add_row("normalise + inference (s)", cells(lambda p: format_number(first_run(p)["inference_s"], 3)))
    add_row(
        "end-to-end wall, mean ± std (s)",
        cells(lambda p: f"{p['wall_s_mean']:.3f} ± {p['wall_s_std']:.3f} (n={p['repeats']})"),
    )
    add_row("end-to-end images/s", cells(lambda p: format_number(first_run(p)["images_per_s"], 0)))
    add_row("first batch after listing start (s)", cells(lambda p: format_number(first_run(p)["first_batch_s"], 3)))
    add_row(
        "first batch after process start (s)",
        cells(lambda p: format_number(first_run(p)["first_batch_since_process_start_s"], 3)),
    )
    add_row("top-1", cells(lambda p: "-" if first_run(p)["top1"] is None else f"{first_run(p)['top1']:.4f}"))
    add_row("single-thread decode only (s)", cells(lambda p: format_number(p["baseline_decode_s_mean"], 3)))
    add_row("end-to-end / decode only", cells(lambda p: format_number(p["end_to_end_over_baseline_decode"], 3)))

"""The PyTorch eager side of the benchmark.

This is the only module of ``evaluate`` that imports torch, and ``evaluate.benchmark``
imports it only when the user passes ``--torch``. The model runs in eval mode under
``torch.inference_mode()`` with as many intra-op threads as onnxruntime was given, and
goes through the same timing functions and inputs as onnxruntime, so that the two are
measured alike.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluate.benchmark_timing import BenchmarkSettings, RuntimeResult, make_batch, measure_steady_state, time_call_ns
from evaluate.errors import InputError
from evaluate.preprocessing import Recipe

log = logging.getLogger(__name__)


def load_checkpoint_model(path: str | Path) -> tuple[torch.nn.Module, Recipe, list[str]]:
    """Load a training checkpoint as (model in eval mode, preprocessing recipe, class names)."""
    try:
        from train.checkpoints import load_model_from_checkpoint
    except ImportError as error:
        raise InputError(
            f"--torch needs the training code and its dependencies ({error}); install with 'pip install .[train]'"
        ) from error
    model, recipe, class_names = load_model_from_checkpoint(path)
    return model.eval(), recipe, class_names


def torch_version() -> str:
    return torch.__version__


class TorchRunner:
    """Calls the model on numpy batches; torch.from_numpy shares memory, so nothing is copied."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def __call__(self, batch: np.ndarray) -> torch.Tensor:
        return self.model(torch.from_numpy(batch))

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Return the logits as a numpy array, outside any timing."""
        with torch.inference_mode():
            return self(batch).numpy().copy()


def check_input_size(recipe: Recipe, pool: np.ndarray, checkpoint: str | Path) -> None:
    expected = (recipe.size, recipe.size)
    if tuple(pool.shape[-2:]) != expected:
        raise InputError(
            f"{checkpoint}: checkpoint takes {expected[0]}x{expected[1]} inputs but the ONNX model takes "
            f"{pool.shape[-2]}x{pool.shape[-1]}; pass the checkpoint the model was exported from"
        )


def benchmark_checkpoint(
    checkpoint: str | Path,
    pool: np.ndarray,
    settings: BenchmarkSettings,
    batch_sizes: list[int],
    threads: int,
) -> tuple[RuntimeResult, TorchRunner]:
    """Measure the checkpoint in PyTorch eager on ``pool`` with ``threads`` intra-op threads.

    Returns the result and the runner, whose logits the caller compares with
    onnxruntime's to check that both run the same model.
    """
    # torch.set_num_threads sets the process-wide intra-op pool, so it also applies to
    # anything else that runs torch later in this process.
    torch.set_num_threads(threads)
    start = time.perf_counter()
    model, recipe, _ = load_checkpoint_model(checkpoint)
    load_ms = (time.perf_counter() - start) * 1e3
    check_input_size(recipe, pool, checkpoint)

    runner = TorchRunner(model)
    with torch.inference_mode():
        first_run_ms = time_call_ns(runner, make_batch(pool, 1)) / 1e6
        latencies, throughput = measure_steady_state(runner, pool, settings, batch_sizes)

    details: dict[str, Any] = {
        "intra_op_threads": torch.get_num_threads(),
        "mode": "eager, eval(), torch.inference_mode()",
        "version": torch.__version__,
    }
    result = RuntimeResult(
        runtime="torch",
        model_path=str(checkpoint),
        load_ms=load_ms,
        first_run_ms=first_run_ms,
        batch1_latencies_ns=latencies,
        throughput=throughput,
        skipped_batch_sizes=[],
        details=details,
    )
    return result, runner

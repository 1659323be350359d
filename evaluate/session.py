"""Opening an ONNX model in onnxruntime on the provider the user asked for."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from evaluate.decoding import available_cpus
from evaluate.errors import InputError
from evaluate.metadata import ModelMetadata

log = logging.getLogger(__name__)

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


@dataclass
class LoadedModel:
    """An onnxruntime session with what the evaluator needs to know about it."""

    path: Path
    session: ort.InferenceSession
    provider: str
    input_name: str
    input_shape: list[int | str | None]
    num_classes: int | None
    metadata: ModelMetadata | None
    intra_op_threads: int
    optimization_level: str

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """Return the logits for a float32 batch of shape (N, 1, H, W)."""
        return self.session.run(None, {self.input_name: inputs})[0]


def _session_options(threads: int | None) -> tuple[ort.SessionOptions, int]:
    options = ort.SessionOptions()
    # Thread count from the CPU affinity: a container or taskset may grant fewer cores
    # than the host has, and oversubscribing them slows inference down.
    threads = threads or available_cpus()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options, threads


def open_model(path: str | Path, provider: str = "auto", threads: int | None = None) -> LoadedModel:
    """Open an ONNX model on ``provider`` ("auto", "cpu" or "cuda").

    "auto" takes CUDA when a CUDA session actually loads and the CPU otherwise. "cuda"
    raises InputError when no CUDA session loads, rather than falling back silently.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: model file not found; pass the path of an .onnx file")
    if provider not in ("auto", *PROVIDERS):
        raise InputError(f"unknown provider {provider!r}; use auto, cpu or cuda")

    options, threads = _session_options(threads)
    requested = ["CPUExecutionProvider"] if provider == "cpu" else ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if provider != "cpu" and "CUDAExecutionProvider" not in ort.get_available_providers():
        if provider == "cuda":
            raise InputError(
                "--provider cuda: this onnxruntime build has no CUDA provider; install onnxruntime-gpu or use --provider cpu"
            )
        requested = ["CPUExecutionProvider"]

    # onnxruntime logs a CUDA provider that fails to load as a multi-line error. Under
    # "auto" that is the expected fallback, and under "cuda" the one-line error below
    # reports it, so the log shows only at DEBUG level (-v), where it names the cause.
    ort.set_default_logger_severity(2 if log.isEnabledFor(logging.DEBUG) else 4)
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=requested)
    except Exception as error:  # onnxruntime raises its own exception types for bad files
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"{path}: not a loadable ONNX model ({message}); export it again or check the path") from error

    in_use = session.get_providers()[0]
    if provider == "cuda" and in_use != "CUDAExecutionProvider":
        raise InputError(
            "--provider cuda: the CUDA session did not load (no usable GPU, or CUDA libraries missing; "
            "-v shows onnxruntime's reason); use --provider cpu or auto"
        )
    log.info("model %s runs on %s with %d intra-op threads", path, in_use, threads)

    model_input = session.get_inputs()[0]
    output_shape = session.get_outputs()[0].shape
    num_classes = output_shape[-1] if output_shape and isinstance(output_shape[-1], int) else None
    metadata = ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map)
    return LoadedModel(
        path=path,
        session=session,
        provider=in_use,
        input_name=model_input.name,
        input_shape=list(model_input.shape),
        num_classes=num_classes,
        metadata=metadata,
        intra_op_threads=threads,
        optimization_level="ORT_ENABLE_ALL",
    )

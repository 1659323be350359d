"""Exporting a training checkpoint to an ONNX model the evaluator can grade.

The model is captured in eval mode by torch.export, the exporter torch has defaulted to
since 2.9, with a dynamic batch dimension, then checked: ``onnx.checker`` full check, and onnxruntime against PyTorch on
batches of 1, 7 and 64 real images. Export fails when the logits differ by more than
``PARITY_TOLERANCE``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from evaluate.atomic import atomic_path
from evaluate.datasets import open_image_set
from evaluate.decoding import decode_indices
from evaluate.errors import InputError
from evaluate.metadata import ModelMetadata
from evaluate.preprocessing import Recipe, normalize
from train.checkpoints import load_checkpoint, model_from_state, save_atomic

log = logging.getLogger(__name__)

# Older than the exporter's default (20 in torch 2.14), so that older onnxruntime installs
# load the models too. InkNet exports to Conv, MaxPool, Relu, Reshape and Gemm only.
OPSET = 18
# Largest accepted |onnxruntime - PyTorch| logit difference, for logits of magnitude up
# to 1. Larger logits scale it, because float32 rounding grows with magnitude: a
# confident model's logits near 80 differ by about 2e-4 from reordered arithmetic alone.
PARITY_TOLERANCE = 1e-4
PARITY_BATCHES = (1, 7, 64)


@dataclass
class ExportResult:
    """The written ONNX path, its metadata, and the parity of onnxruntime with PyTorch."""

    path: Path
    max_abs_diff: dict[int, float]
    parity_source: str
    metadata: ModelMetadata


def _parity_inputs(state: dict[str, Any], recipe: Recipe, data: str | None, count: int) -> tuple[np.ndarray, str]:
    """Preprocess ``count`` real images with the evaluator's own code path.

    Falls back to random inputs, with a warning, when the training data is not at hand.
    """
    source = data or state.get("data", {}).get("path")
    try:
        if source is None:
            raise InputError("the checkpoint records no training data path")
        image_set = open_image_set(source, split="test")
        step = max(1, len(image_set) // count)
        chunk = decode_indices(image_set, recipe, list(range(0, len(image_set), step))[:count])
        if len(chunk.indices) < count:
            raise InputError(f"{source}: only {len(chunk.indices)} images could be decoded")
        return normalize(chunk.canvases, recipe), f"{count} images of {source}"
    except InputError as error:
        log.warning("parity checked on random inputs, not real images: %s; pass --data", error)
        generator = np.random.default_rng(0)
        return generator.standard_normal((count, 1, recipe.size, recipe.size)).astype(np.float32), "random inputs"


def provenance(state: dict[str, Any]) -> dict[str, Any]:
    """Collect where a model came from, for the ONNX metadata and model cards."""
    history = state.get("history", {}).get("epochs", {})
    return {
        "task": state.get("task"),
        "seed": state.get("seed"),
        "epochs": state.get("epoch"),
        "training_data_sha256": state.get("data", {}).get("sha256"),
        "val_top1": state.get("best_top1") if state.get("best_top1", -1) >= 0 else None,
        "final_train_loss": history.get("train_loss", [None])[-1],
        "val_confusion": state.get("val_confusion"),
        "init": state.get("init"),
        "torch_version": torch.__version__,
        "onnx_version": onnx.__version__,
        "onnx_exporter": "torch.export",
        "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def write_onnx_graph(model: torch.nn.Module, size: int, path: Path) -> None:
    """Write ``model`` (in eval mode) as an ONNX graph from ``input`` [batch, 1, size, size] to ``logits``."""
    example = torch.zeros(2, 1, size, size)
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=True,
        verbose=False,
        opset_version=OPSET,
        input_names=["input"],
        output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )


def _check_parity(model: torch.nn.Module, path: Path, inputs: np.ndarray) -> tuple[dict[int, float], float]:
    """Return the max |logit difference| per batch size, and the logit scale (>= 1)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    differences, scales = {}, []
    for batch in PARITY_BATCHES:
        batch_inputs = np.resize(inputs, (batch, *inputs.shape[1:]))
        with torch.inference_mode():
            expected = model(torch.from_numpy(batch_inputs)).numpy()
        actual = session.run(None, {"input": batch_inputs})[0]
        if actual.shape != expected.shape:
            raise RuntimeError(f"onnxruntime returned logits of shape {actual.shape} for batch {batch}, PyTorch {expected.shape}")
        differences[batch] = float(np.abs(actual - expected).max())
        scales.append(float(np.abs(expected).max()))
    return differences, max(1.0, max(scales))


def _write_atomic(model_proto: onnx.ModelProto, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        onnx.save(model_proto, str(temporary))


def export_checkpoint(checkpoint: str | Path, out: str | Path, data: str | None = None) -> ExportResult:
    """Export a checkpoint to ONNX at ``out`` with inkbench metadata; raise on a parity failure."""
    state = load_checkpoint(checkpoint)
    model = model_from_state(state)
    recipe = Recipe.from_json(state["recipe"])
    metadata = ModelMetadata(class_names=list(state["class_names"]), recipe=recipe, provenance=provenance(state))
    out = Path(out)

    with tempfile.TemporaryDirectory() as work:
        traced = Path(work) / "model.onnx"
        write_onnx_graph(model, recipe.size, traced)
        proto = onnx.load(str(traced))
        for key, value in metadata.to_props().items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.doc_string = f"inkbench {state.get('task', 'model')}: {len(metadata.class_names)} classes"
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(traced))

        inputs, source = _parity_inputs(state, recipe, data, max(PARITY_BATCHES))
        differences, scale = _check_parity(model, traced, inputs)
        worst = max(differences.values())
        if worst > PARITY_TOLERANCE * scale:
            raise RuntimeError(
                f"onnxruntime logits differ from PyTorch by {worst:.2e} (> {PARITY_TOLERANCE:.0e} x logit scale {scale:.1f}) "
                f"on {source}; the ONNX file was not written. Check the model for operators the ONNX export changes"
            )
        _write_atomic(proto, out)
    return ExportResult(out, differences, source, metadata)


def write_model_card(checkpoint: str | Path, result: ExportResult) -> Path:
    """Write ``<model>.card.json`` beside the ONNX file: what the model is and how it was made."""
    state = load_checkpoint(checkpoint)
    info = result.metadata.provenance
    card = {
        "model": result.path.name,
        "task": state.get("task"),
        "classes": result.metadata.class_names,
        "input": [1, result.metadata.recipe.size, result.metadata.recipe.size],
        "recipe": json.loads(result.metadata.recipe.to_json()),
        "val_top1": info.get("val_top1"),
        "val_images": len(state.get("split", {}).get("validation_members", [])) or None,
        "seed": state.get("seed"),
        # The checkpoint's epoch: below the planned count when best.pt came from an earlier epoch.
        "epochs": state.get("epoch"),
        "epochs_planned": state.get("train_config", {}).get("epochs"),
        "init": state.get("init"),
        "command": state.get("command"),
        "training_data": state.get("data", {}).get("path"),
        "training_data_sha256": info.get("training_data_sha256"),
        "parity_max_abs_diff": max(result.max_abs_diff.values()),
        "torch_version": info.get("torch_version"),
        "onnx_version": info.get("onnx_version"),
        "onnx_exporter": info.get("onnx_exporter"),
        "exported_at": info.get("exported_at"),
    }
    path = result.path.with_suffix(".card.json")
    with atomic_path(path) as temporary, open(temporary, "w") as file:
        json.dump(card, file, indent=2)
    return path


def write_slim_checkpoint(checkpoint: str | Path, out: str | Path) -> None:
    """Copy a checkpoint without optimizer and scheduler state: half the size, enough to run or fine-tune."""
    state = load_checkpoint(checkpoint)
    for key in ("optimizer", "scheduler"):
        state.pop(key, None)
    save_atomic(state, out)

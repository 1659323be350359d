"""Running a reference ONNX model over decoded images, and measuring its confusion matrix.

Only onnxruntime is used, through ``evaluate.session``, so diagnosing a data set never
needs torch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from evaluate.datasets import ImageSet
from evaluate.decoding import decode_all
from evaluate.errors import InputError
from evaluate.preprocessing import Recipe, normalize, to_canvas
from evaluate.session import LoadedModel, open_model
from train.label_noise import count_pairs

log = logging.getLogger(__name__)

# Images per onnxruntime call: big enough to amortise the call, small enough for memory.
INFERENCE_BATCH = 1024
# Provenance key holding a [true, predicted] count matrix measured on validation data.
VAL_CONFUSION_KEY = "val_confusion"


@dataclass
class ReferenceModel:
    """A reference model and how its outputs map onto a data set's classes.

    ``output_index[c]`` is the logit column of the data set's class c, so a model with
    more classes than the data set is restricted to the data set's classes.
    """

    model: LoadedModel
    recipe: Recipe
    class_names: list[str]
    output_index: np.ndarray
    provenance: dict[str, Any]

    @property
    def path(self) -> Path:
        return self.model.path


def open_reference(path: str | Path, class_names: Sequence[str]) -> ReferenceModel:
    """Open an inkbench ONNX model as the reference for a data set with ``class_names``.

    Raises InputError when the model has no inkbench metadata or lacks one of the classes.
    """
    model = open_model(path, provider="cpu")
    if model.metadata is None:
        raise InputError(
            f"{path}: the model has no inkbench metadata (class names and preprocessing recipe); "
            "use a model exported by inkbench's export step"
        )
    model_classes = list(model.metadata.class_names)
    missing = [name for name in class_names if name not in model_classes]
    if missing:
        raise InputError(
            f"{path}: the reference model has no class {', '.join(missing[:8])}; "
            f"it predicts {' '.join(model_classes[:12])}, so use a reference trained on the data set's classes"
        )
    output_index = np.array([model_classes.index(name) for name in class_names], dtype=np.int64)
    return ReferenceModel(model, model.metadata.recipe, list(class_names), output_index, dict(model.metadata.provenance))


def predict_classes(reference: ReferenceModel, canvases: np.ndarray) -> np.ndarray:
    """Return the predicted data-set class of each canvas prepared with ``reference.recipe``."""
    predictions = np.empty(len(canvases), dtype=np.int64)
    for start in range(0, len(canvases), INFERENCE_BATCH):
        batch = normalize(canvases[start : start + INFERENCE_BATCH], reference.recipe)
        logits = reference.model.run(batch)[:, reference.output_index]
        predictions[start : start + len(batch)] = logits.argmax(axis=1)
    return predictions


def prepare_canvases(raw_canvases: np.ndarray, recipe: Recipe) -> np.ndarray:
    """Apply ``recipe`` to already decoded greyscale images held in memory."""
    if raw_canvases.shape[1:] == (recipe.size, recipe.size):
        return raw_canvases
    return np.stack([to_canvas(image, recipe) for image in raw_canvases])


def decode_for_reference(image_set: ImageSet, reference: ReferenceModel, workers: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Decode an image set with the reference's recipe; return the decoded indices and canvases."""
    decoded = decode_all(image_set, reference.recipe, workers=workers)
    return decoded.indices, decoded.canvases


def metadata_confusion(reference: ReferenceModel) -> np.ndarray | None:
    """Read the reference's validation confusion counts [true, predicted], in data-set class order.

    Returns None when the provenance has none. Raises InputError when it is malformed.
    """
    values = reference.provenance.get(VAL_CONFUSION_KEY)
    if values is None:
        return None
    num_model_classes = len(reference.model.metadata.class_names) if reference.model.metadata else 0
    try:
        counts = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise InputError(f"{reference.path}: provenance {VAL_CONFUSION_KEY} is not a numeric matrix ({error})") from error
    if counts.shape != (num_model_classes, num_model_classes) or (counts < 0).any():
        raise InputError(
            f"{reference.path}: provenance {VAL_CONFUSION_KEY} has shape {counts.shape}; expected a "
            f"{num_model_classes}x{num_model_classes} matrix of non-negative counts [true, predicted]"
        )
    # NOTE: predictions of model classes outside the data set are dropped here, while
    # predict_classes maps them to the best data-set class instead.
    return counts[np.ix_(reference.output_index, reference.output_index)]


def measure_confusion(
    reference: ReferenceModel, clean_set: ImageSet, sample_size: int, seed: int, workers: int | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Measure the reference's confusion counts [true, predicted] on a sample of a clean labelled set.

    ``clean_set`` must use the same class names as the data set being diagnosed.
    """
    if clean_set.labels is None:
        raise InputError(f"{clean_set.source}: the calibration set has no labels; use a labelled set such as MNIST")
    rng = np.random.default_rng(seed)
    size = min(sample_size, len(clean_set))
    sample = clean_set.subset(np.sort(rng.choice(len(clean_set), size=size, replace=False)))
    indices, canvases = decode_for_reference(sample, reference, workers)
    predicted = predict_classes(reference, canvases)
    true = sample.labels[indices]
    counts = count_pairs(true, predicted, len(reference.class_names))
    accuracy = float(np.trace(counts) / max(counts.sum(), 1))
    log.info("reference accuracy on %d calibration images: %.3f", len(true), accuracy)
    return counts, {"images": int(len(true)), "accuracy": accuracy}

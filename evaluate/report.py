"""The results of one grading run and their JSON report, documented in docs/report-schema.md."""

from __future__ import annotations

import dataclasses
import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evaluate.datasets import ImageSet, source_digest
from evaluate.grading import Predictions, sample_path
from evaluate.metrics import (
    ClassScore,
    case_insensitive_accuracy,
    confusion_matrix,
    most_confused,
    per_class_scores,
    softmax_confidence,
    top_k_accuracy,
)
from evaluate.model_spec import ModelSpec
from evaluate.session import LoadedModel

SCHEMA_VERSION = 1

# Pairs listed under "most_confused" in the JSON report; the full matrix is there too.
REPORTED_PAIRS = 20


@dataclass
class Evaluation:
    """A model's predictions on an image set, with metrics when the set is labelled."""

    model: LoadedModel
    spec: ModelSpec
    image_set: ImageSet
    predictions: Predictions
    predicted: np.ndarray
    confidence: np.ndarray
    # True classes of the graded samples as indices into spec.class_names; None when unlabelled.
    labels: np.ndarray | None
    top1: float | None = None
    top5: float | None = None
    case_insensitive_top1: float | None = None
    confusion: np.ndarray | None = None
    scores: list[ClassScore] = dataclasses.field(default_factory=list)

    @property
    def class_names(self) -> list[str]:
        return self.spec.class_names

    @property
    def samples(self) -> int:
        return len(self.predictions.indices)

    def paths(self) -> list[str]:
        return [sample_path(self.image_set, int(index)) for index in self.predictions.indices]

    def skipped(self) -> list[dict[str, str]]:
        return [{"path": sample_path(self.image_set, index), "error": reason} for index, reason in self.predictions.failures]


def evaluate(
    model: LoadedModel,
    spec: ModelSpec,
    image_set: ImageSet,
    predictions: Predictions,
    set_labels: np.ndarray | None,
) -> Evaluation:
    """Score predictions; ``set_labels`` are all of the set's labels in model class order."""
    logits = predictions.logits
    predicted = logits.argmax(axis=1) if len(logits) else np.zeros(0, np.int64)
    labels = None if set_labels is None else set_labels[predictions.indices]
    result = Evaluation(model, spec, image_set, predictions, predicted, softmax_confidence(logits), labels)
    if labels is None or len(labels) == 0:
        return result

    result.top1 = top_k_accuracy(logits, labels, 1)
    result.top5 = top_k_accuracy(logits, labels, 5)
    result.case_insensitive_top1 = case_insensitive_accuracy(predicted, labels, spec.class_names)
    result.confusion = confusion_matrix(labels, predicted, len(spec.class_names))
    result.scores = per_class_scores(result.confusion, spec.class_names)
    return result


def _model_section(model: LoadedModel) -> dict[str, Any]:
    return {
        "path": str(model.path),
        "sha256": source_digest(model.path),
        "input_name": model.input_name,
        "input_shape": model.input_shape,
        "num_classes": model.num_classes,
        "has_inkbench_metadata": model.metadata is not None,
    }


def _metadata_section(model: LoadedModel) -> dict[str, Any] | None:
    if model.metadata is None:
        return None
    return {
        "class_names": model.metadata.class_names,
        "recipe": dataclasses.asdict(model.metadata.recipe),
        "provenance": model.metadata.provenance,
    }


def _timing_section(evaluation: Evaluation, decode_workers: int) -> dict[str, Any]:
    predictions = evaluation.predictions
    finished = evaluation.samples + len(predictions.failures)
    return {
        "wall_seconds": round(predictions.wall_seconds, 4),
        "first_batch_seconds": None if predictions.first_batch_seconds is None else round(predictions.first_batch_seconds, 4),
        "decode_wait_seconds": round(predictions.decode_seconds, 4),
        "inference_seconds": round(predictions.inference_seconds, 4),
        "images_per_second": round(finished / predictions.wall_seconds, 1) if predictions.wall_seconds > 0 else None,
        "decode_workers": decode_workers,
        "intra_op_threads": evaluation.model.intra_op_threads,
    }


def _score_row(score: ClassScore) -> dict[str, Any]:
    return {
        "class": score.name,
        "support": score.support,
        "predicted": score.predicted,
        "correct": score.correct,
        "precision": score.precision,
        "recall": score.recall,
        "f1": score.f1,
    }


def build_report(evaluation: Evaluation, decode_workers: int, predictions_csv: Path | None = None) -> dict[str, Any]:
    """Return the JSON report of an evaluation as plain dicts, lists, numbers and strings.

    ``decode_workers`` is the number of decoding processes, 0 when decoding ran in-process.
    """
    image_set = evaluation.image_set
    confusion = evaluation.confusion
    pairs = [] if confusion is None else most_confused(confusion, evaluation.class_names, REPORTED_PAIRS)
    return {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": _model_section(evaluation.model),
        "model_metadata": _metadata_section(evaluation.model),
        "preprocessing": {"source": evaluation.spec.source, "recipe": dataclasses.asdict(evaluation.spec.recipe)},
        "data": {
            "path": str(image_set.source),
            "kind": image_set.kind,
            "labelled": image_set.labelled,
            "images": len(image_set),
        },
        "class_names": evaluation.class_names,
        "samples": evaluation.samples,
        "skipped": {"count": len(evaluation.predictions.failures), "files": evaluation.skipped()},
        "top1": evaluation.top1,
        "top5": evaluation.top5,
        "case_insensitive_top1": evaluation.case_insensitive_top1,
        "provider": evaluation.model.provider,
        "timing": _timing_section(evaluation, decode_workers),
        "per_class": [_score_row(score) for score in evaluation.scores],
        "confusion": None if confusion is None else confusion.tolist(),
        "most_confused": [{"true": p.true, "predicted": p.predicted, "count": p.count} for p in pairs],
        "predictions_csv": None if predictions_csv is None else str(predictions_csv),
    }

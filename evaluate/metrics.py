"""Classification metrics computed from logits and integer labels, with numpy only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class ClassScore:
    """Precision, recall and F1 of one class; None where the ratio has a zero denominator."""

    name: str
    support: int
    predicted: int
    correct: int
    precision: float | None
    recall: float | None
    f1: float | None


@dataclass(frozen=True)
class ConfusedPair:
    """A count of samples of class ``true`` that the model predicted as ``predicted``."""

    true: str
    predicted: str
    count: int


def top_k_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Return the share of samples whose label is among the ``k`` highest logits.

    ``k`` is capped at the number of classes, so top-5 of a 3-class model is 1.0.
    """
    if len(labels) == 0:
        return float("nan")
    k = min(k, logits.shape[1])
    # A stable sort ranks tied logits by class index, as argmax does, so top-1 always
    # agrees with the predicted class. Quantized models often produce tied logits.
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def case_insensitive_accuracy(predictions: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> float:
    """Return the share of samples whose predicted class name equals the label's, ignoring case.

    For the 62 classes 0-9, A-Z, a-z this forgives c/C, o/O and other pairs that
    differ only in size, which a single character image often cannot show.
    """
    if len(labels) == 0:
        return float("nan")
    folded = np.array([name.casefold() for name in class_names], dtype=object)
    return float((folded[predictions] == folded[labels]).mean())


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Return counts with rows indexed by the true class and columns by the predicted class."""
    flat = labels.astype(np.int64) * num_classes + predictions.astype(np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def per_class_scores(confusion: np.ndarray, class_names: Sequence[str]) -> list[ClassScore]:
    """Return one ClassScore for each class, in class order."""
    scores = []
    for index, name in enumerate(class_names):
        correct = int(confusion[index, index])
        support = int(confusion[index].sum())
        predicted = int(confusion[:, index].sum())
        scores.append(
            ClassScore(
                name=name,
                support=support,
                predicted=predicted,
                correct=correct,
                precision=_ratio(correct, predicted),
                recall=_ratio(correct, support),
                # 2TP / (2TP + FP + FN), which is 2TP / (support + predicted).
                f1=_ratio(2 * correct, support + predicted),
            )
        )
    return scores


def worst_classes(scores: Sequence[ClassScore]) -> list[ClassScore]:
    """Return the classes that occur in the data, lowest F1 first and larger support first on ties."""
    present = [score for score in scores if score.support > 0]
    return sorted(present, key=lambda score: (score.f1 or 0.0, -score.support, score.name))


def most_confused(confusion: np.ndarray, class_names: Sequence[str], limit: int) -> list[ConfusedPair]:
    """Return up to ``limit`` off-diagonal (true, predicted) pairs, highest count first."""
    errors = confusion.copy()
    np.fill_diagonal(errors, 0)
    rows, cols = np.nonzero(errors)
    counts = errors[rows, cols]
    # Sort by count descending, then by class order, so equal counts list stably.
    order = np.lexsort((cols, rows, -counts))[:limit]
    return [ConfusedPair(class_names[rows[i]], class_names[cols[i]], int(counts[i])) for i in order]


def softmax_confidence(logits: np.ndarray) -> np.ndarray:
    """Return each row's highest class probability.

    Rows that are already probabilities (non-negative, summing to 1 within 1e-3, as after
    a Softmax node) are used as they are, and other rows go through a softmax first.
    """
    if logits.size == 0:
        return np.zeros(len(logits), dtype=np.float32)
    sums = logits.sum(axis=1)
    if (logits >= 0).all() and np.allclose(sums, 1.0, atol=1e-3):
        return logits.max(axis=1).astype(np.float32)
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return (1.0 / exp.sum(axis=1)).astype(np.float32)

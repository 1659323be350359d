"""Calibration and per-class accuracy of a classifier's test predictions."""

from __future__ import annotations

import numpy as np


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Return the ECE: the confidence-weighted gap between confidence and accuracy.

    Uses equal-width confidence bins over (0, 1], as Guo et al. (2017), "On Calibration
    of Modern Neural Networks", define it.
    """
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    error = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            error += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(error)


def per_class_accuracy(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> list[float]:
    """Return the recall of every class; NaN for a class absent from labels."""
    return [float((predictions[labels == c] == c).mean()) if (labels == c).any() else float("nan") for c in range(num_classes)]

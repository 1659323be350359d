"""Tests of the transition matrix estimator and the corruption rules, on simulated predictions.

No model is needed: a reference model is simulated by drawing its prediction for each
image from a known confusion matrix row of the image's true class.
"""

from __future__ import annotations

import numpy as np
import pytest

from train.label_noise import (
    UNCALIBRATED_MAX_CONFIDENCE,
    classify_transition,
    count_pairs,
    diagnose_label_noise,
    fit_label_posteriors,
    normalize_confusion,
    transition_from_posteriors,
)

NUM_CLASSES = 10
IMAGES = 4000
CALIBRATION_IMAGES = 5000
# Class shares of the MNIST train split.
MNIST_PRIOR = np.array([5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]) / 60000
# Given label g is for true class PERMUTATION_MAPPING[g].
PERMUTATION_MAPPING = np.array([3, 7, 0, 9, 1, 4, 8, 2, 6, 5])


def simulated_confusion(accuracy: float, seed: int) -> np.ndarray:
    """Return a confusion matrix P(pred | true) whose errors go mostly to a few classes, as real ones do."""
    rng = np.random.default_rng(seed)
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES))
    for true_class in range(NUM_CLASSES):
        others = [c for c in range(NUM_CLASSES) if c != true_class]
        confusion[true_class, others] = (1 - accuracy) * rng.dirichlet(np.full(NUM_CLASSES - 1, 0.3))
        confusion[true_class, true_class] = accuracy
    return confusion


def simulate_predictions(true: np.ndarray, confusion: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    cumulative = confusion.cumsum(axis=1)
    draws = rng.random(len(true))
    return np.minimum((draws[:, None] > cumulative[true]).sum(axis=1), NUM_CLASSES - 1)


def corrupt_labels(true: np.ndarray, kind: str, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Return given labels: clean, permuted, symmetric at ``rate``, complementary, or pair-flipped."""
    if kind == "clean":
        return true.copy()
    if kind == "permutation":
        inverse = np.argsort(PERMUTATION_MAPPING)
        return inverse[true]
    if kind == "complementary":
        return (true + rng.integers(1, NUM_CLASSES, len(true))) % NUM_CLASSES
    given = true.copy()
    flipped = rng.random(len(true)) < rate
    if kind == "symmetric":
        given[flipped] = (true[flipped] + rng.integers(1, NUM_CLASSES, flipped.sum())) % NUM_CLASSES
    elif kind == "pair":
        given[flipped] = (true[flipped] + 1) % NUM_CLASSES
    else:
        raise ValueError(kind)
    return given


def simulate(kind: str, rate: float, accuracy: float, seed: int = 0):
    """Return given labels, simulated reference predictions and calibration confusion counts."""
    rng = np.random.default_rng(seed)
    confusion = simulated_confusion(accuracy, seed + 100)
    calibration_true = rng.choice(NUM_CLASSES, CALIBRATION_IMAGES, p=MNIST_PRIOR)
    calibration = count_pairs(calibration_true, simulate_predictions(calibration_true, confusion, rng), NUM_CLASSES)
    true = rng.choice(NUM_CLASSES, IMAGES, p=MNIST_PRIOR)
    return corrupt_labels(true, kind, rate, rng), simulate_predictions(true, confusion, rng), calibration


CASES = [
    ("clean", 0.0, "clean"),
    ("permutation", 0.0, "permutation"),
    ("symmetric", 0.2, "symmetric"),
    ("symmetric", 0.6, "symmetric"),
    ("complementary", 0.0, "complementary"),
    ("pair", 0.3, "other"),
]


@pytest.mark.parametrize("accuracy", [0.95, 0.70], ids=["strong-reference", "weak-reference"])
@pytest.mark.parametrize(("corruption", "rate", "expected"), CASES, ids=[f"{c}-{r}" for c, r, _ in CASES])
def test_corruption_kind_named(corruption: str, rate: float, expected: str, accuracy: float) -> None:
    given, predicted, calibration = simulate(corruption, rate, accuracy)

    estimate, verdict = diagnose_label_noise(given, predicted, calibration, NUM_CLASSES, replicates=50)

    assert verdict.kind == expected, verdict.evidence
    assert verdict.confidence >= 0.8
    assert estimate.transition.shape == (NUM_CLASSES, NUM_CLASSES)
    assert np.allclose(estimate.transition.sum(axis=1), 1.0)
    if expected == "permutation":
        assert verdict.mapping == PERMUTATION_MAPPING.tolist()
    if expected == "symmetric":
        assert verdict.noise_rate == pytest.approx(rate, abs=0.05)
    if expected == "clean":
        assert verdict.noise_rate < 0.05


def test_complementary_matrix_off_diagonal_uniform() -> None:
    given, predicted, calibration = simulate("complementary", 0.0, 0.70)

    estimate, _ = diagnose_label_noise(given, predicted, calibration, NUM_CLASSES, replicates=10)

    # About 400 images a class leave each entry a sampling error of a few percent.
    deviation = np.abs(estimate.transition[~np.eye(NUM_CLASSES, dtype=bool)] - 1 / (NUM_CLASSES - 1))
    assert np.diag(estimate.transition).max() < 0.05
    assert deviation.mean() < 0.03
    assert deviation.max() < 0.1


def test_identity_confusion_caps_confidence() -> None:
    given, predicted, _ = simulate("clean", 0.0, 0.70)

    _, verdict = diagnose_label_noise(given, predicted, None, NUM_CLASSES, replicates=20)

    # Uncorrected, the weak reference's 30% error rate reads as label noise.
    assert verdict.kind != "clean"
    assert verdict.confidence <= UNCALIBRATED_MAX_CONFIDENCE


def test_em_recovers_exact_posteriors() -> None:
    rng = np.random.default_rng(3)
    posterior = rng.dirichlet(np.ones(NUM_CLASSES), size=NUM_CLASSES)
    confusion = normalize_confusion(simulated_confusion(0.7, 4) * 1000, smoothing=0.0)
    # Expected counts with no sampling noise, so the maximum-likelihood fit is exact.
    counts = 1e6 * posterior @ confusion

    fitted, iterations = fit_label_posteriors(counts, confusion)

    assert iterations > 1
    assert np.abs(fitted - posterior).max() < 1e-3


def test_bayes_rule_gives_transition() -> None:
    # Two classes: given label 0 is true class 0 with probability 0.8.
    posterior = np.array([[0.8, 0.2], [0.0, 1.0]])
    given_prior = np.array([0.5, 0.5])

    transition, true_prior = transition_from_posteriors(posterior, given_prior)

    assert true_prior == pytest.approx([0.4, 0.6])
    assert transition[0] == pytest.approx([1.0, 0.0])
    assert transition[1] == pytest.approx([0.1 / 0.6, 0.5 / 0.6])


def test_classify_exact_matrices() -> None:
    prior = np.full(NUM_CLASSES, 1 / NUM_CLASSES)
    identity = np.eye(NUM_CLASSES)
    complementary = (1 - identity) / (NUM_CLASSES - 1)
    symmetric = 0.7 * identity + 0.3 * complementary
    permutation = identity[np.argsort(PERMUTATION_MAPPING)]

    assert classify_transition(identity, prior).kind == "clean"
    assert classify_transition(complementary, prior).kind == "complementary"
    assert classify_transition(symmetric, prior).kind == "symmetric"
    assert classify_transition(symmetric, prior).noise_rate == pytest.approx(0.3)
    assert classify_transition(permutation, prior).kind == "permutation"
    assert classify_transition(permutation, prior).mapping == PERMUTATION_MAPPING.tolist()


def test_count_pairs_rejects_out_of_range() -> None:
    with pytest.raises(ValueError, match="0..9"):
        count_pairs(np.array([0, 10]), np.array([0, 1]), NUM_CLASSES)


@pytest.mark.parametrize(("corruption", "expected"), [("clean", "clean"), ("permutation", "permutation")])
def test_absent_class_not_judged(corruption: str, expected: str) -> None:
    given, predicted, calibration = simulate(corruption, 0.0, 0.90)
    # Drop every image of one true class: for the permutation, true class 0 is given label 2.
    kept = given != (9 if corruption == "clean" else 2)

    _, verdict = diagnose_label_noise(given[kept], predicted[kept], calibration, NUM_CLASSES, replicates=20)

    assert verdict.kind == expected, verdict.evidence
    assert verdict.evidence["true_classes_not_judged"] == [9 if corruption == "clean" else 0]

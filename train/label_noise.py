"""Estimating and naming class-conditional label noise from a reference model's predictions.

The label transition matrix ``T[true, given] = P(given label | true class)`` is the matrix
that forward loss correction multiplies the model's softmax by (Patrini et al. 2017,
"Making deep neural networks robust to label noise: a loss correction approach", CVPR).
Here it is estimated without training on the noisy data. A reference model that never saw
the data predicts every image, and its confusion matrix ``C[true, pred]``, measured on
clean data, gives the distribution of its predictions for each true class. When the prediction
depends on the image only through its true class, then for the images carrying given
label g::

    P(pred | given=g) = sum_t P(true=t | given=g) * C[t, pred]

so each given label's true-class distribution ``A[g, :]`` is a mixture whose components
are the rows of C. Estimating mixture weights from hard predictions and a confusion
matrix is the label-shift problem of Saerens, Latinne and Decaestecker (2002), "Adjusting
the outputs of a classifier to new a priori probabilities: a simple procedure", Neural
Computation 14(1). This module fits A by their EM iteration, which maximises the
multinomial likelihood of the (given, predicted) counts and keeps every row of A on the
probability simplex. Bayes' rule with the class priors then turns A into T.

A weak reference makes C far from the identity, but the mixture model still holds as
long as C is measured on data like the data being diagnosed. That is why the caller
should prefer a confusion matrix measured on clean data of the same domain over one
measured on the reference's own validation data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

# Share of uniform probability mixed into the reference's confusion matrix, so that a
# prediction the reference never made on calibration data does not get zero likelihood.
CONFUSION_SMOOTHING = 0.01

EM_MAX_ITERATIONS = 5000
EM_TOLERANCE = 1e-9

KINDS = ("clean", "permutation", "symmetric", "complementary", "other")

# Decision thresholds of ``classify_transition``; the reasons are given there.
CLEAN_MAX_NOISE = 0.05
ASSIGNMENT_MIN_MASS = 0.80
ASSIGNMENT_MIN_ROW_MASS = 0.50
UNIFORM_MAX_RMS_DEVIATION = 0.04
UNIFORM_MAX_DIAGONAL_SPREAD = 0.10
COMPLEMENTARY_MAX_DIAGONAL_SHARE_OF_CHANCE = 0.5

# A true class whose estimated prior is below this share of 1/K is treated as absent.
RARE_CLASS_SHARE_OF_UNIFORM = 0.1

BOOTSTRAP_REPLICATES = 200
# Without a measured confusion matrix the reference's own errors look like label noise,
# which the bootstrap cannot see, so the confidence is capped.
UNCALIBRATED_MAX_CONFIDENCE = 0.5


@dataclass
class TransitionEstimate:
    """A label transition matrix estimate and the quantities it was derived from.

    ``transition[t, g]`` is P(given=g | true=t); ``posterior[g, t]`` is P(true=t | given=g).
    Rows of ``transition`` for a true class with no estimated images are NaN.
    """

    transition: np.ndarray
    posterior: np.ndarray
    given_prior: np.ndarray
    true_prior: np.ndarray
    confusion: np.ndarray
    given_predicted_counts: np.ndarray
    em_iterations: int


@dataclass
class CorruptionVerdict:
    """The named kind of label corruption, its parameters and the evidence for it.

    ``mapping[g]`` is the true class that given label g is for (permutation only);
    ``noise_rate`` is P(given != true) (symmetric and clean only).
    """

    kind: str
    mapping: list[int] | None
    noise_rate: float | None
    evidence: dict[str, Any] = field(default_factory=dict)
    confidence: float = 0.0


def count_pairs(first: np.ndarray, second: np.ndarray, num_classes: int) -> np.ndarray:
    """Return the ``num_classes`` square table counting each (first[i], second[i]) pair."""
    first = np.asarray(first, dtype=np.int64)
    second = np.asarray(second, dtype=np.int64)
    if first.shape != second.shape:
        raise ValueError(f"label arrays differ in shape: {first.shape} and {second.shape}")
    for values in (first, second):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"labels must lie in 0..{num_classes - 1}, got {values.min()}..{values.max()}")
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (first, second), 1)
    return counts


def normalize_confusion(counts: np.ndarray, smoothing: float = CONFUSION_SMOOTHING) -> np.ndarray:
    """Turn confusion counts [true, pred] into row-stochastic P(pred | true), smoothed.

    A true class with no calibration images gets a uniform row.
    """
    counts = np.asarray(counts, dtype=np.float64)
    totals = counts.sum(axis=-1, keepdims=True)
    num_classes = counts.shape[-1]
    rows = np.divide(counts, totals, out=np.full_like(counts, 1.0 / num_classes), where=totals > 0)
    return (1.0 - smoothing) * rows + smoothing / num_classes


def fit_label_posteriors(given_predicted: np.ndarray, confusion: np.ndarray) -> tuple[np.ndarray, int]:
    """Fit A[g, t] = P(true=t | given=g) to counts [given, pred] by EM; return A and the iterations.

    Both arguments may carry leading batch dimensions (bootstrap replicates), which are
    fitted together. ``confusion`` must be row-stochastic with no zero column.
    """
    counts = np.asarray(given_predicted, dtype=np.float64)
    confusion = np.asarray(confusion, dtype=np.float64)
    num_classes = counts.shape[-1]
    totals = counts.sum(axis=-1, keepdims=True)
    safe_totals = np.where(totals > 0, totals, 1.0)
    posterior = np.full(counts.shape, 1.0 / num_classes)

    iteration = 0
    for iteration in range(1, EM_MAX_ITERATIONS + 1):
        # E step: share each (g, pred) count among true classes in proportion to
        # A[g, t] * C[t, pred]. M step: A[g, t] is the share the given label g received.
        predicted = posterior @ confusion
        ratio = counts / np.maximum(predicted, 1e-300)
        updated = posterior * (ratio @ np.swapaxes(confusion, -1, -2)) / safe_totals
        # A given label with no images keeps the uniform start.
        updated = np.where(totals > 0, updated, posterior)
        change = np.abs(updated - posterior).max()
        posterior = updated
        if change < EM_TOLERANCE:
            break
    return posterior, iteration


def transition_from_posteriors(posterior: np.ndarray, given_prior: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply Bayes' rule: T[t, g] = A[g, t] P(g) / P(t); return T and the true-class prior P(t)."""
    joint = posterior * given_prior[..., :, None]
    true_prior = joint.sum(axis=-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        transition = np.swapaxes(joint, -1, -2) / true_prior[..., :, None]
    return transition, true_prior


def estimate_transition_matrix(
    given: np.ndarray, predicted: np.ndarray, confusion_counts: np.ndarray | None, num_classes: int
) -> TransitionEstimate:
    """Estimate T[true, given] from given labels, reference predictions and the reference's confusion.

    ``confusion_counts[true, pred]`` is the reference's confusion on clean data; None
    means the identity, so that the reference's own errors are counted as label noise.
    """
    given_predicted = count_pairs(given, predicted, num_classes)
    if confusion_counts is None:
        confusion_counts = np.eye(num_classes)
    confusion = normalize_confusion(confusion_counts)
    posterior, iterations = fit_label_posteriors(given_predicted, confusion)
    given_prior = given_predicted.sum(axis=1) / max(given_predicted.sum(), 1)
    transition, true_prior = transition_from_posteriors(posterior, given_prior)
    return TransitionEstimate(
        transition=transition,
        posterior=posterior,
        given_prior=given_prior,
        true_prior=true_prior,
        confusion=confusion,
        given_predicted_counts=given_predicted,
        em_iterations=iterations,
    )


def _row_entropy(transition: np.ndarray) -> np.ndarray:
    """Entropy of each row in units of log(K), so 0 is one given label and 1 is uniform."""
    num_classes = transition.shape[-1]
    safe = np.clip(transition, 1e-12, 1.0)
    return -(transition * np.log(safe)).sum(axis=-1) / np.log(num_classes)


def measure_transition(transition: np.ndarray, true_prior: np.ndarray) -> dict[str, Any]:
    """Compute the statistics that ``classify_transition`` decides on."""
    num_classes = transition.shape[0]
    # EM leaves a small prior on a true class that has no images, and that class's row
    # of T is then noise, so rows of classes far rarer than 1/K are not judged.
    present = np.isfinite(transition).all(axis=1) & (true_prior >= RARE_CLASS_SHARE_OF_UNIFORM / num_classes)
    weights = np.where(present, true_prior, 0.0)
    weights = weights / weights.sum() if weights.sum() > 0 else np.full(num_classes, 1.0 / num_classes)
    matrix = np.where(present[:, None], transition, 0.0)

    diagonal = np.diag(matrix)
    rows, assigned = linear_sum_assignment(matrix, maximize=True)
    assignment_rows = matrix[rows, assigned]

    # Each row's off-diagonal mass spread evenly over the other K-1 labels is the
    # symmetric-noise model; the deviation from it measures how uneven the flips are.
    off_diagonal = ~np.eye(num_classes, dtype=bool)
    uniform_share = (1.0 - diagonal) / (num_classes - 1)
    deviation = (matrix - uniform_share[:, None])[off_diagonal].reshape(num_classes, num_classes - 1)
    rms_deviation = float(np.sqrt((weights[:, None] * deviation**2).sum() / (num_classes - 1)))

    return {
        "label_accuracy": float(weights @ diagonal),
        "chance": 1.0 / num_classes,
        "diagonal_min": float(diagonal[present].min()) if present.any() else float("nan"),
        "diagonal_max": float(diagonal[present].max()) if present.any() else float("nan"),
        "diagonal_spread": float(np.sqrt(weights @ (diagonal - weights @ diagonal) ** 2)),
        "assignment": assigned.tolist(),
        "assignment_mass": float(weights @ assignment_rows),
        "assignment_min_row_mass": float(assignment_rows[present].min()) if present.any() else float("nan"),
        "off_diagonal_rms_deviation": rms_deviation,
        "off_diagonal_max": float(matrix[off_diagonal].max()),
        "row_entropy_mean": float(weights @ _row_entropy(matrix)),
        "true_classes_not_judged": np.flatnonzero(~present).tolist(),
    }


def classify_transition(transition: np.ndarray, true_prior: np.ndarray) -> CorruptionVerdict:
    """Name the kind of corruption a transition matrix T[true, given] shows.

    The rules, in order, with K classes:

    1. Assignment: the permutation that maximises the prior-weighted mass T[t, pi(t)]
       (Hungarian algorithm). If that mass is at least 0.80 and every class sends at
       least half of its images to its assigned label, one given label dominates each
       class, which a permutation produces. The 0.80 leaves room for an estimation
       error of several percent per row from a weak reference while staying above the
       0.60 that 40% symmetric noise would give.
       - pi is the identity and the noise rate 1 - sum_t P(t) T[t, t] is below 0.05:
         ``clean``. Noise below 5% is within the estimate's own error with a
         reference of 70-90% accuracy, so it is not called noise.
       - pi is not the identity: ``permutation``, with mapping[g] = pi^-1(g).
    2. Uniform flips: spread each row's off-diagonal mass evenly over the K-1 other
       labels. If the off-diagonal entries lie within an RMS of 0.04 of that, and the
       diagonal varies by at most 0.10 (standard deviation) between classes, the flips
       are symmetric. 0.04 separates sampling error of a few thousand images
       from a flip into one other label at 20% (RMS deviation about 0.06 for K=10).
       - diagonal at most half of chance (0.5/K): ``complementary``. Complementary
         labels never name the true class, so their diagonal is 0. Symmetric noise
         whose labels still carry information keeps the diagonal above chance 1/K.
         The margin absorbs a reference's uncorrected errors: with the identity
         confusion, a 76%-accurate reference put 0.027 on the diagonal of
         complementary labels. Symmetric noise above a rate of 1 - 0.5/K (0.95 for
         K=10) is therefore named complementary too.
       - otherwise ``symmetric`` with noise_rate = 1 - the prior-weighted diagonal.
    3. Anything else is ``other``.
    """
    evidence = measure_transition(transition, true_prior)
    num_classes = transition.shape[0]
    noise_rate = 1.0 - evidence["label_accuracy"]
    assignment = evidence["assignment"]
    is_identity = assignment == list(range(num_classes))

    if evidence["assignment_mass"] >= ASSIGNMENT_MIN_MASS and evidence["assignment_min_row_mass"] >= ASSIGNMENT_MIN_ROW_MASS:
        if is_identity and noise_rate < CLEAN_MAX_NOISE:
            return CorruptionVerdict("clean", None, noise_rate, evidence)
        if not is_identity:
            mapping = [0] * num_classes
            for true_class, given_label in enumerate(assignment):
                mapping[given_label] = true_class
            evidence["residual_noise"] = 1.0 - evidence["assignment_mass"]
            return CorruptionVerdict("permutation", mapping, None, evidence)

    flips_uniform = (
        evidence["off_diagonal_rms_deviation"] <= UNIFORM_MAX_RMS_DEVIATION
        and evidence["diagonal_spread"] <= UNIFORM_MAX_DIAGONAL_SPREAD
    )
    if flips_uniform:
        if evidence["label_accuracy"] <= COMPLEMENTARY_MAX_DIAGONAL_SHARE_OF_CHANCE / num_classes:
            return CorruptionVerdict("complementary", None, None, evidence)
        return CorruptionVerdict("symmetric", None, noise_rate, evidence)
    return CorruptionVerdict("other", None, None, evidence)


def _same_verdict(first: CorruptionVerdict, second: CorruptionVerdict) -> bool:
    return first.kind == second.kind and first.mapping == second.mapping


def bootstrap_agreement(
    estimate: TransitionEstimate,
    confusion_counts: np.ndarray | None,
    verdict: CorruptionVerdict,
    replicates: int = BOOTSTRAP_REPLICATES,
    seed: int = 0,
) -> float:
    """Return the share of bootstrap re-estimates of T classified the same as ``verdict``.

    Each replicate redraws every given label's prediction counts, and every row of the
    confusion counts, from a multinomial at the observed frequencies (a parametric
    bootstrap). It measures sampling error only, not a mismatch between the domain the
    confusion was measured on and the data.
    """
    rng = np.random.default_rng(seed)
    counts = estimate.given_predicted_counts
    shape = (replicates, *counts.shape)
    resampled = np.empty(shape, dtype=np.float64)
    for label, row in enumerate(counts):
        total = int(row.sum())
        probabilities = row / total if total else np.full(len(row), 1.0 / len(row))
        resampled[:, label, :] = rng.multinomial(total, probabilities, size=replicates)

    if confusion_counts is None:
        confusions = np.broadcast_to(estimate.confusion, shape)
    else:
        confusion_counts = np.asarray(confusion_counts)
        drawn = np.empty(shape, dtype=np.float64)
        for true_class, row in enumerate(confusion_counts):
            total = int(round(row.sum()))
            probabilities = row / row.sum() if total else np.full(len(row), 1.0 / len(row))
            drawn[:, true_class, :] = rng.multinomial(total, probabilities, size=replicates)
        confusions = normalize_confusion(drawn)

    posteriors, _ = fit_label_posteriors(resampled, confusions)
    given_priors = resampled.sum(axis=-1) / resampled.sum(axis=(-1, -2))[:, None]
    transitions, true_priors = transition_from_posteriors(posteriors, given_priors)
    agreeing = sum(
        _same_verdict(classify_transition(transitions[i], true_priors[i]), verdict) for i in range(replicates)
    )
    return agreeing / replicates


def diagnose_label_noise(
    given: np.ndarray,
    predicted: np.ndarray,
    confusion_counts: np.ndarray | None,
    num_classes: int,
    replicates: int = BOOTSTRAP_REPLICATES,
    seed: int = 0,
) -> tuple[TransitionEstimate, CorruptionVerdict]:
    """Estimate T, name the corruption and attach a bootstrap confidence.

    ``confusion_counts`` of None (no measured confusion) caps the confidence at 0.5.
    """
    estimate = estimate_transition_matrix(given, predicted, confusion_counts, num_classes)
    verdict = classify_transition(estimate.transition, estimate.true_prior)
    confidence = bootstrap_agreement(estimate, confusion_counts, verdict, replicates, seed)
    if confusion_counts is None:
        confidence = min(confidence, UNCALIBRATED_MAX_CONFIDENCE)
    verdict.confidence = confidence
    verdict.evidence["bootstrap_replicates"] = replicates
    verdict.evidence["em_iterations"] = estimate.em_iterations
    return estimate, verdict

"""Diagnosing how a digit data set differs from MNIST, above all how its labels are corrupted.

``python -m train diagnose DATA`` runs a reference model that never saw DATA over every
image, estimates the label transition matrix T[true, given] from its predictions
(``train.label_noise``), and names the kind of corruption. It also compares the images
with MNIST: image statistics, class balance, and near duplicates of MNIST's train and
test images, since a copy of a test image in training data voids any test figure.

Nothing here imports torch: the reference model runs in onnxruntime.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evaluate.datasets import DIGIT_CLASSES, ImageSet, open_image_set
from evaluate.decoding import decode_all
from evaluate.errors import InputError
from evaluate.preprocessing import Recipe
from train.image_stats import compare_class_counts, compute_image_statistics, sample_file_properties
from train.label_noise import (
    BOOTSTRAP_REPLICATES,
    CorruptionVerdict,
    TransitionEstimate,
    classify_transition,
    count_pairs,
    diagnose_label_noise,
)
from train.near_duplicates import (
    DEFAULT_MAX_HASH_DISTANCE,
    DEFAULT_MAX_PIXEL_DIFFERENCE,
    DuplicateMatches,
    find_near_duplicates,
    perceptual_hash,
)
from train.reference_model import (
    ReferenceModel,
    decode_for_reference,
    measure_confusion,
    metadata_confusion,
    open_reference,
    predict_classes,
)

log = logging.getLogger(__name__)

DEFAULT_REFERENCE = "artifacts/task2_digits.onnx"
DEFAULT_MNIST = "../shared/data/mnist"
DEFAULT_PLOTS = "artifacts/plots"
DEFAULT_CALIBRATION_SIZE = 10000
DEFAULT_FILE_SAMPLE = 1000

# Sources of the reference's confusion matrix C[true, pred]:
# - mnist: measured now on a sample of MNIST's train split. When DATA is MNIST-like,
#   the reference's errors there approximate its errors on DATA, which the estimate
#   assumes. It is the default because a weak reference's own validation confusion
#   can differ a lot from its confusion on MNIST.
# - metadata: the "val_confusion" counts in the model's provenance, measured on the
#   reference's own validation data, which may be another domain and few images.
# - identity: no correction, so the reference's own errors count as label noise.
CONFUSION_SOURCES = ("mnist", "metadata", "identity")

# MNIST geometry: 28x28 images, taken as they are, and other sizes laid out as MNIST does.
MNIST_GEOMETRY = Recipe(layout="mnist", size=28)


@dataclass(frozen=True)
class DiagnosisOptions:
    """Settings of a diagnosis; the command line sets each from the option of the same name."""

    confusion_source: str = "mnist"
    mnist_dir: Path = Path(DEFAULT_MNIST)
    calibration_size: int = DEFAULT_CALIBRATION_SIZE
    workers: int | None = None
    bootstrap: int = BOOTSTRAP_REPLICATES
    seed: int = 0
    max_hash_distance: int = DEFAULT_MAX_HASH_DISTANCE
    max_pixel_difference: int = DEFAULT_MAX_PIXEL_DIFFERENCE
    file_sample: int = DEFAULT_FILE_SAMPLE


@dataclass
class DiagnosisResult:
    """The estimated label transition matrix, the named corruption and, from ``diagnose``, the comparison with MNIST.

    ``transition_matrix[t, g]`` is P(given label g | true class t). ``mapping[g]`` (for
    a permutation) is the class name that given label g is for.
    """

    data_path: Path
    class_names: list[str]
    kind: str
    transition_matrix: np.ndarray
    mapping: dict[str, str] | None
    noise_rate: float | None
    confidence: float
    evidence: dict[str, Any]
    estimate: TransitionEstimate
    reference: dict[str, Any]
    image_stats: dict[str, Any] | None = None
    class_counts: dict[str, Any] | None = None
    duplicates: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    # Decoded images (MNIST geometry) and their given labels, kept for the sample plot.
    images: np.ndarray | None = field(default=None, repr=False)
    given_labels: np.ndarray | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        """Return the result as JSON-ready values, without the images."""
        payload: dict[str, Any] = {
            "data": str(self.data_path),
            "classes": self.class_names,
            "kind": self.kind,
            "transition_matrix": _rounded(self.transition_matrix),
            "transition_matrix_axes": "[true class, given label] = P(given label | true class)",
            "confidence": round(self.confidence, 4),
            "evidence": _json_ready(self.evidence),
            "true_class_prior": _rounded(self.estimate.true_prior),
            "given_label_prior": _rounded(self.estimate.given_prior),
            "reference_confusion": _rounded(self.estimate.confusion),
            "reference": _json_ready(self.reference),
            "image_stats": _json_ready(self.image_stats),
            "class_counts": _json_ready(self.class_counts),
            "duplicates": _json_ready(self.duplicates),
            "timings_seconds": {name: round(value, 2) for name, value in self.timings.items()},
        }
        if self.mapping is not None:
            payload["mapping"] = self.mapping
        if self.noise_rate is not None:
            payload["noise_rate"] = round(self.noise_rate, 4)
        return payload


def _rounded(array: np.ndarray) -> list:
    """Round to 4 decimals for JSON; NaN (a class without images) becomes null."""
    return _json_ready(np.round(np.asarray(array, dtype=np.float64), 4))


def _json_ready(value: Any) -> Any:
    """Convert numpy scalars and arrays inside nested dicts and lists to plain Python."""
    if isinstance(value, dict):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    if isinstance(value, np.ndarray):
        return _json_ready(value.tolist())
    if isinstance(value, np.generic):
        return _json_ready(value.item())
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def open_labelled_set(data_path: str | Path) -> ImageSet:
    """Open DATA and check that it carries labels in class folders."""
    image_set = open_image_set(data_path)
    if image_set.labels is None:
        raise InputError(f"{data_path}: the images are not in class folders, so there are no labels to diagnose")
    if len(image_set.class_names) < 2:
        raise InputError(f"{data_path}: found one class folder only; a label transition matrix needs two classes or more")
    return image_set


def open_mnist(mnist_dir: str | Path, split: str) -> ImageSet:
    """Open one MNIST split from IDX files, with an error that names the --mnist option."""
    mnist_dir = Path(mnist_dir)
    if not mnist_dir.is_dir():
        raise InputError(f"{mnist_dir}: MNIST folder not found; pass --mnist with the folder of MNIST's IDX files")
    image_set = open_image_set(mnist_dir, split=split)
    if image_set.pixels is None:
        raise InputError(f"{mnist_dir}: no MNIST {split} IDX files found; pass --mnist with the folder of MNIST's IDX files")
    return image_set


def _reference_confusion(
    reference: ReferenceModel, source: str, mnist_dir: str | Path, calibration_size: int, seed: int, workers: int | None
) -> tuple[np.ndarray | None, dict[str, Any]]:
    """Return the reference's confusion counts [true, pred] from ``source``, and what was used."""
    if source == "mnist":
        if tuple(reference.class_names) != DIGIT_CLASSES:
            raise InputError(
                f"--confusion mnist needs the digit classes 0-9, but the data has {' '.join(reference.class_names[:12])}; "
                "use --confusion metadata or identity"
            )
        counts, details = measure_confusion(reference, open_mnist(mnist_dir, "train"), calibration_size, seed, workers)
        return counts, {"source": "mnist", "split": "train", **details}
    if source == "metadata":
        counts = metadata_confusion(reference)
        if counts is not None:
            accuracy = float(np.trace(counts) / max(counts.sum(), 1))
            return counts, {"source": "metadata", "images": int(counts.sum()), "accuracy": accuracy}
        log.warning("%s has no val_confusion in its provenance; using the identity confusion", reference.path)
        return None, {"source": "identity", "reason": "the model's provenance has no val_confusion"}
    return None, {"source": "identity", "reason": "requested"}


def _mapping_names(verdict: CorruptionVerdict, class_names: list[str]) -> dict[str, str] | None:
    if verdict.mapping is None:
        return None
    return {class_names[given]: class_names[true] for given, true in enumerate(verdict.mapping)}


def _reference_description(reference: ReferenceModel, confusion: dict[str, Any]) -> dict[str, Any]:
    return {
        "path": str(reference.path),
        "provenance": reference.provenance,
        "recipe": {"layout": reference.recipe.layout, "size": reference.recipe.size},
        "confusion": confusion,
    }


def estimate_transition(
    data_path: str | Path, reference_path: str | Path = DEFAULT_REFERENCE, options: DiagnosisOptions | None = None
) -> DiagnosisResult:
    """Estimate the label transition matrix of DATA with a reference model, and name the corruption.

    ``result.transition_matrix`` is the numpy array T[true, given] that forward loss
    correction needs. The MNIST comparison fields of the result stay None here.
    """
    result, _ = _estimate_transition(open_labelled_set(data_path), reference_path, options or DiagnosisOptions())
    return result


def _estimate_transition(
    image_set: ImageSet,
    reference_path: str | Path,
    options: DiagnosisOptions,
    mnist_geometry_images: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[DiagnosisResult, tuple[np.ndarray, np.ndarray] | None]:
    """Run the label-noise half of the diagnosis; return the result and the decoded images it used.

    ``mnist_geometry_images`` (indices, images) are reused when the reference's recipe
    is MNIST geometry, so DATA is decoded once.
    """
    if options.confusion_source not in CONFUSION_SOURCES:
        raise InputError(
            f"unknown confusion source {options.confusion_source!r}; use one of {', '.join(CONFUSION_SOURCES)}"
        )
    workers = options.workers
    timings: dict[str, float] = {}
    class_names = list(image_set.class_names)
    reference = open_reference(reference_path, class_names)

    started = time.perf_counter()
    confusion_counts, confusion_details = _reference_confusion(
        reference, options.confusion_source, options.mnist_dir, options.calibration_size, options.seed, workers
    )
    timings["reference_confusion"] = time.perf_counter() - started

    started = time.perf_counter()
    reuse = reference.recipe.layout == MNIST_GEOMETRY.layout and reference.recipe.size == MNIST_GEOMETRY.size
    if reuse and mnist_geometry_images is None:
        mnist_geometry_images = decode_for_reference(image_set, reference, workers)
    indices, canvases = mnist_geometry_images if reuse else decode_for_reference(image_set, reference, workers)
    timings["decode"] = time.perf_counter() - started
    if len(indices) == 0:
        raise InputError(f"{image_set.source}: none of the {len(image_set)} images could be decoded")

    started = time.perf_counter()
    predicted = predict_classes(reference, canvases)
    given = image_set.labels[indices]
    estimate, verdict = diagnose_label_noise(
        given, predicted, confusion_counts, len(class_names), options.bootstrap, options.seed
    )
    timings["estimate"] = time.perf_counter() - started
    verdict.evidence["images"] = int(len(indices))
    verdict.evidence["undecodable_images"] = int(len(image_set) - len(indices))
    verdict.evidence["reference_agreement_with_given_labels"] = float((predicted == given).mean())

    result = DiagnosisResult(
        data_path=Path(image_set.source),
        class_names=class_names,
        kind=verdict.kind,
        transition_matrix=estimate.transition,
        mapping=_mapping_names(verdict, class_names),
        noise_rate=verdict.noise_rate,
        confidence=verdict.confidence,
        evidence=verdict.evidence,
        estimate=estimate,
        reference=_reference_description(reference, confusion_details),
        timings=timings,
    )
    return result, mnist_geometry_images if reuse else None


def _duplicate_summary(matches: DuplicateMatches, query_count: int, reference_count: int) -> dict[str, Any]:
    return {
        "images_matched": int(len(matches)),
        "share_of_data": float(len(matches) / max(query_count, 1)),
        "exact_pixel_copies": matches.exact_count,
        "distinct_mnist_images_matched": int(np.unique(matches.reference_index).size),
        "mnist_images": int(reference_count),
        "mean_pixel_error": float(matches.pixel_error.mean()) if len(matches) else None,
    }


def _matched_label_transition(
    given: np.ndarray, mnist_labels: np.ndarray, num_classes: int
) -> tuple[np.ndarray, CorruptionVerdict]:
    """Tabulate T[true, given] with the MNIST labels of matched images as the true classes."""
    counts = count_pairs(mnist_labels, given, num_classes).astype(np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    transition = np.divide(counts, totals, out=np.full_like(counts, np.nan), where=totals > 0)
    verdict = classify_transition(transition, totals.ravel() / max(totals.sum(), 1))
    return transition, verdict


def compare_duplicates(
    images: np.ndarray,
    given: np.ndarray,
    mnist_train: ImageSet,
    mnist_test: ImageSet,
    class_names: list[str],
    max_distance: int = DEFAULT_MAX_HASH_DISTANCE,
    max_pixel_difference: int = DEFAULT_MAX_PIXEL_DIFFERENCE,
) -> dict[str, Any]:
    """Match DATA's images against MNIST train and test, and tabulate labels of the matches.

    The MNIST labels of matched images are true classes known without any model, so they
    give a second, independent estimate of T whenever DATA copies MNIST.
    """
    hashes = perceptual_hash(images)
    summary: dict[str, Any] = {
        "hash": "64-bit DCT pHash in numpy",
        "max_hash_distance": max_distance,
        "max_pixel_difference": max_pixel_difference,
    }
    matched_true, matched_given = [], []
    matched_by_split = {}
    for name, split in (("train", mnist_train), ("test", mnist_test)):
        matches = find_near_duplicates(
            images, split.pixels, hashes, perceptual_hash(split.pixels), max_distance, max_pixel_difference
        )
        summary[name] = _duplicate_summary(matches, len(images), len(split))
        matched_by_split[name] = set(matches.query_index.tolist())
        matched_true.append(split.labels[matches.reference_index])
        matched_given.append(given[matches.query_index])

    summary["test"]["also_matching_train"] = len(matched_by_split["test"] & matched_by_split["train"])
    summary["test_leak"] = summary["test"]["images_matched"] > 0
    true = np.concatenate(matched_true)
    if len(true) and tuple(class_names) == DIGIT_CLASSES:
        transition, verdict = _matched_label_transition(np.concatenate(matched_given), true, len(class_names))
        summary["matched_transition_matrix"] = _rounded(transition)
        summary["matched_kind"] = verdict.kind
        summary["matched_label_accuracy"] = verdict.evidence["label_accuracy"]
        summary["matched_images"] = int(len(true))
    return summary


def diagnose(
    data_path: str | Path, reference_path: str | Path = DEFAULT_REFERENCE, options: DiagnosisOptions | None = None
) -> DiagnosisResult:
    """Run the whole diagnosis: label corruption, image statistics, class balance and duplicates."""
    options = options or DiagnosisOptions()
    image_set = open_labelled_set(data_path)
    mnist_train, mnist_test = open_mnist(options.mnist_dir, "train"), open_mnist(options.mnist_dir, "test")

    started = time.perf_counter()
    decoded = decode_all(image_set, MNIST_GEOMETRY, workers=options.workers)
    decode_seconds = time.perf_counter() - started
    result, _ = _estimate_transition(
        image_set, reference_path, options, mnist_geometry_images=(decoded.indices, decoded.canvases)
    )
    result.timings["decode"] += decode_seconds
    images, given = decoded.canvases, image_set.labels[decoded.indices]
    result.images, result.given_labels = images, given

    started = time.perf_counter()
    result.image_stats = {
        "data": compute_image_statistics(images),
        "mnist_train": compute_image_statistics(mnist_train.pixels),
        "data_files": sample_file_properties(image_set, options.file_sample, options.seed),
    }
    result.class_counts = compare_class_counts(given, mnist_train.labels, result.class_names)
    result.timings["image_stats"] = time.perf_counter() - started

    started = time.perf_counter()
    result.duplicates = compare_duplicates(
        images,
        given,
        mnist_train,
        mnist_test,
        result.class_names,
        options.max_hash_distance,
        options.max_pixel_difference,
    )
    result.timings["duplicates"] = time.perf_counter() - started
    return result


def add_diagnose_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``diagnose`` to an argument parser."""
    parser.add_argument("data", type=Path, metavar="DATA", help="zip or folder of images in class folders (e.g. mnistTask3.zip)")
    parser.add_argument(
        "--reference",
        type=Path,
        default=Path(DEFAULT_REFERENCE),
        help=f"ONNX model with inkbench metadata that never saw DATA, used to predict the true classes (default {DEFAULT_REFERENCE})",
    )
    parser.add_argument(
        "--confusion",
        choices=CONFUSION_SOURCES,
        default="mnist",
        help="where the reference's confusion matrix comes from: measured on MNIST train (mnist), the model's "
        "provenance val_confusion (metadata), or none (identity) (default mnist)",
    )

    parser.add_argument("--mnist", type=Path, default=Path(DEFAULT_MNIST), help=f"folder of MNIST's IDX files (default {DEFAULT_MNIST})")
    parser.add_argument(
        "--calibration-size",
        type=int,
        default=DEFAULT_CALIBRATION_SIZE,
        help=f"MNIST train images the reference's confusion is measured on with --confusion mnist (default {DEFAULT_CALIBRATION_SIZE})",
    )

    parser.add_argument("--json", type=Path, help="write the diagnosis as JSON to this file")
    parser.add_argument("--plots", type=Path, default=Path(DEFAULT_PLOTS), help=f"folder for the PNG plots (default {DEFAULT_PLOTS})")
    parser.add_argument("--no-plots", action="store_true", help="write no PNG plots")

    parser.add_argument("--workers", type=int, default=None, help="processes that decode images (default: CPUs available to this process)")
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=BOOTSTRAP_REPLICATES,
        help=f"bootstrap re-estimates of T behind the confidence (default {BOOTSTRAP_REPLICATES})",
    )

    parser.add_argument(
        "--max-hash-distance",
        type=int,
        default=DEFAULT_MAX_HASH_DISTANCE,
        help=f"largest pHash Hamming distance, in bits, of a near duplicate (default {DEFAULT_MAX_HASH_DISTANCE})",
    )
    parser.add_argument(
        "--max-pixel-difference",
        type=int,
        default=DEFAULT_MAX_PIXEL_DIFFERENCE,
        help=f"largest difference of any pixel, in grey levels 0-255, of a near duplicate (default {DEFAULT_MAX_PIXEL_DIFFERENCE})",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration sample, file sample and bootstrap (default 0)")


def _check_arguments(args: argparse.Namespace) -> None:
    if args.calibration_size < 100:
        raise InputError(f"--calibration-size {args.calibration_size} is too small; use 100 images or more")
    if args.bootstrap < 1:
        raise InputError(f"--bootstrap {args.bootstrap} is invalid; use 1 replicate or more")
    if not 0 <= args.max_hash_distance < 64:
        raise InputError(f"--max-hash-distance {args.max_hash_distance} is invalid; use 0 to 63 bits")
    if not 0 <= args.max_pixel_difference <= 255:
        raise InputError(f"--max-pixel-difference {args.max_pixel_difference} is invalid; use 0 to 255 grey levels")


def run_diagnose(args: argparse.Namespace) -> int:
    """Run ``diagnose`` from parsed arguments, print the report and write the outputs; return the exit code."""
    from train.diagnose_report import print_report, write_json, write_plots

    _check_arguments(args)
    started = time.perf_counter()
    options = DiagnosisOptions(
        confusion_source=args.confusion,
        mnist_dir=args.mnist,
        calibration_size=args.calibration_size,
        workers=args.workers,
        bootstrap=args.bootstrap,
        seed=args.seed,
        max_hash_distance=args.max_hash_distance,
        max_pixel_difference=args.max_pixel_difference,
    )
    result = diagnose(args.data, args.reference, options)
    result.timings["total"] = time.perf_counter() - started
    plots = [] if args.no_plots else write_plots(result, args.plots)
    if args.json is not None:
        write_json(result.to_json(), args.json)
    print_report(result, plots, args.json)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.diagnose", description="Estimate how a data set's labels are corrupted, and compare it with MNIST.")
    add_diagnose_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run_diagnose(args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return InputError.exit_code


if __name__ == "__main__":
    sys.exit(main())

"""Tests of the image statistics, JPEG quality estimate and near-duplicate search of ``diagnose``."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from evaluate.datasets import find_idx_files, read_idx
from train.image_stats import (
    compare_class_counts,
    compute_image_statistics,
    distinct_grey_levels,
    estimate_jpeg_quality,
    stroke_widths,
)
from train.near_duplicates import find_near_duplicates, hamming_distance, perceptual_hash

from conftest import MNIST_DIR, require


@pytest.fixture(scope="module")
def mnist_images() -> np.ndarray:
    paths = find_idx_files(require(MNIST_DIR), "train")
    if paths is None:
        pytest.skip(f"{MNIST_DIR} holds no MNIST train split")
    return read_idx(paths[0])[:3000]


def jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("L"))


def test_jpeg_copies_found_as_duplicates(mnist_images: np.ndarray) -> None:
    chosen = np.arange(0, 3000, 10)
    copies = np.stack([jpeg_round_trip(mnist_images[i], 75) for i in chosen])

    matches = find_near_duplicates(copies, mnist_images)

    assert len(matches) >= 0.97 * len(chosen)
    assert (matches.reference_index == chosen[matches.query_index]).all()
    assert matches.exact_count == 0


def test_exact_copies_counted_exact(mnist_images: np.ndarray) -> None:
    matches = find_near_duplicates(mnist_images[:50], mnist_images)

    assert len(matches) == 50
    assert matches.exact_count == 50
    assert (matches.hash_distance == 0).all()


def test_different_digits_not_duplicates(mnist_images: np.ndarray) -> None:
    # Shifting a digit by two pixels keeps its shape but moves every stroke.
    shifted = np.roll(mnist_images[:200], 2, axis=2)

    against_shifted = find_near_duplicates(shifted, mnist_images)
    against_others = find_near_duplicates(mnist_images[:1500], mnist_images[1500:])

    assert len(against_shifted) == 0
    assert len(against_others) == 0


def test_perceptual_hash_stable_under_jpeg(mnist_images: np.ndarray) -> None:
    originals = mnist_images[:200]
    copies = np.stack([jpeg_round_trip(image, 90) for image in originals])

    distances = hamming_distance(perceptual_hash(originals), perceptual_hash(copies))

    assert np.median(distances) <= 2
    assert perceptual_hash(originals).dtype == np.uint64


def test_stroke_width_of_bar() -> None:
    image = np.zeros((1, 28, 28), dtype=np.uint8)
    image[0, 4:24, 10:13] = 255

    width = stroke_widths(image)[0]

    # 2A/P = 2 * 60 / 46 for a 3x20 bar: the ends make it slightly short of 3.
    assert width == pytest.approx(120 / 46)


def test_stroke_width_blank_is_nan() -> None:
    assert np.isnan(stroke_widths(np.zeros((1, 28, 28), dtype=np.uint8))[0])


def test_distinct_grey_levels_counted() -> None:
    image = np.zeros((1, 4, 4), dtype=np.uint8)
    image[0, 0, :3] = [10, 20, 20]

    assert distinct_grey_levels(image).tolist() == [3]


def test_jpeg_noise_shows_in_statistics(mnist_images: np.ndarray) -> None:
    originals = mnist_images[:300]
    copies = np.stack([jpeg_round_trip(image, 75) for image in originals])

    clean, compressed = compute_image_statistics(originals), compute_image_statistics(copies)

    assert compressed["zero_pixel_share"] < clean["zero_pixel_share"]
    assert compressed["distinct_grey_levels_mean"] > clean["distinct_grey_levels_mean"]
    assert compressed["stroke_width_median"] == pytest.approx(clean["stroke_width_median"], rel=0.1)


@pytest.mark.parametrize("quality", [50, 75, 90])
def test_jpeg_quality_estimated(quality: int) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 16), 128, dtype=np.uint8)).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)

    with Image.open(buffer) as image:
        estimate = estimate_jpeg_quality(image.quantization)

    assert estimate == pytest.approx(quality, abs=2)


def test_class_counts_in_other_order_detected() -> None:
    reference = np.repeat(np.arange(3), [10, 20, 30])
    permuted = np.repeat(np.arange(3), [30, 10, 20])

    same = compare_class_counts(reference, reference, ["a", "b", "c"])
    reordered = compare_class_counts(permuted, reference, ["a", "b", "c"])

    assert same["p_value"] == pytest.approx(1.0)
    assert not same["same_counts_in_other_order"]
    assert reordered["same_counts_in_other_order"]
    assert reordered["p_value"] < 0.01
    assert reordered["counts"] == [30, 10, 20]

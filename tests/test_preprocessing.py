"""Tests of evaluate.preprocessing on real scans, MNIST digits and synthetic pages.

The canvas layout must keep a character's size and height on the page, because those
tell lower-case letters from capitals. The mnist layout must follow MNIST's own
construction. Training and grading must turn a canvas into the same input.
"""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from evaluate.datasets import CHARS74K_CLASSES, find_idx_files, read_idx
from evaluate.preprocessing import INK_THRESHOLD, MNIST_RECIPE, SCAN_RECIPE, Recipe, load_image, normalize, to_canvas, to_grayscale
from train.loop import to_inputs

from conftest import MNIST_DIR, TRAIN_ZIP, require

# Case pairs (capital, lower-case) whose shapes differ only in size and position.
CASE_PAIRS = (("C", "c"), ("O", "o"), ("S", "s"))
WRITERS_PER_PAIR = 4


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INKBENCH_CACHE", str(tmp_path / "cache"))


def ink_rows(canvas: np.ndarray) -> np.ndarray:
    return np.flatnonzero((canvas >= INK_THRESHOLD).any(axis=1))


def ink_height(canvas: np.ndarray) -> int:
    rows = ink_rows(canvas)
    return int(rows[-1] - rows[0] + 1)


def mean_ink_row(canvas: np.ndarray) -> float:
    weights = canvas.astype(np.float64).sum(axis=1)
    return float((weights * np.arange(len(weights))).sum() / weights.sum())


def centre_of_mass(canvas: np.ndarray) -> tuple[float, float]:
    weights = canvas.astype(np.float64)
    total = weights.sum()
    rows = (weights.sum(axis=1) * np.arange(canvas.shape[0])).sum() / total
    cols = (weights.sum(axis=0) * np.arange(canvas.shape[1])).sum() / total
    return float(rows), float(cols)


def sample_folder(name: str) -> str:
    return f"train/Sample{CHARS74K_CLASSES.index(name) + 1:03d}/"


@pytest.fixture(scope="module")
def case_pair_canvases() -> dict[str, list[np.ndarray]]:
    """Canvases of the same writers' capital and lower-case letters, keyed by character."""
    canvases: dict[str, list[np.ndarray]] = {}
    with zipfile.ZipFile(require(TRAIN_ZIP)) as archive:
        names = set(archive.namelist())
        for capital, lower in CASE_PAIRS:
            # File names end in the sample number within the class, e.g. img025-004.png.
            samples = {
                name: {member.rsplit("-", 1)[1] for member in names if member.startswith(sample_folder(name))}
                for name in (capital, lower)
            }
            shared = sorted(samples[capital] & samples[lower])[:WRITERS_PER_PAIR]
            for name in (capital, lower):
                folder = sample_folder(name)
                number = folder[len("train/Sample") : -1]
                for sample in shared:
                    with archive.open(f"{folder}img{number}-{sample}") as handle:
                        canvases.setdefault(name, []).append(to_canvas(load_image(handle), SCAN_RECIPE))
    return canvases


@pytest.fixture(scope="module")
def digit_scan() -> Image.Image:
    """One real scan of a "3", 1200x900 RGB, dark ink on white."""
    with zipfile.ZipFile(require(TRAIN_ZIP)) as archive:
        member = sorted(name for name in archive.namelist() if name.startswith(sample_folder("3")))[0]
        with archive.open(member) as handle:
            return load_image(handle)


@pytest.fixture(scope="module")
def mnist_digits() -> np.ndarray:
    paths = find_idx_files(require(MNIST_DIR), "test")
    if paths is None:
        pytest.skip(f"{MNIST_DIR} holds no MNIST test split")
    return read_idx(paths[0])[:20]


def blank_page(height: int = 900, width: int = 1200) -> np.ndarray:
    return np.full((height, width), 255, dtype=np.uint8)


# Canvas layout: size and height on the page survive.


def test_canvas_lower_case_is_smaller(case_pair_canvases):
    for capital, lower in CASE_PAIRS:
        capital_height = np.mean([ink_height(c) for c in case_pair_canvases[capital]])
        lower_height = np.mean([ink_height(c) for c in case_pair_canvases[lower]])
        assert lower_height < capital_height, f"{lower!r} is {lower_height:.1f} rows tall, {capital!r} {capital_height:.1f}"


def test_canvas_lower_case_sits_lower(case_pair_canvases):
    for capital, lower in CASE_PAIRS:
        capital_row = np.mean([mean_ink_row(c) for c in case_pair_canvases[capital]])
        lower_row = np.mean([mean_ink_row(c) for c in case_pair_canvases[lower]])
        assert lower_row > capital_row, f"{lower!r} mean ink row {lower_row:.1f}, {capital!r} {capital_row:.1f}"


def test_canvas_keeps_vertical_position():
    high, low = blank_page(), blank_page()
    high[200:300, 500:600] = 0
    low[500:600, 500:600] = 0

    high_rows, low_rows = ink_rows(to_canvas(high, SCAN_RECIPE)), ink_rows(to_canvas(low, SCAN_RECIPE))

    # 300 page rows are 300 * 64 / 900 = 21.3 canvas rows.
    assert low_rows[0] - high_rows[0] == pytest.approx(21.3, abs=1.5)


def test_canvas_keeps_ink_size():
    small, large = blank_page(), blank_page()
    small[400:490, 500:590] = 0
    large[400:580, 500:680] = 0

    small_height = ink_height(to_canvas(small, SCAN_RECIPE))
    large_height = ink_height(to_canvas(large, SCAN_RECIPE))

    assert small_height == pytest.approx(90 * 64 / 900, abs=1.5)
    assert large_height == pytest.approx(180 * 64 / 900, abs=1.5)


def test_canvas_centres_ink_horizontally():
    page = blank_page()
    page[400:500, 20:120] = 0  # at the left edge of the page

    canvas = to_canvas(page, SCAN_RECIPE)
    _, centre_x = centre_of_mass(canvas)

    assert centre_x == pytest.approx((SCAN_RECIPE.size - 1) / 2, abs=1.0)


# MNIST layout.


def test_mnist_ink_box_is_20_pixels(digit_scan):
    canvas = to_canvas(digit_scan, MNIST_RECIPE)
    rows = np.flatnonzero(canvas.any(axis=1))
    cols = np.flatnonzero(canvas.any(axis=0))

    assert canvas.shape == (28, 28)
    assert max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1) == 20


def test_mnist_centre_of_mass_is_centred(digit_scan):
    rows, cols = centre_of_mass(to_canvas(digit_scan, MNIST_RECIPE))

    # The glyph is placed at a whole-pixel offset, so the centre of mass is within half a pixel.
    assert abs(rows - 13.5) <= 0.5
    assert abs(cols - 13.5) <= 0.5


def test_mnist_digits_pass_unchanged(mnist_digits):
    canvases = np.stack([to_canvas(image, MNIST_RECIPE) for image in mnist_digits])

    np.testing.assert_array_equal(canvases, mnist_digits)


def test_mnist_blank_image_gives_blank_canvas():
    canvas = to_canvas(np.full((100, 80), 255, np.uint8), MNIST_RECIPE)

    assert canvas.shape == (28, 28)
    assert not canvas.any()


# Polarity and image modes.


def test_polarity_dark_ink_on_white_is_inverted(mnist_digits):
    for image in mnist_digits[:5]:
        np.testing.assert_array_equal(to_canvas(255 - image, MNIST_RECIPE), image)


def test_polarity_scan_matches_inverted_scan(digit_scan):
    gray = to_grayscale(digit_scan)

    np.testing.assert_array_equal(to_canvas(255 - gray, SCAN_RECIPE), to_canvas(gray, SCAN_RECIPE))


def test_image_modes_give_same_canvas(digit_scan):
    # Stretched to the full 0-255 range, so the 16-bit copy scales back exactly.
    gray = ImageOps.autocontrast(digit_scan.convert("L"))
    values = np.asarray(gray)
    variants = {
        "RGB": gray.convert("RGB"),
        "RGBA": gray.convert("RGBA"),
        "P": gray.convert("P"),
        "I;16": Image.fromarray(values.astype(np.uint16) * 257),
    }
    assert variants["I;16"].mode == "I;16"

    for recipe in (SCAN_RECIPE, MNIST_RECIPE):
        expected = to_canvas(gray, recipe)
        for mode, image in variants.items():
            np.testing.assert_array_equal(to_canvas(image, recipe), expected, err_msg=f"mode {mode}, layout {recipe.layout}")


def test_transparent_background_counts_as_white(digit_scan):
    gray = np.asarray(digit_scan.convert("L"))
    rgba = np.zeros((*gray.shape, 4), dtype=np.uint8)
    # Black ink drawn opaque on a fully transparent, black background.
    rgba[..., 3] = 255 - gray

    canvas = to_canvas(Image.fromarray(rgba, "RGBA"), SCAN_RECIPE)

    np.testing.assert_array_equal(canvas, to_canvas(Image.fromarray(gray), SCAN_RECIPE))


# Normalisation: the evaluator's numpy path and the trainer's torch path agree.


@pytest.mark.parametrize("recipe", [SCAN_RECIPE, MNIST_RECIPE, Recipe(layout="mnist", size=28, mean=0.5, std=0.25)])
def test_normalize_matches_training_inputs(recipe):
    canvases = np.random.default_rng(0).integers(0, 256, (5, recipe.size, recipe.size), dtype=np.uint8)

    evaluator = normalize(canvases, recipe)
    trainer = to_inputs(canvases, recipe).numpy()

    assert evaluator.shape == (5, 1, recipe.size, recipe.size)
    assert trainer.shape == evaluator.shape
    np.testing.assert_allclose(trainer, evaluator, rtol=0, atol=1e-6)


def test_normalize_single_canvas_gets_batch_axis():
    canvas = np.zeros((28, 28), dtype=np.uint8)

    assert normalize(canvas, MNIST_RECIPE).shape == (1, 1, 28, 28)


def test_normalize_maps_black_to_minus_mean_over_std():
    value = normalize(np.zeros((1, 28, 28), np.uint8), MNIST_RECIPE)[0, 0, 0, 0]

    assert value == pytest.approx(-MNIST_RECIPE.mean / MNIST_RECIPE.std, abs=1e-6)
    assert torch.as_tensor(value).dtype == torch.float32

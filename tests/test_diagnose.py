"""End-to-end tests of ``diagnose`` on small corrupted copies of MNIST train images.

Each data set is a folder of PNGs in class folders named by the corrupted label. Two
reference models are used: the centroid model of ``conftest`` (built from the first 2000
MNIST train images, about 80% accurate, so a weak reference) and the shipped
``artifacts/task2_digits.onnx`` when it exists.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evaluate.datasets import DIGIT_CLASSES, find_idx_files, read_idx
from evaluate.metadata import ModelMetadata
from evaluate.preprocessing import Recipe, to_canvas
from train.diagnose import DiagnosisOptions, estimate_transition, main

from conftest import MNIST_DIR, build_linear_model, centroid_weights, require

SHIPPED_REFERENCE = Path(__file__).resolve().parents[1] / "artifacts" / "task2_digits.onnx"
# MNIST train images the data sets are built from; the centroid reference used 0-1999.
FIRST_IMAGE = 20000
IMAGES = 3000
CALIBRATION_IMAGES = 3000
# Given label g is for true class PERMUTATION_MAPPING[g].
PERMUTATION_MAPPING = [3, 7, 0, 9, 1, 4, 8, 2, 6, 5]


@pytest.fixture(scope="module")
def mnist_slice() -> tuple[np.ndarray, np.ndarray]:
    paths = find_idx_files(require(MNIST_DIR), "train")
    if paths is None:
        pytest.skip(f"{MNIST_DIR} holds no MNIST train split")
    images = read_idx(paths[0])[FIRST_IMAGE : FIRST_IMAGE + IMAGES]
    labels = read_idx(paths[1])[FIRST_IMAGE : FIRST_IMAGE + IMAGES].astype(np.int64)
    return images, labels


def corrupt(true: np.ndarray, kind: str, rate: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "clean":
        return true.copy()
    if kind == "permutation":
        return np.argsort(PERMUTATION_MAPPING)[true]
    if kind == "complementary":
        return (true + rng.integers(1, 10, len(true))) % 10
    given = true.copy()
    flipped = rng.random(len(true)) < rate
    given[flipped] = (true[flipped] + rng.integers(1, 10, flipped.sum())) % 10
    return given


def write_folder(root: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    for index, (image, label) in enumerate(zip(images, labels)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        # Fast PNG compression: the files are read once, and size does not matter.
        Image.fromarray(image).save(folder / f"image_{index:06d}.png", compress_level=1)
    return root


@pytest.fixture(scope="module")
def corrupted_sets(mnist_slice, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    images, true = mnist_slice
    root = tmp_path_factory.mktemp("corrupted")
    cases = {"clean": 0.0, "permutation": 0.0, "symmetric-0.2": 0.2, "symmetric-0.6": 0.6, "complementary": 0.0}
    return {
        name: write_folder(root / name, images, corrupt(true, name.split("-")[0], rate, seed=len(name)))
        for name, rate in cases.items()
    }


@pytest.fixture(scope="module", params=["centroid", "shipped"])
def reference(request: pytest.FixtureRequest) -> Path:
    if request.param == "shipped":
        if not SHIPPED_REFERENCE.is_file():
            pytest.skip(f"{SHIPPED_REFERENCE} is not built yet; the training side ships it")
        return SHIPPED_REFERENCE
    return request.getfixturevalue("mnist_model").path


EXPECTED = [
    ("clean", "clean", None),
    ("permutation", "permutation", None),
    ("symmetric-0.2", "symmetric", 0.2),
    ("symmetric-0.6", "symmetric", 0.6),
    ("complementary", "complementary", None),
]


@pytest.mark.parametrize(("case", "kind", "noise_rate"), EXPECTED, ids=[case for case, _, _ in EXPECTED])
def test_corruption_named_from_images(corrupted_sets, reference: Path, case: str, kind: str, noise_rate) -> None:
    options = DiagnosisOptions(mnist_dir=MNIST_DIR, calibration_size=CALIBRATION_IMAGES, workers=1, bootstrap=50)

    result = estimate_transition(corrupted_sets[case], reference, options)

    assert result.kind == kind, result.evidence
    assert result.transition_matrix.shape == (10, 10)
    assert result.reference["confusion"]["source"] == "mnist"
    if noise_rate is not None:
        assert result.noise_rate == pytest.approx(noise_rate, abs=0.05)
    if kind == "permutation":
        expected = {str(given): str(true) for given, true in enumerate(PERMUTATION_MAPPING)}
        assert result.mapping == expected


def test_cli_writes_json_and_plots(corrupted_sets, mnist_model, tmp_path: Path, capsys) -> None:
    output = tmp_path / "diagnosis.json"
    plots = tmp_path / "plots"

    code = main([
        str(corrupted_sets["complementary"]), "--reference", str(mnist_model.path), "--mnist", str(MNIST_DIR),
        "--json", str(output), "--plots", str(plots), "--calibration-size", "2000", "--bootstrap", "20", "--workers", "1",
    ])  # fmt: skip

    assert code == 0
    payload = json.loads(output.read_text())
    assert payload["kind"] == "complementary"
    assert len(payload["transition_matrix"]) == 10
    assert 0.0 <= payload["confidence"] <= 1.0
    assert payload["class_counts"]["counts"] == np.bincount(
        [int(p.parent.name) for p in corrupted_sets["complementary"].rglob("*.png")], minlength=10
    ).tolist()
    # The images are MNIST train images saved as PNG: exact copies, none from test.
    assert payload["duplicates"]["train"]["images_matched"] == IMAGES
    assert payload["duplicates"]["train"]["exact_pixel_copies"] == IMAGES
    assert payload["duplicates"]["test"]["images_matched"] == 0
    assert payload["duplicates"]["test_leak"] is False
    assert payload["duplicates"]["matched_kind"] == "complementary"
    assert payload["image_stats"]["data"]["height"] == 28
    assert payload["reference"]["path"] == str(mnist_model.path)
    assert (plots / "transition_matrix.png").stat().st_size > 0
    assert (plots / "samples_per_folder.png").stat().st_size > 0
    assert not list(tmp_path.glob(".diagnosis.json.*"))
    assert "complementary" in capsys.readouterr().out


def test_cli_missing_data_one_line_error(mnist_model, tmp_path: Path, capsys) -> None:
    code = main([str(tmp_path / "absent.zip"), "--reference", str(mnist_model.path), "--no-plots"])

    error = capsys.readouterr().err.strip()
    assert code == 2
    assert "absent.zip" in error
    assert len(error.splitlines()) == 1


def test_cli_unlabelled_data_rejected(mnist_slice, mnist_model, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "loose"
    folder.mkdir()
    for index in range(3):
        Image.fromarray(mnist_slice[0][index]).save(folder / f"{index}.png")

    code = main([str(folder), "--reference", str(mnist_model.path), "--mnist", str(MNIST_DIR), "--no-plots"])

    assert code == 2
    assert "not in class folders" in capsys.readouterr().err


def test_cli_missing_reference_rejected(corrupted_sets, tmp_path: Path, capsys) -> None:
    code = main([str(corrupted_sets["clean"]), "--reference", str(tmp_path / "none.onnx"), "--mnist", str(MNIST_DIR), "--no-plots"])

    assert code == 2
    assert "model file not found" in capsys.readouterr().err


def test_metadata_confusion_absent_falls_back(corrupted_sets, mnist_model) -> None:
    options = DiagnosisOptions(confusion_source="metadata", workers=1, bootstrap=20)

    result = estimate_transition(corrupted_sets["permutation"], mnist_model.path, options)

    assert result.reference["confusion"]["source"] == "identity"
    assert "val_confusion" in result.reference["confusion"]["reason"]
    assert result.confidence <= 0.5


def test_reference_with_other_recipe(corrupted_sets, tmp_path: Path) -> None:
    # A reference whose input is not MNIST's 28x28 makes diagnose decode DATA a second time.
    paths = find_idx_files(MNIST_DIR, "train")
    recipe = Recipe(layout="canvas", size=32, mean=0.1, std=0.3)
    images, labels = read_idx(paths[0])[:2000], read_idx(paths[1])[:2000].astype(np.int64)
    canvases = np.stack([to_canvas(image, recipe) for image in images])
    weights, bias = centroid_weights(canvases, labels, recipe, 10)
    metadata = ModelMetadata(list(DIGIT_CLASSES), recipe, {"task": "test canvas recipe"})
    model = build_linear_model(tmp_path / "canvas.onnx", weights, bias, ["N", 1, 32, 32], metadata)
    options = DiagnosisOptions(mnist_dir=MNIST_DIR, calibration_size=CALIBRATION_IMAGES, workers=1, bootstrap=20)

    result = estimate_transition(corrupted_sets["permutation"], model, options)

    assert result.reference["recipe"] == {"layout": "canvas", "size": 32}
    assert result.kind == "permutation", result.evidence
    assert result.mapping == {str(given): str(true) for given, true in enumerate(PERMUTATION_MAPPING)}

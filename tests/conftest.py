"""Fixtures for the evaluator's tests: real data subsets and small ONNX models built without torch.

The models are nearest-centroid classifiers: one Flatten -> MatMul -> Add graph whose
weights are class-mean images of a few training samples. They are real ONNX models
that reach well above chance, so tests can assert accuracy, not only that a run ended.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from evaluate.datasets import DIGIT_CLASSES, find_idx_files, read_idx
from evaluate.metadata import ModelMetadata
from evaluate.preprocessing import MNIST_RECIPE, SCAN_RECIPE, Recipe, load_image, normalize, to_canvas

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TRAIN_ZIP = DATA_DIR / "trainPart1.zip"
MNIST_DIR = DATA_DIR / "mnist"

# Per digit class of trainPart1.zip: members that build the templates, then members graded.
TEMPLATE_IMAGES = 6
GRADED_IMAGES = 3


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data {path} is absent; the tests need the real data sets beside the repository")
    return path


def build_linear_model(
    path: Path,
    weights: np.ndarray,
    bias: np.ndarray,
    input_shape: list[int | str],
    metadata: ModelMetadata | None = None,
    output_shape: list[int | str] | None = None,
) -> Path:
    """Save an ONNX model computing Flatten(x) @ weights + bias, with optional inkbench metadata."""
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "weights"], ["scores"]),
        helper.make_node("Add", ["scores", "bias"], ["logits"]),
    ]
    initializers = [
        numpy_helper.from_array(weights.astype(np.float32), "weights"),
        numpy_helper.from_array(bias.astype(np.float32), "bias"),
    ]
    graph = helper.make_graph(
        nodes,
        "nearest_centroid",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, output_shape or ["N", weights.shape[1]])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    if metadata is not None:
        helper.set_model_props(model, metadata.to_props())
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def centroid_weights(canvases: np.ndarray, labels: np.ndarray, recipe: Recipe, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (weights, bias) whose argmax is the nearest class mean in the normalised input space.

    argmin_c |x - m_c|^2 equals argmax_c (x . m_c - |m_c|^2 / 2), a linear layer.
    """
    inputs = normalize(canvases, recipe).reshape(len(canvases), -1)
    means = np.stack([inputs[labels == c].mean(axis=0) for c in range(num_classes)])
    return means.T, -0.5 * (means**2).sum(axis=1)


def reference_logits(canvases: np.ndarray, weights: np.ndarray, bias: np.ndarray, recipe: Recipe) -> np.ndarray:
    return normalize(canvases, recipe).reshape(len(canvases), -1) @ weights + bias


@dataclass
class DigitScans:
    """Digit scans from trainPart1.zip: a centroid model built on some, and others to grade."""

    model: Path
    weights: np.ndarray
    bias: np.ndarray
    recipe: Recipe
    members: list[str]
    labels: np.ndarray
    canvases: np.ndarray
    zip_path: Path
    folder: Path

    def expected_predictions(self) -> np.ndarray:
        return reference_logits(self.canvases, self.weights, self.bias, self.recipe).argmax(axis=1)


def _digit_members(archive: zipfile.ZipFile) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    names = sorted(archive.namelist())
    templates, graded = {}, {}
    for digit in range(10):
        folder = f"train/Sample{digit + 1:03d}/"
        members = [name for name in names if name.startswith(folder) and name.endswith(".png")]
        templates[digit] = members[:TEMPLATE_IMAGES]
        graded[digit] = members[TEMPLATE_IMAGES : TEMPLATE_IMAGES + GRADED_IMAGES]
    return templates, graded


def _decode(archive: zipfile.ZipFile, member: str, recipe: Recipe) -> np.ndarray:
    with archive.open(member) as handle:
        return to_canvas(load_image(handle), recipe)


@pytest.fixture(scope="session")
def digit_scans(tmp_path_factory: pytest.TempPathFactory) -> DigitScans:
    """30 digit scans as a zip and a folder, and a 10-class model with inkbench metadata."""
    root = tmp_path_factory.mktemp("digits")
    recipe = SCAN_RECIPE
    with zipfile.ZipFile(require(TRAIN_ZIP)) as archive:
        templates, graded = _digit_members(archive)
        template_canvases = np.stack([_decode(archive, m, recipe) for d in range(10) for m in templates[d]])
        template_labels = np.repeat(np.arange(10), TEMPLATE_IMAGES)
        members = [m for d in range(10) for m in graded[d]]
        canvases = np.stack([_decode(archive, m, recipe) for m in members])

        zip_path = root / "digits.zip"
        folder = root / "digits"
        with zipfile.ZipFile(zip_path, "w") as subset:
            for member in members:
                data = archive.read(member)
                subset.writestr(member, data)
                target = folder / member
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)

    weights, bias = centroid_weights(template_canvases, template_labels, recipe, 10)
    metadata = ModelMetadata(list(DIGIT_CLASSES), recipe, {"task": "test digits"})
    model = build_linear_model(root / "digits.onnx", weights, bias, ["N", 1, recipe.size, recipe.size], metadata)
    labels = np.repeat(np.arange(10), GRADED_IMAGES)
    return DigitScans(model, weights, bias, recipe, members, labels, canvases, zip_path, folder / "train")


@dataclass
class MnistModel:
    path: Path
    weights: np.ndarray
    bias: np.ndarray


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    folder = require(MNIST_DIR)
    if find_idx_files(folder, "test") is None:
        pytest.skip(f"{folder} holds no MNIST test split")
    return folder


@pytest.fixture(scope="session")
def mnist_model(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> MnistModel:
    """A 10-class centroid model from the first 2000 MNIST training images, with metadata."""
    paths = find_idx_files(mnist_dir, "train")
    if paths is None:
        pytest.skip(f"{mnist_dir} holds no MNIST train split")
    images, labels = read_idx(paths[0])[:2000], read_idx(paths[1])[:2000].astype(np.int64)
    weights, bias = centroid_weights(images, labels, MNIST_RECIPE, 10)
    metadata = ModelMetadata(list(DIGIT_CLASSES), MNIST_RECIPE, {"task": "test mnist"})
    path = tmp_path_factory.mktemp("mnist") / "mnist.onnx"
    build_linear_model(path, weights, bias, ["N", 1, 28, 28], metadata)
    return MnistModel(path, weights, bias)


@pytest.fixture
def make_model():
    """Return build_linear_model, for tests that need a model of their own shape or metadata."""
    return build_linear_model


# Training-side fixtures: small subsets of trainPart1.zip and short runs on them, built
# once per session because decoding the 1200x900 scans dominates their cost.

TASK1_IMAGES_PER_CLASS = 3
DIGIT_IMAGES_PER_CLASS = 4


def write_scan_subset(target: Path, class_numbers: range, per_class: int) -> Path:
    """Copy the first ``per_class`` scans of each SampleNNN class into a new zip."""
    with zipfile.ZipFile(require(TRAIN_ZIP)) as archive, zipfile.ZipFile(target, "w") as subset:
        names = sorted(name for name in archive.namelist() if name.endswith(".png"))
        for number in class_numbers:
            folder = f"train/Sample{number:03d}/"
            for member in [name for name in names if name.startswith(folder)][:per_class]:
                subset.writestr(member, archive.read(member))
    return target


@pytest.fixture(scope="session")
def scan_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A canvas cache folder shared by the tests that train on the scan subsets."""
    return tmp_path_factory.mktemp("canvas-cache")


@pytest.fixture(scope="session")
def task1_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All 62 classes of trainPart1.zip, 3 scans each."""
    return write_scan_subset(tmp_path_factory.mktemp("task1") / "task1.zip", range(1, 63), TASK1_IMAGES_PER_CLASS)


@pytest.fixture(scope="session")
def digits_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ten digit classes of trainPart1.zip, 4 scans each."""
    return write_scan_subset(tmp_path_factory.mktemp("digit-scans") / "digits.zip", range(1, 11), DIGIT_IMAGES_PER_CLASS)


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the IDX format: magic 0x0000 08 NDIM, big-endian sizes, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def train_cli(task: str, data: Path, out: Path, *options: str) -> int:
    """Run ``python -m train TASK`` in-process on one worker, with one validation image a class."""
    from train.__main__ import main as train_main

    argv = [task, "--data", str(data), "--out", str(out), "--val-per-class", "1", "--workers", "1", *options]
    return train_main(argv)


@pytest.fixture(scope="session")
def task1_run(task1_zip: Path, scan_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run folder of a one-epoch task1 run on ``task1_zip``; treat it as read-only."""
    out = tmp_path_factory.mktemp("task1-run") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("INKBENCH_CACHE", str(scan_cache))
        code = train_cli("task1", task1_zip, out, "--epochs", "1")
    assert code == 0, "the task1 fixture run failed; run tests/test_training.py for the cause"
    return out


@pytest.fixture(scope="session")
def digits_run(digits_zip: Path, scan_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run folder of a one-epoch task2-pretrain run on ``digits_zip``; treat it as read-only."""
    out = tmp_path_factory.mktemp("digits-run") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("INKBENCH_CACHE", str(scan_cache))
        code = train_cli("task2-pretrain", digits_zip, out, "--epochs", "1", "--batch-size", "8")
    assert code == 0, "the task2-pretrain fixture run failed; run tests/test_training.py for the cause"
    return out

"""Tests of export.quantize on a small trained CNN and the real MNIST files.

The float model is built without torch: a fixed random 3x3 convolution bank with ReLU
and 4x4 max pooling, then a linear layer fitted by ridge regression on 4000 MNIST
training images. It reaches about 94% top-1 on the first 1000 test images, so agreement
between the int8 and float predictions is a meaningful check rather than agreement
between two random classifiers.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from evaluate.datasets import read_idx
from evaluate.errors import InputError
from evaluate.metadata import ModelMetadata
from evaluate.preprocessing import MNIST_RECIPE, normalize
from export.quantize import main, quantize_model

MNIST_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
FIT_IMAGES = 4000
RIDGE = 10.0
FILTERS = 16
PROVENANCE = {"task": "test", "seed": 7}


def require_mnist() -> Path:
    if not MNIST_DIR.is_dir():
        pytest.skip(f"shared data {MNIST_DIR} is absent; the tests need the real data sets beside the repository")
    return MNIST_DIR


def make_graph(conv_weight: np.ndarray, fc_weight: np.ndarray | None, fc_bias: np.ndarray | None) -> onnx.ModelProto:
    """Conv -> Relu -> MaxPool(4) -> Flatten, then a Gemm when fc_weight is given."""
    initializers = [
        numpy_helper.from_array(conv_weight, "conv_weight"),
        numpy_helper.from_array(np.zeros(FILTERS, np.float32), "conv_bias"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "conv_weight", "conv_bias"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("MaxPool", ["relu"], ["pool"], kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("Flatten", ["pool"], ["features"], axis=1),
    ]
    output = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", FILTERS * 7 * 7])
    if fc_weight is not None and fc_bias is not None:
        initializers += [numpy_helper.from_array(fc_weight, "fc_weight"), numpy_helper.from_array(fc_bias, "fc_bias")]
        nodes.append(helper.make_node("Gemm", ["features", "fc_weight", "fc_bias"], ["logits"]))
        output = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])
    graph = helper.make_graph(
        nodes, "conv_lstsq", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])], [output], initializers
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def run(model: onnx.ModelProto | Path, inputs: np.ndarray) -> np.ndarray:
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": inputs})[0]


@pytest.fixture(scope="module")
def float_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A float CNN fitted on MNIST training images, with inkbench metadata."""
    mnist = require_mnist()
    images = read_idx(mnist / "train-images-idx3-ubyte.gz")[:FIT_IMAGES]
    labels = read_idx(mnist / "train-labels-idx1-ubyte.gz")[:FIT_IMAGES].astype(np.int64)
    conv_weight = np.random.default_rng(0).standard_normal((FILTERS, 1, 3, 3)).astype(np.float32) / 3

    features = run(make_graph(conv_weight, None, None), normalize(images, MNIST_RECIPE))
    design = np.hstack([features, np.ones((len(features), 1))])
    targets = np.eye(10)[labels]
    gram = design.T @ design + RIDGE * np.eye(design.shape[1])
    solution = np.linalg.solve(gram, design.T @ targets).astype(np.float32)
    model = make_graph(conv_weight, solution[:-1], solution[-1])
    helper.set_model_props(model, ModelMetadata([str(d) for d in range(10)], MNIST_RECIPE, PROVENANCE).to_props())
    onnx.checker.check_model(model)

    path = tmp_path_factory.mktemp("float") / "float.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def test_digits() -> tuple[np.ndarray, np.ndarray]:
    """1000 MNIST test images, normalised, and their labels; none are used for calibration."""
    mnist = require_mnist()
    images = read_idx(mnist / "t10k-images-idx3-ubyte.gz")[:1000]
    labels = read_idx(mnist / "t10k-labels-idx1-ubyte.gz")[:1000].astype(np.int64)
    return normalize(images, MNIST_RECIPE), labels


@pytest.fixture(scope="module")
def int8_model(float_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("int8") / "int8.onnx"
    result = quantize_model(float_model, out, MNIST_DIR, num_images=200, check_images=300)
    return out, result


def test_float_model_is_trained(float_model: Path, test_digits: tuple[np.ndarray, np.ndarray]) -> None:
    inputs, labels = test_digits
    accuracy = (run(float_model, inputs).argmax(axis=1) == labels).mean()
    assert accuracy > 0.9


def test_int8_model_is_quantized(int8_model: tuple[Path, object]) -> None:
    path, _ = int8_model
    model = onnx.load(str(path))
    operators = Counter(node.op_type for node in model.graph.node)
    assert operators["QuantizeLinear"] >= 2
    assert operators["DequantizeLinear"] >= 2
    weight_types = {initializer.name: initializer.data_type for initializer in model.graph.initializer}
    assert TensorProto.INT8 in weight_types.values()
    # Per-channel quantisation gives the convolution one scale per output filter.
    conv_scales = [
        numpy_helper.to_array(initializer)
        for initializer in model.graph.initializer
        if initializer.name.startswith("conv_weight") and initializer.name.endswith("scale")
    ]
    assert [scale.shape for scale in conv_scales] == [(FILTERS,)]


def test_int8_predictions_follow_float(
    float_model: Path, int8_model: tuple[Path, object], test_digits: tuple[np.ndarray, np.ndarray]
) -> None:
    path, result = int8_model
    inputs, labels = test_digits
    float_predicted = run(float_model, inputs).argmax(axis=1)
    int8_predicted = run(path, inputs).argmax(axis=1)
    assert (float_predicted == int8_predicted).mean() >= 0.95
    assert (int8_predicted == labels).mean() >= (float_predicted == labels).mean() - 0.03

    assert result.calibration_images == 200
    assert result.check_images == 300
    assert result.top1_agreement >= 0.95
    assert 0.85 < result.float_top1 <= 1
    assert 0.85 < result.int8_top1 <= 1


def test_int8_model_keeps_metadata(float_model: Path, int8_model: tuple[Path, object]) -> None:
    path, _ = int8_model
    float_props = {entry.key: entry.value for entry in onnx.load(str(float_model)).metadata_props}
    int8_props = {entry.key: entry.value for entry in onnx.load(str(path)).metadata_props}
    float_metadata = ModelMetadata.from_props(float_props)
    int8_metadata = ModelMetadata.from_props(int8_props)
    assert int8_metadata is not None
    assert int8_metadata.class_names == float_metadata.class_names
    assert int8_metadata.recipe == float_metadata.recipe

    provenance = int8_metadata.provenance
    assert {key: provenance[key] for key in PROVENANCE} == PROVENANCE
    quantization = provenance["quantization"]
    assert quantization["format"] == "QDQ"
    assert quantization["per_channel"] is True
    assert quantization["calibration_images"] == 200
    assert quantization["calibration_source"] == str(MNIST_DIR)
    assert quantization["float_model"] == "float.onnx"
    assert len(quantization["float_model_sha256"]) == 64
    assert quantization["onnxruntime_version"] == ort.__version__
    assert quantization["top1_agreement_with_float"] >= 0.95


def test_calibration_reads_training_split(float_model: Path, tmp_path: Path) -> None:
    result = quantize_model(float_model, tmp_path / "int8.onnx", MNIST_DIR, num_images=20, check_images=0)
    assert result.calibration_images == 20
    assert result.check_images == 0
    assert result.top1_agreement is None
    assert result.provenance["calibration_split"] == "train"
    assert "top1_agreement_with_float" not in result.provenance


def test_calibration_on_image_folder(float_model: Path, tmp_path: Path) -> None:
    digits = read_idx(MNIST_DIR / "t10k-images-idx3-ubyte.gz")[:30]
    folder = tmp_path / "digits"
    folder.mkdir()
    for index, digit in enumerate(digits):
        Image.fromarray(digit).save(folder / f"{index:02d}.png")
    result = quantize_model(float_model, tmp_path / "int8.onnx", folder, num_images=20, check_images=10)
    assert result.calibration_images == 20
    assert result.check_images == 10
    assert result.provenance["calibration_split"] is None
    assert result.float_top1 is None  # an unlabelled folder gives agreement only
    assert 0 <= result.top1_agreement <= 1


def test_model_without_metadata_is_rejected(tmp_path: Path) -> None:
    require_mnist()
    bare = make_graph(np.ones((FILTERS, 1, 3, 3), np.float32), None, None)
    path = tmp_path / "bare.onnx"
    onnx.save(bare, str(path))
    with pytest.raises(InputError, match="no inkbench metadata"):
        quantize_model(path, tmp_path / "out.onnx", MNIST_DIR)


def test_cli_writes_model_and_summary(float_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.int8.onnx"
    arguments = [str(float_model), str(out), "--calibration", str(MNIST_DIR), "--num-images", "50", "--check-images", "50"]
    assert main(arguments) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["written"] == str(out)
    assert summary["calibration_images"] == 50
    assert out.is_file()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--calibration", "/nonexistent-data"], "no such file or folder"),
        (["--calibration", str(MNIST_DIR), "--num-images", "0"], "calibration image count 0 is invalid"),
    ],
)
def test_cli_bad_input_exits_2(
    float_model: Path, tmp_path: Path, arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(float_model), str(tmp_path / "out.onnx"), *arguments]) == 2
    error_lines = capsys.readouterr().err.strip().splitlines()
    assert len(error_lines) == 1
    assert error_lines[0].startswith("error: ")
    assert message in error_lines[0]

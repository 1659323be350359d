"""Tests of ``--benchmark --torch``: a tiny InkNet checkpoint beside its ONNX export."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from evaluate.cli import main
from evaluate.metadata import ModelMetadata
from evaluate.preprocessing import MNIST_RECIPE, SCAN_RECIPE, Recipe

torch = pytest.importorskip("torch")
models = pytest.importorskip("train.models")
write_onnx_graph = pytest.importorskip("export.onnx_export").write_onnx_graph

TINY_RUN = ["--warmup", "2", "--runs", "5", "--batch-sizes", "1,4", "--throughput-images", "8", "--provider", "cpu"]
CLASS_NAMES = [str(digit) for digit in range(10)]


def save_checkpoint(path: Path, recipe: Recipe) -> "torch.nn.Module":
    """Save a small untrained InkNet in the layout train.checkpoints reads; return the model."""
    torch.manual_seed(0)
    config = models.ModelConfig(num_classes=10, input_size=recipe.size, widths=(4, 8), pooled_stages=2, head_grid=recipe.size // 4)
    model = models.build_model(config).eval()
    state = {
        "model": model.state_dict(),
        "model_config": config.to_dict(),
        "class_names": CLASS_NAMES,
        "recipe": recipe.to_json(),
    }
    torch.save(state, path)
    return model


def export_onnx(model: "torch.nn.Module", path: Path) -> Path:
    write_onnx_graph(model.eval(), 28, path)
    proto = onnx.load(str(path))
    for key, value in ModelMetadata(CLASS_NAMES, MNIST_RECIPE).to_props().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    return path


@pytest.fixture
def checkpoint_and_model(tmp_path: Path) -> tuple[Path, Path]:
    checkpoint = tmp_path / "tiny.pt"
    model = save_checkpoint(checkpoint, MNIST_RECIPE)
    return checkpoint, export_onnx(model, tmp_path / "tiny.onnx")


def test_torch_side_measured_on_same_inputs(checkpoint_and_model: tuple[Path, Path], tmp_path: Path) -> None:
    checkpoint, onnx_path = checkpoint_and_model
    report_path = tmp_path / "bench.json"
    arguments = ["--benchmark", "--model", str(onnx_path), "--torch", str(checkpoint), *TINY_RUN]
    assert main([*arguments, "--json", str(report_path), "--h5", str(tmp_path / "bench.h5")]) == 0
    benchmark = json.loads(report_path.read_text(encoding="utf-8"))["benchmark"]

    torch_record = benchmark["torch"]
    assert torch_record["model"] == str(checkpoint)
    assert torch_record["intra_op_threads"] == benchmark["onnxruntime"]["intra_op_threads"]
    assert torch_record["batch1_runs"] == 5
    assert torch_record["batch1_p50_ms"] <= torch_record["batch1_p99_ms"] <= torch_record["batch1_max_ms"]
    assert [entry["batch_size"] for entry in torch_record["throughput"]] == [1, 4]
    assert benchmark["environment"]["torch_version"] == torch.__version__

    ratio = benchmark["ratio"]
    expected_p50 = torch_record["batch1_p50_ms"] / benchmark["onnxruntime"]["batch1_p50_ms"]
    assert ratio["batch1_p50"] == pytest.approx(expected_p50)
    assert set(ratio["throughput"]) == {"1", "4"}
    assert all(value > 0 for value in ratio["throughput"].values())

    agreement = benchmark["torch_agreement"]
    assert agreement["samples"] == 64
    assert agreement["max_abs_logit_difference"] < 1e-4
    assert agreement["top1_agreement"] == 1.0


def test_torch_logits_differ_for_other_weights(checkpoint_and_model: tuple[Path, Path], tmp_path: Path) -> None:
    checkpoint, _ = checkpoint_and_model
    torch.manual_seed(1)
    other = models.build_model(
        models.ModelConfig(num_classes=10, input_size=28, widths=(4, 8), pooled_stages=2, head_grid=7)
    ).eval()
    # Re-initialise so the ONNX model differs from the checkpoint in every weight.
    for parameter in other.parameters():
        torch.nn.init.normal_(parameter)
    other_onnx = export_onnx(other, tmp_path / "other.onnx")
    report_path = tmp_path / "bench.json"
    arguments = ["--benchmark", "--model", str(other_onnx), "--torch", str(checkpoint), *TINY_RUN]
    assert main([*arguments, "--json", str(report_path)]) == 0
    agreement = json.loads(report_path.read_text(encoding="utf-8"))["benchmark"]["torch_agreement"]
    assert agreement["max_abs_logit_difference"] > 1e-3


def test_checkpoint_of_other_input_size_exits_2(
    checkpoint_and_model: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, onnx_path = checkpoint_and_model
    scan_checkpoint = tmp_path / "scan.pt"
    save_checkpoint(scan_checkpoint, SCAN_RECIPE)
    assert main(["--benchmark", "--model", str(onnx_path), "--torch", str(scan_checkpoint), *TINY_RUN]) == 2
    error_lines = capsys.readouterr().err.strip().splitlines()
    assert len(error_lines) == 1
    assert "checkpoint takes 64x64 inputs but the ONNX model takes 28x28" in error_lines[0]


def test_missing_checkpoint_exits_2(checkpoint_and_model: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, onnx_path = checkpoint_and_model
    missing = tmp_path / "absent.pt"
    assert main(["--benchmark", "--model", str(onnx_path), "--torch", str(missing), *TINY_RUN]) == 2
    error_lines = capsys.readouterr().err.strip().splitlines()
    assert len(error_lines) == 1
    assert "checkpoint not found" in error_lines[0]
    assert error_lines[0].startswith("error: ")

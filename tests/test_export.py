"""Tests of export.onnx_export and ``python -m export`` on conftest's one-epoch task1 run.

The exported model is checked against PyTorch with onnxruntime, read back for its
metadata, and graded by the evaluator, whose predictions must be PyTorch's.
"""

from __future__ import annotations

import json
import zipfile

import h5py
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from evaluate.cli import main as evaluate_main
from evaluate.datasets import CHARS74K_CLASSES, source_digest
from evaluate.metadata import ModelMetadata
from evaluate.preprocessing import SCAN_RECIPE, normalize
from export.__main__ import main as export_main
from export.onnx_export import PARITY_TOLERANCE, ExportResult, export_checkpoint, write_model_card, write_slim_checkpoint
from train.cache import load_canvases
from train.checkpoints import load_checkpoint, load_model_from_checkpoint

PARITY_BATCHES = (1, 7, 64)
# The evaluator grades every 9th scan of task1_zip, 21 of them.
GRADED_EVERY = 9


@pytest.fixture(autouse=True)
def shared_cache(scan_cache, monkeypatch):
    monkeypatch.setenv("INKBENCH_CACHE", str(scan_cache))


@pytest.fixture(scope="module")
def exported(task1_run, tmp_path_factory) -> ExportResult:
    return export_checkpoint(task1_run / "best.pt", tmp_path_factory.mktemp("export") / "task1.onnx")


@pytest.fixture(scope="module")
def scan_canvases(task1_zip, scan_cache):
    """The task1 subset's canvases as training saw them, read from the session's cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("INKBENCH_CACHE", str(scan_cache))
        return load_canvases(task1_zip, SCAN_RECIPE, workers=1)


def torch_logits(checkpoint, inputs: np.ndarray) -> np.ndarray:
    model, _, _ = load_model_from_checkpoint(checkpoint)
    with torch.inference_mode():
        return model(torch.from_numpy(inputs)).numpy()


def assert_one_line_error(code: int, stderr: str, *fragments: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error:")
    for fragment in fragments:
        assert fragment in lines[0]


# Parity and the dynamic batch axis.


def test_export_parity_on_real_images(exported):
    assert set(exported.max_abs_diff) == set(PARITY_BATCHES)
    assert max(exported.max_abs_diff.values()) < PARITY_TOLERANCE
    assert exported.parity_source.startswith("64 images of")


@pytest.mark.parametrize("batch", PARITY_BATCHES)
def test_export_batch_axis_is_dynamic(exported, task1_run, scan_canvases, batch):
    inputs = normalize(scan_canvases.canvases[:batch], SCAN_RECIPE)
    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])

    logits = session.run(None, {"input": inputs})[0]

    assert logits.shape == (batch, 62)
    np.testing.assert_allclose(logits, torch_logits(task1_run / "best.pt", inputs), rtol=0, atol=1e-4)


def test_export_graph_declares_symbolic_batch(exported):
    model = onnx.load(str(exported.path))
    (graph_input,) = model.graph.input
    dims = graph_input.type.tensor_type.shape.dim

    assert graph_input.name == "input"
    assert dims[0].dim_param == "batch"
    assert [d.dim_value for d in dims[1:]] == [1, 64, 64]


def test_export_passes_onnx_checker(exported):
    onnx.checker.check_model(onnx.load(str(exported.path)), full_check=True)


# Metadata.


def test_export_metadata_props(exported, task1_zip):
    props = {entry.key: entry.value for entry in onnx.load(str(exported.path)).metadata_props}
    metadata = ModelMetadata.from_props(props)
    provenance = metadata.provenance

    assert metadata.class_names == list(CHARS74K_CLASSES)
    assert metadata.recipe == SCAN_RECIPE
    assert provenance["task"] == "task1"
    assert provenance["seed"] == 0
    assert provenance["epochs"] == 1
    assert provenance["training_data_sha256"] == source_digest(task1_zip)
    assert provenance["torch_version"] == torch.__version__
    assert np.array(provenance["val_confusion"]).sum() == 62


def test_model_card_describes_model(exported, task1_run, task1_zip):
    card = json.loads(write_model_card(task1_run / "best.pt", exported).read_text())

    assert card["model"] == exported.path.name
    assert card["classes"] == list(CHARS74K_CLASSES)
    assert card["input"] == [1, 64, 64]
    assert card["val_images"] == 62
    assert card["epochs"] == 1
    assert card["epochs_planned"] == 1
    assert card["training_data"] == str(task1_zip.resolve())
    assert card["parity_max_abs_diff"] == max(exported.max_abs_diff.values())


def test_slim_checkpoint_drops_optimizer(task1_run, tmp_path):
    write_slim_checkpoint(task1_run / "best.pt", tmp_path / "slim.pt")
    slim = load_checkpoint(tmp_path / "slim.pt")
    full = load_checkpoint(task1_run / "best.pt")

    assert "optimizer" not in slim
    assert "scheduler" not in slim
    assert all(torch.equal(slim["model"][key], full["model"][key]) for key in full["model"])


# Command line errors.


def test_export_cli_rejects_text_file(tmp_path, capsys):
    bad = tmp_path / "notes.pt"
    bad.write_text("not a checkpoint\n")

    code = export_main([str(bad), str(tmp_path / "out.onnx")])

    assert_one_line_error(code, capsys.readouterr().err, str(bad), "not a readable checkpoint")
    assert not (tmp_path / "out.onnx").exists()


def test_export_cli_rejects_foreign_checkpoint(tmp_path, capsys):
    foreign = tmp_path / "weights.pt"
    torch.save({"state_dict": {"weight": torch.zeros(2)}}, foreign)

    code = export_main([str(foreign), str(tmp_path / "out.onnx")])

    assert_one_line_error(code, capsys.readouterr().err, str(foreign), "not an inkbench checkpoint")


def test_export_cli_rejects_pickled_objects(tmp_path, capsys):
    pickled = tmp_path / "numpy.pt"
    torch.save({"model": np.zeros(3), "model_config": {}}, pickled)

    code = export_main([str(pickled), str(tmp_path / "out.onnx")])

    assert_one_line_error(code, capsys.readouterr().err, str(pickled))


def test_export_cli_rejects_truncated_checkpoint(task1_run, tmp_path, capsys):
    truncated = tmp_path / "best.pt"
    truncated.write_bytes((task1_run / "best.pt").read_bytes()[:4096])

    code = export_main([str(truncated), str(tmp_path / "out.onnx")])

    assert_one_line_error(code, capsys.readouterr().err, str(truncated), "not a readable checkpoint")


def test_export_cli_missing_checkpoint(tmp_path, capsys):
    code = export_main([str(tmp_path / "absent.pt"), str(tmp_path / "out.onnx")])

    assert_one_line_error(code, capsys.readouterr().err, "checkpoint not found")


# The evaluator grades the exported model as PyTorch predicts.


def test_evaluator_agrees_with_pytorch(exported, task1_run, task1_zip, scan_canvases, tmp_path, capsys):
    graded_zip = tmp_path / "graded.zip"
    with zipfile.ZipFile(task1_zip) as source, zipfile.ZipFile(graded_zip, "w") as target:
        members = sorted(source.namelist())[::GRADED_EVERY]
        for member in members:
            target.writestr(member, source.read(member))
    report_path, arrays_path = tmp_path / "report.json", tmp_path / "arrays.h5"

    code = evaluate_main(
        ["--model", str(exported.path), str(graded_zip), "--json", str(report_path), "--h5", str(arrays_path), "--workers", "1", "--threads", "1"]
    )
    report = json.loads(report_path.read_text())
    with h5py.File(arrays_path) as arrays:
        paths = [p.decode() for p in arrays["paths"][()]]
        graded_logits = arrays["logits"][()]
        graded = arrays["predictions"][()]
    # PyTorch runs on the canvases training cached, in the evaluator's sample order.
    by_member = {member: i for i, member in enumerate(scan_canvases.members)}
    order = [by_member[path.removeprefix(f"{graded_zip}/")] for path in paths]
    expected_logits = torch_logits(task1_run / "best.pt", normalize(scan_canvases.canvases[order], SCAN_RECIPE))
    expected = expected_logits.argmax(axis=1)
    labels = scan_canvases.labels[order]

    assert code == 0, capsys.readouterr().err
    assert report["samples"] == len(members)
    np.testing.assert_allclose(graded_logits, expected_logits, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(graded, expected)
    assert report["top1"] == pytest.approx(float((expected == labels).mean()))

"""End-to-end tests of ``python -m evaluate`` on subsets of the real data sets.

The CLI runs in-process through ``main(argv)``; only the import check starts Python.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from evaluate.cli import main
from evaluate.datasets import DIGIT_CLASSES, find_idx_files, read_idx
from evaluate.metadata import ModelMetadata
from evaluate.preprocessing import MNIST_RECIPE, SCAN_RECIPE, normalize

REPO = Path(__file__).resolve().parents[1]


@dataclass
class CliRun:
    code: int
    out: str
    err: str


def run_cli(capsys: pytest.CaptureFixture, *argv: object) -> CliRun:
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return CliRun(code, captured.out, captured.err)


def grade_json(capsys: pytest.CaptureFixture, tmp_path: Path, *argv: object) -> dict:
    report_path = tmp_path / "report.json"
    run = run_cli(capsys, *argv, "--json", report_path)
    assert run.code == 0, run.err
    return json.loads(report_path.read_text())


def assert_input_error(run: CliRun, *fragments: str) -> str:
    """Check a run failed with exit status 2 and one plain error line; return that line."""
    assert run.code == 2, run.err
    assert "Traceback" not in run.err
    errors = [line for line in run.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, run.err
    for fragment in fragments:
        assert fragment in errors[0]
    return errors[0]


def copy_folder(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


# Labelled data: zip, folder, MNIST IDX.


def test_zip_matches_reference_model(digit_scans, tmp_path, capsys):
    report = grade_json(capsys, tmp_path, "--model", digit_scans.model, digit_scans.zip_path, "--workers", 2)
    expected = digit_scans.expected_predictions()
    expected_top1 = float((expected == digit_scans.labels).mean())

    assert report["samples"] == len(digit_scans.members)
    assert report["skipped"]["count"] == 0
    assert report["top1"] == pytest.approx(expected_top1)
    assert report["top1"] > 0.3  # chance is 0.1 for 10 classes
    assert report["top5"] >= report["top1"]
    assert report["case_insensitive_top1"] == pytest.approx(report["top1"])  # digits have no case
    assert report["provider"] == "CPUExecutionProvider"
    assert report["data"]["kind"] == "zip"


def test_zip_per_class_and_confusion(digit_scans, tmp_path, capsys):
    report = grade_json(capsys, tmp_path, "--model", digit_scans.model, digit_scans.zip_path)
    expected = digit_scans.expected_predictions()
    confusion = np.array(report["confusion"])

    assert confusion.shape == (10, 10)
    assert confusion.sum() == len(digit_scans.members)
    for label, predicted in zip(digit_scans.labels, expected):
        confusion[label, predicted] -= 1
    assert not confusion.any()
    supports = [row["support"] for row in report["per_class"]]
    assert supports == [3] * 10
    for row in report["per_class"]:
        assert row["recall"] == pytest.approx(row["correct"] / 3)


def test_folder_predictions_match_zip(digit_scans, tmp_path, capsys):
    csv_path = tmp_path / "folder.csv"
    report = grade_json(
        capsys, tmp_path, "--model", digit_scans.model, digit_scans.folder, "--workers", 1, "--predictions", csv_path
    )
    rows = list(csv.DictReader(csv_path.open()))
    expected = [DIGIT_CLASSES[i] for i in digit_scans.expected_predictions()]

    assert report["data"]["kind"] == "folder"
    assert [row["label"] for row in rows] == expected
    assert [row["true_label"] for row in rows] == [DIGIT_CLASSES[i] for i in digit_scans.labels]
    assert all(Path(row["path"]).is_file() for row in rows)


def test_mnist_idx_grades_test_split(mnist_model, mnist_dir, tmp_path, capsys):
    report = grade_json(capsys, tmp_path, "--model", mnist_model.path, mnist_dir)
    images_path, labels_path = find_idx_files(mnist_dir, "test")
    images, labels = read_idx(images_path), read_idx(labels_path)
    logits = normalize(images, MNIST_RECIPE).reshape(len(images), -1) @ mnist_model.weights + mnist_model.bias

    assert report["data"]["kind"] == "idx"
    assert report["samples"] == 10000
    assert report["top1"] == pytest.approx(float((logits.argmax(axis=1) == labels).mean()), abs=1e-4)
    assert report["top1"] > 0.7  # nearest class mean on MNIST reaches about 0.8


def test_summary_shows_metrics_and_tables(digit_scans, capsys):
    run = run_cli(capsys, "--model", digit_scans.model, digit_scans.zip_path, "--rows", 4, "--pairs", 3)

    assert run.code == 0, run.err
    for label in ("Top-1", "Top-5", "case-insensitive", "CPUExecutionProvider", "images/s", "inference"):
        assert label in run.out
    assert "Per-class scores, worst F1 first" in run.out
    assert "... and 6 more classes" in run.out
    assert "Most-confused pairs" in run.out
    assert "CPUExecutionProvider" in run.err  # the start line names the provider too


# Unlabelled data.


def _unlabelled_folder(digit_scans, folder: Path) -> Path:
    folder.mkdir()
    for member in digit_scans.members[::3]:
        shutil.copy(digit_scans.folder.parent / member, folder / Path(member).name)
    return folder


def test_unlabelled_folder_writes_default_csv(digit_scans, tmp_path, capsys, monkeypatch):
    folder = _unlabelled_folder(digit_scans, tmp_path / "scans")
    monkeypatch.chdir(tmp_path)
    run = run_cli(capsys, "--model", digit_scans.model, folder)
    csv_path = tmp_path / "scans-predictions.csv"
    rows = list(csv.DictReader(csv_path.open()))

    assert run.code == 0, run.err
    assert "scans-predictions.csv" in run.out
    assert len(rows) == 10
    assert list(rows[0]) == ["path", "label", "confidence"]
    assert {Path(row["path"]).name for row in rows} == {p.name for p in folder.iterdir()}
    assert all(row["label"] in DIGIT_CLASSES for row in rows)
    assert all(0.0 < float(row["confidence"]) <= 1.0 for row in rows)


def test_unlabelled_reports_have_no_labels(digit_scans, tmp_path, capsys):
    folder = _unlabelled_folder(digit_scans, tmp_path / "scans")
    csv_path = tmp_path / "out.csv"
    h5_path = tmp_path / "out.h5"
    report = grade_json(
        capsys, tmp_path, "--model", digit_scans.model, folder, "--predictions", csv_path, "--h5", h5_path
    )
    with h5py.File(h5_path) as h5:
        labels = h5["labels"][:]

    assert csv_path.is_file()
    assert report["data"]["labelled"] is False
    assert report["top1"] is None
    assert report["confusion"] is None
    assert report["per_class"] == []
    assert report["predictions_csv"] == str(csv_path)
    assert len(labels) == 10
    assert (labels == -1).all()


# Report files.

REQUIRED_KEYS = {
    "schema_version",
    "model",
    "model_metadata",
    "preprocessing",
    "data",
    "class_names",
    "samples",
    "skipped",
    "top1",
    "top5",
    "case_insensitive_top1",
    "provider",
    "timing",
    "per_class",
    "confusion",
    "most_confused",
}


def test_json_report_keys(digit_scans, tmp_path, capsys):
    report = grade_json(capsys, tmp_path, "--model", digit_scans.model, digit_scans.zip_path)

    assert REQUIRED_KEYS <= set(report)
    assert report["class_names"] == list(DIGIT_CLASSES)
    assert report["model_metadata"]["provenance"] == {"task": "test digits"}
    assert report["preprocessing"]["recipe"]["size"] == SCAN_RECIPE.size
    assert set(report["timing"]) >= {"wall_seconds", "decode_wait_seconds", "inference_seconds", "images_per_second"}
    assert set(report["per_class"][0]) == {"class", "support", "predicted", "correct", "precision", "recall", "f1"}
    assert not list(tmp_path.glob(".report.json.*"))  # the temporary file was renamed


def test_schema_doc_lists_every_key(digit_scans, tmp_path, capsys):
    report = grade_json(capsys, tmp_path, "--model", digit_scans.model, digit_scans.zip_path)
    schema = (REPO / "docs" / "report-schema.md").read_text()

    for key in report:
        assert f"`{key}`" in schema


def test_h5_contents(digit_scans, tmp_path, capsys):
    h5_path = tmp_path / "out.h5"
    run = run_cli(capsys, "--model", digit_scans.model, digit_scans.zip_path, "--h5", h5_path)

    assert run.code == 0, run.err
    with h5py.File(h5_path) as h5:
        logits = h5["logits"][:]
        assert logits.shape == (30, 10)
        np.testing.assert_array_equal(h5["predictions"][:], logits.argmax(axis=1))
        np.testing.assert_array_equal(h5["labels"][:], digit_scans.labels)
        np.testing.assert_array_equal(h5["predictions"][:], digit_scans.expected_predictions())
        paths = [p.decode() for p in h5["paths"][:]]
        assert paths == [f"{digit_scans.zip_path}/{member}" for member in digit_scans.members]
        assert [c.decode() for c in h5["class_names"][:]] == list(DIGIT_CLASSES)
        assert h5.attrs["provider"] == "CPUExecutionProvider"


# Models from elsewhere and model shapes.


def test_flags_replace_missing_metadata(digit_scans, make_model, tmp_path, capsys):
    size = SCAN_RECIPE.size
    bare = make_model(tmp_path / "bare.onnx", digit_scans.weights, digit_scans.bias, ["N", 1, size, size])
    report = grade_json(
        capsys,
        tmp_path,
        "--model",
        bare,
        digit_scans.zip_path,
        "--classes",
        "0123456789",
        "--layout",
        "canvas",
        "--mean",
        SCAN_RECIPE.mean,
        "--std",
        SCAN_RECIPE.std,
    )
    expected = digit_scans.expected_predictions()

    assert report["model_metadata"] is None
    assert report["preprocessing"]["source"] == "flags"
    assert report["preprocessing"]["recipe"]["size"] == size  # taken from the input shape
    assert report["top1"] == pytest.approx(float((expected == digit_scans.labels).mean()))


def test_fixed_batch_model_pads_last_batch(digit_scans, make_model, tmp_path, capsys):
    size = SCAN_RECIPE.size
    metadata = ModelMetadata(list(DIGIT_CLASSES), SCAN_RECIPE)
    fixed = make_model(tmp_path / "fixed.onnx", digit_scans.weights, digit_scans.bias, [4, 1, size, size], metadata, [4, 10])
    report = grade_json(capsys, tmp_path, "--model", fixed, digit_scans.zip_path, "--batch-size", 7)
    expected = digit_scans.expected_predictions()

    assert report["samples"] == 30  # 30 is not a multiple of 4 or 7
    assert report["top1"] == pytest.approx(float((expected == digit_scans.labels).mean()))


# Images of every mode.

MODES = ("RGB", "RGBA", "P", "L", "LA", "I;16")


def _convert(image: Image.Image, mode: str) -> Image.Image:
    if mode == "I;16":
        return Image.fromarray((np.asarray(image.convert("L"), dtype=np.uint16) * 257).astype(np.uint16))
    return image.convert(mode)


def test_image_modes_grade_alike(digit_scans, tmp_path, capsys):
    members = digit_scans.members[::6]
    for mode in MODES:
        for member in members:
            target = tmp_path / "modes" / mode.replace(";", "_") / member
            target.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(digit_scans.folder.parent / member) as image:
                converted = _convert(image, mode)
            assert converted.mode == mode
            converted.save(target)

    predictions = {}
    for mode in MODES:
        folder = tmp_path / "modes" / mode.replace(";", "_") / "train"
        h5_path = tmp_path / f"{mode.replace(';', '_')}.h5"
        run = run_cli(capsys, "--model", digit_scans.model, folder, "--h5", h5_path, "--strict", "--workers", 1)
        assert run.code == 0, f"{mode}: {run.err}"
        with h5py.File(h5_path) as h5:
            predictions[mode] = h5["predictions"][:]

    for mode in MODES:
        assert len(predictions[mode]) == len(members), mode
        np.testing.assert_array_equal(predictions[mode], predictions["RGB"], err_msg=mode)


# Corrupt files.


def _folder_with_corrupt_files(digit_scans, tmp_path: Path) -> tuple[Path, list[Path]]:
    folder = copy_folder(digit_scans.folder, tmp_path / "data")
    not_image = folder / "Sample001" / "notes.png"
    not_image.write_text("this is a text file with an image suffix\n")
    truncated = folder / "Sample002" / "truncated.png"
    whole = (digit_scans.folder.parent / digit_scans.members[0]).read_bytes()
    truncated.write_bytes(whole[: len(whole) // 2])
    return folder, [not_image, truncated]


def test_corrupt_images_skipped_and_counted(digit_scans, tmp_path, capsys):
    folder, bad = _folder_with_corrupt_files(digit_scans, tmp_path)
    report_path = tmp_path / "report.json"
    run = run_cli(capsys, "--model", digit_scans.model, folder, "--json", report_path)
    report = json.loads(report_path.read_text())

    assert run.code == 0, run.err
    assert report["samples"] == 30
    assert report["skipped"]["count"] == 2
    assert {entry["path"] for entry in report["skipped"]["files"]} == {str(path) for path in bad}
    for path in bad:
        assert path.name in run.err  # each skip is logged as a warning
    assert "2 skipped" in run.out


def test_strict_rejects_corrupt_image(digit_scans, tmp_path, capsys):
    folder, bad = _folder_with_corrupt_files(digit_scans, tmp_path)
    run = run_cli(capsys, "--model", digit_scans.model, folder, "--strict")

    line = assert_input_error(run, "--strict")
    assert any(str(path) in line for path in bad)


def test_only_corrupt_images_is_error(digit_scans, tmp_path, capsys):
    folder = tmp_path / "broken" / "Sample001"
    folder.mkdir(parents=True)
    (folder / "a.png").write_bytes(b"not a png")
    run = run_cli(capsys, "--model", digit_scans.model, tmp_path / "broken")

    assert_input_error(run, str(tmp_path / "broken"), "could be decoded")


# Bad input: each must end with exit status 2 and one error line naming the file.


def test_missing_model(digit_scans, tmp_path, capsys):
    run = run_cli(capsys, "--model", tmp_path / "absent.onnx", digit_scans.zip_path)
    assert_input_error(run, "absent.onnx", "not found")
    assert run.err.count("\n") == 1


def test_torch_without_benchmark_rejected(digit_scans, capsys):
    run = run_cli(capsys, "--model", digit_scans.model, digit_scans.zip_path, "--torch", "model.pt")
    assert_input_error(run, "--torch", "--benchmark")
    assert "accuracy" not in run.out


def test_closed_stdout_keeps_json(digit_scans, tmp_path, capsys, monkeypatch):
    import evaluate.console

    def reader_left(*args, **kwargs):
        raise BrokenPipeError

    monkeypatch.setattr(evaluate.console, "print_summary", reader_left)
    run = run_cli(capsys, "--model", digit_scans.model, digit_scans.zip_path, "--json", tmp_path / "r.json")

    assert run.code == 1
    assert json.loads((tmp_path / "r.json").read_text())["samples"] > 0


def test_non_onnx_model(digit_scans, tmp_path, capsys):
    fake = tmp_path / "fake.onnx"
    fake.write_text("not a protobuf")
    run = run_cli(capsys, "--model", fake, digit_scans.zip_path)
    assert_input_error(run, "fake.onnx", "not a loadable ONNX model")
    assert run.err.count("\n") == 1


def test_model_input_shape_mismatch(digit_scans, make_model, tmp_path, capsys):
    # Metadata promises 64-pixel canvases but the graph takes 28x28 inputs.
    weights, bias = np.zeros((28 * 28, 10)), np.zeros(10)
    metadata = ModelMetadata(list(DIGIT_CLASSES), SCAN_RECIPE)
    model = make_model(tmp_path / "shape.onnx", weights, bias, ["N", 1, 28, 28], metadata)
    run = run_cli(capsys, "--model", model, digit_scans.zip_path)
    assert_input_error(run, "shape.onnx", "input height is 28 pixels", "--input-size 28")


def test_model_class_count_mismatch(digit_scans, make_model, tmp_path, capsys):
    size = SCAN_RECIPE.size
    weights, bias = np.zeros((size * size, 62)), np.zeros(62)
    metadata = ModelMetadata(list(DIGIT_CLASSES), SCAN_RECIPE)
    model = make_model(tmp_path / "classes.onnx", weights, bias, ["N", 1, size, size], metadata)
    run = run_cli(capsys, "--model", model, digit_scans.zip_path)
    assert_input_error(run, "classes.onnx", "outputs 62 logits", "10 class names")


def test_data_classes_unknown_to_model(digit_scans, tmp_path, capsys):
    folder = copy_folder(digit_scans.folder, tmp_path / "data")
    (folder / "Sample001").rename(folder / "Sample011")  # letter A, which a digit model lacks
    run = run_cli(capsys, "--model", digit_scans.model, folder)
    assert_input_error(run, str(folder), "Sample011")


def test_idx_digits_unknown_to_letter_model(mnist_dir, make_model, tmp_path, capsys):
    metadata = ModelMetadata(list("ABCDEFGHIJ"), MNIST_RECIPE)
    model = make_model(tmp_path / "letters.onnx", np.zeros((784, 10)), np.zeros(10), ["N", 1, 28, 28], metadata)
    run = run_cli(capsys, "--model", model, mnist_dir)
    assert_input_error(run, str(mnist_dir), "does not predict")


def test_unknown_class_folder_names(digit_scans, tmp_path, capsys):
    for name in ("cat", "dog"):
        (tmp_path / "pets" / name).mkdir(parents=True)
        shutil.copy(digit_scans.folder.parent / digit_scans.members[0], tmp_path / "pets" / name / "x.png")
    run = run_cli(capsys, "--model", digit_scans.model, tmp_path / "pets")
    assert_input_error(run, str(tmp_path / "pets"), "cat, dog")


def test_empty_folder(digit_scans, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    run = run_cli(capsys, "--model", digit_scans.model, empty)
    assert_input_error(run, str(empty), "contains no images")


def test_missing_data_path(digit_scans, tmp_path, capsys):
    run = run_cli(capsys, "--model", digit_scans.model, tmp_path / "nowhere")
    assert_input_error(run, "nowhere", "no such file or folder")


def test_truncated_zip(digit_scans, tmp_path, capsys):
    data = digit_scans.zip_path.read_bytes()
    truncated = tmp_path / "cut.zip"
    truncated.write_bytes(data[: len(data) // 2])
    run = run_cli(capsys, "--model", digit_scans.model, truncated)
    assert_input_error(run, "cut.zip", "truncated")


def test_zip_with_corrupt_member(digit_scans, tmp_path, capsys):
    damaged = tmp_path / "crc.zip"
    data = bytearray(digit_scans.zip_path.read_bytes())
    with zipfile.ZipFile(digit_scans.zip_path) as archive:
        info = archive.infolist()[0]
    # Flip a byte inside the first member's stored data, after its 30-byte local header.
    offset = info.header_offset + 30 + len(info.filename) + len(info.extra) + 100
    data[offset] ^= 0xFF
    damaged.write_bytes(bytes(data))
    run = run_cli(capsys, "--model", digit_scans.model, damaged)
    assert_input_error(run, "crc.zip", "corrupt")


def test_model_without_metadata_or_flags(digit_scans, make_model, tmp_path, capsys):
    size = SCAN_RECIPE.size
    bare = make_model(tmp_path / "bare.onnx", digit_scans.weights, digit_scans.bias, ["N", 1, size, size])
    run = run_cli(capsys, "--model", bare, digit_scans.zip_path)
    assert_input_error(run, "bare.onnx", "--classes", "--layout", "--mean", "--std")


def test_provider_cuda_without_gpu(digit_scans, capsys):
    run = run_cli(capsys, "--model", digit_scans.model, digit_scans.zip_path, "--provider", "cuda")
    assert_input_error(run, "--provider cuda", "--provider cpu")


def test_output_folder_missing(digit_scans, tmp_path, capsys):
    run = run_cli(capsys, "--model", digit_scans.model, digit_scans.zip_path, "--json", tmp_path / "no" / "r.json")
    assert_input_error(run, "--json", "does not exist")


def test_several_models_rejected(digit_scans, capsys):
    run = run_cli(capsys, "--model", digit_scans.model, "--model", digit_scans.model, digit_scans.zip_path)
    assert_input_error(run, "one --model")


def test_duplicate_class_names_rejected(digit_scans, capsys):
    run = run_cli(capsys, "--model", digit_scans.model, digit_scans.zip_path, "--classes", "0123456789A0")
    assert_input_error(run, "--classes", "0")


def test_benchmark_without_module(digit_scans, capsys, monkeypatch):
    # None in sys.modules makes the import fail as if the module were absent.
    monkeypatch.setitem(sys.modules, "evaluate.benchmark", None)
    run = run_cli(capsys, "--benchmark", "--model", digit_scans.model, digit_scans.zip_path)
    assert_input_error(run, "--benchmark", "evaluate.benchmark")


# Start-up.


def imported_modules(importtime_log: str) -> set[str]:
    """Return the module names in the output of ``python -X importtime``."""
    lines = [line for line in importtime_log.splitlines() if line.startswith("import time:")]
    return {line.rsplit("|", 1)[-1].strip() for line in lines}


def test_help_imports_no_torch():
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "evaluate", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    imported = imported_modules(result.stderr)

    assert "usage:" in result.stdout
    assert "evaluate.cli" in imported  # the import log was captured at all
    assert not {name for name in imported if name.split(".")[0] == "torch"}
    assert "h5py" not in imported


def test_grading_run_imports_no_torch(digit_scans, tmp_path):
    command = [sys.executable, "-X", "importtime", "-m", "evaluate", "--model", digit_scans.model, digit_scans.zip_path]
    result = subprocess.run(
        [*map(str, command), "--json", str(tmp_path / "report.json")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    imported = imported_modules(result.stderr)

    assert result.returncode == 0, result.stderr[-2000:]
    assert "onnxruntime" in imported
    assert not {name for name in imported if name.split(".")[0] == "torch"}

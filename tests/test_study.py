"""Tests of ``python -m train study task2`` on a small MNIST copy.

The study runs both arms over two seeds on 256 images and on 64, with conftest's
one-epoch digits network as the pretrained initialisation, then is run again to check
that finished runs are loaded instead of retrained.
"""

from __future__ import annotations

import gzip
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import train.study
from evaluate.datasets import find_idx_files, read_idx
from evaluate.preprocessing import MNIST_RECIPE
from train.__main__ import main as train_main
from train.checkpoints import load_checkpoint, model_from_state
from train.loop import LabelledArrays, evaluate_arrays

from conftest import MNIST_DIR, idx_bytes, require

TRAIN_IMAGES = 1000
TEST_SIZE = 100
SEEDS = 2
FULL_SIZE = 256
SMALL_SIZE = 64
MIN_STEPS = 6
ARMS = ("pretrained", "scratch")
FINAL_KEYS = {"test_top1", "test_loss", "train_top1", "train_loss", "ece", "per_class_top1"}
PLOTS = ("task2_accuracy.png", "task2_accuracy_first_epoch.png", "task2_loss.png")


@dataclass
class Study:
    digits: Path
    mnist: Path
    runs: Path
    json_path: Path
    report: Path
    results: dict


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INKBENCH_CACHE", str(tmp_path / "cache"))


def small_mnist(folder: Path) -> Path:
    """Write the first TRAIN_IMAGES training and TEST_SIZE test images of MNIST as IDX files."""
    folder.mkdir(parents=True)
    for split, count in (("train", TRAIN_IMAGES), ("test", TEST_SIZE)):
        paths = find_idx_files(require(MNIST_DIR), split)
        if paths is None:
            pytest.skip(f"{MNIST_DIR} holds no MNIST {split} split")
        for path in paths:
            (folder / path.name).write_bytes(gzip.compress(idx_bytes(read_idx(path)[:count])))
    return folder


def study_argv(digits: Path, mnist: Path, root: Path) -> list[str]:
    return [
        "study", "task2",
        "--seeds", str(SEEDS),
        "--epochs", "1",
        "--full-size", str(FULL_SIZE),
        "--sizes", str(SMALL_SIZE),
        "--min-steps", str(MIN_STEPS),
        "--test-size", str(TEST_SIZE),
        "--mnist", str(mnist),
        "--digits", str(digits),
        "--runs-dir", str(root / "runs"),
        "--json", str(root / "study.json"),
        "--report", str(root / "report.md"),
    ]  # fmt: skip


def all_runs(results: dict) -> list[dict]:
    groups = [results["arms"], *results["low_data"].values()]
    return [run for group in groups for arm in ARMS for run in group[arm]["runs"]]


def record_times(runs: Path) -> dict[str, int]:
    return {str(p.relative_to(runs)): p.stat().st_mtime_ns for p in sorted(runs.glob("*/*")) if p.name in ("record.json", "last.pt")}


@pytest.fixture(scope="module")
def study(digits_run, tmp_path_factory) -> Study:
    root = tmp_path_factory.mktemp("study")
    mnist = small_mnist(root / "mnist")
    digits = digits_run / "last.pt"

    code = train_main(study_argv(digits, mnist, root))

    assert code == 0
    return Study(digits, mnist, root / "runs", root / "study.json", root / "report.md", json.loads((root / "study.json").read_text()))


def copy_study(study: Study, target: Path) -> Path:
    """Copy the study's run folders, keeping their modification times."""
    shutil.copytree(study.runs, target / "runs")
    return target


# The study JSON.


def test_study_arms_have_one_run_per_seed(study):
    for arm in ARMS:
        runs = study.results["arms"][arm]["runs"]
        assert [run["seed"] for run in runs] == list(range(SEEDS)), arm
        assert all(run["train_size"] == FULL_SIZE for run in runs), arm


def test_study_low_data_group(study):
    group = study.results["low_data"][str(SMALL_SIZE)]

    for arm in ARMS:
        runs = group[arm]["runs"]
        assert [run["seed"] for run in runs] == list(range(SEEDS)), arm
        assert all(run["train_size"] == SMALL_SIZE for run in runs), arm
        assert all(run["steps"] >= MIN_STEPS for run in runs), arm


def test_study_curves_are_well_formed(study):
    for run in all_runs(study.results):
        curve = run["curve"]
        lengths = {key: len(curve[key]) for key in ("step", "seconds", "top1", "loss")}

        assert len(set(lengths.values())) == 1, lengths
        assert curve["step"][0] == 0
        assert curve["step"][-1] == run["steps"]
        assert curve["step"] == sorted(set(curve["step"]))
        assert curve["seconds"] == sorted(curve["seconds"])
        assert all(0.0 <= value <= 1.0 for value in curve["top1"])
        assert all(value > 0.0 for value in curve["loss"])


def test_study_final_metrics(study):
    for run in all_runs(study.results):
        final = run["final"]

        assert FINAL_KEYS <= final.keys()
        assert 0.0 <= final["ece"] <= 1.0
        assert len(final["per_class_top1"]) == 10
        assert all(0.0 <= value <= 1.0 for value in final["per_class_top1"])
        assert final["test_top1"] == pytest.approx(run["curve"]["top1"][-1])


def test_study_setup_records_options(study):
    setup = study.results["setup"]

    assert setup["seeds"] == SEEDS
    assert setup["sizes"] == [SMALL_SIZE]
    assert setup["test_images"] == TEST_SIZE
    assert setup["min_steps"] == MIN_STEPS
    assert setup["digits_checkpoint"] == str(study.digits)
    assert setup["train_seconds_total"] == pytest.approx(sum(run["train_seconds"] for run in all_runs(study.results)))


def test_study_zero_shot_scores_digits_network(study):
    images = read_idx(study.mnist / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(study.mnist / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    model = model_from_state(load_checkpoint(study.digits))

    expected = evaluate_arrays(model, LabelledArrays(np.array(images), labels), MNIST_RECIPE)

    assert study.results["zero_shot"]["test_top1"] == pytest.approx(expected["top1"])


def test_study_arms_start_from_their_init(study):
    pretrained = load_checkpoint(study.runs / "pretrained_full_seed0" / "last.pt")
    scratch = load_checkpoint(study.runs / "scratch_full_seed0" / "last.pt")

    assert pretrained["init"] == "pretrained"
    assert pretrained["init_checkpoint"] == str(study.digits)
    assert scratch["init"] == "scratch"


# The report.


def test_study_report_links_its_plots(study):
    text = study.report.read_text()

    assert text.startswith("# Task 2")
    assert "## Conclusions" in text
    for plot in PLOTS:
        assert f"](plots/{plot})" in text
        assert (study.report.parent / "plots" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", plot


def test_report_regenerate_command_complete(study):
    text = study.report.read_text()

    assert f"--seeds {SEEDS} --epochs 1 --sizes {SMALL_SIZE} --min-steps {MIN_STEPS}" in text


def test_study_report_rebuilds_from_json(study, tmp_path):
    from train.study_report import main as report_main

    code = report_main([str(study.json_path), "--report", str(tmp_path / "again.md")])

    assert code == 0
    assert (tmp_path / "again.md").read_text() == study.report.read_text()


# Resuming.


def test_study_rerun_loads_finished_runs(study, tmp_path, monkeypatch):
    root = copy_study(study, tmp_path)
    before = record_times(root / "runs")

    def fail(**arm):
        raise AssertionError(f"run {arm['init']} seed {arm['seed']} was trained again")

    monkeypatch.setattr(train.study, "run_mnist_arm", fail)
    code = train_main(study_argv(study.digits, study.mnist, root))
    results = json.loads((root / "study.json").read_text())

    assert code == 0
    assert len(before) == 2 * 2 * SEEDS * len(ARMS)
    assert record_times(root / "runs") == before
    assert results["arms"] == study.results["arms"]
    assert results["low_data"] == study.results["low_data"]


def test_study_rerun_other_epochs_is_error(study, tmp_path, capsys):
    root = copy_study(study, tmp_path)
    before = record_times(root / "runs")
    argv = study_argv(study.digits, study.mnist, root)
    argv[argv.index("--epochs") + 1] = "4"

    code = train_main(argv)

    assert code == 2
    assert "--runs-dir" in capsys.readouterr().err
    assert record_times(root / "runs") == before


def test_study_rerun_finishes_unrecorded_run(study, tmp_path):
    root = copy_study(study, tmp_path)
    run_dir = root / "runs" / "scratch_n64_seed1"
    (run_dir / "record.json").unlink()
    last_before = (run_dir / "last.pt").stat().st_mtime_ns

    code = train_main(study_argv(study.digits, study.mnist, root))
    record = json.loads((run_dir / "record.json").read_text())
    (original,) = [run for run in study.results["low_data"][str(SMALL_SIZE)]["scratch"]["runs"] if run["seed"] == 1]

    assert code == 0
    # last.pt contains the final epoch, so resuming trains nothing and rewrites nothing.
    assert (run_dir / "last.pt").stat().st_mtime_ns == last_before
    assert record["final"] == original["final"]
    assert record["curve"] == original["curve"]


# Holding out a validation split for choosing a recipe.

def test_validation_holds_out_last_images(tmp_path):
    from train.mnist_tasks import train_and_monitor

    mnist = small_mnist(tmp_path / "mnist")
    all_train = read_idx(find_idx_files(mnist, "train")[0])
    train, monitor = train_and_monitor(mnist, 200)
    assert (len(train), len(monitor)) == (TRAIN_IMAGES - 200, 200)
    assert np.array_equal(monitor.canvases, all_train[-200:])
    assert np.array_equal(train.canvases, all_train[:-200])
    train, monitor = train_and_monitor(mnist, 0)
    assert (len(train), len(monitor)) == (TRAIN_IMAGES, TEST_SIZE)


def test_validation_too_large_is_error(tmp_path, capsys):
    mnist = small_mnist(tmp_path / "mnist")
    code = train_main(["task2", "--init", "scratch", "--mnist", str(mnist), "--validation", str(TRAIN_IMAGES), "--out", str(tmp_path / "run")])
    assert code == 2
    assert "--validation" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_validation_negative_is_error(tmp_path, capsys):
    code = train_main(["task2", "--init", "scratch", "--validation", "-5", "--out", str(tmp_path / "run")])

    assert code == 2
    assert "negative" in capsys.readouterr().err


def test_train_size_above_available_is_error(tmp_path, capsys):
    mnist = small_mnist(tmp_path / "mnist")
    argv = ["task2", "--init", "scratch", "--mnist", str(mnist), "--validation", "200", "--train-size", "900"]

    code = train_main(argv + ["--out", str(tmp_path / "run")])

    assert code == 2
    assert "at most 800" in capsys.readouterr().err


def test_conclusion_no_ratio_for_missing_seeds():
    from train.study_report import _conclusion

    rows = [
        {"measure": "final test top-1 (%)", "pretrained": (98.3, 0.1, 3), "scratch": (97.3, 0.6, 3), "p_value": 0.1,
         "pretrained_missing": 0, "scratch_missing": 0},
        {"measure": "steps to 98%", "pretrained": (51.0, 14.0, 3), "scratch": (115.0, 0.0, 1), "p_value": None,
         "pretrained_missing": 0, "scratch_missing": 2},
    ]  # fmt: skip

    text = _conclusion(rows, "1000 images")

    assert "3 of 3 pretrained seeds and 1 of 3 scratch seeds" in text
    assert "x as many" not in text


def test_resume_from_other_digits_network_is_error(digits_run, tmp_path, capsys):
    import torch

    mnist = small_mnist(tmp_path / "mnist")
    other = tmp_path / "other_digits.pt"
    state = load_checkpoint(digits_run / "last.pt")
    state["model"] = {name: value + 0.01 if value.is_floating_point() else value for name, value in state["model"].items()}
    torch.save(state, other)
    argv = ["task2", "--init", "pretrained", "--mnist", str(mnist), "--train-size", "256", "--min-steps", "2", "--epochs", "1"]
    run = tmp_path / "run"
    assert train_main(argv + ["--digits", str(digits_run / "last.pt"), "--out", str(run)]) == 0
    before = (run / "last.pt").stat().st_mtime_ns

    code = train_main(argv + ["--digits", str(other), "--out", str(run), "--resume"])

    assert code == 2
    assert "init_checkpoint_sha256" in capsys.readouterr().err
    assert (run / "last.pt").stat().st_mtime_ns == before

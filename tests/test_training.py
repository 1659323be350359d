"""Tests of the training side: the split, the augmentation and ``python -m train`` runs.

The runs train for one epoch on subsets of trainPart1.zip (conftest's ``task1_zip``,
62 classes x 3 scans, and ``digits_zip``, 10 classes x 4 scans) and share one canvas
cache, so each subset is decoded once per session.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from evaluate.datasets import CHARS74K_CLASSES, DIGIT_CLASSES
from evaluate.preprocessing import MNIST_RECIPE, SCAN_RECIPE, Recipe
from train.augment import AffineRange, random_affine
from train.checkpoints import load_checkpoint, load_model_from_checkpoint
from train.split import stratified_split

from conftest import TASK1_IMAGES_PER_CLASS, train_cli

CHECKPOINT_KEYS = {"model_config", "model", "class_names", "recipe", "optimizer", "scheduler", "epoch", "seed", "history", "split"}
# Training steps an epoch: task1_zip without one validation image a class, in batches of 32.
STEPS_PER_EPOCH = 62 * (TASK1_IMAGES_PER_CLASS - 1) // 32
EPOCH_KEYS = {"epoch", "train_loss", "train_top1", "lr", "val_loss", "val_top1", "seconds"}


@pytest.fixture(autouse=True)
def shared_cache(scan_cache, monkeypatch):
    monkeypatch.setenv("INKBENCH_CACHE", str(scan_cache))


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def assert_one_line_error(code: int, stderr: str, *fragments: str) -> None:
    lines = error_lines(stderr)
    assert code == 2, stderr
    assert "Traceback" not in stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error:")
    for fragment in fragments:
        assert fragment in lines[0]


def weights(run: Path, name: str = "last.pt") -> dict[str, torch.Tensor]:
    return load_checkpoint(run / name)["model"]


def same_weights(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


# Stratified split.


def test_split_holds_out_per_class():
    labels = np.repeat(np.arange(5), [4, 6, 5, 9, 3])

    train, validation = stratified_split(labels, per_class=2, seed=0)

    assert np.bincount(labels[validation]).tolist() == [2, 2, 2, 2, 2]
    assert np.bincount(labels[train]).tolist() == [2, 4, 3, 7, 1]
    assert not set(train) & set(validation)
    assert sorted([*train, *validation]) == list(range(len(labels)))
    assert list(train) == sorted(train)


def test_split_same_seed_same_indices():
    labels = np.repeat(np.arange(10), 8)

    first = stratified_split(labels, 3, seed=4)
    second = stratified_split(labels, 3, seed=4)

    np.testing.assert_array_equal(first[1], second[1])


def test_split_other_seed_other_indices():
    labels = np.repeat(np.arange(10), 8)

    _, first = stratified_split(labels, 3, seed=4)
    _, second = stratified_split(labels, 3, seed=5)

    assert not np.array_equal(first, second)


def test_split_zero_holds_out_nothing():
    labels = np.repeat(np.arange(3), 2)

    train, validation = stratified_split(labels, 0, seed=0)

    assert len(validation) == 0
    assert list(train) == list(range(6))


def test_split_small_class_raises():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2])

    with pytest.raises(ValueError, match="class 1 has 2 samples, too few to hold out 2"):
        stratified_split(labels, 2, seed=0)


# Augmentation.


def test_affine_zero_ranges_is_identity():
    images = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    still = AffineRange(degrees=0.0, scale=(1.0, 1.0), shear_degrees=0.0, translate=0.0)

    warped = random_affine(images, still, torch.Generator().manual_seed(1))

    assert torch.allclose(warped, images, atol=1e-5)


def test_affine_draws_per_sample():
    image = torch.zeros(1, 1, 28, 28)
    image[0, 0, 6:22, 12:16] = 1.0
    batch = image.repeat(6, 1, 1, 1)

    warped = random_affine(batch, AffineRange(), torch.Generator().manual_seed(0))

    for i in range(len(warped)):
        for j in range(i + 1, len(warped)):
            assert not torch.allclose(warped[i], warped[j], atol=1e-3), f"samples {i} and {j} got the same transform"


def test_affine_same_generator_seed_repeats():
    batch = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))

    first = random_affine(batch, AffineRange(), torch.Generator().manual_seed(7))
    second = random_affine(batch, AffineRange(), torch.Generator().manual_seed(7))

    assert torch.equal(first, second)


def test_affine_keeps_background_black():
    image = torch.zeros(2, 1, 28, 28)
    image[:, 0, 10:18, 10:18] = 1.0

    warped = random_affine(image, AffineRange(degrees=30.0, translate=0.2), torch.Generator().manual_seed(0))

    assert warped[:, :, 0, :].abs().max() == 0
    assert warped.sum() > 0


# task1: a one-epoch run on all 62 classes.


def test_task1_writes_checkpoints(task1_run):
    for name in ("last.pt", "best.pt", "history.h5"):
        assert (task1_run / name).is_file(), name


def test_task1_checkpoint_contents(task1_run, task1_zip):
    state = load_checkpoint(task1_run / "last.pt")

    assert CHECKPOINT_KEYS <= state.keys()
    assert state["class_names"] == list(CHARS74K_CLASSES)
    assert Recipe.from_json(state["recipe"]) == SCAN_RECIPE
    assert state["epoch"] == 1
    assert state["seed"] == 0
    assert state["task"] == "task1"
    assert state["model_config"]["num_classes"] == 62
    assert state["data"]["path"] == str(task1_zip.resolve())
    assert state["history"]["epochs"]["epoch"] == [1.0]
    assert state["optimizer"]["state"], "optimizer state is empty after an epoch"


def test_task1_split_has_one_image_per_class(task1_run):
    split = load_checkpoint(task1_run / "last.pt")["split"]
    folders = [member.split("/")[1] for member in split["validation_members"]]

    assert split["seed"] == 0
    assert split["val_per_class"] == 1
    assert sorted(folders) == [f"Sample{n:03d}" for n in range(1, 63)]


def test_task1_history_h5_keys(task1_run):
    with h5py.File(task1_run / "history.h5") as history:
        epochs = {key: history["epochs"][key][()] for key in history["epochs"]}
        seed = history.attrs["seed"]

    assert set(epochs) == EPOCH_KEYS
    assert epochs["epoch"].tolist() == [1.0]
    assert seed == 0
    assert 0.0 <= epochs["val_top1"][0] <= 1.0


def test_task1_best_loads_as_model(task1_run):
    model, recipe, class_names = load_model_from_checkpoint(task1_run / "best.pt")
    logits = model(torch.zeros(2, 1, 64, 64))

    assert not model.training
    assert recipe == SCAN_RECIPE
    assert len(class_names) == 62
    assert logits.shape == (2, 62)


def test_task1_existing_run_needs_resume(task1_run, task1_zip, capsys):
    before = (task1_run / "last.pt").stat().st_mtime_ns

    code = train_cli("task1", task1_zip, task1_run, "--epochs", "1")

    assert_one_line_error(code, capsys.readouterr().err, "last.pt exists", "--resume")
    assert (task1_run / "last.pt").stat().st_mtime_ns == before


def test_task1_resume_adds_an_epoch(task1_run, task1_zip, tmp_path):
    run = shutil.copytree(task1_run, tmp_path / "run")
    first = load_checkpoint(run / "last.pt")["history"]["epochs"]

    code = train_cli("task1", task1_zip, run, "--epochs", "2", "--resume")
    state = load_checkpoint(run / "last.pt")
    epochs = state["history"]["epochs"]

    assert code == 0
    assert state["epoch"] == 2
    assert epochs["epoch"] == [1.0, 2.0]
    assert state["scheduler"]["total_steps"] == 2 * STEPS_PER_EPOCH
    for key, values in first.items():
        assert epochs[key][0] == values[0], f"epoch 1's {key} changed on resume"
    assert not same_weights(weights(task1_run), state["model"])


def test_resume_with_other_seed_is_error(task1_run, task1_zip, tmp_path, capsys):
    run = shutil.copytree(task1_run, tmp_path / "run")
    before = (run / "last.pt").stat().st_mtime_ns

    code = train_cli("task1", task1_zip, run, "--epochs", "2", "--seed", "1", "--resume")

    assert_one_line_error(code, capsys.readouterr().err, "belongs to another run", "seed 0")
    assert (run / "last.pt").stat().st_mtime_ns == before


def test_resume_with_other_split_error_is_short(task1_run, task1_zip, tmp_path, capsys):
    run = shutil.copytree(task1_run, tmp_path / "run")

    code = train_cli("task1", task1_zip, run, "--epochs", "2", "--val-per-class", "0", "--resume")

    stderr = capsys.readouterr().err
    assert_one_line_error(code, stderr, "belongs to another run", "split")
    assert len(error_lines(stderr)[0]) < 500


def test_resume_to_more_epochs_warns(task1_run, task1_zip, tmp_path, caplog):
    run = shutil.copytree(task1_run, tmp_path / "run")

    with caplog.at_level("WARNING", logger="train.loop"):
        code = train_cli("task1", task1_zip, run, "--epochs", "2", "--resume")

    assert code == 0
    assert "re-planned" in caplog.text


def test_resume_without_checkpoint_is_error(task1_zip, tmp_path, capsys):
    code = train_cli("task1", task1_zip, tmp_path / "run", "--epochs", "1", "--resume")

    assert_one_line_error(code, capsys.readouterr().err, "--resume", "not found")
    assert not (tmp_path / "run" / "last.pt").exists()


def test_resume_on_other_data_is_input_error(digits_run, digits_zip, tmp_path, capsys):
    run = shutil.copytree(digits_run, tmp_path / "run")
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(digits_zip) as source, zipfile.ZipFile(other, "w") as target:
        for member in source.namelist()[1:]:
            target.writestr(member, source.read(member))

    code = train_cli("task2-pretrain", other, run, "--epochs", "2", "--batch-size", "8", "--resume")

    assert_one_line_error(code, capsys.readouterr().err, "trained on other data")


def test_task1_too_few_images_is_input_error(task1_zip, tmp_path, capsys):
    per_class = str(TASK1_IMAGES_PER_CLASS)

    code = train_cli("task1", task1_zip, tmp_path / "run", "--epochs", "1", "--val-per-class", per_class)

    assert_one_line_error(code, capsys.readouterr().err, "too few to hold out", "--val-per-class")


def test_cli_error_keeps_brackets_in_path(tmp_path, capsys):
    missing = tmp_path / "[/scans]" / "data.zip"

    code = train_cli("task1", missing, tmp_path / "run", "--epochs", "1")

    assert_one_line_error(code, capsys.readouterr().err, f"{missing}: no such file or folder")


# task2-pretrain: determinism of whole runs, on the digits.


def test_digits_run_uses_mnist_layout(digits_run):
    state = load_checkpoint(digits_run / "last.pt")

    assert state["class_names"] == list(DIGIT_CLASSES)
    assert Recipe.from_json(state["recipe"]) == MNIST_RECIPE
    assert state["model_config"]["input_size"] == 28


def test_digits_same_seed_same_weights(digits_run, digits_zip, tmp_path):
    code = train_cli("task2-pretrain", digits_zip, tmp_path / "again", "--epochs", "1", "--batch-size", "8")

    assert code == 0
    assert same_weights(weights(tmp_path / "again"), weights(digits_run))


def test_digits_other_seed_other_weights(digits_run, digits_zip, tmp_path):
    code = train_cli("task2-pretrain", digits_zip, tmp_path / "seed1", "--epochs", "1", "--batch-size", "8", "--seed", "1")
    state = load_checkpoint(tmp_path / "seed1" / "last.pt")

    assert code == 0
    assert state["seed"] == 1
    assert state["split"]["validation_members"] != load_checkpoint(digits_run / "last.pt")["split"]["validation_members"]
    assert not same_weights(state["model"], weights(digits_run))


def test_export_split_copies_validation_images(digits_run, tmp_path, capsys):
    from train.__main__ import main as train_main

    code = train_main(["export-split", str(digits_run / "last.pt"), str(tmp_path / "val")])
    files = sorted(p.relative_to(tmp_path / "val").as_posix() for p in (tmp_path / "val").rglob("*.png"))
    members = load_checkpoint(digits_run / "last.pt")["split"]["validation_members"]

    assert code == 0, capsys.readouterr().err
    assert len(files) == 10
    # Digit runs name folders by class; the members sit in Chars74K's SampleNNN folders.
    assert [f.split("/")[0] for f in files] == list(DIGIT_CLASSES)
    assert sorted(Path(f).name for f in files) == sorted(Path(m).name for m in members)


def test_resumed_run_matches_uninterrupted(digits_zip, tmp_path, monkeypatch):
    from train.loop import Trainer

    options = ("--epochs", "2", "--batch-size", "8")
    assert train_cli("task2-pretrain", digits_zip, tmp_path / "whole", *options) == 0

    # Interrupt the second epoch as Ctrl-C would, then resume the run.
    original = Trainer._train_epoch

    def interrupt_second_epoch(self, progress):
        if self.epoch == 1:
            raise KeyboardInterrupt
        return original(self, progress)

    monkeypatch.setattr(Trainer, "_train_epoch", interrupt_second_epoch)
    interrupted = train_cli("task2-pretrain", digits_zip, tmp_path / "resumed", *options)
    monkeypatch.setattr(Trainer, "_train_epoch", original)
    resumed = train_cli("task2-pretrain", digits_zip, tmp_path / "resumed", *options, "--resume")

    assert interrupted == 130
    assert resumed == 0
    assert same_weights(weights(tmp_path / "resumed"), weights(tmp_path / "whole"))

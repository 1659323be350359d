"""Tests of task 3: the loss-corrected objectives and ``python -m train task3``.

The losses are checked numerically on small tensors. The command runs on 100 MNIST
training images saved as PNGs in class folders named by a corrupted label, with the
transition matrix given as a diagnosis JSON, so no reference model is needed.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import train.task3
from evaluate.datasets import find_idx_files, read_idx
from evaluate.errors import InputError
from train.__main__ import main as train_main
from train.checkpoints import load_checkpoint
from train.mnist_tasks import run_mnist_arm
from train.task3 import EPSILON, complementary_loss, corrected_loss, forward_corrected_loss, load_transition

from conftest import MNIST_DIR, idx_bytes, require

CLASSES = 10
IMAGES_PER_CLASS = 10
TEST_IMAGES = 100
# The CLI trains at least train.mnist_tasks.MIN_STEPS steps on small sets; tests need only a few.
TEST_MIN_STEPS = 6
# Given label = true label + 1 (mod 10): a permutation of the labels.
SHIFT = 1


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INKBENCH_CACHE", str(tmp_path / "cache"))


def random_logits(rows: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, CLASSES, generator=torch.Generator().manual_seed(seed)) * 3


def shift_matrix() -> np.ndarray:
    """T[true, given] of the label shift: all of class t is given t + SHIFT."""
    matrix = np.zeros((CLASSES, CLASSES))
    matrix[np.arange(CLASSES), (np.arange(CLASSES) + SHIFT) % CLASSES] = 1.0
    return matrix


# Forward correction.


def test_forward_identity_is_cross_entropy():
    logits, labels = random_logits(), torch.tensor([0, 3, 9, 1, 1, 7])

    loss = forward_corrected_loss(np.eye(CLASSES))(logits, labels)

    assert loss.item() == pytest.approx(F.cross_entropy(logits, labels).item(), abs=1e-5)


def test_forward_permutation_undoes_label_shift():
    logits, true = random_logits(), torch.tensor([0, 3, 9, 1, 1, 7])
    given = (true + SHIFT) % CLASSES

    loss = forward_corrected_loss(shift_matrix())(logits, given)

    assert loss.item() == pytest.approx(F.cross_entropy(logits, true).item(), abs=1e-5)


def test_forward_uniform_noise_flattens_loss():
    logits, labels = random_logits(), torch.tensor([0, 3, 9, 1, 1, 7])
    uniform = np.full((CLASSES, CLASSES), 1.0 / CLASSES)

    loss = forward_corrected_loss(uniform)(logits, labels)

    # Labels independent of the image carry no information: every model scores log(K).
    assert loss.item() == pytest.approx(math.log(CLASSES), abs=1e-5)


def test_forward_loss_has_gradient():
    logits = random_logits().requires_grad_()

    forward_corrected_loss(shift_matrix())(logits, torch.tensor([0, 3, 9, 1, 1, 7])).backward()

    assert logits.grad is not None
    assert logits.grad.abs().sum() > 0


# Complementary labels.


def test_complementary_drops_as_mass_leaves_label():
    losses = []
    for given_logit in (4.0, 2.0, 0.0, -2.0, -4.0):
        logits = torch.zeros(1, CLASSES)
        logits[0, 2] = given_logit
        losses.append(complementary_loss(logits, torch.tensor([2])).item())

    assert all(later < earlier for earlier, later in zip(losses, losses[1:])), losses


def test_complementary_gradient_lowers_given_logit():
    logits = random_logits().requires_grad_()
    given = torch.tensor([0, 3, 9, 1, 1, 7])

    complementary_loss(logits, given).backward()
    given_gradient = logits.grad.gather(1, given.unsqueeze(1))

    # Gradient descent subtracts the gradient, so a positive one lowers the given logit.
    assert (given_gradient > 0).all()


def test_complementary_is_shifted_forward_loss():
    logits, given = random_logits(), torch.tensor([0, 3, 9, 1, 1, 7])
    off_diagonal = (1.0 - np.eye(CLASSES)) / (CLASSES - 1)

    forward = forward_corrected_loss(off_diagonal)(logits, given).item()
    complementary = complementary_loss(logits, given).item()

    # -log((1 - p_given) / (K - 1)) = -log(1 - p_given) + log(K - 1)
    assert forward - complementary == pytest.approx(math.log(CLASSES - 1), abs=1e-4)


def test_complementary_confident_label_is_finite():
    logits = torch.zeros(1, CLASSES)
    logits[0, 5] = 100.0

    loss = complementary_loss(logits, torch.tensor([5]))

    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(-math.log(EPSILON), rel=1e-3)


def test_corrected_loss_chooses_by_kind():
    _, complementary_name = corrected_loss("complementary", shift_matrix())
    forward, forward_name = corrected_loss("permutation", shift_matrix())
    logits, given = random_logits(), torch.tensor([1, 4, 0, 2, 2, 8])

    assert complementary_name == "complementary"
    assert forward_name == "forward"
    assert forward(logits, given).item() == pytest.approx(F.cross_entropy(logits, (given - SHIFT) % CLASSES).item(), abs=1e-5)


# Transition JSON.


def test_load_transition_reads_json(tmp_path):
    path = tmp_path / "diagnosis.json"
    path.write_text(json.dumps({"kind": "permutation", "transition_matrix": shift_matrix().tolist()}))

    kind, matrix, source = load_transition(_transition_args(path), console=None)

    assert kind == "permutation"
    np.testing.assert_array_equal(matrix, shift_matrix())
    assert source == {"from": str(path)}


def test_load_transition_missing_key_is_input_error(tmp_path):
    path = tmp_path / "diagnosis.json"
    path.write_text(json.dumps({"kind": "permutation"}))

    with pytest.raises(InputError) as error:
        load_transition(_transition_args(path), console=None)

    assert "\n" not in str(error.value)
    assert "transition_matrix" in str(error.value)


def _transition_args(path: Path) -> argparse.Namespace:
    return argparse.Namespace(transition=str(path))


# The task3 command.


@pytest.fixture(scope="module")
def mnist_parts() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    parts = {}
    for split in ("train", "test"):
        paths = find_idx_files(require(MNIST_DIR), split)
        if paths is None:
            pytest.skip(f"{MNIST_DIR} holds no MNIST {split} split")
        parts[split] = read_idx(paths[0]), read_idx(paths[1])
    return parts


@pytest.fixture(scope="module")
def noisy_set(mnist_parts, tmp_path_factory) -> Path:
    """100 MNIST training images as PNGs, in folders named by their true label + SHIFT."""
    root = tmp_path_factory.mktemp("task3") / "noisy"
    images, labels = mnist_parts["train"]
    for digit in range(CLASSES):
        folder = root / str((digit + SHIFT) % CLASSES)
        folder.mkdir(parents=True)
        for index in np.flatnonzero(labels == digit)[:IMAGES_PER_CLASS]:
            Image.fromarray(images[index]).save(folder / f"image_{index:06d}.png")
    return root


@pytest.fixture(scope="module")
def small_mnist(mnist_parts, tmp_path_factory) -> Path:
    """MNIST IDX files with 10 training and TEST_IMAGES test images, for the monitor."""
    folder = tmp_path_factory.mktemp("task3-mnist")
    names = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"), "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
    for split, count in (("train", 10), ("test", TEST_IMAGES)):
        for name, array in zip(names[split], mnist_parts[split]):
            (folder / name).write_bytes(gzip.compress(idx_bytes(array[:count])))
    return folder


@pytest.fixture
def few_steps(monkeypatch):
    monkeypatch.setattr(train.task3, "run_mnist_arm", functools.partial(run_mnist_arm, min_steps=TEST_MIN_STEPS))


def task3_cli(noisy_set: Path, small_mnist: Path, out: Path, *options: str) -> int:
    argv = ["task3", "--data", str(noisy_set), "--mnist", str(small_mnist), "--out", str(out)]
    return train_main([*argv, "--epochs", "1", "--batch-size", "32", "--workers", "1", *options])


@pytest.mark.parametrize(("kind", "loss_name"), [("permutation", "forward"), ("complementary", "complementary")])
def test_task3_corrected_run_records_correction(noisy_set, small_mnist, tmp_path, few_steps, kind, loss_name):
    transition = tmp_path / "diagnosis.json"
    transition.write_text(json.dumps({"kind": kind, "transition_matrix": shift_matrix().tolist()}))

    code = task3_cli(noisy_set, small_mnist, tmp_path / "run", "--correct", "--transition", str(transition))
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    correction = state["correction"]

    assert code == 0
    assert state["task"] == "task3"
    assert correction["kind"] == kind
    assert correction["loss"] == loss_name
    assert correction["from"] == str(transition)
    np.testing.assert_array_equal(correction["transition_matrix"], shift_matrix())
    assert state["history"]["curve"]["step"][-1] >= TEST_MIN_STEPS


def test_task3_naive_run_differs_from_corrected(noisy_set, small_mnist, tmp_path, few_steps):
    transition = tmp_path / "diagnosis.json"
    transition.write_text(json.dumps({"kind": "permutation", "transition_matrix": shift_matrix().tolist()}))

    naive_code = task3_cli(noisy_set, small_mnist, tmp_path / "naive")
    corrected_code = task3_cli(noisy_set, small_mnist, tmp_path / "corrected", "--correct", "--transition", str(transition))
    naive = load_checkpoint(tmp_path / "naive" / "last.pt")
    corrected = load_checkpoint(tmp_path / "corrected" / "last.pt")

    assert naive_code == 0
    assert corrected_code == 0
    assert naive["correction"] is None
    # Same seed, data order and augmentation: only the loss differs.
    assert not all(torch.equal(naive["model"][key], corrected["model"][key]) for key in naive["model"])


def test_task3_records_data_digest(noisy_set, small_mnist, tmp_path, few_steps):
    code = task3_cli(noisy_set, small_mnist, tmp_path / "run")
    state = load_checkpoint(tmp_path / "run" / "last.pt")

    assert code == 0
    assert state["data"]["path"] == str(noisy_set.resolve())
    assert len(state["data"]["sha256"]) == 64


def test_task3_bad_transition_is_input_error(noisy_set, small_mnist, tmp_path, few_steps, capsys):
    transition = tmp_path / "diagnosis.json"
    transition.write_text("{not json")

    code = task3_cli(noisy_set, small_mnist, tmp_path / "run", "--correct", "--transition", str(transition))
    stderr = capsys.readouterr().err
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]

    assert code == 2
    assert "Traceback" not in stderr
    assert len(lines) == 1
    assert str(transition) in lines[0]
    assert not (tmp_path / "run" / "last.pt").exists()

"""Task 3: training on a digit set with corrupted labels, naively and with loss correction.

``--correct`` estimates the label transition matrix T[true, given] with
``train.diagnose`` (or reads it from a diagnosis JSON) and trains with a loss that
accounts for it, so no clean label is ever used:

- forward correction (Patrini et al. 2017, "Making deep neural networks robust to label
  noise: a loss correction approach"): the model's class probabilities are pushed
  through T, and cross-entropy is taken against the given label;
- for complementary labels (the given label is never the true one), the
  complementary-label loss -log(1 - p_given), which is forward correction with
  T = (1 - I) / (K - 1) up to a constant (Yu et al. 2018, "Learning with Biased
  Complementary Labels").

The MNIST test split is only evaluated, for the convergence curve and the report.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console

from evaluate.errors import InputError
from evaluate.preprocessing import MNIST_RECIPE
from train.cache import load_canvases
from train.checkpoints import load_checkpoint, model_from_state
from train.loop import LabelledArrays, LossFunction, predict_logits
from train.mnist_data import load_mnist
from train.mnist_tasks import BATCH_SIZE, DEFAULT_DIGITS, DEFAULT_MNIST, run_mnist_arm
from train.scan_tasks import select_classes

log = logging.getLogger(__name__)

DEFAULT_DATA = "../shared/data/mnistTask3.zip"
DEFAULT_REFERENCE = "artifacts/task2_digits.onnx"
# Probabilities are clamped away from 0 and 1 before the log, so a confident wrong
# prediction gives a large but finite loss.
EPSILON = 1e-6


def forward_corrected_loss(transition: np.ndarray) -> LossFunction:
    """Return -log((softmax(logits) @ T)[given]), the forward-corrected cross-entropy."""
    matrix = torch.as_tensor(transition, dtype=torch.float32)

    def loss(logits: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
        noisy = torch.softmax(logits, dim=1) @ matrix
        return F.nll_loss(torch.log(noisy.clamp_min(EPSILON)), given)

    return loss


def complementary_loss(logits: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
    """Return mean -log(1 - p_given): push probability away from the label that is known wrong."""
    probability = torch.softmax(logits, dim=1).gather(1, given.unsqueeze(1)).squeeze(1)
    return -torch.log((1.0 - probability).clamp_min(EPSILON)).mean()


def corrected_loss(kind: str, transition: np.ndarray) -> tuple[LossFunction, str]:
    """Choose the loss for a named corruption; return it and its name."""
    if kind == "complementary":
        return complementary_loss, "complementary"
    return forward_corrected_loss(transition), "forward"


def load_transition(args: argparse.Namespace, console: Console) -> tuple[str, np.ndarray, dict[str, Any]]:
    """Return (kind, T, source) from --transition JSON, or from a fresh diagnosis."""
    if args.transition:
        path = Path(args.transition)
        try:
            values = json.loads(path.read_text())
            return values["kind"], np.asarray(values["transition_matrix"], dtype=np.float64), {"from": str(path)}
        except (OSError, ValueError, KeyError) as error:
            raise InputError(f"{path}: not a diagnosis JSON with kind and transition_matrix ({error}); write one with 'python -m train diagnose DATA --json OUT'") from error

    from train.diagnose import DiagnosisOptions, estimate_transition

    # The reference's confusion comes from its own validation scans, never from MNIST
    # labels, so the corrected model is trained without any clean MNIST label.
    result = estimate_transition(args.data, args.reference, DiagnosisOptions(confusion_source="metadata"))
    console.print(f"diagnosis of {args.data}: {result.kind} (confidence {result.confidence:.2f})")
    return result.kind, result.transition_matrix, {"from": "diagnosis", "reference": str(args.reference), "confidence": result.confidence}


def pseudo_labels(model_checkpoint: Path, data: LabelledArrays, kind: str, transition: np.ndarray) -> np.ndarray:
    """Label every training image with the corrected model's most probable class.

    The posterior of the true class given the image and its given label is
    p(class | image) * T[class, given], normalised; for complementary labels that sets
    the given label's probability to zero. No clean label is involved.
    """
    state = load_checkpoint(model_checkpoint)
    probabilities = torch.softmax(predict_logits(model_from_state(state), data.canvases, MNIST_RECIPE), dim=1).numpy()
    if kind == "complementary":
        probabilities[np.arange(len(data)), data.labels] = 0.0
    else:
        probabilities = probabilities * transition[:, data.labels].T
    return probabilities.argmax(axis=1)


def self_train(args: argparse.Namespace, console: Console, corrected_dir: Path, out_dir: Path, seed: int) -> dict[str, Any]:
    """Fine-tune a corrected run on its own pseudo-labels with plain cross-entropy.

    Self-training with pseudo-labels (Lee 2013, "Pseudo-Label: The Simple and Efficient
    Semi-Supervised Learning Method for Deep Neural Networks") turns the corrected
    model's beliefs into ordinary labels, which carry more signal per image than "not
    this class".
    """
    data, sha256 = load_task3_data(args.data, args.workers)
    test = load_mnist(args.mnist, "test")
    kind, transition, source = load_transition(args, console)
    labels = pseudo_labels(corrected_dir / "last.pt", data, kind, transition)
    console.print(f"self-training from {corrected_dir}: {len(labels)} pseudo-labels, run folder {out_dir}")
    record = run_mnist_arm(
        init="pretrained",
        seed=seed,
        train=LabelledArrays(data.canvases, labels),
        test=test,
        out_dir=out_dir,
        epochs=args.self_train_epochs,
        digits_checkpoint=corrected_dir / "last.pt",
        resume=True,
        console=console,
        lr=args.lr / 2,
        batch_size=args.batch_size,
        extra_state={"task": "task3", "data": {"path": str(Path(args.data).resolve()), "sha256": sha256}, "self_trained_from": str(corrected_dir)},
    )
    record.update({"init": f"corrected run {corrected_dir.name}", "loss": "cross-entropy on pseudo-labels", "correction": {"kind": kind, **source}})
    return record


def load_task3_data(path: str, workers: int | None) -> tuple[LabelledArrays, str]:
    canvas_set = load_canvases(path, MNIST_RECIPE, workers=workers)
    data, _ = select_classes(canvas_set, [str(d) for d in range(10)])
    return data, canvas_set.source_sha256


def add_arguments(subparsers: argparse._SubParsersAction, add_common: Callable[..., None]) -> None:
    parser = subparsers.add_parser(
        "task3",
        help="train on a digit set with corrupted labels, naively or with loss correction",
        description="Train on a digit set whose labels are corrupted, naively or with the loss corrected by the "
        "estimated label transition matrix; every run is graded on the MNIST test split.",
    )
    parser.add_argument("--data", default=DEFAULT_DATA, help=f"zip or folder of digit class folders 0-9 (default {DEFAULT_DATA})")
    parser.add_argument("--init", choices=("pretrained", "scratch"), default="scratch", help="initial weights: the digits network or random (default scratch)")
    parser.add_argument("--correct", action="store_true", help="correct the loss by the estimated label transition matrix")
    parser.add_argument("--transition", help="diagnosis JSON to take kind and transition_matrix from (default: diagnose now with --reference)")
    parser.add_argument("--reference", default=DEFAULT_REFERENCE, help=f"ONNX reference model for the diagnosis (default {DEFAULT_REFERENCE})")
    parser.add_argument("--digits", default=DEFAULT_DIGITS, help=f"checkpoint of the digits network for --init pretrained (default {DEFAULT_DIGITS})")
    parser.add_argument("--mnist", default=DEFAULT_MNIST, help=f"folder with MNIST's IDX files; only the test split is used, for reporting (default {DEFAULT_MNIST})")
    add_common(parser, epochs=4, batch_size=BATCH_SIZE, lr=0.05, out_default="runs/task3_<naive|corrected>_<init>_seed<N>")


def run_task3_arm(args: argparse.Namespace, console: Console, out_dir: Path, seed: int) -> dict[str, Any]:
    """Train one task 3 configuration and return its record."""
    data, sha256 = load_task3_data(args.data, args.workers)
    test = load_mnist(args.mnist, "test")
    loss, loss_name, correction = None, "cross-entropy", None
    if args.correct:
        kind, transition, source = load_transition(args, console)
        loss, loss_name = corrected_loss(kind, transition)
        correction = {"kind": kind, "loss": loss_name, "transition_matrix": transition.round(5).tolist(), **source}
    console.print(f"task3 {args.init}, {loss_name} loss: {len(data)} images, seed {seed}, run folder {out_dir}")
    record = run_mnist_arm(
        init=args.init,
        seed=seed,
        train=data,
        test=test,
        out_dir=out_dir,
        epochs=args.epochs,
        digits_checkpoint=args.digits,
        resume=args.resume,
        console=console,
        loss=loss,
        lr=args.lr,
        batch_size=args.batch_size,
        extra_state={"task": "task3", "command": getattr(args, "command_line", None), "data": {"path": str(Path(args.data).resolve()), "sha256": sha256}, "correction": correction},
    )
    record.update({"init": args.init, "loss": loss_name, "correction": correction})
    return record


def run(args: argparse.Namespace, console: Console) -> int:
    name = f"task3_{'corrected' if args.correct else 'naive'}_{args.init}_seed{args.seed}"
    record = run_task3_arm(args, console, Path(args.out or f"runs/{name}"), args.seed)
    final = record["final"]
    console.print(
        f"task3 {args.init} {record['loss']}: MNIST test top-1 {final['test_top1']:.2%}, "
        f"accuracy on its own given labels {final['train_top1']:.2%}"
    )
    return 0

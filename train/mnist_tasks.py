"""MNIST runs: task 2's fine-tuning and random-initialisation arms, and task 3's noisy labels.

The two arms of task 2 share everything but their initial weights: the architecture,
the seed-driven data order and augmentation, the optimiser, the schedule and the step
count. Both start from ``torch.manual_seed(seed)``; the pretrained arm then loads the
digits network's weights over the random ones.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
from pathlib import Path
from typing import Any, Callable

import torch
from rich.console import Console

from evaluate.datasets import DIGIT_CLASSES
from evaluate.errors import InputError
from evaluate.arguments import non_negative_int
from evaluate.preprocessing import MNIST_RECIPE
from train.augment import AffineRange
from train.checkpoints import load_checkpoint, require_resumable
from train.calibration import expected_calibration_error, per_class_accuracy
from train.loop import LabelledArrays, LossFunction, RunSpec, TrainConfig, Trainer, evaluate_arrays, predict_logits
from train.mnist_data import load_mnist, subset
from train.models import MNIST_CONFIG, InkNet, ModelConfig, build_model

log = logging.getLogger(__name__)

DEFAULT_MNIST = "../shared/data/mnist"
DEFAULT_DIGITS = "artifacts/task2_digits.pt"
MNIST_AUGMENT = AffineRange(degrees=10.0, scale=(0.9, 1.1), shear_degrees=10.0, translate=0.08)
BATCH_SIZE = 128
# Runs on fewer than 10000 images take at least this many steps: an epoch of 100
# images is a single step, so counting epochs would leave such runs untrained.
MIN_STEPS = 300


def convergence_steps(steps_per_epoch: int, epochs: int) -> list[int]:
    """Return the steps at which a run evaluates on the test split.

    Every 50 steps through the first epoch, where the arms differ most, then every
    half epoch, and always the final step. Runs on few images have short epochs, so
    there the spacing widens to a tenth of the run. Each evaluation is a pass over the
    10000 test images and would otherwise cost more than the training.
    """
    total = steps_per_epoch * epochs
    first = list(range(0, min(steps_per_epoch, total) + 1, 50))
    later = list(range(steps_per_epoch, total + 1, max(1, steps_per_epoch // 2, total // 10)))
    return sorted(set(first + later + [total]))


def planned_epochs(train_size: int, epochs: int, batch_size: int = BATCH_SIZE, min_steps: int = MIN_STEPS) -> int:
    """Return the epochs a run trains: ``epochs``, raised on small sets to reach ``min_steps`` steps."""
    steps_per_epoch = max(1, train_size // min(batch_size, train_size))
    if train_size < 10_000 and epochs * steps_per_epoch < min_steps:
        return math.ceil(min_steps / steps_per_epoch)
    return epochs


def initial_model(init: str, seed: int, digits_checkpoint: str | Path, config: ModelConfig = MNIST_CONFIG) -> tuple[InkNet, dict[str, Any]]:
    """Build the network for an arm: random (``scratch``) or the digits network (``pretrained``)."""
    torch.manual_seed(seed)
    model = build_model(config)
    if init == "scratch":
        return model, {"init": "scratch"}
    state = load_checkpoint(digits_checkpoint)
    if state["model_config"] != config.to_dict():
        raise InputError(
            f"{digits_checkpoint}: its architecture {state['model_config']} differs from the MNIST network's; "
            "pretrain with 'python -m train task2-pretrain'"
        )
    model.load_state_dict(state["model"])
    return model, {
        "init": "pretrained",
        "init_checkpoint": str(digits_checkpoint),
        "init_checkpoint_sha256": hashlib.sha256(Path(digits_checkpoint).read_bytes()).hexdigest(),
        "init_sha256": state.get("data", {}).get("sha256"),
    }


def run_mnist_arm(
    *,
    init: str,
    seed: int,
    train: LabelledArrays,
    test: LabelledArrays,
    out_dir: Path,
    epochs: int,
    digits_checkpoint: str | Path,
    resume: bool,
    console: Console,
    loss: LossFunction | None = None,
    extra_state: dict[str, Any] | None = None,
    lr: float = 0.05,
    batch_size: int = BATCH_SIZE,
    min_steps: int = MIN_STEPS,
) -> dict[str, Any]:
    """Train one arm and return its record: seed, curves, per-epoch history, final metrics."""
    batch_size = min(batch_size, len(train))
    steps_per_epoch = max(1, len(train) // batch_size)
    planned = planned_epochs(len(train), epochs, batch_size, min_steps)
    if planned != epochs:
        console.print(f"{len(train)} training images make {steps_per_epoch}-step epochs; training {planned} epochs to reach {min_steps} steps")
        epochs = planned
    model, init_state = initial_model(init, seed, digits_checkpoint)
    config = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        augment=MNIST_AUGMENT,
        eval_steps=convergence_steps(steps_per_epoch, epochs),
    )
    spec = RunSpec(
        model=model,
        recipe=MNIST_RECIPE,
        class_names=list(DIGIT_CLASSES),
        train=train,
        monitor=test,
        out_dir=out_dir,
        loss=loss,
        extra_state={**init_state, **(extra_state or {})},
    )
    trainer = Trainer(spec, config, console)
    last = out_dir / "last.pt"
    if last.exists():
        require_resumable(out_dir, resume)
        trainer.resume(load_checkpoint(last))
    trainer.fit()
    return arm_record(trainer, train, test)


def arm_record(trainer: Trainer, train: LabelledArrays, test: LabelledArrays) -> dict[str, Any]:
    """Summarise a finished run for the study JSON."""
    model, recipe = trainer.model, trainer.spec.recipe
    logits = predict_logits(model, test.canvases, recipe)
    probabilities = torch.softmax(logits, dim=1).numpy()
    predictions = probabilities.argmax(axis=1)
    test_metrics = evaluate_arrays(model, test, recipe)
    # Training metrics on (up to) 10000 un-augmented training images, for the gap.
    sample = LabelledArrays(train.canvases[:10_000], train.labels[:10_000])
    train_metrics = evaluate_arrays(model, sample, recipe)
    return {
        "seed": trainer.config.seed,
        "train_size": len(train),
        "steps": trainer.total_steps,
        "train_seconds": trainer.train_seconds,
        "curve": trainer.history.curve,
        "epochs": trainer.history.epochs,
        "final": {
            "test_top1": test_metrics["top1"],
            "test_loss": test_metrics["loss"],
            "train_top1": train_metrics["top1"],
            "train_loss": train_metrics["loss"],
            "ece": expected_calibration_error(probabilities, test.labels),
            "per_class_top1": per_class_accuracy(predictions, test.labels, probabilities.shape[1]),
        },
    }


# Command line

def add_arguments(subparsers: argparse._SubParsersAction, add_common: Callable[..., None]) -> None:
    """Register the task2, study and task3 sub-commands."""
    task2 = subparsers.add_parser(
        "task2",
        help="fine-tune the digits network on MNIST, or train it from random initialisation",
        description="Train the MNIST network from the digits network's weights (--init pretrained) or from random "
        "weights (--init scratch); both arms share data order, augmentation, optimiser and schedule.",
    )
    task2.add_argument("--init", choices=("pretrained", "scratch"), required=True, help="initial weights: the digits network or random")
    task2.add_argument("--mnist", default=DEFAULT_MNIST, help=f"folder with MNIST's IDX files, gz or not; downloaded there if missing (default {DEFAULT_MNIST})")
    task2.add_argument("--digits", default=DEFAULT_DIGITS, help=f"checkpoint of the digits network for --init pretrained (default {DEFAULT_DIGITS})")
    task2.add_argument("--train-size", type=int, default=None, help="use only this many MNIST training images, drawn by seed (default: all 60000)")
    task2.add_argument(
        "--validation",
        type=int,
        default=0,
        metavar="N",
        help="hold out the last N MNIST training images and monitor them instead of the test split, "
        "to choose a recipe without looking at the test set (default 0: train on all, monitor the test split)",
    )
    task2.add_argument(
        "--min-steps",
        type=non_negative_int,
        default=MIN_STEPS,
        help=f"minimum training steps of a run on under 10000 images; --epochs is raised to reach it (default {MIN_STEPS})",
    )
    add_common(task2, epochs=16, batch_size=BATCH_SIZE, lr=0.05, out_default="runs/task2_<init>_seed<N>")

    from train import study

    study.add_arguments(subparsers)

    try:
        from train import task3
    except ImportError:
        task3 = None
    if task3 is not None:
        task3.add_arguments(subparsers, add_common)


def run(args: argparse.Namespace, console: Console) -> int:
    if args.command == "study":
        from train import study

        return study.run(args, console)
    if args.command == "task3":
        from train import task3

        return task3.run(args, console)

    train, monitor = train_and_monitor(args.mnist, args.validation)
    train = subset(train, args.train_size, args.seed)
    monitor_name = "validation" if args.validation else "test"
    out_dir = Path(args.out or f"runs/task2_{args.init}_seed{args.seed}")
    require_resumable(out_dir, args.resume)
    console.print(
        f"task2 {args.init}: {len(train)} MNIST training images, monitoring {len(monitor)} {monitor_name} images, "
        f"seed {args.seed}, run folder {out_dir}"
    )
    record = run_mnist_arm(
        init=args.init,
        seed=args.seed,
        train=train,
        test=monitor,
        out_dir=out_dir,
        epochs=args.epochs,
        digits_checkpoint=args.digits,
        resume=args.resume,
        console=console,
        lr=args.lr,
        batch_size=args.batch_size,
        min_steps=args.min_steps,
        extra_state={
            "task": "task2",
            "command": getattr(args, "command_line", None),
            # Export reads this path to check parity on real MNIST test images without --data.
            "data": {"path": str(Path(args.mnist).resolve())},
            "validation_holdout": args.validation,
        },
    )
    final = record["final"]
    console.print(
        f"task2 {args.init} seed {args.seed}: MNIST {monitor_name} top-1 {final['test_top1']:.2%}, loss {final['test_loss']:.4f}"
    )
    return 0


def train_and_monitor(mnist: str | Path, validation: int) -> tuple[LabelledArrays, LabelledArrays]:
    """Return the training images and the images a run is monitored on.

    With ``validation`` > 0 the last ``validation`` training images are held out and
    monitored, whatever the seed, so that recipes compared on them never see the test
    split. Otherwise the run trains on all training images and monitors the test split.
    """
    if validation < 0:
        raise InputError(f"--validation {validation} is negative; pass the number of training images to hold out, or 0")
    train = load_mnist(mnist, "train")
    if validation == 0:
        return train, load_mnist(mnist, "test")
    if validation >= len(train) - 10:
        raise InputError(f"--validation {validation} leaves too few of the {len(train)} training images; hold out fewer")
    cut = len(train) - validation
    return (
        LabelledArrays(train.canvases[:cut], train.labels[:cut]),
        LabelledArrays(train.canvases[cut:], train.labels[cut:]),
    )

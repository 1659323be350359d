"""The training loop shared by every task: epochs, evaluation, checkpoints and resuming.

Data order and augmentation come from generators seeded by (seed, epoch), never from
global state. Two runs that differ only in their initial weights (task 2's arms)
therefore get the same batches. Checkpoints also store torch's global RNG, which
dropout draws from, so a run resumed from ``last.pt`` ends with the weights of an
uninterrupted one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from evaluate.errors import InputError
from evaluate.preprocessing import Recipe
from train.augment import AffineRange, random_affine
from train.checkpoints import save_atomic
from train.history import History
from train.models import InkNet

log = logging.getLogger(__name__)

# Checkpoint entries that identify a run. Resuming with any of them changed is an error.
RUN_IDENTITY_KEYS = ("task", "init", "init_checkpoint_sha256", "validation_holdout", "train_images", "split")

LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class TrainConfig:
    """Optimisation settings of one run; stored in its checkpoints."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    seed: int = 0
    augment: AffineRange = field(default_factory=AffineRange)
    # Fraction of the schedule spent warming the learning rate up (one-cycle policy).
    warmup_fraction: float = 0.15
    # Global steps at which the monitor set is evaluated, for convergence curves.
    eval_steps: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        values = asdict(self)
        values["augment"] = self.augment.to_dict()
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        values = dict(values)
        values["augment"] = AffineRange.from_dict(values["augment"])
        return cls(**values)


@dataclass
class LabelledArrays:
    """uint8 canvases (N, H, W) and integer labels (N,)."""

    canvases: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class RunSpec:
    """Everything a run needs besides the optimisation settings."""

    model: InkNet
    recipe: Recipe
    class_names: list[str]
    train: LabelledArrays
    out_dir: Path
    validation: LabelledArrays | None = None
    # Evaluated at TrainConfig.eval_steps; for task 2 this is the MNIST test split.
    monitor: LabelledArrays | None = None
    # Replaces cross-entropy, e.g. a loss corrected for label noise.
    loss: LossFunction | None = None
    # Stored in every checkpoint as it is: data hashes, split members, task name.
    extra_state: dict[str, Any] = field(default_factory=dict)


def _truncated_repr(value: Any, limit: int = 60) -> str:
    """Return repr(value) cut to ``limit`` characters, because a split lists hundreds of file names."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def to_inputs(canvases: np.ndarray | torch.Tensor, recipe: Recipe) -> torch.Tensor:
    """Turn uint8 canvases into normalised float inputs, as evaluate.preprocessing.normalize does."""
    values = torch.as_tensor(canvases).float().div_(255.0)
    values = values.sub_(recipe.mean).div_(recipe.std)
    return values.unsqueeze(1).contiguous(memory_format=torch.channels_last)


@torch.inference_mode()
def predict_logits(model: InkNet, canvases: np.ndarray, recipe: Recipe, batch_size: int = 512) -> torch.Tensor:
    """Return the model's logits for uint8 canvases, in eval mode."""
    was_training = model.training
    model.eval()
    outputs = [model(to_inputs(canvases[i : i + batch_size], recipe)) for i in range(0, len(canvases), batch_size)]
    model.train(was_training)
    return torch.cat(outputs) if outputs else torch.zeros(0)


def evaluate_arrays(model: InkNet, data: LabelledArrays, recipe: Recipe) -> dict[str, float]:
    """Return cross-entropy loss and top-1 accuracy (0-1) on a labelled set."""
    logits = predict_logits(model, data.canvases, recipe)
    labels = torch.as_tensor(data.labels, dtype=torch.long)
    return {
        "loss": F.cross_entropy(logits, labels).item(),
        "top1": (logits.argmax(1) == labels).float().mean().item(),
    }


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Return counts [true, predicted] as an int64 matrix."""
    return np.bincount(labels * num_classes + predictions, minlength=num_classes**2).reshape(num_classes, num_classes)


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # Mixing constants keep (seed, epoch) pairs from colliding, e.g. (1, 0) and (0, 1).
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 7919 + 17)


def _build_optimizer(model: InkNet, config: TrainConfig, total_steps: int) -> tuple[torch.optim.Optimizer, Any]:
    # Weight decay on conv and linear weights only; decaying BN scales and biases hurts.
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        momentum=config.momentum,
        nesterov=True,
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=max(total_steps, 1), pct_start=config.warmup_fraction
    )
    return optimizer, scheduler


def _make_progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}  acc {task.fields[acc]:.1%}  lr {task.fields[lr]:.4f}"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


class Trainer:
    """Runs the epochs of one training run, writing last.pt, best.pt and history.h5."""

    def __init__(self, spec: RunSpec, config: TrainConfig, console: Console | None = None) -> None:
        self.spec = spec
        self.config = config
        self.console = console or Console(stderr=True)
        self.steps_per_epoch = max(1, len(spec.train) // config.batch_size)
        self.total_steps = self.steps_per_epoch * config.epochs
        self.model = spec.model.to(memory_format=torch.channels_last)
        self.optimizer, self.scheduler = _build_optimizer(self.model, config, self.total_steps)
        self.history = History()
        self.epoch = 0
        self.best_top1 = -1.0
        self.best_val_loss = float("inf")
        self.train_seconds = 0.0
        self.val_confusion: np.ndarray | None = None
        self.loss = spec.loss or (lambda logits, y: F.cross_entropy(logits, y, label_smoothing=config.label_smoothing))

    # Checkpoints

    def state(self) -> dict[str, Any]:
        return {
            "model_config": self.model.config.to_dict(),
            "model": self.model.state_dict(),
            "class_names": self.spec.class_names,
            "recipe": self.spec.recipe.to_json(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "seed": self.config.seed,
            "train_config": self.config.to_dict(),
            "history": self.history.to_dict(),
            "best_top1": self.best_top1,
            "best_val_loss": self.best_val_loss,
            "train_seconds": self.train_seconds,
            # Dropout draws from torch's global generator; restoring it makes a resumed
            # run match an uninterrupted one.
            "torch_rng_state": torch.get_rng_state(),
            # Counts [true, predicted] on the validation set; a reference model for label
            # noise diagnosis corrects its estimate with it.
            "val_confusion": None if self.val_confusion is None else self.val_confusion.tolist(),
            "train_images": len(self.spec.train),
            **self.spec.extra_state,
        }

    def resume(self, state: dict[str, Any]) -> None:
        """Continue from a ``last.pt`` state dict. Raise InputError if it belongs to another run."""
        self._check_same_run(state)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        schedule = dict(state["scheduler"])
        planned = self.scheduler.state_dict()
        if schedule["total_steps"] != planned["total_steps"]:
            log.warning(
                "%s was planned for %s epochs and now runs to %d: the one-cycle schedule is re-planned for the new length",
                self.spec.out_dir / "last.pt",
                state.get("train_config", {}).get("epochs", "other"),
                self.config.epochs,
            )
            # --epochs changed since the checkpoint. OneCycleLR raises once it steps past
            # total_steps, so continue at the step reached on the cycle planned for the new
            # length. NOTE: the learning rate then jumps from the old cycle's end to the
            # new cycle's value at that step.
            schedule["total_steps"] = planned["total_steps"]
            schedule["_schedule_phases"] = planned["_schedule_phases"]
        self.scheduler.load_state_dict(schedule)
        self.history = History.from_dict(state["history"])
        self.epoch = int(state["epoch"])
        self.best_top1 = float(state.get("best_top1", -1.0))
        self.best_val_loss = float(state.get("best_val_loss", float("inf")))
        self.train_seconds = float(state.get("train_seconds", 0.0))
        if state.get("torch_rng_state") is not None:
            torch.set_rng_state(state["torch_rng_state"])
        log.info("resumed %s at epoch %d of %d", self.spec.out_dir, self.epoch, self.config.epochs)

    def _check_same_run(self, state: dict[str, Any]) -> None:
        """Raise InputError when the checkpoint was trained with other settings than this run's.

        Epochs may change, because a run can be extended. Anything else that differs would
        continue one run as another and report it under the wrong name.
        """
        stored_config = state.get("train_config", {})
        planned = {"train_images": len(self.spec.train), **self.spec.extra_state}
        differences = [
            f"{key} {_truncated_repr(stored_config.get(key))} (now {_truncated_repr(value)})"
            for key, value in (("seed", self.config.seed), ("batch_size", self.config.batch_size), ("lr", self.config.lr))
            if key in stored_config and stored_config[key] != value
        ]
        differences += [
            f"{key} {_truncated_repr(state[key])} (now {_truncated_repr(planned[key])})"
            for key in RUN_IDENTITY_KEYS
            if key in state and key in planned and state[key] != planned[key]
        ]
        if differences:
            raise InputError(
                f"{self.spec.out_dir / 'last.pt'} belongs to another run: {', '.join(differences)}; "
                "pass that run's options to resume it, or choose another --out"
            )

    def _save(self, is_best: bool) -> None:
        state = self.state()
        save_atomic(state, self.spec.out_dir / "last.pt")
        if is_best:
            save_atomic(state, self.spec.out_dir / "best.pt")
        self.history.save_h5(self.spec.out_dir / "history.h5", {"seed": self.config.seed})

    # Training

    def _batches(self, epoch: int):
        generator = _epoch_generator(self.config.seed, epoch)
        order = torch.randperm(len(self.spec.train), generator=generator)
        canvases = torch.from_numpy(self.spec.train.canvases)
        labels = torch.from_numpy(self.spec.train.labels).long()
        for step in range(self.steps_per_epoch):
            index = order[step * self.config.batch_size : (step + 1) * self.config.batch_size]
            images = canvases[index].float().div_(255.0).unsqueeze(1)
            images = random_affine(images, self.config.augment, generator)
            images = images.sub_(self.spec.recipe.mean).div_(self.spec.recipe.std)
            yield images.contiguous(memory_format=torch.channels_last), labels[index]

    def _record_monitor(self, step: int) -> None:
        metrics = evaluate_arrays(self.model, self.spec.monitor, self.spec.recipe)
        self.history.add_point(step=step, seconds=self.train_seconds, loss=metrics["loss"], top1=metrics["top1"])
        self.model.train()

    def _train_epoch(self, progress: Progress) -> dict[str, float]:
        self.model.train()
        task = progress.add_task("train", total=self.steps_per_epoch, epoch=self.epoch + 1, loss=0.0, acc=0.0, lr=0.0)
        loss_sum, correct, seen = 0.0, 0, 0
        eval_steps = set(self.config.eval_steps)
        started = time.perf_counter()
        for step_in_epoch, (images, labels) in enumerate(self._batches(self.epoch)):
            logits = self.model(images)
            loss = self.loss(logits, labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()

            loss_sum += loss.item() * len(labels)
            correct += (logits.argmax(1) == labels).sum().item()
            seen += len(labels)
            lr = self.optimizer.param_groups[0]["lr"]
            progress.update(task, advance=1, loss=loss_sum / seen, acc=correct / seen, lr=lr)

            global_step = self.epoch * self.steps_per_epoch + step_in_epoch + 1
            if self.spec.monitor is not None and global_step in eval_steps:
                # Evaluation time is excluded from train_seconds, the convergence clock.
                self.train_seconds += time.perf_counter() - started
                self._record_monitor(global_step)
                started = time.perf_counter()
        self.train_seconds += time.perf_counter() - started
        progress.remove_task(task)
        return {"train_loss": loss_sum / max(seen, 1), "train_top1": correct / max(seen, 1), "lr": lr}

    def fit(self) -> History:
        """Train the remaining epochs; return the history."""
        self.spec.out_dir.mkdir(parents=True, exist_ok=True)
        torch.use_deterministic_algorithms(True, warn_only=True)
        if self.spec.monitor is not None and self.epoch == 0 and 0 in self.config.eval_steps:
            self._record_monitor(0)
        with _make_progress(self.console) as progress:
            while self.epoch < self.config.epochs:
                epoch_started = time.perf_counter()
                record = self._train_epoch(progress)
                self.epoch += 1
                record.update(self._validate())
                record["seconds"] = time.perf_counter() - epoch_started
                self.history.add_epoch(epoch=self.epoch, **record)
                is_best = self._is_best(record)
                self._save(is_best)
                self._log_epoch(record)
        return self.history

    def _is_best(self, record: dict[str, float]) -> bool:
        """Rank by validation top-1, then by validation loss.

        Small validation sets often tie on top-1, and the lower loss then picks the
        better-trained weights. Without a validation set the newest weights are best.
        """
        if "val_top1" not in record:
            return True
        key = (record["val_top1"], -record["val_loss"])
        if key > (self.best_top1, -self.best_val_loss):
            self.best_top1, self.best_val_loss = key[0], record["val_loss"]
            return True
        return False

    def _validate(self) -> dict[str, float]:
        if self.spec.validation is None:
            return {}
        logits = predict_logits(self.model, self.spec.validation.canvases, self.spec.recipe)
        labels = torch.as_tensor(self.spec.validation.labels, dtype=torch.long)
        self.val_confusion = confusion_matrix(labels.numpy(), logits.argmax(1).numpy(), len(self.spec.class_names))
        return {
            "val_loss": F.cross_entropy(logits, labels).item(),
            "val_top1": (logits.argmax(1) == labels).float().mean().item(),
        }

    def _log_epoch(self, record: dict[str, float]) -> None:
        parts = [f"epoch {self.epoch:3d}/{self.config.epochs}", f"train loss {record['train_loss']:.4f}"]
        if "val_loss" in record:
            parts += [f"val loss {record['val_loss']:.4f}", f"val top-1 {record['val_top1']:.2%}"]
        if self.history.curve.get("top1"):
            # The monitor runs at its own steps, not every epoch, so name the step it was measured at.
            curve = self.history.curve
            parts.append(f"monitor top-1 {curve['top1'][-1]:.2%} (step {int(curve['step'][-1])})")
        parts += [f"lr {record['lr']:.4f}", f"{record['seconds']:.1f}s"]
        self.console.print("  ".join(parts), highlight=False)

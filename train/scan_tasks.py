"""Training on the character scans: task 1 (62 classes) and task 2's digits pretraining.

Both hold out a stratified validation split chosen by seed, record it in the
checkpoint, and train InkNet from random initialisation.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from evaluate.datasets import CHARS74K_CLASSES, DIGIT_CLASSES, open_image_set
from evaluate.errors import InputError
from evaluate.preprocessing import MNIST_RECIPE, SCAN_RECIPE, Recipe
from train.augment import AffineRange
from train.cache import CanvasSet, load_canvases
from train.checkpoints import load_checkpoint, require_resumable
from train.loop import LabelledArrays, RunSpec, TrainConfig, Trainer
from train.models import MNIST_CONFIG, SCAN_CONFIG, ModelConfig, build_model
from train.split import stratified_split

log = logging.getLogger(__name__)


def select_classes(canvas_set: CanvasSet, class_names: list[str]) -> tuple[LabelledArrays, list[str]]:
    """Keep the samples of the given classes, relabelled to their index in class_names.

    Returns the arrays and the source members they came from.
    """
    source_names = canvas_set.class_names
    missing = [c for c in class_names if c not in source_names]
    if missing:
        raise InputError(f"data has no class folders for {' '.join(missing)}; check --data")
    remap = np.full(len(source_names), -1, dtype=np.int64)
    for new_index, name in enumerate(class_names):
        remap[source_names.index(name)] = new_index
    labels = remap[canvas_set.labels]
    keep = np.flatnonzero(labels >= 0)
    return LabelledArrays(canvas_set.canvases[keep], labels[keep]), [canvas_set.members[i] for i in keep]


def _scan_settings(task: str) -> tuple[list[str], Recipe, ModelConfig, AffineRange]:
    if task == "task1":
        return list(CHARS74K_CLASSES), SCAN_RECIPE, SCAN_CONFIG, AffineRange(10.0, (0.85, 1.15), 10.0, 0.08)
    # The digits are laid out like MNIST (20-pixel box, centred by mass), where MNIST's
    # own augmentation conventions apply: smaller shifts, as the digit is already centred.
    return list(DIGIT_CLASSES), MNIST_RECIPE, MNIST_CONFIG, AffineRange(12.0, (0.85, 1.15), 12.0, 0.1)


def run_scan_task(task: str, args: argparse.Namespace, console: Console) -> Path:
    """Train task1 or task2-pretrain on the scans; return the run folder."""
    class_names, recipe, model_config, augment = _scan_settings(task)
    out_dir = Path(args.out or f"runs/{task}")
    last = out_dir / "last.pt"
    require_resumable(out_dir, args.resume)

    canvas_set = load_canvases(args.data, recipe, workers=args.workers)
    data, members = select_classes(canvas_set, class_names)
    try:
        train_index, val_index = stratified_split(data.labels, args.val_per_class, args.seed)
    except ValueError as error:
        raise InputError(f"{args.data}: {error}") from error

    torch.manual_seed(args.seed)
    model = build_model(model_config)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, augment=augment)
    extra: dict[str, Any] = {
        "task": task,
        "command": getattr(args, "command_line", None),
        "data": {"path": str(Path(args.data).resolve()), "sha256": canvas_set.source_sha256, "skipped": canvas_set.skipped},
        "split": {
            "seed": args.seed,
            "val_per_class": args.val_per_class,
            "validation_members": [members[i] for i in val_index],
        },
    }
    spec = RunSpec(
        model=model,
        recipe=recipe,
        class_names=class_names,
        train=LabelledArrays(data.canvases[train_index], data.labels[train_index]),
        validation=LabelledArrays(data.canvases[val_index], data.labels[val_index]) if len(val_index) else None,
        out_dir=out_dir,
        extra_state=extra,
    )
    trainer = Trainer(spec, config, console)
    if args.resume and last.exists():
        state = load_checkpoint(last)
        if state.get("data", {}).get("sha256") != canvas_set.source_sha256:
            raise InputError(f"{last} was trained on other data (SHA-256 differs); use another --out or the original --data")
        trainer.resume(state)

    console.print(
        f"{task}: {len(train_index)} training and {len(val_index)} validation images, "
        f"{len(class_names)} classes, {config.epochs} epochs, seed {args.seed}, run folder {out_dir}"
    )
    trainer.fit()
    best = trainer.best_top1
    if spec.validation is not None:
        console.print(f"{task}: best validation top-1 {best:.2%}; checkpoints in {out_dir}")
    return out_dir


def _class_folder_name(name: str, class_names: list[str]) -> str:
    # Chars74K numbering keeps "a" and "A" apart on case-insensitive file systems.
    if name in CHARS74K_CLASSES and len(class_names) > len(DIGIT_CLASSES):
        return f"Sample{CHARS74K_CLASSES.index(name) + 1:03d}"
    return name


def export_validation_split(checkpoint: Path, out_dir: Path, data: str | None) -> int:
    """Copy a run's validation images, as they were, into class folders; return the count."""
    if out_dir.exists() and any(out_dir.iterdir()):
        raise InputError(f"{out_dir} is not empty; give a new folder so the split is not mixed with other images")
    state = load_checkpoint(checkpoint)
    split = state.get("split")
    if not split or not split.get("validation_members"):
        raise InputError(f"{checkpoint}: the run held out no validation images (trained with --val-per-class 0)")
    source = Path(data or state["data"]["path"])
    image_set = open_image_set(source)
    by_member = {m: i for i, m in enumerate(image_set.members)}
    validation_members = split["validation_members"]
    missing = [m for m in validation_members if m not in by_member]
    if missing:
        raise InputError(f"{source}: {len(missing)} validation images (e.g. {missing[0]}) are not in it; pass the training data with --data")

    class_names = list(state["class_names"])
    archive = zipfile.ZipFile(source) if image_set.kind == "zip" else None
    try:
        for member in validation_members:
            name = image_set.class_names[image_set.labels[by_member[member]]]
            target = out_dir / _class_folder_name(name, class_names) / Path(member).name
            target.parent.mkdir(parents=True, exist_ok=True)
            if archive is not None:
                with archive.open(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            else:
                shutil.copyfile(Path(image_set.root) / member, target)
    finally:
        if archive is not None:
            archive.close()
    return len(validation_members)

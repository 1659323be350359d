"""Rich terminal output of a grading run: progress bar, summary and tables.

Rich's progress and table modules are imported inside the functions that use them, so
that ``--help`` and input errors do not pay for loading them.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
from rich.console import Console
from rich.markup import escape

from evaluate.metrics import most_confused, worst_classes
from evaluate.preprocessing import Recipe
from evaluate.report import Evaluation

if TYPE_CHECKING:
    from rich.table import Table


def describe_recipe(recipe: Recipe) -> str:
    return f"{recipe.layout} layout, {recipe.size}x{recipe.size} pixels, mean {recipe.mean:g}, std {recipe.std:g}"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


@contextlib.contextmanager
def progress_bar(console: Console, total: int, description: str) -> Iterator[Callable[[int], None]]:
    """Show a progress bar on a terminal and yield a function that advances it by n samples.

    Off a terminal (a pipe, a log file, a test) the bar is disabled rather than printed
    as a stream of partial lines.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("images"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
        task = progress.add_task(escape(description), total=total)
        yield lambda count: progress.advance(task, count)


def _summary_grid(evaluation: Evaluation, report: dict) -> "Table":
    from rich.table import Table

    model, image_set, timing = evaluation.model, evaluation.image_set, report["timing"]
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    origin = "inkbench metadata" if model.metadata is not None else "no metadata"
    shape = ", ".join(str(axis) for axis in model.input_shape)
    grid.add_row("Model", escape(f"{model.path} ({len(evaluation.class_names)} classes, input [{shape}], {origin})"))
    labelled = "labelled" if image_set.labelled else "unlabelled"
    grid.add_row("Data", escape(f"{image_set.source} ({image_set.kind}, {len(image_set)} images, {labelled})"))
    grid.add_row("Preprocessing", escape(f"{describe_recipe(evaluation.spec.recipe)}, from {evaluation.spec.source}"))
    skipped = len(evaluation.predictions.failures)
    skipped_text = f"[yellow]{skipped} skipped[/]" if skipped else "0 skipped"
    grid.add_row("Samples", f"{evaluation.samples} graded, {skipped_text}")
    if image_set.labelled:
        grid.add_row("Top-1", f"[bold]{_percent(evaluation.top1)}[/]")
        grid.add_row("Top-5", _percent(evaluation.top5))
        grid.add_row("Top-1, case-insensitive", _percent(evaluation.case_insensitive_top1))
    grid.add_row("Provider", f"{model.provider} ({model.intra_op_threads} intra-op threads)")
    speed = timing["images_per_second"]
    workers = timing["decode_workers"]
    decoder = f"{workers} decode workers" if workers else "decoded in-process"
    grid.add_row(
        "Speed",
        f"{speed if speed is not None else 'n/a'} images/s: {timing['wall_seconds']:.2f} s wall, "
        f"{timing['decode_wait_seconds']:.2f} s waiting for decoding ({decoder}), "
        f"{timing['inference_seconds']:.2f} s inference",
    )
    return grid


def print_summary(console: Console, evaluation: Evaluation, report: dict) -> None:
    """Print the model, data, sample counts, top-k accuracies, provider and speed."""
    console.print(_summary_grid(evaluation, report))


def print_class_table(console: Console, evaluation: Evaluation, rows: int) -> None:
    """Print precision, recall and F1 of the ``rows`` worst classes by F1; 0 rows prints all."""
    from rich.table import Table

    ranked = worst_classes(evaluation.scores)
    listed = ranked if rows <= 0 else ranked[:rows]
    if not listed:
        return
    table = Table(title="Per-class scores, worst F1 first", title_justify="left")
    for header in ("class", "support", "predicted", "precision", "recall", "F1"):
        table.add_column(header, justify="left" if header == "class" else "right")
    for score in listed:
        table.add_row(
            escape(score.name),
            str(score.support),
            str(score.predicted),
            _ratio(score.precision),
            _ratio(score.recall),
            _ratio(score.f1),
        )
    console.print(table)
    hidden = len(ranked) - len(listed)
    if hidden:
        console.print(f"... and {hidden} more classes; --rows 0 shows all, --json writes all")


def print_confused_pairs(console: Console, evaluation: Evaluation, limit: int) -> None:
    """Print the ``limit`` most frequent (true, predicted) error pairs."""
    from rich.table import Table

    if evaluation.confusion is None or limit <= 0:
        return
    pairs = most_confused(evaluation.confusion, evaluation.class_names, limit)
    if not pairs:
        console.print("No misclassified samples.")
        return
    support = evaluation.confusion.sum(axis=1)
    position = {name: index for index, name in enumerate(evaluation.class_names)}
    table = Table(title="Most-confused pairs", title_justify="left")
    for header in ("true → predicted", "count", "share of true class"):
        table.add_column(header, justify="left" if header.startswith("true") else "right")
    for pair in pairs:
        share = pair.count / support[position[pair.true]]
        table.add_row(escape(f"{pair.true} → {pair.predicted}"), str(pair.count), f"{share:.1%}")
    console.print(table)


def print_prediction_counts(console: Console, evaluation: Evaluation, limit: int = 10) -> None:
    """Print how often each class was predicted, for an unlabelled set."""
    counts = np.bincount(evaluation.predicted, minlength=len(evaluation.class_names))
    order = np.argsort(-counts, kind="stable")[:limit]
    listed = ", ".join(f"{evaluation.class_names[i]} ({counts[i]})" for i in order if counts[i])
    console.print(f"Most predicted classes: {escape(listed) or 'none'}")


def print_written(console: Console, kind: str, path: Path) -> None:
    console.print(f"Wrote {kind} to {escape(str(path))}")

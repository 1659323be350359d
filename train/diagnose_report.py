"""Presenting a diagnosis: Rich tables in the terminal, PNG plots and a JSON file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table
from rich.text import Text

from evaluate.atomic import atomic_path
from train.diagnose import DiagnosisResult

SAMPLES_PER_FOLDER = 12
TRANSITION_PLOT = "transition_matrix.png"
SAMPLES_PLOT = "samples_per_folder.png"


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder, so readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=path.suffix) as temporary:
        write(temporary)


def write_json(payload: dict[str, Any], path: Path) -> None:
    """Write ``payload`` as indented JSON, atomically."""
    text = json.dumps(payload, indent=2, sort_keys=False, allow_nan=False) + "\n"
    _write_atomically(Path(path), lambda temporary: temporary.write_text(text, encoding="utf-8"))


def _save_figure(figure: Figure, path: Path) -> None:
    _write_atomically(path, lambda temporary: figure.savefig(temporary, format="png", dpi=120))


def plot_transition_matrix(result: DiagnosisResult, path: Path) -> None:
    """Draw T[true, given] as an annotated heatmap."""
    matrix = np.nan_to_num(result.transition_matrix, nan=0.0)
    size = len(result.class_names)
    figure = Figure(figsize=(1.0 + 0.55 * size, 0.8 + 0.5 * size))
    axes = figure.add_subplot()
    image = axes.imshow(matrix, cmap="Blues", vmin=0.0, vmax=1.0)
    axes.set_xticks(range(size), result.class_names)
    axes.set_yticks(range(size), result.class_names)
    axes.set_xlabel("given label (folder)")
    axes.set_ylabel("true class")
    axes.set_title(f"P(given | true): {result.kind}, confidence {result.confidence:.2f}")
    for true_class in range(size):
        for given in range(size):
            value = matrix[true_class, given]
            colour = "white" if value > 0.5 else "black"
            axes.text(given, true_class, f"{value:.2f}", ha="center", va="center", fontsize=7, color=colour)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    figure.tight_layout()
    _save_figure(figure, path)


def plot_samples(images: np.ndarray, labels: np.ndarray, class_names: list[str], path: Path, seed: int = 0) -> None:
    """Draw a grid with one row of random sample images per folder (given label)."""
    rng = np.random.default_rng(seed)
    rows = len(class_names)
    figure = Figure(figsize=(0.8 * SAMPLES_PER_FOLDER, 0.85 * rows))
    grid = figure.subplots(rows, SAMPLES_PER_FOLDER, squeeze=False)
    for label, row in enumerate(grid):
        members = np.flatnonzero(labels == label)
        chosen = rng.choice(members, size=min(SAMPLES_PER_FOLDER, len(members)), replace=False) if len(members) else []
        for column, axes in enumerate(row):
            axes.set_xticks([])
            axes.set_yticks([])
            if column < len(chosen):
                axes.imshow(images[chosen[column]], cmap="gray", vmin=0, vmax=255)
        row[0].set_ylabel(f"folder {class_names[label]}", rotation=0, ha="right", va="center")
    figure.suptitle("random images of each folder")
    _save_figure(figure, path)


def write_plots(result: DiagnosisResult, folder: Path) -> list[Path]:
    """Write the transition matrix and, when images are held, the sample grid; return the paths."""
    folder = Path(folder)
    written = [folder / TRANSITION_PLOT]
    plot_transition_matrix(result, written[0])
    if result.images is not None and result.given_labels is not None:
        written.append(folder / SAMPLES_PLOT)
        plot_samples(result.images, result.given_labels, result.class_names, written[1])
    return written


def _heat_style(value: float) -> str:
    """Return a Rich style whose blue background deepens from 0 to 1."""
    if not np.isfinite(value):
        return "dim"
    level = float(np.clip(value, 0.0, 1.0))
    shade = int(round(255 * (1.0 - 0.8 * level)))
    foreground = "white" if level > 0.5 else "black"
    return f"{foreground} on rgb({shade},{shade},255)"


def transition_table(result: DiagnosisResult) -> Table:
    """Build T[true, given] as a table whose cell colours follow the values."""
    table = Table(title="Label transition matrix T: rows true class, columns given label, P(given | true)")
    table.add_column("true", justify="right", style="bold")
    for name in result.class_names:
        table.add_column(name, justify="right")
    for true_class, name in enumerate(result.class_names):
        cells = [Text(f"{value:.2f}", style=_heat_style(value)) for value in result.transition_matrix[true_class]]
        table.add_row(name, *cells)
    return table


def _verdict_table(result: DiagnosisResult) -> Table:
    evidence = result.evidence
    table = Table(title=f"Corruption: {result.kind} (confidence {result.confidence:.2f})", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")

    if result.mapping is not None:
        pairs = ", ".join(f"{given}->{true}" for given, true in result.mapping.items())
        table.add_row("mapping (given -> true)", pairs)
    if result.noise_rate is not None:
        table.add_row("noise rate P(given != true)", f"{result.noise_rate:.3f}")
    rows = [
        ("label accuracy (diagonal mass)", f"{evidence['label_accuracy']:.3f} against chance {evidence['chance']:.3f}"),
        ("diagonal min / max", f"{evidence['diagonal_min']:.3f} / {evidence['diagonal_max']:.3f}"),
        ("best assignment mass", f"{evidence['assignment_mass']:.3f} (weakest class {evidence['assignment_min_row_mass']:.3f})"),
        ("off-diagonal RMS deviation from uniform", f"{evidence['off_diagonal_rms_deviation']:.3f}"),
        ("mean row entropy (1 = uniform)", f"{evidence['row_entropy_mean']:.3f}"),
        ("reference agrees with given labels", f"{evidence['reference_agreement_with_given_labels']:.3f}"),
        ("images", f"{evidence['images']} ({evidence['undecodable_images']} undecodable)"),
    ]
    for name, value in rows:
        table.add_row(name, value)

    if evidence["true_classes_not_judged"]:
        rare = " ".join(result.class_names[index] for index in evidence["true_classes_not_judged"])
        table.add_row("true classes too rare to judge", Text(rare, style="yellow"))

    confusion = result.reference["confusion"]
    source = confusion["source"]
    if source == "identity":
        table.add_row("reference confusion", Text(f"identity: {confusion['reason']}; the reference's own errors count as noise", style="yellow"))
    else:
        table.add_row("reference confusion", f"{source}, accuracy {confusion['accuracy']:.3f} on {confusion['images']} images")
    return table


def _statistics_table(result: DiagnosisResult) -> Table:
    data, mnist = result.image_stats["data"], result.image_stats["mnist_train"]
    table = Table(title="Image statistics (after polarity normalisation, ink bright)")
    table.add_column("statistic")
    table.add_column("DATA", justify="right")
    table.add_column("MNIST train", justify="right")

    rows = [
        ("images", "images", "{:d}"),
        ("mean intensity (0-255)", "mean_intensity", "{:.2f}"),
        ("share of pixels exactly 0", "zero_pixel_share", "{:.3f}"),
        ("border mean intensity", "border_mean_intensity", "{:.2f}"),
        ("border pixels non-zero", "border_nonzero_share", "{:.3f}"),
        ("distinct grey levels per image", "distinct_grey_levels_mean", "{:.1f}"),
        ("stroke width mean / median (px)", None, None),
    ]
    for name, key, form in rows:
        if key is None:
            table.add_row(
                name,
                f"{data['stroke_width_mean']:.2f} / {data['stroke_width_median']:.2f}",
                f"{mnist['stroke_width_mean']:.2f} / {mnist['stroke_width_median']:.2f}",
            )
        else:
            table.add_row(name, form.format(data[key]), form.format(mnist[key]))
    table.add_row("size", f"{data['width']}x{data['height']}", f"{mnist['width']}x{mnist['height']}")

    files = result.image_stats["data_files"]
    described = ", ".join(f"{name} {count}" for name, count in {**files.get("formats", {}), **files.get("sizes", {})}.items())
    if "jpeg_quality_median" in files:
        described += f", JPEG quality about {files['jpeg_quality_median']:.0f}"
    table.add_row(f"files (sample of {files['sampled']})", described, "IDX")
    return table


def _class_count_table(result: DiagnosisResult) -> Table:
    counts = result.class_counts
    table = Table(title=f"Images per folder against MNIST train (chi-square p = {counts['p_value']:.2g})")
    table.add_column("class")
    table.add_column("DATA", justify="right")
    table.add_column("MNIST train", justify="right")
    table.add_column("difference", justify="right")
    for name, count, reference in zip(counts["classes"], counts["counts"], counts["reference_counts"]):
        table.add_row(name, str(count), str(reference), f"{count - reference:+d}")
    return table


def _duplicate_table(result: DiagnosisResult) -> Table:
    duplicates = result.duplicates
    table = Table(
        title=f"Near duplicates of MNIST (pHash within {duplicates['max_hash_distance']} bits, "
        f"no pixel off by more than {duplicates['max_pixel_difference']})"
    )
    table.add_column("MNIST split")
    table.add_column("DATA images matched", justify="right")
    table.add_column("share", justify="right")
    table.add_column("exact copies", justify="right")
    table.add_column("distinct MNIST images", justify="right")
    for split in ("train", "test"):
        summary = duplicates[split]
        style = "bold red" if split == "test" and summary["images_matched"] else ""
        table.add_row(
            split,
            Text(str(summary["images_matched"]), style=style),
            f"{summary['share_of_data']:.3f}",
            str(summary["exact_pixel_copies"]),
            f"{summary['distinct_mnist_images_matched']} of {summary['mnist_images']}",
        )
    return table


def print_report(result: DiagnosisResult, plots: list[Path], json_path: Path | None, console: Console | None = None) -> None:
    """Print the diagnosis as Rich tables, then where the outputs went."""
    console = console or Console()
    console.print(f"[bold]Diagnosis of {result.data_path}[/bold] with reference {result.reference['path']}")
    console.print(transition_table(result))
    console.print(_verdict_table(result))
    if result.image_stats is not None:
        console.print(_statistics_table(result))
    if result.class_counts is not None:
        console.print(_class_count_table(result))
    if result.duplicates is not None:
        console.print(_duplicate_table(result))
        duplicates = result.duplicates
        if duplicates["test_leak"]:
            console.print(
                f"[bold red]{duplicates['test']['images_matched']} images copy MNIST test images: "
                "a model trained on DATA cannot be judged on the MNIST test split.[/bold red]"
            )
        if "matched_kind" in duplicates:
            console.print(
                f"Cross-check from the MNIST labels of {duplicates['matched_images']} matched images: "
                f"{duplicates['matched_kind']}, label accuracy {duplicates['matched_label_accuracy']:.3f}"
            )
    for path in plots:
        console.print(f"wrote {path}")
    if json_path is not None:
        console.print(f"wrote {json_path}")
    timings = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in result.timings.items())
    console.print(f"[dim]time: {timings}[/dim]")

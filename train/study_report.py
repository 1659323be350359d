"""The task 2 study report: markdown with plots, and a Rich summary table.

Everything is computed from the study JSON, so the report can be rebuilt without
retraining: ``python -m train.study_report artifacts/task2_study.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from rich.console import Console
from rich.table import Table
from scipy import stats

ARMS = ("pretrained", "scratch")
THRESHOLDS = (0.97, 0.98, 0.99)
COLOURS = {"pretrained": "tab:blue", "scratch": "tab:orange"}


# Measures over runs

def first_reaching(curve: dict[str, list[float]], threshold: float, axis: str) -> float | None:
    """Return the first ``axis`` value (step or seconds) where test top-1 reaches threshold."""
    for value, top1 in zip(curve[axis], curve["top1"]):
        if top1 >= threshold:
            return value
    return None


def mean_std(values: Sequence[float | None]) -> tuple[float, float, int]:
    """Return mean, sample std and count of the values that are not None."""
    present = [v for v in values if v is not None and not math.isnan(v)]
    if not present:
        return float("nan"), float("nan"), 0
    std = float(np.std(present, ddof=1)) if len(present) > 1 else 0.0
    return float(np.mean(present)), std, len(present)


def run_measures(run: dict[str, Any]) -> dict[str, float | None]:
    """Return the scalar measures of one run that the report compares."""
    final = run["final"]
    measures: dict[str, float | None] = {
        "final test top-1 (%)": 100 * final["test_top1"],
        "final test loss": final["test_loss"],
        "train/test gap (top-1 points)": 100 * (final["train_top1"] - final["test_top1"]),
        "ECE (%)": 100 * final["ece"],
        "worst-class test top-1 (%)": 100 * min(final["per_class_top1"]),
    }
    for threshold in THRESHOLDS:
        measures[f"steps to {threshold:.0%}"] = first_reaching(run["curve"], threshold, "step")
        measures[f"seconds to {threshold:.0%}"] = first_reaching(run["curve"], threshold, "seconds")
    return measures


def compare_arms(group: dict[str, Any]) -> list[dict[str, Any]]:
    """Return one row a measure: mean ± std of each arm and Welch's t-test p-value."""
    per_arm = {arm: [run_measures(r) for r in group[arm]["runs"]] for arm in ARMS}
    rows = []
    for name in per_arm[ARMS[0]][0]:
        row: dict[str, Any] = {"measure": name}
        samples = {}
        for arm in ARMS:
            values = [m[name] for m in per_arm[arm]]
            row[arm] = mean_std(values)
            row[f"{arm}_missing"] = sum(v is None for v in values)
            samples[arm] = [v for v in values if v is not None]
        if all(len(s) > 1 for s in samples.values()) and np.std(samples["pretrained"] + samples["scratch"]) > 0:
            with warnings.catch_warnings():
                # scipy warns of precision loss when the seeds nearly agree, e.g. on step counts
                # quantised to the evaluation interval. The p-value then carries little information.
                warnings.simplefilter("ignore", RuntimeWarning)
                row["p_value"] = float(stats.ttest_ind(samples["pretrained"], samples["scratch"], equal_var=False).pvalue)
        else:
            row["p_value"] = None
        rows.append(row)
    return rows


def format_mean_std(value: tuple[float, float, int], missing: int = 0) -> str:
    mean, std, count = value
    if count == 0:
        return "not reached"
    # Step counts need no decimals; losses below 1 need four to show seed differences.
    if abs(mean) >= 100:
        digits = 0
    elif abs(mean) >= 1:
        digits = 2
    else:
        digits = 4
    text = f"{mean:.{digits}f} ± {std:.{digits}f}"
    return text + (f" ({missing} not reached)" if missing else "")


# Plots

def _curves(runs: list[dict[str, Any]], axis: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    # Runs of one arm share their evaluation steps, so curves stack directly.
    length = min(len(r["curve"][key]) for r in runs)
    x = np.mean([r["curve"][axis][:length] for r in runs], axis=0)
    y = np.array([r["curve"][key][:length] for r in runs])
    return x, y


def plot_curves(group: dict[str, Any], key: str, path: Path, ylabel: str, max_step: float | None = None, ylim: tuple[float, float] | None = None) -> None:
    """Plot key against steps per arm: the seed mean with a min-max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.2))
    for arm in ARMS:
        x, y = _curves(group[arm]["runs"], "step", key)
        scale = 100 if key == "top1" else 1
        keep = x <= max_step if max_step else np.ones_like(x, dtype=bool)
        axes.plot(x[keep], scale * y.mean(0)[keep], color=COLOURS[arm], label=f"{arm} (mean of {len(y)} seeds)")
        axes.fill_between(x[keep], scale * y.min(0)[keep], scale * y.max(0)[keep], color=COLOURS[arm], alpha=0.25, linewidth=0)
    axes.set_xlabel("training step (batch of 128)")
    axes.set_ylabel(ylabel)
    if ylim:
        axes.set_ylim(*ylim)
    if key == "loss":
        axes.set_yscale("log")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


# Markdown

def _table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| measure | pretrained | scratch | Welch p |", "| --- | --- | --- | --- |"]
    for row in rows:
        p = "–" if row["p_value"] is None else f"{row['p_value']:.3g}"
        lines.append(
            f"| {row['measure']} | {format_mean_std(row['pretrained'], row['pretrained_missing'])} "
            f"| {format_mean_std(row['scratch'], row['scratch_missing'])} | {p} |"
        )
    return lines


def _conclusion(rows: list[dict[str, Any]], label: str) -> str:
    """Word the comparison of final accuracy and 98% convergence, with its evidence."""
    by_name = {row["measure"]: row for row in rows}
    sentences = []
    final = by_name["final test top-1 (%)"]
    difference = final["pretrained"][0] - final["scratch"][0]
    significant = final["p_value"] is not None and final["p_value"] < 0.05
    sentences.append(
        f"{label}: final test top-1 is {final['pretrained'][0]:.2f}% pretrained against {final['scratch'][0]:.2f}% from scratch "
        f"({difference:+.2f} points; {'a significant' if significant else 'not a significant'} difference at p < 0.05, "
        f"p = {final['p_value']:.3g})." if final["p_value"] is not None else
        f"{label}: final test top-1 is {final['pretrained'][0]:.2f}% pretrained against {final['scratch'][0]:.2f}% from scratch ({difference:+.2f} points)."
    )
    steps = by_name["steps to 98%"]
    missing = steps["pretrained_missing"] + steps["scratch_missing"]
    if steps["pretrained"][2] and steps["scratch"][2] and not missing:
        ratio = steps["scratch"][0] / steps["pretrained"][0] if steps["pretrained"][0] else float("inf")
        sentences.append(
            f"98% test accuracy comes after {steps['pretrained'][0]:.0f} steps pretrained and {steps['scratch'][0]:.0f} from scratch "
            f"({ratio:.1f}x as many from scratch)."
        )
    elif steps["pretrained"][2] or steps["scratch"][2]:
        # A mean over the seeds that got there would flatter the arm that mostly did not.
        counts = [f"{steps[arm][2]} of {steps[arm][2] + steps[f'{arm}_missing']} {arm} seeds" for arm in ARMS]
        sentences.append(f"98% test accuracy is reached by {counts[0]} and {counts[1]}, so no step ratio is given.")
    return " ".join(sentences)


def _evaluation_spacing(run: dict[str, Any]) -> str:
    """Describe when a run was evaluated, from the steps in its curve."""
    steps = [int(step) for step in run["curve"]["step"]]
    per_epoch = run["steps"] // max(1, len(run["epochs"].get("epoch", [1])))
    first = [b - a for a, b in zip(steps, steps[1:]) if b <= per_epoch]
    later = [b - a for a, b in zip(steps, steps[1:]) if a >= per_epoch]
    parts = []
    if first:
        parts.append(f"every {max(set(first), key=first.count)} steps in the first epoch")
    if later:
        parts.append(f"then every {max(set(later), key=later.count)} steps ({per_epoch} steps make an epoch)")
    return ", ".join(parts) or "at the end of the run"


def _per_class_lines(group: dict[str, Any]) -> list[str]:
    lines = ["| digit | " + " | ".join(ARMS) + " |", "| --- | --- | --- |"]
    for digit in range(10):
        cells = [format_mean_std(mean_std([100 * r["final"]["per_class_top1"][digit] for r in group[arm]["runs"]])) for arm in ARMS]
        lines.append(f"| {digit} | " + " | ".join(cells) + " |")
    return lines


def write_report(results: dict[str, Any], path: Path) -> None:
    """Write the markdown report and its plots (in plots/ beside it)."""
    plots = path.parent / "plots"
    full = results["arms"]
    plot_curves(full, "top1", plots / "task2_accuracy.png", "MNIST test top-1 (%)", ylim=(90, 100))
    plot_curves(full, "top1", plots / "task2_accuracy_first_epoch.png", "MNIST test top-1 (%)", max_step=full["scratch"]["runs"][0]["steps"] / max(1, len(full["scratch"]["runs"][0]["epochs"].get("epoch", [1]))))
    plot_curves(full, "loss", plots / "task2_loss.png", "MNIST test cross-entropy")
    setup = results["setup"]
    rows = compare_arms(full)
    runs = full["scratch"]["runs"]

    lines = [
        "# Task 2: does pretraining on 400 digit scans help on MNIST?",
        "",
        "Both arms train the same InkNet (widths 16-32-64, ~100k parameters) with the same seed-driven data order, "
        "augmentation, SGD with Nesterov momentum, one-cycle schedule and step count; they differ only in the initial "
        f"weights: random, or the network trained on the 400 digit scans of trainPart1 (`{setup['digits_checkpoint']}`).",
        "",
        f"Evidence: {setup['seeds']} seeds per arm, {setup['epochs']} epochs ({runs[0]['steps']} steps) on all "
        f"{runs[0]['train_size']} MNIST training images; test figures on {setup.get('test_images', 10000)} MNIST test images. Hardware: "
        f"{setup['cpu']}, {setup['cpus_available']} CPUs, torch {setup['torch']}. Training time of all runs: "
        f"{setup['train_seconds_total'] / 60:.1f} min (excluding evaluation); wall time of the study command that wrote this: "
        f"{setup['wall_seconds'] / 60:.1f} min. Runs trained before that command, by an earlier study or by "
        "`python -m train task2` into the run folders, count in the training time but not in that wall time. "
        "Final figures are those of the last step: no checkpoint is chosen by its test score.",
        "",
        f"Zero-shot, before any fine-tuning, the digits network scores **{100 * results['zero_shot']['test_top1']:.2f}%** "
        f"on the MNIST test split (loss {results['zero_shot']['test_loss']:.3f}).",
        "",
        "## Conclusions",
        "",
        "- " + _conclusion(rows, f"All {runs[0]['train_size']} training images"),
    ]
    for size, group in sorted(results["low_data"].items(), key=lambda item: int(item[0])):
        lines.append("- " + _conclusion(compare_arms(group), f"{size} images"))
    lines += [
        "",
        "## Full training set: mean ± std over seeds",
        "",
        *_table(rows),
        "",
        "Steps and seconds count training only (evaluation excluded), at the resolution of the evaluations: "
        f"{_evaluation_spacing(runs[0])}. 'Not reached' means some seeds never got there. "
        "Both arms train with label smoothing 0.1, whose target puts 0.91 on the true class, so both come out "
        "under-confident and their ECE is high by construction; compare the arms' ECE with each other, not with zero.",
        "",
        "![test accuracy](plots/task2_accuracy.png)",
        "",
        "![first epoch](plots/task2_accuracy_first_epoch.png)",
        "",
        "![test loss](plots/task2_loss.png)",
        "",
        "Bands span the minimum and maximum over seeds; the line is their mean.",
        "",
        "### Per-class test top-1 (%)",
        "",
        *_per_class_lines(full),
    ]
    for size, group in sorted(results["low_data"].items(), key=lambda item: int(item[0])):
        group_runs = group["scratch"]["runs"]
        lines += [
            "",
            f"## {size} training images ({group_runs[0]['steps']} steps): mean ± std over seeds",
            "",
            *_table(compare_arms(group)),
        ]
    lines += [
        "",
        "## Regenerate",
        "",
        "```",
        "python -m train task2-pretrain --val-per-class 8 --out runs/task2-pretrain",
        "python -m export runs/task2-pretrain/best.pt artifacts/task2_digits.onnx --ship artifacts/task2_digits.pt",
        f"python -m train study task2 --seeds {setup['seeds']} --epochs {setup['epochs']} --sizes {','.join(map(str, setup['sizes']))}"
        + (f" --min-steps {setup['min_steps']}" if "min_steps" in setup else ""),
        "python -m train.study_report artifacts/task2_study.json   # the report alone, from the JSON",
        "# the shipped models are the seed-0 runs (scratch likewise):",
        "python -m export runs/study_task2/pretrained_full_seed0/last.pt artifacts/task2_pretrained.onnx --ship artifacts/task2_pretrained.pt",
        "```",
        "",
    ]
    path.write_text("\n".join(lines))


def print_summary(results: dict[str, Any], console: Console) -> None:
    """Print the full-data comparison as a Rich table."""
    table = Table(title="task 2: pretrained vs scratch on MNIST (mean ± std over seeds)")
    table.add_column("measure")
    for arm in ARMS:
        table.add_column(arm, justify="right")
    table.add_column("Welch p", justify="right")
    for row in compare_arms(results["arms"]):
        p = "–" if row["p_value"] is None else f"{row['p_value']:.3g}"
        table.add_row(row["measure"], format_mean_std(row["pretrained"], row["pretrained_missing"]), format_mean_std(row["scratch"], row["scratch_missing"]), p)
    console.print(table)
    console.print(f"zero-shot MNIST test top-1 of the digits network: {100 * results['zero_shot']['test_top1']:.2f}%")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.study_report", description="Rebuild the task 2 report from the study JSON.")
    parser.add_argument("json", type=Path, help="the study JSON written by 'python -m train study task2'")
    parser.add_argument("--report", type=Path, default=Path("artifacts/task2_report.md"), help="markdown file to write (default artifacts/task2_report.md)")
    args = parser.parse_args(argv)
    results = json.loads(args.json.read_text())
    write_report(results, args.report)
    print_summary(results, Console())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m train study task2``: both arms over several seeds and training-set sizes.

Each run lives in its own folder and writes ``record.json`` when it finishes, so a
study that is interrupted and started again skips finished runs and resumes the
unfinished one from its ``last.pt``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from evaluate.atomic import atomic_path
from evaluate.decoding import available_cpus
from evaluate.errors import InputError
from evaluate.arguments import non_negative_int, positive_int
from train.checkpoints import load_checkpoint, model_from_state
from train.loop import LabelledArrays, evaluate_arrays
from train.mnist_data import load_mnist, subset
from train.mnist_tasks import BATCH_SIZE, DEFAULT_DIGITS, DEFAULT_MNIST, MIN_STEPS, planned_epochs, run_mnist_arm
from evaluate.preprocessing import MNIST_RECIPE

log = logging.getLogger(__name__)

ARMS = ("pretrained", "scratch")


STUDY_DEFAULTS = {
    "task2": {"runs_dir": "runs/study_task2", "json": "artifacts/task2_study.json", "report": "artifacts/task2_report.md", "epochs": 16},
    "task3": {"runs_dir": "runs/study_task3", "json": "artifacts/task3_study.json", "report": "artifacts/task3_report.md", "epochs": 2},
}


def add_arguments(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "study",
        help="run a task's comparison over seeds and write its JSON and report",
        description="Run every arm of a task's comparison over seeds, skipping runs already finished, "
        "and write the study JSON, a markdown report with plots, and a summary table.",
    )
    parser.add_argument("study", choices=tuple(STUDY_DEFAULTS), help="task2: pretrained vs scratch on MNIST; task3: naive vs corrected on noisy labels")
    parser.add_argument("--seeds", type=positive_int, default=3, help="seeds per arm, 0 to N-1 (default 3)")
    parser.add_argument("--epochs", type=positive_int, default=None, help="epochs of each run over all training images (default 16 for task2, 2 for task3)")
    parser.add_argument("--runs-dir", default=None, help="folder of the per-run folders (default runs/study_<task>)")
    parser.add_argument("--json", default=None, help="study results to write (default artifacts/<task>_study.json)")
    parser.add_argument("--report", default=None, help="markdown report to write, with plots in a plots/ folder beside it (default artifacts/<task>_report.md)")
    parser.add_argument("--mnist", default=DEFAULT_MNIST, help=f"folder with MNIST's IDX files (default {DEFAULT_MNIST})")
    parser.add_argument("--digits", default=DEFAULT_DIGITS, help=f"checkpoint of the digits network (default {DEFAULT_DIGITS})")
    parser.add_argument("--test-size", type=int, default=None, help="task2: evaluate on only the first N MNIST test images, for quick trials (default: all 10000)")
    parser.add_argument("--sizes", default="100,1000", help="task2: comma-separated small training-set sizes also compared (default 100,1000; empty for none)")
    parser.add_argument("--full-size", type=int, default=None, help="task2: training images of the 'full' runs (default: all 60000)")
    parser.add_argument("--min-steps", type=non_negative_int, default=MIN_STEPS, help=f"task2: minimum training steps of a run on under 10000 images (default {MIN_STEPS})")
    parser.add_argument("--other-seeds", type=int, default=1, help="task3: seeds of the naive runs and of corrected training from scratch; corrected training from the digits network gets --seeds (default 1)")
    parser.add_argument("--data", default="../shared/data/mnistTask3.zip", help="task3: the noisy digit set (default ../shared/data/mnistTask3.zip)")
    parser.add_argument("--diagnosis", default="artifacts/task3_diagnosis.json", help="task3: diagnosis JSON to describe the data set in the report, and to take T from (default artifacts/task3_diagnosis.json)")
    parser.add_argument("--reference", default="artifacts/task2_digits.onnx", help="task3: reference model when no diagnosis JSON exists (default artifacts/task2_digits.onnx)")
    parser.add_argument("--self-train-epochs", type=int, default=0, help="task3: epochs of self-training each corrected run from the digits network on its own pseudo-labels; 0 skips it (default 0)")
    parser.add_argument("--workers", type=int, default=None, help="processes that decode images (default: CPUs available to this process)")


def _apply_defaults(args: argparse.Namespace) -> None:
    for key, value in STUDY_DEFAULTS[args.study].items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def _write_json_atomic(values: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary, open(temporary, "w") as file:
        json.dump(values, file, indent=1)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def zero_shot(digits_checkpoint: str | Path, test: LabelledArrays) -> dict[str, float]:
    """Score the digits network on the MNIST test split before any fine-tuning."""
    state = load_checkpoint(digits_checkpoint)
    metrics = evaluate_arrays(model_from_state(state), test, MNIST_RECIPE)
    return {"test_top1": metrics["top1"], "test_loss": metrics["loss"]}


def _run_or_load(run_dir: Path, console: Console, **arm: Any) -> dict[str, Any]:
    record_path = run_dir / "record.json"
    if record_path.exists():
        record = json.loads(record_path.read_text())
        _check_record_matches(record, record_path, arm)
        return record
    record = run_mnist_arm(out_dir=run_dir, resume=True, console=console, **arm)
    _write_json_atomic(record, record_path)
    return record


def _check_record_matches(record: dict[str, Any], record_path: Path, arm: dict[str, Any]) -> None:
    """Raise InputError when a finished run's epochs or training-set size differ from the study's plan.

    Loading such a run would silently mix, for example, 3-epoch runs into a 16-epoch study.
    """
    planned = planned_epochs(len(arm["train"]), arm["epochs"], min_steps=arm["min_steps"])
    trained = len(record.get("epochs", {}).get("epoch", []))
    if trained != planned or record.get("train_size") != len(arm["train"]):
        raise InputError(
            f"{record_path}: that run trained {trained} epochs on {record.get('train_size')} images, but this study "
            f"plans {planned} on {len(arm['train'])}; pass another --runs-dir, or delete that run folder to retrain it"
        )


def run(args: argparse.Namespace, console: Console) -> int:
    _apply_defaults(args)
    if args.study == "task3":
        from train import task3_study

        # The corrected runs take kind and T from the diagnosis JSON when there is one.
        args.transition = args.diagnosis if Path(args.diagnosis).exists() else None
        args.lr, args.batch_size = 0.05, BATCH_SIZE
        return task3_study.run(args, console)
    started = time.perf_counter()
    full_train = load_mnist(args.mnist, "train")
    test = load_mnist(args.mnist, "test")
    if args.test_size:
        test = LabelledArrays(test.canvases[: args.test_size], test.labels[: args.test_size])
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    runs_dir = Path(args.runs_dir)

    results: dict[str, Any] = {"arms": {arm: {"runs": []} for arm in ARMS}, "low_data": {}}
    plan = [(None, args.full_size)] + [(size, size) for size in sizes]
    for label, size in plan:
        for seed in range(args.seeds):
            train = subset(full_train, size, seed)
            for arm in ARMS:
                name = f"{arm}_{'full' if label is None else f'n{label}'}_seed{seed}"
                console.print(f"[bold]study run {name}[/bold] ({len(train)} training images)")
                record = _run_or_load(
                    runs_dir / name, console, init=arm, seed=seed, train=train, test=test,
                    epochs=args.epochs, digits_checkpoint=args.digits, min_steps=args.min_steps,
                )
                target = results["arms"] if label is None else results["low_data"].setdefault(str(label), {a: {"runs": []} for a in ARMS})
                target[arm]["runs"].append(record)

    results["zero_shot"] = zero_shot(args.digits, test)
    results["setup"] = {
        "epochs": args.epochs,
        "seeds": args.seeds,
        "sizes": sizes,
        "min_steps": args.min_steps,
        "test_images": len(test),
        "digits_checkpoint": args.digits,
        "cpu": _cpu_model(),
        "cpus_available": available_cpus(),
        "torch": torch.__version__,
        # Wall time of this invocation; runs loaded from record.json cost nothing here,
        # so the per-run train_seconds are the figures to sum for a fresh study.
        "wall_seconds": time.perf_counter() - started,
        "train_seconds_total": sum(
            r["train_seconds"]
            for group in [results["arms"], *results["low_data"].values()]
            for arm in group.values()
            for r in arm["runs"]
        ),
    }
    _write_json_atomic(results, Path(args.json))
    console.print(f"wrote {args.json}")

    from train.study_report import print_summary, write_report

    write_report(results, Path(args.report))
    console.print(f"wrote {args.report}")
    print_summary(results, console)
    return 0

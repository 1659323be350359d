"""Command line of the training side: ``python -m train TASK ...``.

Sub-commands: task1, task2-pretrain, task2, study, task3, diagnose, export-split.
Bad input ends with a one-line error and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from evaluate.errors import InputError
from evaluate.arguments import positive_int

DEFAULT_DATA = "../shared/data/trainPart1.zip"


def _add_common_run_arguments(
    parser: argparse.ArgumentParser, epochs: int, batch_size: int, lr: float, out_default: str = "runs/<task>"
) -> None:
    parser.add_argument("--epochs", type=positive_int, default=epochs, help=f"training epochs (default {epochs})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, initial weights, data order and augmentation (default 0)")
    parser.add_argument(
        "--out",
        help=f"run folder for last.pt, history.h5 and best.pt: the weights with the best validation top-1 when the run "
        f"has a validation split, else the newest weights (default {out_default})",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last.pt, with the options it was started with; a different --epochs "
        "re-plans the learning-rate schedule for the new length from the step reached",
    )
    parser.add_argument("--batch-size", type=positive_int, default=batch_size, help=f"images per training step (default {batch_size})")
    parser.add_argument("--lr", type=float, default=lr, help=f"peak learning rate of the one-cycle schedule (default {lr})")
    parser.add_argument("--workers", type=int, default=None, help="processes that decode images (default: CPUs available to this process)")


def _add_scan_task(subparsers: argparse._SubParsersAction, name: str, help_text: str, epochs: int) -> None:
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    parser.add_argument("--data", default=DEFAULT_DATA, help=f"trainPart1.zip, its extracted folder, or any folder of class sub-folders (default {DEFAULT_DATA})")
    parser.add_argument("--val-per-class", type=int, default=8, help="validation images held out of every class; 0 trains on all (default 8)")
    _add_common_run_arguments(parser, epochs=epochs, batch_size=32, lr=0.05)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train", description="Train inkbench's CNNs on handwritten characters and digits.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_scan_task(subparsers, "task1", "train the 62-class character CNN from scratch on the scans", epochs=40)
    _add_scan_task(subparsers, "task2-pretrain", "train the digit CNN on the scans of 0-9 only, laid out like MNIST", epochs=40)

    split = subparsers.add_parser(
        "export-split",
        help="copy a run's validation images into class folders, for the evaluator",
        description="Copy the validation images a task1 or task2-pretrain run held out into class folders, "
        "so that python -m evaluate can grade its model on images it never trained on.",
    )
    split.add_argument("checkpoint", type=Path, help="a last.pt or best.pt of a task1 or task2-pretrain run")
    split.add_argument("out", type=Path, help="folder to create the class sub-folders in")
    split.add_argument("--data", help="the training data, if it moved since training (default: the path stored in the checkpoint)")

    _add_optional_commands(subparsers)
    return parser


def _add_optional_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register the sub-commands whose modules may be absent from a partial checkout."""
    try:
        from train import mnist_tasks
    except ImportError:
        mnist_tasks = None
    if mnist_tasks is not None:
        mnist_tasks.add_arguments(subparsers, _add_common_run_arguments)
    try:
        from train import diagnose
    except ImportError:
        diagnose = None
    if diagnose is not None and hasattr(diagnose, "add_diagnose_arguments"):
        diagnose_parser = subparsers.add_parser(
            "diagnose",
            help="estimate how a data set's labels are corrupted",
            description="Estimate how a digit set's labels are corrupted: the label transition matrix, "
            "the kind of noise it shows, and what the images themselves reveal.",
        )
        diagnose.add_diagnose_arguments(diagnose_parser)


def _configure_logging(verbose: bool, console: Console) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, show_time=False)],
    )


def run(args: argparse.Namespace, console: Console) -> int:
    if args.command in ("task1", "task2-pretrain"):
        from train.scan_tasks import run_scan_task

        run_scan_task(args.command, args, console)
        return 0
    if args.command == "export-split":
        from train.scan_tasks import export_validation_split

        count = export_validation_split(args.checkpoint, args.out, args.data)
        console.print(f"wrote {count} validation images into {args.out}")
        return 0
    if args.command == "diagnose":
        from train.diagnose import run_diagnose

        return run_diagnose(args)
    from train import mnist_tasks

    return mnist_tasks.run(args, console)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Stored in checkpoints and model cards, so a shipped model records the command that made it.
    args.command_line = "python -m train " + shlex.join(sys.argv[1:] if argv is None else argv)
    console = Console(stderr=True)
    _configure_logging(args.verbose, console)
    try:
        return run(args, console)
    except InputError as error:
        # Escaped, because paths may contain brackets; soft_wrap keeps the message on one line.
        console.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
        return InputError.exit_code
    except KeyboardInterrupt:
        console.print("interrupted; the last finished epoch is in last.pt, continue with --resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())

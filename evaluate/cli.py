"""Command line of ``python -m evaluate``: grade an ONNX classifier on an image set.

This module imports only the standard library at load time. numpy, onnxruntime and
rich are imported when a run needs them, so ``--help`` and flag errors return at once.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

from evaluate.arguments import non_negative_int, positive_int
from evaluate.errors import InputError

if TYPE_CHECKING:
    from rich.console import Console

    from evaluate.model_spec import PreprocessingFlags

DESCRIPTION = """\
Grade an ONNX image classifier on handwritten characters with onnxruntime.

PATH is a folder or zip of class sub-folders (SampleNNN or class names), a folder
or zip of unlabelled images (predictions go to a CSV), or a folder of MNIST IDX
files. Models exported by inkbench carry their preprocessing and class names;
other models need --classes, --layout, --mean and --std.
"""

EPILOG = """\
examples:
  python -m evaluate --model model.onnx data/trainPart1.zip --json report.json
  python -m evaluate --model mnist.onnx data/mnist --classes 0123456789 \\
      --layout mnist --mean 0.1307 --std 0.3081
  python -m evaluate --model model.onnx scans/ --predictions scans.csv

exit status: 0 on success, 2 on invalid input (model, data or flags)."""


def _add_input_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path",
        nargs="?",
        metavar="PATH",
        type=Path,
        help="image set to grade: folder, zip, or folder of MNIST IDX files",
    )
    parser.add_argument(
        "--model",
        action="append",
        metavar="MODEL.onnx",
        type=Path,
        help="ONNX classifier to grade; grading takes one, --benchmark may take several",
    )
    parser.add_argument(
        "--split",
        choices=("test", "train"),
        default="test",
        help="MNIST split to grade when PATH contains IDX files (default: test, 10000 images)",
    )


def _add_preprocessing_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "preprocessing", "required for models without inkbench metadata; for other models they override it"
    )
    group.add_argument(
        "--classes",
        metavar="NAMES",
        help="class names in logit order: one character each (0123456789), a comma list (cat,dog), "
        "or a file with one name a line",
    )
    group.add_argument(
        "--layout",
        choices=("canvas", "mnist"),
        help="how an image becomes the input: canvas keeps the page's scale and height position, "
        "mnist fits the ink into a 20-pixel box centred by mass",
    )
    group.add_argument(
        "--input-size",
        type=positive_int,
        metavar="PIXELS",
        help="side of the square model input in pixels (default: from the model's input shape)",
    )
    group.add_argument("--mean", type=float, help="mean subtracted from pixels on the 0-1 scale, ink bright")
    group.add_argument("--std", type=float, help="standard deviation pixels are divided by, on the 0-1 scale")


def _add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("runtime")
    group.add_argument(
        "--provider",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="onnxruntime execution provider; auto takes CUDA when a CUDA session loads, "
        "cuda fails without a usable GPU (default: auto)",
    )
    group.add_argument(
        "--workers",
        type=positive_int,
        metavar="N",
        help="processes that decode and preprocess images (default: the CPUs this process may run on)",
    )
    group.add_argument(
        "--threads",
        type=positive_int,
        metavar="N",
        help="onnxruntime intra-op threads (default: the CPUs this process may run on)",
    )
    group.add_argument(
        "--batch-size", type=positive_int, default=256, metavar="N", help="images per inference batch (default: 256)"
    )
    group.add_argument(
        "--strict",
        action="store_true",
        help="stop with exit status 2 at the first image that fails to decode, instead of skipping it",
    )
    group.add_argument(
        "--benchmark",
        action="store_true",
        help="measure inference speed instead of grading (implemented in evaluate/benchmark.py)",
    )


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output")
    group.add_argument("--json", type=Path, metavar="OUT.json", help="write the report as JSON (see docs/report-schema.md)")
    group.add_argument(
        "--h5", type=Path, metavar="OUT.h5", help="write logits, predictions, labels and paths as HDF5 datasets"
    )
    group.add_argument(
        "--predictions",
        type=Path,
        metavar="OUT.csv",
        help="write path, label, confidence (and true_label) per image as CSV "
        "(default for unlabelled data: PATH's name + -predictions.csv in the working directory)",
    )
    group.add_argument(
        "--rows",
        type=non_negative_int,
        default=15,
        metavar="N",
        help="classes shown in the per-class table, worst F1 first; 0 shows all (default: 15)",
    )
    group.add_argument(
        "--pairs", type=non_negative_int, default=10, metavar="N", help="most-confused pairs shown (default: 10)"
    )
    group.add_argument("-v", "--verbose", action="store_true", help="log progress details at INFO level")


def _add_benchmark_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags of --benchmark from evaluate.benchmark_cli, when this install has it."""
    try:
        from evaluate.benchmark_cli import add_benchmark_arguments
    except ModuleNotFoundError as error:
        if error.name != "evaluate.benchmark_cli":
            raise
        return
    add_benchmark_arguments(parser)


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of every flag; other modes add their flags here."""
    parser = argparse.ArgumentParser(
        prog="python -m evaluate",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_input_arguments(parser)
    _add_preprocessing_arguments(parser)
    _add_runtime_arguments(parser)
    _add_output_arguments(parser)
    _add_benchmark_arguments(parser)
    return parser


@contextlib.contextmanager
def _logging_to(console: "Console", verbose: bool) -> Iterator[None]:
    """Route log records to stderr for one run, through Rich on a terminal so the progress bar stays intact."""
    if console.is_terminal:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=console, show_time=False, show_path=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)


def _run_benchmark(args: argparse.Namespace) -> int:
    try:
        from evaluate.benchmark import run_benchmark
    except ModuleNotFoundError as error:
        if error.name != "evaluate.benchmark":
            raise
        raise InputError("--benchmark: module evaluate.benchmark is missing from this install; grade without --benchmark") from None
    return run_benchmark(args)


def preprocessing_flags(args: argparse.Namespace) -> "PreprocessingFlags":
    """Collect the preprocessing flags; raises InputError for an invalid --classes."""
    from evaluate.model_spec import PreprocessingFlags, parse_class_names

    return PreprocessingFlags(
        class_names=None if args.classes is None else parse_class_names(args.classes),
        layout=args.layout,
        size=args.input_size,
        mean=args.mean,
        std=args.std,
    )


def single_model(args: argparse.Namespace) -> Path:
    """Return the one --model path that grading takes; raise InputError for none or several."""
    if not args.model:
        raise InputError("--model is missing; pass the .onnx file to grade, e.g. --model model.onnx")
    if len(args.model) > 1:
        raise InputError(f"grading takes one --model, got {len(args.model)}; grade them one at a time")
    return args.model[0]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the grading or benchmark, and return the exit status."""
    args = build_parser().parse_args(argv)
    from rich.console import Console

    out, err = Console(), Console(stderr=True)
    with _logging_to(err, args.verbose):
        try:
            if args.benchmark:
                return _run_benchmark(args)
            if getattr(args, "torch", None):
                raise InputError("--torch times a PyTorch checkpoint and works only with --benchmark; add --benchmark, or drop --torch to grade")
            from evaluate.grade_command import grade

            return grade(args, out, err)
        except InputError as error:
            # One plain line, not Rich markup: paths may contain brackets.
            print(f"error: {error}", file=sys.stderr)
            return error.exit_code
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:
            # The reader of standard output left (e.g. head); output files are already
            # written. Point stdout at /dev/null so that Python's flush at exit stays quiet.
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1

"""Command line: ``python -m export CHECKPOINT OUT.onnx``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from evaluate.errors import InputError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export",
        description="Export an inkbench training checkpoint to ONNX, checked against PyTorch on real images.",
    )
    parser.add_argument("checkpoint", type=Path, help="a last.pt or best.pt written by 'python -m train'")
    parser.add_argument("out", type=Path, help="the .onnx file to write (its folder is created)")
    parser.add_argument(
        "--data",
        help="images for the parity check (default: the training data path stored in the checkpoint)",
    )
    parser.add_argument("--ship", type=Path, metavar="PT", help="also write a copy of the checkpoint without optimizer state here, and a model card OUT.card.json")
    parser.add_argument("--int8", action="store_true", help="also write an int8 model calibrated on --calibration images, next to OUT as *.int8.onnx")
    parser.add_argument("--calibration", help="folder, zip or MNIST folder of training images to calibrate int8 quantisation on")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(stderr=True)
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=console, show_path=False, show_time=False)])
    try:
        if args.int8 and not args.calibration:
            raise InputError("--int8 needs --calibration PATH, a folder or zip of training images")
        from export.onnx_export import PARITY_TOLERANCE, export_checkpoint, write_model_card, write_slim_checkpoint

        result = export_checkpoint(args.checkpoint, args.out, args.data)
        worst = max(result.max_abs_diff.values())
        per_batch = ", ".join(f"batch {b}: {d:.2e}" for b, d in result.max_abs_diff.items())
        console.print(f"parity on {result.parity_source}: max |logit difference| {worst:.2e} ({per_batch}); tolerance {PARITY_TOLERANCE:.0e} x logit scale")
        console.print(f"wrote {result.path} ({len(result.metadata.class_names)} classes, input 1x{result.metadata.recipe.size}x{result.metadata.recipe.size})")
        if args.ship:
            write_slim_checkpoint(args.checkpoint, args.ship)
            card = write_model_card(args.checkpoint, result)
            console.print(f"wrote {args.ship} and {card}")
        if args.int8:
            from export.quantize import quantize_model

            int8_path = args.out.with_suffix(".int8.onnx")
            quantize_model(args.out, int8_path, args.calibration)
            console.print(f"wrote {int8_path}")
    except InputError as error:
        # Escaped, because paths may contain brackets; soft_wrap keeps the message on one line.
        console.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
        return InputError.exit_code
    except RuntimeError as error:
        console.print(f"[red]export failed:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Flags of ``python -m evaluate --benchmark``.

This module imports only the standard library, because ``evaluate.cli`` builds its
parser from it on every start, including ``--help``. The benchmark also reads the
grading flags ``--model``, PATH, ``--split``, ``--provider``, ``--threads``,
``--workers``, ``--batch-size``, ``--json``, ``--h5`` and the preprocessing flags.
"""

from __future__ import annotations

import argparse

DEFAULT_BATCH_SIZES = "1,8,32,128,512"


def add_benchmark_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's own flags to the grading parser."""
    group = parser.add_argument_group(
        "benchmark", "with --benchmark; PATH adds an end-to-end grading run and a single-thread decode baseline"
    )
    group.add_argument(
        "--torch",
        metavar="CHECKPOINT.pt",
        help="also measure this training checkpoint in PyTorch eager on the same inputs, "
        "with the torch/onnxruntime ratios (needs the [train] extra)",
    )
    group.add_argument(
        "--warmup", type=int, default=20, metavar="N", help="untimed batch-1 runs before the timed ones (count; default: 20)"
    )
    group.add_argument("--runs", type=int, default=500, metavar="N", help="timed batch-1 runs (count; default: 500)")
    group.add_argument(
        "--batch-sizes",
        default=DEFAULT_BATCH_SIZES,
        metavar="LIST",
        help=f"comma-separated batch sizes of the throughput runs (images per batch; default: {DEFAULT_BATCH_SIZES})",
    )
    group.add_argument(
        "--throughput-images",
        type=int,
        default=2048,
        metavar="N",
        help="images run at each batch size, rounded up to whole batches and at least 3 batches (count; default: 2048)",
    )
    group.add_argument(
        "--repeats",
        type=int,
        default=1,
        metavar="N",
        help="end-to-end passes over PATH, and single-thread decode passes (count; default: 1)",
    )
    group.add_argument(
        "--seed", type=int, default=0, metavar="N", help="seed of the random inputs used without PATH (default: 0)"
    )

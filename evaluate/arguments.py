"""Argument types shared by the command lines of evaluate and train; standard library only."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """Parse a whole number of at least 1, for counts such as epochs and batch sizes."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive whole number")
    return value


def non_negative_int(text: str) -> int:
    """Parse a whole number of at least 0, for limits where 0 turns the limit off."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; pass 0 or more")
    return value

"""Stratified train/validation split, reproducible from its seed."""

from __future__ import annotations

import numpy as np


def stratified_split(labels: np.ndarray, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out ``per_class`` samples of every class; return (train, validation) indices.

    Both index arrays are sorted. ``per_class`` of 0 puts every sample in training.
    Raises ValueError when a class has no more samples than would be held out.
    """
    rng = np.random.default_rng(seed)
    train, validation = [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if per_class and len(members) <= per_class:
            raise ValueError(
                f"class {label} has {len(members)} samples, too few to hold out {per_class}; lower --val-per-class"
            )
        shuffled = rng.permutation(members)
        validation.append(shuffled[:per_class])
        train.append(shuffled[per_class:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(validation))

"""MNIST for training: the IDX files on disk, or torchvision's download when they are missing."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from evaluate.datasets import find_idx_files, open_idx_split
from evaluate.errors import InputError
from train.loop import LabelledArrays

log = logging.getLogger(__name__)


def _download(folder: Path) -> Path:
    """Fetch MNIST with torchvision into folder; return the folder holding the raw IDX files."""
    try:
        from torchvision.datasets import MNIST

        for train in (True, False):
            MNIST(root=str(folder), train=train, download=True)
    except (OSError, RuntimeError) as error:
        # torchvision's message lists every mirror on its own line; keep the error to one.
        reason = " ".join(str(error).split())
        raise InputError(
            f"{folder}: no MNIST IDX files there and the download failed ({reason}); "
            "check the --mnist path, or put train-images-idx3-ubyte.gz and the other three files in that folder"
        ) from error
    return folder / "MNIST" / "raw"


def mnist_folder(folder: str | Path, download: bool = True) -> Path:
    """Return the folder holding MNIST's four IDX files, downloading them when allowed."""
    folder = Path(folder)
    for candidate in (folder, folder / "MNIST" / "raw"):
        if candidate.is_dir() and find_idx_files(candidate, "train") and find_idx_files(candidate, "test"):
            return candidate
    if not download:
        raise InputError(f"{folder}: MNIST IDX files not found; pass --mnist with the folder holding them")
    log.info("MNIST not found in %s; downloading it with torchvision", folder)
    return _download(folder)


def load_mnist(folder: str | Path, split: str) -> LabelledArrays:
    """Return one MNIST split as uint8 canvases and labels."""
    image_set = open_idx_split(mnist_folder(folder), split)
    # A writable copy: IDX pixels are a read-only view of the decompressed file.
    return LabelledArrays(np.array(image_set.pixels), image_set.labels)


def subset(data: LabelledArrays, size: int | None, seed: int) -> LabelledArrays:
    """Return ``size`` samples drawn without replacement, the same for a given seed."""
    if size is None or size == len(data):
        return data
    if size > len(data):
        raise InputError(f"--train-size {size} exceeds the {len(data)} training images available; pass at most {len(data)}")
    if size < 10:
        raise InputError(f"--train-size {size} is too small; use at least 10 images")
    index = np.sort(np.random.default_rng(seed + 99).permutation(len(data))[:size])
    return LabelledArrays(data.canvases[index], data.labels[index])

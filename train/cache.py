"""HDF5 cache of preprocessed canvases, so each source image is decoded once.

Decoding the 1200x900 scans dominates a short training run. The cache file is keyed by
the SHA-256 of the data source and the preprocessing recipe: a changed zip, folder or
recipe gets a new file, and a file whose stored key does not match is rebuilt.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from evaluate.atomic import atomic_path
from evaluate.datasets import ImageSet, open_image_set, source_digest
from evaluate.decoding import decode_all
from evaluate.errors import InputError
from evaluate.preprocessing import Recipe

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Return the cache folder: $INKBENCH_CACHE, else $XDG_CACHE_HOME/inkbench, else ~/.cache/inkbench."""
    if os.environ.get("INKBENCH_CACHE"):
        return Path(os.environ["INKBENCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "inkbench"


@dataclass
class CanvasSet:
    """Preprocessed canvases of a data source, with labels and the members they came from."""

    image_set: ImageSet
    canvases: np.ndarray
    labels: np.ndarray
    members: list[str]
    source_sha256: str
    skipped: list[str]

    @property
    def class_names(self) -> list[str]:
        return self.image_set.class_names


def _cache_path(digest: str, recipe: Recipe) -> Path:
    recipe_key = hashlib.sha256(recipe.to_json().encode()).hexdigest()[:12]
    return cache_dir() / f"canvases-{digest[:16]}-{recipe_key}.h5"


def _read_cache(path: Path, digest: str, recipe: Recipe) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    try:
        with h5py.File(path, "r") as file:
            if file.attrs.get("source_sha256") != digest or file.attrs.get("recipe") != recipe.to_json():
                log.info("cache %s is stale; rebuilding", path)
                return None
            members = [m.decode() for m in file["members"][()]]
            return file["canvases"][()], file["labels"][()], members
    except (OSError, KeyError) as error:
        log.warning("cache %s is unreadable (%s); rebuilding", path, error)
        return None


def _write_cache(path: Path, digest: str, recipe: Recipe, canvases: np.ndarray, labels: np.ndarray, members: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary, h5py.File(temporary, "w") as file:
        file.create_dataset("canvases", data=canvases, compression="gzip", compression_opts=1)
        file.create_dataset("labels", data=labels)
        file.create_dataset("members", data=np.array(members, dtype=object), dtype=h5py.string_dtype())
        file.attrs["source_sha256"] = digest
        file.attrs["recipe"] = recipe.to_json()


def load_canvases(path: str | Path, recipe: Recipe, split: str = "train", workers: int | None = None) -> CanvasSet:
    """Return the preprocessed, labelled canvases of a data source, from the cache when valid.

    ``split`` picks the MNIST split when ``path`` contains IDX files; those are already
    decoded, so they bypass the cache.
    """
    image_set = open_image_set(path, split=split)
    if not image_set.labelled:
        raise InputError(f"{path}: training needs labelled data, a folder or zip of class sub-folders")
    digest = _idx_digest(image_set) if image_set.kind == "idx" else source_digest(path)
    cache = _cache_path(digest, recipe)

    cached = _read_cache(cache, digest, recipe) if cache.exists() else None
    if cached is not None:
        canvases, labels, members = cached
        log.info("loaded %d canvases from cache %s", len(canvases), cache)
        return CanvasSet(image_set, canvases, labels, members, digest, [])

    log.info("decoding %d images of %s (cached afterwards in %s)", len(image_set), path, cache)
    decoded = decode_all(image_set, recipe, workers)
    labels = image_set.labels[decoded.indices]
    members = [image_set.members[i] for i in decoded.indices]
    skipped = [image_set.members[i] for i, _ in decoded.failures]
    if image_set.kind != "idx":
        _write_cache(cache, digest, recipe, decoded.canvases, labels, members)
    return CanvasSet(image_set, decoded.canvases, labels, members, digest, skipped)


def _idx_digest(image_set: ImageSet) -> str:
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(image_set.pixels).tobytes())
    digest.update(np.ascontiguousarray(image_set.labels).tobytes())
    return digest.hexdigest()

"""Reading labelled and unlabelled image sets from folders, zip files and MNIST IDX files.

Training and the evaluator both read data through ``open_image_set``. It accepts:

- a folder or zip of class sub-folders, named ``SampleNNN`` (Chars74K numbering, class
  NNN-1 in the order 0-9, A-Z, a-z) or by the class names themselves;
- a folder or zip of images with no sub-folders, which is unlabelled;
- a folder holding MNIST IDX files (gzip-compressed or not), read as one split.

A zip or folder that only wraps one folder (``train/Sample001/...``) is descended into.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import re
import string
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np
from PIL import Image

from evaluate.errors import InputError
from evaluate.preprocessing import load_image

log = logging.getLogger(__name__)

# Class order of Chars74K's EnglishHnd set: Sample001 is "0", Sample011 "A", Sample037 "a".
CHARS74K_CLASSES = tuple(string.digits + string.ascii_uppercase + string.ascii_lowercase)
DIGIT_CLASSES = tuple(string.digits)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
_SAMPLE_FOLDER = re.compile(r"^Sample(\d{3})$")

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass
class ImageSet:
    """Images of one source, with labels when the source has them.

    ``members`` are file paths relative to ``root`` (folders), member names (zips), or
    ``idx:N`` (IDX files, whose decoded pixels are in ``pixels``). ``labels`` index
    ``class_names``; it is None for an unlabelled set.
    """

    source: Path
    kind: str
    root: str
    members: list[str]
    labels: np.ndarray | None
    class_names: list[str]
    pixels: np.ndarray | None = None
    _zip: zipfile.ZipFile | None = field(default=None, repr=False, compare=False)
    _zip_pid: int = field(default=0, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.members)

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    def read(self, index: int) -> Image.Image | np.ndarray:
        """Decode one image. Raises OSError when the file is not a readable image."""
        if self.pixels is not None:
            return self.pixels[index]
        member = self.members[index]
        if self.kind == "zip":
            # A forked worker must not share the parent's file offset: reopen per process.
            if self._zip is None or self._zip_pid != os.getpid():
                self._zip = zipfile.ZipFile(self.source)
                self._zip_pid = os.getpid()
            with self._zip.open(member) as handle:
                return load_image(handle)
        return load_image(Path(self.root) / member)

    def subset(self, indices: Sequence[int]) -> "ImageSet":
        """Return a view of the given samples, in that order."""
        indices = list(indices)
        return ImageSet(
            source=self.source,
            kind=self.kind,
            root=self.root,
            members=[self.members[i] for i in indices],
            labels=None if self.labels is None else self.labels[indices],
            class_names=self.class_names,
            pixels=None if self.pixels is None else self.pixels[indices],
        )

    def __getstate__(self) -> dict:
        # An open ZipFile cannot cross a process boundary; each worker reopens it.
        state = self.__dict__.copy()
        state["_zip"] = None
        return state


def is_image_name(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES and not PurePosixPath(name).name.startswith(".")


def find_idx_files(folder: Path, split: str) -> tuple[Path, Path] | None:
    """Return the (images, labels) IDX paths of a split in folder, gzip or not, or None."""
    found = []
    for stem in IDX_FILES[split]:
        candidates = [folder / stem, folder / f"{stem}.gz", folder / stem.replace("-idx", ".idx")]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            return None
        found.append(path)
    return found[0], found[1]


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzip-compressed or not) of unsigned bytes into an array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as error:
        raise InputError(f"{path}: cannot read IDX file ({error}); download it again") from error
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise InputError(f"{path}: not an IDX file (bad magic number); expected MNIST's IDX format")
    if data[2] != 0x08:
        raise InputError(f"{path}: IDX data type 0x{data[2]:02x} is not supported; only unsigned bytes (0x08) are")
    ndim = data[3]
    header_end = 4 + 4 * ndim
    if len(data) < header_end:
        raise InputError(f"{path}: IDX header is truncated; download the file again")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape)) if shape else 0
    body = np.frombuffer(data, dtype=np.uint8, offset=header_end)
    if body.size != expected:
        raise InputError(
            f"{path}: IDX body has {body.size} bytes but its header declares shape {shape} "
            f"({expected} bytes); the file is truncated or corrupt, download it again"
        )
    return body.reshape(shape)


def open_idx_split(folder: Path, split: str) -> ImageSet:
    """Read one MNIST split ("train" or "test") from IDX files in folder."""
    paths = find_idx_files(folder, split)
    if paths is None:
        names = ", ".join(IDX_FILES[split])
        raise InputError(f"{folder}: MNIST {split} split not found; expected {names} (optionally .gz)")
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise InputError(
            f"{folder}: IDX images {images.shape} and labels {labels.shape} do not match; "
            "expected N x 28 x 28 images and N labels"
        )
    if labels.size and labels.max() > 9:
        raise InputError(f"{paths[1]}: label {labels.max()} is not a digit; expected MNIST labels 0-9")
    return ImageSet(
        source=folder,
        kind="idx",
        root=str(folder),
        members=[f"idx:{i}" for i in range(len(images))],
        labels=labels.astype(np.int64),
        class_names=list(DIGIT_CLASSES),
        pixels=images,
    )


def _list_zip(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            if bad is not None:
                raise InputError(f"{path}: member {bad} is corrupt (CRC mismatch); download the zip again")
            return [info.filename for info in archive.infolist() if not info.is_dir()]
    except zipfile.BadZipFile as error:
        raise InputError(f"{path}: not a readable zip file ({error}); it may be truncated, download it again") from error


def _list_folder(path: Path) -> list[str]:
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())


def class_of_folder(folder: str) -> str:
    """Return the class name a folder stands for: Chars74K's ``SampleNNN`` or the name itself."""
    match = _SAMPLE_FOLDER.match(folder)
    if match and 1 <= int(match.group(1)) <= len(CHARS74K_CLASSES):
        return CHARS74K_CLASSES[int(match.group(1)) - 1]
    return folder


def _strip_wrapping_folders(names: list[str], class_names: Sequence[str] | None) -> tuple[str, list[str]]:
    """Descend while every image sits inside one top-level folder that is not a class.

    A single top folder that directly contains images is a class folder when its name is a
    known class, and the wrapper of an unlabelled set otherwise.
    """
    known = set(class_names) if class_names else set(CHARS74K_CLASSES)
    prefix = ""
    while names and all("/" in n for n in names):
        heads = {n.split("/", 1)[0] for n in names}
        if len(heads) != 1:
            break
        head = heads.pop()
        inner = [n.split("/", 1)[1] for n in names]
        if any("/" not in n for n in inner) and class_of_folder(head) in known:
            break
        prefix += head + "/"
        names = inner
    return prefix, names


def infer_class_names(names: Sequence[str]) -> list[str]:
    """Choose the class order for class names when no model fixes it.

    Characters keep Chars74K's order; digits alone give the ten digit classes; anything
    else is sorted.
    """
    present = set(names)
    if present <= set(DIGIT_CLASSES):
        return list(DIGIT_CLASSES)
    if present <= set(CHARS74K_CLASSES):
        return [c for c in CHARS74K_CLASSES if c in present]
    return sorted(present)


def label_folders(folders: Sequence[str], class_names: Sequence[str] | None) -> tuple[np.ndarray, list[str]]:
    """Map each image's class folder to a class index; return the labels and class names.

    With ``class_names`` (a model's classes) every folder must name one of them.
    """
    distinct = sorted(set(folders))
    names = {folder: class_of_folder(folder) for folder in distinct}
    classes = list(class_names) if class_names is not None else infer_class_names(list(names.values()))
    unknown = sorted(folder for folder, name in names.items() if name not in classes)
    if unknown:
        raise InputError(
            f"class folders {', '.join(unknown[:8])} match none of the {len(classes)} classes "
            f"({' '.join(classes[:12])}{' ...' if len(classes) > 12 else ''}); "
            "name class folders by class or SampleNNN, or pass the class names"
        )
    index = {folder: classes.index(name) for folder, name in names.items()}
    return np.array([index[f] for f in folders], dtype=np.int64), classes


def open_image_set(path: str | Path, class_names: Sequence[str] | None = None, split: str = "test") -> ImageSet:
    """Open a folder, zip or MNIST IDX folder as an ImageSet.

    ``class_names`` fixes the class order (a model's classes); without it the order is
    Chars74K's for character folders and sorted otherwise. ``split`` chooses the MNIST
    split when path contains IDX files. Raises InputError with a one-line message.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder; give a folder of images, a zip, or an MNIST IDX folder")
    if path.is_dir() and (find_idx_files(path, split) is not None):
        return open_idx_split(path, split)

    if path.is_dir():
        kind, names = "folder", _list_folder(path)
    elif zipfile.is_zipfile(path) or path.suffix.lower() == ".zip":
        kind, names = "zip", _list_zip(path)
    else:
        raise InputError(f"{path}: not a folder, zip file or MNIST IDX folder")

    images = [n for n in names if is_image_name(n) and "__MACOSX" not in n]
    if not images:
        raise InputError(f"{path}: contains no images ({', '.join(sorted(IMAGE_SUFFIXES))}); check the path")
    prefix, relative = _strip_wrapping_folders(images, class_names)
    root = str(path) if kind == "zip" else str(path / prefix)
    members = [prefix + r for r in relative] if kind == "zip" else relative

    flat = [r for r in relative if "/" not in r]
    if len(flat) == len(relative):
        return ImageSet(path, kind, root, members, None, list(class_names or []))
    if flat:
        raise InputError(
            f"{path}: mixes {len(flat)} loose images with class sub-folders; "
            "move the loose images into a class folder or a separate folder"
        )
    try:
        labels, classes = label_folders([r.split("/", 1)[0] for r in relative], class_names)
    except InputError as error:
        # label_folders does not know the path; name it, as every other InputError here does.
        raise InputError(f"{path}: {error}") from None
    return ImageSet(path, kind, root, members, labels, classes)


def source_digest(path: str | Path) -> str:
    """Return the SHA-256 of a data source: a file's bytes, or a folder's paths and bytes."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_file():
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    for relative in _list_folder(path):
        digest.update(relative.encode() + b"\0")
        digest.update((path / relative).read_bytes())
    return digest.hexdigest()

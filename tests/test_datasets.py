"""Tests of reading data sets (evaluate.datasets, train.mnist_data) and of the canvas cache.

IDX files are written to tmp_path from a subset of the real MNIST test split. Zips and
folders are built from small synthetic PNGs, so no test decodes a full-size scan.
"""

from __future__ import annotations

import gzip
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import train.cache
from evaluate.datasets import CHARS74K_CLASSES, DIGIT_CLASSES, find_idx_files, open_image_set, read_idx
from evaluate.errors import InputError
from evaluate.preprocessing import MNIST_RECIPE, Recipe
from train.cache import load_canvases
from train.loop import LabelledArrays
from train.mnist_data import load_mnist, mnist_folder, subset

from conftest import MNIST_DIR, idx_bytes, require

IDX_IMAGES = 50


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INKBENCH_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def mnist_subset() -> tuple[np.ndarray, np.ndarray]:
    paths = find_idx_files(require(MNIST_DIR), "test")
    if paths is None:
        pytest.skip(f"{MNIST_DIR} holds no MNIST test split")
    return read_idx(paths[0])[:IDX_IMAGES], read_idx(paths[1])[:IDX_IMAGES]


def write_idx_folder(folder: Path, images: np.ndarray, labels: np.ndarray, compress: bool, splits=("train", "test")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    stems = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"), "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
    for split in splits:
        for stem, array in zip(stems[split], (images, labels)):
            if compress:
                (folder / f"{stem}.gz").write_bytes(gzip.compress(idx_bytes(array)))
            else:
                (folder / stem).write_bytes(idx_bytes(array))
    return folder


def glyph_png(value: int, size: tuple[int, int] = (40, 30)) -> bytes:
    """A small dark-on-white PNG with a block of ink whose position depends on value."""
    pixels = np.full((size[1], size[0]), 255, np.uint8)
    pixels[5 : 15 + value % 10, 5 + value % 20 : 15 + value % 20] = 0
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def write_folder(root: Path, members: dict[str, bytes]) -> Path:
    for name, data in members.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return root


def assert_one_line_error(error: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


# IDX files.


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "plain"])
def test_idx_reads_images_and_labels(mnist_subset, tmp_path, compress):
    images, labels = mnist_subset
    folder = write_idx_folder(tmp_path / "mnist", images, labels, compress, splits=("test",))

    image_set = open_image_set(folder, split="test")

    assert image_set.kind == "idx"
    assert image_set.class_names == list(DIGIT_CLASSES)
    np.testing.assert_array_equal(image_set.pixels, images)
    np.testing.assert_array_equal(image_set.labels, labels)


def test_idx_bad_magic_is_input_error(mnist_subset, tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(b"\x01\x02" + idx_bytes(mnist_subset[0])[2:])

    with pytest.raises(InputError) as error:
        read_idx(path)

    assert_one_line_error(error, str(path), "bad magic number")


def test_idx_truncated_body_is_input_error(mnist_subset, tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(idx_bytes(mnist_subset[0])[:-100])

    with pytest.raises(InputError) as error:
        read_idx(path)

    assert_one_line_error(error, str(path), "truncated or corrupt", f"({IDX_IMAGES}, 28, 28)")


def test_idx_truncated_header_is_input_error(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(bytes([0, 0, 0x08, 3, 0, 0]))

    with pytest.raises(InputError) as error:
        read_idx(path)

    assert_one_line_error(error, str(path), "header is truncated")


def test_idx_truncated_gzip_is_input_error(mnist_subset, tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(mnist_subset[0]))[:-200])

    with pytest.raises(InputError) as error:
        read_idx(path)

    assert_one_line_error(error, str(path), "cannot read IDX file")


def test_idx_mismatched_counts_are_input_error(mnist_subset, tmp_path):
    images, labels = mnist_subset
    folder = tmp_path / "mnist"
    folder.mkdir()
    (folder / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(images))
    (folder / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(labels[:-1]))

    with pytest.raises(InputError) as error:
        open_image_set(folder, split="test")

    assert_one_line_error(error, "do not match")


def test_load_mnist_reads_both_splits(mnist_subset, tmp_path):
    images, labels = mnist_subset
    folder = write_idx_folder(tmp_path / "mnist", images, labels, compress=True)

    train = load_mnist(folder, "train")
    test = load_mnist(folder, "test")

    np.testing.assert_array_equal(train.canvases, images)
    np.testing.assert_array_equal(test.labels, labels)
    assert train.canvases.flags.writeable


def test_mnist_folder_without_files_is_input_error(tmp_path):
    with pytest.raises(InputError) as error:
        mnist_folder(tmp_path, download=False)

    assert_one_line_error(error, str(tmp_path), "MNIST IDX files not found")


def test_mnist_subset_depends_on_seed(mnist_subset):
    images, labels = mnist_subset
    data = LabelledArrays(images, labels)
    first, again, other = subset(data, 20, seed=1), subset(data, 20, seed=1), subset(data, 20, seed=2)

    assert len(first) == 20
    np.testing.assert_array_equal(first.canvases, again.canvases)
    assert not np.array_equal(first.canvases, other.canvases)


# Zips and folders of class sub-folders.


def test_zip_sample_folders_map_to_chars74k(tmp_path):
    members = {"train/Sample037/img037-001.png": glyph_png(1), "train/Sample011/img011-001.png": glyph_png(2), "train/Sample001/img001-001.png": glyph_png(3)}
    path = write_zip(tmp_path / "scans.zip", members)

    image_set = open_image_set(path)
    names = [image_set.class_names[label] for label in image_set.labels]

    assert image_set.kind == "zip"
    assert image_set.class_names == ["0", "A", "a"]
    assert dict(zip(image_set.members, names)) == {"train/Sample037/img037-001.png": "a", "train/Sample011/img011-001.png": "A", "train/Sample001/img001-001.png": "0"}


def test_zip_model_classes_fix_label_order(tmp_path):
    path = write_zip(tmp_path / "scans.zip", {"Sample011/x.png": glyph_png(1), "Sample037/y.png": glyph_png(2)})

    image_set = open_image_set(path, class_names=CHARS74K_CLASSES)

    assert image_set.class_names == list(CHARS74K_CLASSES)
    assert sorted(image_set.labels.tolist()) == [10, 36]


def test_folder_digit_names_give_ten_classes(tmp_path):
    root = write_folder(tmp_path / "digits", {"3/a.png": glyph_png(1), "7/b.png": glyph_png(2), "7/c.png": glyph_png(3)})

    image_set = open_image_set(root)

    assert image_set.kind == "folder"
    assert image_set.class_names == list(DIGIT_CLASSES)
    assert sorted(image_set.labels.tolist()) == [3, 7, 7]
    assert image_set.read(0).size == (40, 30)


def test_folder_unknown_class_is_input_error(tmp_path):
    root = write_folder(tmp_path / "digits", {"3/a.png": glyph_png(1), "cat/b.png": glyph_png(2)})

    with pytest.raises(InputError) as error:
        open_image_set(root, class_names=DIGIT_CLASSES)

    assert_one_line_error(error, str(root), "cat")


def test_folder_of_loose_images_is_unlabelled(tmp_path):
    root = write_folder(tmp_path / "scans", {"a.png": glyph_png(1), "b.png": glyph_png(2)})

    image_set = open_image_set(root)

    assert not image_set.labelled
    assert image_set.members == ["a.png", "b.png"]


def test_zip_truncated_is_input_error(tmp_path):
    path = write_zip(tmp_path / "scans.zip", {f"Sample001/{i}.png": glyph_png(i) for i in range(4)})
    path.write_bytes(path.read_bytes()[:-60])

    with pytest.raises(InputError) as error:
        open_image_set(path)

    assert_one_line_error(error, str(path), "not a readable zip file")


def test_zip_corrupt_member_is_input_error(tmp_path):
    path = write_zip(tmp_path / "scans.zip", {"Sample001/a.png": glyph_png(1)})
    data = bytearray(path.read_bytes())
    # The stored PNG starts after the 30-byte local header and the 15-byte member name.
    data[30 + len("Sample001/a.png") + 20] ^= 0xFF
    path.write_bytes(bytes(data))

    with pytest.raises(InputError) as error:
        open_image_set(path)

    assert_one_line_error(error, "Sample001/a.png", "CRC mismatch")


def test_missing_path_is_input_error(tmp_path):
    with pytest.raises(InputError) as error:
        open_image_set(tmp_path / "absent.zip")

    assert_one_line_error(error, "absent.zip", "no such file or folder")


# Canvas cache.


def digit_members(count_per_class: int = 2, offset: int = 0) -> dict[str, bytes]:
    return {f"{digit}/{index}.png": glyph_png(digit + index + offset) for digit in (1, 4) for index in range(count_per_class)}


def count_decodes(monkeypatch) -> list[int]:
    """Wrap train.cache.decode_all; return a list that grows by one per call."""
    calls: list[int] = []
    original = train.cache.decode_all

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(train.cache, "decode_all", counted)
    return calls


def test_cache_second_load_skips_decoding(tmp_path, monkeypatch):
    path = write_zip(tmp_path / "digits.zip", digit_members())
    first = load_canvases(path, MNIST_RECIPE, workers=1)

    def fail(*args, **kwargs):
        raise AssertionError("decode_all called although the cache is valid")

    monkeypatch.setattr(train.cache, "decode_all", fail)
    second = load_canvases(path, MNIST_RECIPE, workers=1)

    assert len(list((tmp_path / "cache").glob("canvases-*.h5"))) == 1
    np.testing.assert_array_equal(second.canvases, first.canvases)
    np.testing.assert_array_equal(second.labels, first.labels)
    assert second.members == first.members
    assert second.source_sha256 == first.source_sha256


def test_cache_recipe_change_rebuilds(tmp_path, monkeypatch):
    path = write_zip(tmp_path / "digits.zip", digit_members())
    calls = count_decodes(monkeypatch)

    load_canvases(path, MNIST_RECIPE, workers=1)
    other = load_canvases(path, Recipe(layout="mnist", size=28, mean=0.5, std=0.5, ink_box=16), workers=1)

    assert len(calls) == 2
    assert len(list((tmp_path / "cache").glob("canvases-*.h5"))) == 2
    assert max(np.ptp(np.flatnonzero(canvas.any(axis=1))) + 1 for canvas in other.canvases) == 16


def test_cache_changed_member_rebuilds(tmp_path, monkeypatch):
    members = digit_members()
    first_path = write_zip(tmp_path / "first.zip", members)
    changed = dict(members)
    changed["4/0.png"] = glyph_png(9)
    second_path = write_zip(tmp_path / "second.zip", changed)
    calls = count_decodes(monkeypatch)

    first = load_canvases(first_path, MNIST_RECIPE, workers=1)
    second = load_canvases(second_path, MNIST_RECIPE, workers=1)
    index = second.members.index("4/0.png")

    assert len(calls) == 2
    assert second.source_sha256 != first.source_sha256
    assert not np.array_equal(second.canvases[index], first.canvases[index])


def test_cache_unreadable_file_is_rebuilt(tmp_path, monkeypatch):
    path = write_zip(tmp_path / "digits.zip", digit_members())
    first = load_canvases(path, MNIST_RECIPE, workers=1)
    (cache_file,) = (tmp_path / "cache").glob("canvases-*.h5")
    cache_file.write_bytes(b"not HDF5")
    calls = count_decodes(monkeypatch)

    again = load_canvases(path, MNIST_RECIPE, workers=1)

    assert len(calls) == 1
    np.testing.assert_array_equal(again.canvases, first.canvases)


def test_cache_idx_source_writes_no_file(mnist_subset, tmp_path):
    images, labels = mnist_subset
    folder = write_idx_folder(tmp_path / "mnist", images, labels, compress=False)

    canvas_set = load_canvases(folder, MNIST_RECIPE, split="train", workers=1)

    np.testing.assert_array_equal(canvas_set.canvases, images)
    assert not (tmp_path / "cache").exists()


def test_cache_unlabelled_source_is_input_error(tmp_path):
    root = write_folder(tmp_path / "loose", {"a.png": glyph_png(1)})

    with pytest.raises(InputError) as error:
        load_canvases(root, MNIST_RECIPE, workers=1)

    assert_one_line_error(error, "labelled data")

"""Image statistics and class balance of a data set, for comparison with MNIST.

Statistics are computed on decoded greyscale images with ink bright on black, as
``evaluate.preprocessing.to_canvas`` returns them, and all images must have one shape.
"""

from __future__ import annotations

import io
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image
from scipy import stats

from evaluate.datasets import ImageSet

# Grey level (0-255) from which a pixel counts as ink for the stroke width estimate,
# the middle of the range, where an anti-aliased stroke edge lies.
INK_LEVEL = 128
# Width of the frame along the image edges taken as background. MNIST scales each digit
# into a 20x20 box and centres it in 28x28 by its centre of mass, so its outer 2 pixels
# are almost always black.
BORDER_WIDTH = 2
# Images per step of the vectorised statistics, which bounds their working memory.
STATISTICS_BATCH = 8192

# Luminance quantisation table of the JPEG standard (ITU-T T.81, Annex K, Table K.1),
# which the IJG library scales by a quality setting of 1-100.
_STANDARD_LUMINANCE_TABLE = np.array(
    [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
     14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
     18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
     49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99],
    dtype=np.float64,
)  # fmt: skip


def stroke_widths(images: np.ndarray) -> np.ndarray:
    """Estimate each image's stroke width in pixels as 2 * ink area / ink perimeter.

    A stroke of length L and width w much smaller than L has area L*w and perimeter
    about 2L, so 2A/P recovers w. The perimeter is the number of ink/background pixel
    edges. Images without ink get NaN.
    """
    ink = images >= INK_LEVEL
    padded = np.pad(ink, ((0, 0), (1, 1), (1, 1)))
    vertical_edges = (padded[:, 1:, :] != padded[:, :-1, :]).sum(axis=(1, 2))
    horizontal_edges = (padded[:, :, 1:] != padded[:, :, :-1]).sum(axis=(1, 2))
    perimeter = vertical_edges + horizontal_edges
    area = ink.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(perimeter > 0, 2.0 * area / perimeter, np.nan)


def distinct_grey_levels(images: np.ndarray) -> np.ndarray:
    """Count the distinct grey levels in each image."""
    flat = np.sort(images.reshape(len(images), -1), axis=1)
    return 1 + (np.diff(flat, axis=1) != 0).sum(axis=1)


def _border_mask(height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[:BORDER_WIDTH, :] = mask[-BORDER_WIDTH:, :] = True
    mask[:, :BORDER_WIDTH] = mask[:, -BORDER_WIDTH:] = True
    return mask


def compute_image_statistics(images: np.ndarray) -> dict[str, Any]:
    """Summarise an (N, H, W) uint8 array of images with ink bright on black."""
    if images.ndim != 3 or len(images) == 0:
        raise ValueError(f"expected a non-empty (N, H, W) image array, got shape {images.shape}")
    border = _border_mask(*images.shape[1:])
    widths, levels, means, border_means, border_nonzero, zero_share = [], [], [], [], [], []
    for start in range(0, len(images), STATISTICS_BATCH):
        batch = images[start : start + STATISTICS_BATCH]
        widths.append(stroke_widths(batch))
        levels.append(distinct_grey_levels(batch))
        means.append(batch.mean(axis=(1, 2)))
        border_pixels = batch[:, border]
        border_means.append(border_pixels.mean(axis=1))
        border_nonzero.append((border_pixels > 0).mean(axis=1))
        zero_share.append((batch == 0).mean(axis=(1, 2)))
    widths_all = np.concatenate(widths)
    levels_all = np.concatenate(levels)
    return {
        "images": int(len(images)),
        "height": int(images.shape[1]),
        "width": int(images.shape[2]),
        "mean_intensity": float(np.concatenate(means).mean()),
        "intensity_std": float(images.std()),
        "zero_pixel_share": float(np.concatenate(zero_share).mean()),
        "border_mean_intensity": float(np.concatenate(border_means).mean()),
        "border_nonzero_share": float(np.concatenate(border_nonzero).mean()),
        "distinct_grey_levels_mean": float(levels_all.mean()),
        "distinct_grey_levels_overall": int(np.unique(images).size),
        "stroke_width_mean": float(np.nanmean(widths_all)),
        "stroke_width_median": float(np.nanmedian(widths_all)),
    }


def estimate_jpeg_quality(quantization: dict[int, Sequence[int]]) -> int | None:
    """Estimate the IJG quality setting (1-100) from a JPEG's luminance quantisation table.

    Compares the table's sum with the standard table scaled to each quality, which does
    not depend on whether the table is stored in zigzag or natural order. Returns None
    without a luminance table.
    """
    table = quantization.get(0)
    if table is None or len(table) != 64:
        return None
    target = float(np.sum(table))
    qualities = np.arange(1, 101)
    scales = np.where(qualities < 50, 5000.0 / qualities, 200.0 - 2.0 * qualities)
    scaled = np.clip(np.floor((_STANDARD_LUMINANCE_TABLE[None, :] * scales[:, None] + 50) / 100), 1, 255)
    return int(qualities[np.argmin(np.abs(scaled.sum(axis=1) - target))])


def _read_file_bytes(image_set: ImageSet, index: int, archive: zipfile.ZipFile | None) -> bytes:
    member = image_set.members[index]
    if archive is not None:
        return archive.read(member)
    return (Path(image_set.root) / member).read_bytes()


def sample_file_properties(image_set: ImageSet, sample_size: int, seed: int) -> dict[str, Any]:
    """Read a random sample of files and count their formats, modes and sizes.

    Decoded images do not show what the files were, so this opens the files themselves.
    IDX sets, which have no files, return only their array shape.
    """
    if image_set.pixels is not None:
        height, width = image_set.pixels.shape[1:]
        return {"sampled": 0, "formats": {"IDX": len(image_set)}, "sizes": {f"{width}x{height}": len(image_set)}}
    rng = np.random.default_rng(seed)
    indices = rng.choice(len(image_set), size=min(sample_size, len(image_set)), replace=False)
    formats, modes, sizes, qualities, file_bytes = Counter(), Counter(), Counter(), [], []
    archive = zipfile.ZipFile(image_set.source) if image_set.kind == "zip" else None
    try:
        for index in indices:
            data = _read_file_bytes(image_set, int(index), archive)
            file_bytes.append(len(data))
            with Image.open(io.BytesIO(data)) as image:
                formats[image.format or "unknown"] += 1
                modes[image.mode] += 1
                sizes[f"{image.width}x{image.height}"] += 1
                if image.format == "JPEG":
                    quality = estimate_jpeg_quality(getattr(image, "quantization", None) or {})
                    if quality is not None:
                        qualities.append(quality)
    finally:
        if archive is not None:
            archive.close()
    properties: dict[str, Any] = {
        "sampled": int(len(indices)),
        "formats": dict(formats),
        "modes": dict(modes),
        "sizes": dict(sizes),
        "file_bytes_mean": float(np.mean(file_bytes)) if file_bytes else None,
    }
    if qualities:
        properties["jpeg_quality_median"] = float(np.median(qualities))
        properties["jpeg_quality_range"] = [int(min(qualities)), int(max(qualities))]
    return properties


def compare_class_counts(labels: np.ndarray, reference_labels: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Count images per class and test the counts against a reference set's class shares.

    The chi-square goodness-of-fit test checks whether ``labels`` could be a sample with the
    class shares of ``reference_labels``. Folder counts that are a permutation of the
    reference's counts point at permuted labels, so the sorted counts are compared too.
    """
    num_classes = len(class_names)
    counts = np.bincount(labels, minlength=num_classes)[:num_classes]
    reference_counts = np.bincount(reference_labels, minlength=num_classes)[:num_classes]
    expected = reference_counts / reference_counts.sum() * counts.sum()
    test = stats.chisquare(counts, expected)
    sorted_difference = np.abs(np.sort(counts) - np.sort(reference_counts)).sum()
    return {
        "classes": list(class_names),
        "counts": counts.tolist(),
        "reference_counts": reference_counts.tolist(),
        "chi_square": float(test.statistic),
        "p_value": float(test.pvalue),
        "same_counts_in_other_order": bool(sorted_difference == 0 and (counts != reference_counts).any()),
    }

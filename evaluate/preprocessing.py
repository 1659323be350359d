"""Image preprocessing shared by training and grading.

This module is the one implementation of how an image becomes a model input. Training
caches its output, export writes the recipe into the ONNX file's metadata, and the
evaluator reads the recipe back and applies the same steps, so the two sides cannot
drift apart. It needs only numpy and Pillow.

Every recipe produces ink bright on a dark background, the MNIST convention, as a
``size x size`` uint8 canvas (``to_canvas``), which ``normalize`` turns into the float32
model input. Two layouts exist:

``canvas``
    For the full-page character scans (1200x900, dark ink on white). A square window as
    tall as the page is cut out, centred horizontally on the ink but fixed vertically,
    and shrunk to ``size``. Keeping the vertical position and the absolute size matters:
    lower-case letters are drawn smaller and lower than capitals, and that is the main
    cue separating case pairs such as c/C, o/O, s/S. Cropping to the ink would discard it.
``mnist``
    MNIST's own construction: the ink's bounding box is scaled so that its longer side is
    20 pixels, and pasted into a 28x28 canvas with its centre of mass at the centre.

Images that already have the recipe's size (MNIST itself, or the task 3 JPEGs) are taken
as they are, apart from polarity, so MNIST pixels reach the model unchanged.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps

LAYOUTS = ("canvas", "mnist")

# Pixels at or above this level (0-255, after inversion to bright ink) count as ink when
# locating the character. Scans are near-binary, so the exact value matters little.
INK_THRESHOLD = 96


@dataclass(frozen=True)
class Recipe:
    """Parameters of the preprocessing, stored with every checkpoint and ONNX model."""

    layout: str = "canvas"
    size: int = 64
    mean: float = 0.0
    std: float = 1.0
    # canvas layout: the window's side as a fraction of the page height.
    window: float = 1.0
    # mnist layout: side of the box the ink is scaled into, as MNIST does with 20 of 28.
    ink_box: int = 20

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown preprocessing layout {self.layout!r}; expected one of {LAYOUTS}")
        if self.size < 8:
            raise ValueError(f"input size {self.size} is too small; use 8 pixels or more")
        if self.std <= 0:
            raise ValueError(f"normalisation std must be positive, got {self.std}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Recipe":
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Recipe":
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        return cls(**known)


# Recipes of the shipped models. The mean and std are those of the training canvases,
# measured once; they only need to be roughly right, because batch norm follows.
SCAN_RECIPE = Recipe(layout="canvas", size=64, mean=0.096, std=0.284)
MNIST_RECIPE = Recipe(layout="mnist", size=28, mean=0.1307, std=0.3081)


def to_grayscale(image: Image.Image) -> np.ndarray:
    """Convert an image of any PIL mode to a 2-D uint8 array.

    Transparent pixels are composited onto white, and 16- and 32-bit images are scaled
    down by their actual range rather than clipped.
    """
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scale = 255.0 / (high - low) if high > low else 0.0
        return ((values - low) * scale).round().astype(np.uint8)
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return np.asarray(image.convert("L"), dtype=np.uint8)


def to_bright_ink(gray: np.ndarray) -> np.ndarray:
    """Invert the image when its background is light, so ink is bright on black.

    The background level is the median of the outermost rows and columns, which in a
    scan or an MNIST digit are nearly all background.
    """
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if np.median(border) > 127:
        return 255 - gray
    return gray


def _ink_bounds(ink: np.ndarray) -> tuple[int, int, int, int] | None:
    """Return (top, bottom, left, right) of the ink, inclusive, or None for a blank image."""
    rows = np.flatnonzero((ink >= INK_THRESHOLD).any(axis=1))
    cols = np.flatnonzero((ink >= INK_THRESHOLD).any(axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def _canvas_layout(ink: np.ndarray, recipe: Recipe) -> np.ndarray:
    height, width = ink.shape
    side = max(1, round(recipe.window * height))
    bounds = _ink_bounds(ink)
    centre_x = width / 2 if bounds is None else (bounds[2] + bounds[3]) / 2
    left = round(centre_x - side / 2)
    top = round((height - side) / 2)

    # Cut the window out of a black page, so a window reaching past the edge is padded.
    window = np.zeros((side, side), dtype=np.uint8)
    src_top, src_left = max(top, 0), max(left, 0)
    src_bottom, src_right = min(top + side, height), min(left + side, width)
    window[src_top - top : src_bottom - top, src_left - left : src_right - left] = ink[
        src_top:src_bottom, src_left:src_right
    ]

    # Box filtering averages every source pixel, so thin strokes fade rather than vanish.
    small = Image.fromarray(window).resize((recipe.size, recipe.size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.uint8)


def _mnist_layout(ink: np.ndarray, recipe: Recipe) -> np.ndarray:
    canvas = np.zeros((recipe.size, recipe.size), dtype=np.uint8)
    bounds = _ink_bounds(ink)
    if bounds is None:
        return canvas
    top, bottom, left, right = bounds
    glyph = ink[top : bottom + 1, left : right + 1]

    # Scale the longer side to ink_box, keeping the aspect ratio, with a filter that
    # anti-aliases as MNIST's own normalisation did.
    height, width = glyph.shape
    scale = recipe.ink_box / max(height, width)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    glyph = np.asarray(Image.fromarray(glyph).resize(new_size, Image.Resampling.LANCZOS), dtype=np.uint8)

    # Place the glyph so that its centre of mass falls on the canvas centre, then clip.
    weights = glyph.astype(np.float64)
    total = weights.sum()
    if total > 0:
        com_y = (weights.sum(axis=1) * np.arange(glyph.shape[0])).sum() / total
        com_x = (weights.sum(axis=0) * np.arange(glyph.shape[1])).sum() / total
    else:
        com_y, com_x = (glyph.shape[0] - 1) / 2, (glyph.shape[1] - 1) / 2
    offset_y = round((recipe.size - 1) / 2 - com_y)
    offset_x = round((recipe.size - 1) / 2 - com_x)
    _paste(canvas, glyph, offset_y, offset_x)
    return canvas


def _paste(canvas: np.ndarray, glyph: np.ndarray, top: int, left: int) -> None:
    """Copy glyph into canvas at (top, left), clipping whatever falls outside."""
    g_top, g_left = max(0, -top), max(0, -left)
    c_top, c_left = max(0, top), max(0, left)
    rows = min(glyph.shape[0] - g_top, canvas.shape[0] - c_top)
    cols = min(glyph.shape[1] - g_left, canvas.shape[1] - c_left)
    if rows > 0 and cols > 0:
        canvas[c_top : c_top + rows, c_left : c_left + cols] = glyph[g_top : g_top + rows, g_left : g_left + cols]


def to_canvas(image: Image.Image | np.ndarray, recipe: Recipe) -> np.ndarray:
    """Turn a decoded image into the recipe's ``size x size`` uint8 canvas, ink bright."""
    gray = image if isinstance(image, np.ndarray) else to_grayscale(image)
    if gray.ndim != 2:
        raise ValueError(f"expected a 2-D grey image, got an array of shape {gray.shape}")
    ink = to_bright_ink(gray.astype(np.uint8, copy=False))
    if ink.shape == (recipe.size, recipe.size):
        return ink.copy()
    if recipe.layout == "canvas":
        return _canvas_layout(ink, recipe)
    return _mnist_layout(ink, recipe)


def normalize(canvases: np.ndarray, recipe: Recipe) -> np.ndarray:
    """Map uint8 canvases of shape (N, H, W) or (H, W) to float32 inputs of shape (N, 1, H, W)."""
    values = np.asarray(canvases, dtype=np.float32) / 255.0
    values = (values - recipe.mean) / recipe.std
    if values.ndim == 2:
        values = values[None]
    return values[:, None, :, :]


def load_image(source: Any) -> Image.Image:
    """Open an image from a path or file object and apply its EXIF orientation.

    Raises OSError (PIL.UnidentifiedImageError is one) when the data is not a readable image.
    """
    with Image.open(source) as image:
        image.load()
        return ImageOps.exif_transpose(image)

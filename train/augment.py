"""Batched random affine augmentation for handwriting, on the CPU.

Each sample in a batch gets its own rotation, scale, shear and translation, applied in
one ``grid_sample`` call. torchvision's transforms draw one set of parameters per call,
so per-sample augmentation through them would need a Python loop. Flips are left out on
purpose: a mirrored "b" is a "d".
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AffineRange:
    """Ranges of the random affine transform, drawn uniformly per sample."""

    degrees: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    shear_degrees: float = 10.0
    # Largest shift as a fraction of the image side.
    translate: float = 0.08

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "AffineRange":
        values = dict(values)
        values["scale"] = tuple(values["scale"])
        return cls(**values)


def _uniform(count: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(count, generator=generator)


def random_affine(images: torch.Tensor, ranges: AffineRange, generator: torch.Generator) -> torch.Tensor:
    """Warp a batch (N, C, H, W) of images with ink bright on black.

    Pixels pulled from outside the image are zero, the background colour.
    """
    count = images.shape[0]
    angle = torch.deg2rad(_uniform(count, -ranges.degrees, ranges.degrees, generator))
    shear = torch.deg2rad(_uniform(count, -ranges.shear_degrees, ranges.shear_degrees, generator))
    # Scale is drawn on a log scale so that shrinking and growing are equally likely.
    log_scale = _uniform(count, math.log(ranges.scale[0]), math.log(ranges.scale[1]), generator)
    scale = torch.exp(log_scale)
    # affine_grid works in [-1, 1] coordinates, so a shift of t of the side is 2t.
    shift = _uniform(2 * count, -2 * ranges.translate, 2 * ranges.translate, generator).view(count, 2)

    # The grid maps output to input coordinates, so build the inverse of
    # rotate-shear-scale: (R S)^-1 / scale.
    cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(shear)
    forward = torch.stack(
        [
            torch.stack([cos, -sin + cos * tan], dim=1),
            torch.stack([sin, cos + sin * tan], dim=1),
        ],
        dim=1,
    ) * scale.view(count, 1, 1)
    inverse = torch.linalg.inv(forward)
    theta = torch.cat([inverse, (-inverse @ shift.unsqueeze(2))], dim=2)

    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

"""The CNN used by every task: VGG-style stages of 3x3 convolutions with batch norm.

One family serves the 64x64 character canvases and the 28x28 MNIST digits. The head
flattens the last feature map instead of pooling it globally, so the classifier still
knows where on the canvas the ink is: on the character scans, position and size are what
tell a lower-case "o" from a capital "O".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of an InkNet; stored in checkpoints so they rebuild without code changes."""

    num_classes: int
    input_size: int
    widths: tuple[int, ...] = (32, 64, 128)
    # How many stages end with a 2x2 max pool; later stages keep the resolution.
    pooled_stages: int = 2
    # Side of the feature map the head flattens (the last map is max-pooled down to it).
    head_grid: int = 4
    dropout: float = 0.3

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        values = dict(values)
        values["widths"] = tuple(values["widths"])
        return cls(**values)

    def final_map_size(self) -> int:
        return self.input_size // (2**self.pooled_stages)


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class InkNet(nn.Module):
    """Stages of two conv-BN-ReLU blocks, max pooling, and a flattened linear head."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        channels = 1
        for stage, width in enumerate(config.widths):
            layers += _conv_bn_relu(channels, width) + _conv_bn_relu(width, width)
            if stage < config.pooled_stages:
                layers.append(nn.MaxPool2d(2))
            channels = width
        final = config.final_map_size()
        if final % config.head_grid != 0:
            raise ValueError(
                f"feature map of {final}x{final} cannot be pooled to a {config.head_grid}x{config.head_grid} grid; "
                "choose head_grid dividing it"
            )
        if final != config.head_grid:
            layers.append(nn.MaxPool2d(final // config.head_grid))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(config.dropout),
            nn.Linear(channels * config.head_grid**2, config.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_model(config: ModelConfig) -> InkNet:
    return InkNet(config)


# Architectures of the shipped models.
SCAN_CONFIG = ModelConfig(num_classes=62, input_size=64, widths=(32, 64, 128, 192), pooled_stages=3, head_grid=4, dropout=0.4)
MNIST_CONFIG = ModelConfig(num_classes=10, input_size=28, widths=(16, 32, 64), pooled_stages=2, head_grid=7, dropout=0.3)

"""Training history: per-epoch records and evaluation curves, saved to HDF5."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from evaluate.atomic import atomic_path


@dataclass
class History:
    """Per-epoch metrics, and metrics at fixed training steps (``curve``)."""

    epochs: dict[str, list[float]] = field(default_factory=dict)
    curve: dict[str, list[float]] = field(default_factory=dict)

    def add_epoch(self, **values: float) -> None:
        for key, value in values.items():
            self.epochs.setdefault(key, []).append(float(value))

    def add_point(self, **values: float) -> None:
        for key, value in values.items():
            self.curve.setdefault(key, []).append(float(value))

    def to_dict(self) -> dict:
        return {"epochs": self.epochs, "curve": self.curve}

    @classmethod
    def from_dict(cls, values: dict) -> "History":
        return cls(epochs={k: list(v) for k, v in values.get("epochs", {}).items()},
                   curve={k: list(v) for k, v in values.get("curve", {}).items()})

    def save_h5(self, path: str | Path, attributes: dict[str, str | int | float] | None = None) -> None:
        """Write the history to HDF5 groups ``epochs`` and ``curve``, atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as temporary, h5py.File(temporary, "w") as file:
            for group_name, records in (("epochs", self.epochs), ("curve", self.curve)):
                group = file.create_group(group_name)
                for key, values in records.items():
                    group.create_dataset(key, data=np.asarray(values, dtype=np.float64))
            for key, value in (attributes or {}).items():
                file.attrs[key] = value

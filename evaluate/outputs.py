"""Writing the JSON report, the HDF5 arrays and the predictions CSV, each atomically.

Every writer fills a temporary file in the target's folder and renames it over the
target with os.replace, so a reader never sees a half-written file and an interrupted
run leaves any earlier file in place.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from evaluate.atomic import atomic_path
from evaluate.errors import InputError
from evaluate.report import Evaluation


def check_output_path(path: Path, flag: str) -> None:
    """Raise InputError when ``path`` cannot be written, before any time is spent grading."""
    folder = path.parent
    if path.is_dir():
        raise InputError(f"{flag} {path}: is a folder; give a file name")
    if not folder.is_dir():
        raise InputError(f"{flag} {path}: folder {folder} does not exist; create it or choose another path")
    if not os.access(folder, os.W_OK):
        raise InputError(f"{flag} {path}: folder {folder} is not writable; choose another path")


def write_json(path: Path, report: dict[str, Any]) -> None:
    """Write the report as indented JSON; NaN never occurs because undefined values are null."""
    with atomic_path(path) as temporary:
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2, allow_nan=False)
            handle.write("\n")


def write_h5(path: Path, evaluation: Evaluation) -> None:
    """Write logits, predictions, labels and sample paths as HDF5 datasets.

    Labels are -1 for an unlabelled set. Class names and provenance go in attributes.
    """
    import h5py  # imported here so that runs without --h5 do not pay for loading it

    labels = evaluation.labels if evaluation.labels is not None else np.full(evaluation.samples, -1, np.int64)
    text = h5py.string_dtype(encoding="utf-8")
    with atomic_path(path) as temporary:
        with h5py.File(temporary, "w") as h5:
            h5.create_dataset("logits", data=evaluation.predictions.logits, compression="gzip")
            h5.create_dataset("predictions", data=evaluation.predicted.astype(np.int64))
            h5.create_dataset("labels", data=labels.astype(np.int64))
            h5.create_dataset("confidence", data=evaluation.confidence)
            h5.create_dataset("paths", data=np.array(evaluation.paths(), dtype=object), dtype=text)
            h5.create_dataset("class_names", data=np.array(evaluation.class_names, dtype=object), dtype=text)
            h5.attrs["model"] = str(evaluation.model.path)
            h5.attrs["data"] = str(evaluation.image_set.source)
            h5.attrs["provider"] = evaluation.model.provider
            h5.attrs["recipe"] = evaluation.spec.recipe.to_json()


def write_predictions_csv(path: Path, evaluation: Evaluation) -> None:
    """Write one row per graded sample: path, predicted label, confidence, and the true label if known."""
    names = evaluation.class_names
    labelled = evaluation.labels is not None
    with atomic_path(path) as temporary:
        with open(temporary, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "label", "confidence", *(["true_label"] if labelled else [])])
            for row, sample in enumerate(evaluation.paths()):
                values = [sample, names[evaluation.predicted[row]], f"{evaluation.confidence[row]:.6f}"]
                if labelled:
                    values.append(names[evaluation.labels[row]])
                writer.writerow(values)


def default_predictions_path(data: Path) -> Path:
    """Return ``<data name>-predictions.csv`` in the working directory, since the data may be read-only."""
    stem = data.name[: -len(".zip")] if data.name.lower().endswith(".zip") else data.name
    return Path(f"{stem or 'data'}-predictions.csv")

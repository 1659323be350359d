"""The preprocessing and class names used to grade a model, and checks that they fit it.

An inkbench model carries both in its ONNX metadata. A model from elsewhere gets them
from command-line flags, and flags given for an inkbench model override its metadata.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from evaluate.datasets import ImageSet
from evaluate.errors import InputError
from evaluate.preprocessing import Recipe
from evaluate.session import LoadedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreprocessingFlags:
    """Values of the preprocessing flags; None means the flag was not given."""

    class_names: list[str] | None = None
    layout: str | None = None
    size: int | None = None
    mean: float | None = None
    std: float | None = None

    def given(self) -> list[str]:
        names = {"class_names": "--classes", "layout": "--layout", "size": "--input-size", "mean": "--mean", "std": "--std"}
        return [flag for field, flag in names.items() if getattr(self, field) is not None]


@dataclass(frozen=True)
class ModelSpec:
    """The class names in logit order and the recipe that turns images into model inputs."""

    class_names: list[str]
    recipe: Recipe
    # "metadata", "flags", or "metadata and flags" when flags override some values.
    source: str


def parse_class_names(value: str) -> list[str]:
    """Parse ``--classes``: a file with one name a line, a comma-separated list, or one name a character.

    Raises InputError for an empty list or a repeated name.
    """
    path = Path(value)
    if path.is_file():
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    elif "," in value:
        names = [name.strip() for name in value.split(",") if name.strip()]
    else:
        names = list(value)
    if not names:
        raise InputError(f"--classes {value!r}: no class names found; pass e.g. 0123456789, a,b,c or a file")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise InputError(f"--classes: class names {' '.join(repeated)} appear more than once; list each class once")
    return names


def static_input_size(model: LoadedModel) -> int | None:
    """Return the side of a fixed square [N, C, H, W] input, or None when H or W is dynamic."""
    shape = model.input_shape
    if len(shape) == 4 and isinstance(shape[2], int) and shape[2] == shape[3]:
        return shape[2]
    return None


def _spec_from_flags(model: LoadedModel, flags: PreprocessingFlags) -> ModelSpec:
    required = {"--classes": flags.class_names, "--layout": flags.layout, "--mean": flags.mean, "--std": flags.std}
    size = flags.size or static_input_size(model)
    if size is None:
        required["--input-size"] = None
    missing = [flag for flag, value in required.items() if value is None]
    if missing:
        raise InputError(
            f"{model.path}: the model carries no inkbench metadata, so pass {', '.join(missing)} "
            f"(for example --classes 0123456789 --layout mnist --mean 0.1307 --std 0.3081)"
        )
    recipe = _make_recipe(Recipe(), layout=flags.layout, size=size, mean=flags.mean, std=flags.std)
    return ModelSpec(list(flags.class_names or []), recipe, "flags")


def _make_recipe(base: Recipe, **overrides: object) -> Recipe:
    changes = {name: value for name, value in overrides.items() if value is not None}
    try:
        return dataclasses.replace(base, **changes)
    except ValueError as error:  # Recipe validates layout, size and std
        raise InputError(f"invalid preprocessing flags: {error}") from error


def resolve_spec(model: LoadedModel, flags: PreprocessingFlags) -> ModelSpec:
    """Combine the model's metadata with the flags; raise InputError when something is missing."""
    if model.metadata is None:
        return _spec_from_flags(model, flags)

    metadata = model.metadata
    recipe = _make_recipe(metadata.recipe, layout=flags.layout, size=flags.size, mean=flags.mean, std=flags.std)
    class_names = flags.class_names if flags.class_names is not None else list(metadata.class_names)
    overridden = flags.given()
    if overridden:
        log.warning("%s: flags %s override the model's metadata", model.path, " ".join(overridden))
    return ModelSpec(class_names, recipe, "metadata and flags" if overridden else "metadata")


def check_model_fits(model: LoadedModel, spec: ModelSpec) -> None:
    """Raise InputError when the model's input or output shape does not fit the spec."""
    shape = model.input_shape
    if len(shape) != 4:
        raise InputError(
            f"{model.path}: input {model.input_name!r} has shape {shape}; "
            "the evaluator feeds greyscale batches of shape [N, 1, H, W]"
        )
    if isinstance(shape[1], int) and shape[1] != 1:
        raise InputError(
            f"{model.path}: input {model.input_name!r} has {shape[1]} channels; "
            "the evaluator feeds 1-channel greyscale images, so grade a 1-channel model"
        )
    size = spec.recipe.size
    for axis, name in ((2, "height"), (3, "width")):
        if isinstance(shape[axis], int) and shape[axis] != size:
            raise InputError(
                f"{model.path}: input {name} is {shape[axis]} pixels but the preprocessing recipe "
                f"(from {spec.source}) makes {size}-pixel images; pass --input-size {shape[axis]} "
                "or grade the model the recipe was made for"
            )

    input_type = model.session.get_inputs()[0].type
    if input_type != "tensor(float)":
        raise InputError(f"{model.path}: input type is {input_type}; the evaluator feeds float32 tensors")
    check_class_count(model, len(spec.class_names), spec.source)


def check_class_count(model: LoadedModel, count: int, origin: str) -> None:
    """Raise InputError when the model's output width differs from the number of class names.

    ``origin`` names where the class names came from, for the message.
    """
    if model.num_classes is not None and model.num_classes != count:
        raise InputError(
            f"{model.path}: the model outputs {model.num_classes} logits but has {count} class names "
            f"(from {origin}); pass --classes with one name for each output"
        )


def labels_in_model_order(image_set: ImageSet, class_names: Sequence[str]) -> np.ndarray:
    """Return the set's labels as indices into ``class_names``, the model's logit order.

    A folder or zip opened with the model's classes already uses that order. An MNIST
    IDX set always labels the digits 0-9, which a model may order or name differently.
    """
    assert image_set.labels is not None
    if list(image_set.class_names) == list(class_names):
        return image_set.labels
    position = {name: index for index, name in enumerate(class_names)}
    missing = sorted(set(image_set.class_names[label] for label in np.unique(image_set.labels)) - set(position))
    if missing:
        raise InputError(
            f"{image_set.source}: the data has classes {' '.join(missing[:12])} that the model does not predict "
            f"(its classes: {' '.join(list(class_names)[:12])}{' ...' if len(class_names) > 12 else ''}); "
            "grade a model trained on these classes"
        )
    mapping = np.array([position.get(name, -1) for name in image_set.class_names], dtype=np.int64)
    return mapping[image_set.labels]

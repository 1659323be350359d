"""The ONNX ``metadata_props`` contract between export and the evaluator.

Export writes these keys; the evaluator reads them to preprocess data and name classes.
Every value is a string, as ONNX requires; structured values are JSON.

- ``inkbench.class_names``: JSON list of class names, in logit order.
- ``inkbench.recipe``: JSON of ``evaluate.preprocessing.Recipe``.
- ``inkbench.provenance``: JSON object with the task, training data SHA-256, seed,
  validation top-1, torch and onnx versions, and the export time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from evaluate.preprocessing import Recipe

CLASS_NAMES_KEY = "inkbench.class_names"
RECIPE_KEY = "inkbench.recipe"
PROVENANCE_KEY = "inkbench.provenance"


@dataclass
class ModelMetadata:
    """A model's class names, preprocessing recipe and provenance: all the evaluator needs to grade it."""

    class_names: list[str]
    recipe: Recipe
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_props(self) -> dict[str, str]:
        return {
            CLASS_NAMES_KEY: json.dumps(self.class_names),
            RECIPE_KEY: self.recipe.to_json(),
            PROVENANCE_KEY: json.dumps(self.provenance, sort_keys=True),
        }

    @classmethod
    def from_props(cls, props: Mapping[str, str]) -> "ModelMetadata | None":
        """Parse metadata props; return None when the model carries no inkbench metadata."""
        if CLASS_NAMES_KEY not in props or RECIPE_KEY not in props:
            return None
        return cls(
            class_names=list(json.loads(props[CLASS_NAMES_KEY])),
            recipe=Recipe.from_json(props[RECIPE_KEY]),
            provenance=json.loads(props.get(PROVENANCE_KEY, "{}")),
        )

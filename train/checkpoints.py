"""Writing and reading training checkpoints.

A checkpoint is a dict saved with ``torch.save``. It contains everything needed to rebuild
the model without this repository's training code, and to resume training exactly:
``model_config``, ``model``, ``class_names``, ``recipe`` (JSON), ``optimizer``,
``scheduler``, ``epoch`` (completed epochs), ``seed``, ``history``, ``split`` and
``provenance``.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from evaluate.atomic import atomic_path
from evaluate.errors import InputError
from evaluate.preprocessing import Recipe
from train.models import InkNet, ModelConfig, build_model


def save_atomic(state: dict[str, Any], path: str | Path) -> None:
    """Save ``state`` so that ``path`` always contains a complete checkpoint.

    The data goes to a temporary file in the same folder, then replaces ``path`` in one
    rename, so a run killed mid-write leaves the previous checkpoint intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary, open(temporary, "wb") as file:
        torch.save(state, file)
        file.flush()
        os.fsync(file.fileno())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint onto the CPU; raise InputError for a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found; pass a .pt file written by 'python -m train'")
    try:
        # Checkpoints hold plain containers, tensors and strings, so the safe loader suffices.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch explains this over many lines, which would break the one-line error.
        raise InputError(
            f"{path}: not a readable checkpoint (torch.load with weights_only=True rejected it: not a pickle, "
            "or one holding objects other than tensors and plain containers); pass a file written by 'python -m train'"
        ) from error
    except Exception as error:  # torch raises several types for damaged or foreign files
        raise InputError(f"{path}: not a readable checkpoint ({type(error).__name__}: {error}); retrain or check the path") from error
    if not isinstance(state, dict) or "model" not in state or "model_config" not in state:
        raise InputError(f"{path}: not an inkbench checkpoint (no model or model_config); pass a file written by 'python -m train'")
    return state


def model_from_state(state: dict[str, Any]) -> InkNet:
    """Rebuild the network from a checkpoint dict, in eval mode."""
    model = build_model(ModelConfig.from_dict(state["model_config"]))
    model.load_state_dict(state["model"])
    return model.eval()


def load_model_from_checkpoint(path: str | Path) -> tuple[InkNet, Recipe, list[str]]:
    """Load a checkpoint's model in eval mode, with its preprocessing recipe and class names."""
    state = load_checkpoint(path)
    return model_from_state(state), Recipe.from_json(state["recipe"]), list(state["class_names"])


def require_resumable(out_dir: Path, resume: bool) -> None:
    """Raise InputError unless ``--resume`` and the presence of ``out_dir/last.pt`` agree."""
    last = out_dir / "last.pt"
    if last.exists() and not resume:
        raise InputError(f"{last} exists; pass --resume to continue that run, or choose another --out")
    if resume and not last.exists():
        raise InputError(f"--resume: {last} not found; pass the --out of the run to continue, or drop --resume to start one")

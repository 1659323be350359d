"""The grading command: open the model and data, check they fit, predict, report."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from evaluate import console as show
from evaluate.cli import preprocessing_flags, single_model
from evaluate.datasets import ImageSet, open_image_set
from evaluate.decoding import CHUNK_SIZE, available_cpus
from evaluate.errors import InputError
from evaluate.grading import predict
from evaluate.model_spec import ModelSpec, check_model_fits, labels_in_model_order, resolve_spec
from evaluate.outputs import check_output_path, default_predictions_path, write_h5, write_json, write_predictions_csv
from evaluate.report import Evaluation, build_report, evaluate
from evaluate.session import LoadedModel, open_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutputPaths:
    """Files a run writes; None for each one not requested."""

    json: Path | None
    h5: Path | None
    predictions: Path | None


def _data_path(args: argparse.Namespace) -> Path:
    if args.path is None:
        raise InputError("PATH is missing; pass a folder, zip or MNIST IDX folder to grade after the options")
    return args.path


def _output_paths(args: argparse.Namespace, image_set: ImageSet) -> OutputPaths:
    predictions = args.predictions
    if predictions is None and not image_set.labelled:
        predictions = default_predictions_path(args.path)
    paths = OutputPaths(args.json, args.h5, predictions)
    for flag, path in (("--json", paths.json), ("--h5", paths.h5), ("--predictions", paths.predictions)):
        if path is not None:
            check_output_path(path, flag)
    return paths


def decode_processes(image_set: ImageSet, workers: int) -> int:
    """Return how many worker processes ``iter_decoded`` starts; 0 means it decodes in this process.

    It decodes in-process for one worker, one chunk, or an IDX set, whose pixels are in memory.
    """
    if workers == 1 or len(image_set) <= CHUNK_SIZE or image_set.pixels is not None:
        return 0
    return workers


def _open_checked(args: argparse.Namespace) -> tuple[LoadedModel, ModelSpec, ImageSet]:
    """Open the model and data and raise InputError unless they fit each other."""
    model_path, data_path = single_model(args), _data_path(args)
    flags = preprocessing_flags(args)
    model = open_model(model_path, args.provider, args.threads)
    spec = resolve_spec(model, flags)
    check_model_fits(model, spec)
    image_set = open_image_set(data_path, class_names=spec.class_names, split=args.split)
    return model, spec, image_set


def _write_outputs(evaluation: Evaluation, report: dict, paths: OutputPaths) -> list[tuple[str, Path]]:
    """Write the requested files; return what was written, for the terminal summary."""
    written = []
    if paths.predictions is not None:
        write_predictions_csv(paths.predictions, evaluation)
        written.append(("predictions", paths.predictions))
    if paths.json is not None:
        write_json(paths.json, report)
        written.append(("JSON report", paths.json))
    if paths.h5 is not None:
        write_h5(paths.h5, evaluation)
        written.append(("HDF5 arrays", paths.h5))
    return written


def grade(args: argparse.Namespace, out: Console, err: Console) -> int:
    """Grade one model on one image set with the options in ``args``; return the exit status."""
    model, spec, image_set = _open_checked(args)
    set_labels = labels_in_model_order(image_set, spec.class_names) if image_set.labelled else None
    paths = _output_paths(args, image_set)
    workers = args.workers or available_cpus()
    err.print(
        f"Grading {escape(str(model.path))} on {len(image_set)} images from {escape(str(image_set.source))} "
        f"with {model.provider}"
    )

    with show.progress_bar(err, len(image_set), "Grading") as advance:
        predictions = predict(
            model,
            image_set,
            spec.recipe,
            num_classes=len(spec.class_names),
            batch_size=args.batch_size,
            workers=workers,
            strict=args.strict,
            progress=advance,
        )
    if len(predictions.indices) == 0:
        raise InputError(
            f"{image_set.source}: none of its {len(image_set)} images could be decoded; check that they are image files"
        )

    evaluation = evaluate(model, spec, image_set, predictions, set_labels)
    report = build_report(evaluation, decode_processes(image_set, workers), paths.predictions)
    # Files first, so that a closed standard output (a pipe into head) loses no results.
    written = _write_outputs(evaluation, report, paths)
    show.print_summary(out, evaluation, report)
    if image_set.labelled:
        show.print_class_table(out, evaluation, args.rows)
        show.print_confused_pairs(out, evaluation, args.pairs)
    else:
        show.print_prediction_counts(out, evaluation)
    for description, path in written:
        show.print_written(out, description, path)
    return 0

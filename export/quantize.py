"""Static int8 quantisation of an exported model with onnxruntime.quantization.

The float model is first pre-processed with ``quant_pre_process``: shape inference and
graph optimisation, which folds batch norm into the convolutions. ``quantize_static``
then quantises it in QDQ format with signed 8-bit activations and weights (S8S8), the
format that the "Quantize ONNX Models" page of onnxruntime's documentation names the
first choice on CPU. Activation ranges
come from MinMax calibration on real training images, preprocessed by the model's own
recipe. Per-channel weight scales are on by default: a convolution's filters differ in
range, and a single scale for all of them wastes resolution on the small ones.

The quantised model gets the float model's ``metadata_props``, with a ``quantization``
entry added to the provenance, so the evaluator grades it like the float model.

Usage: ``python -m export.quantize FLOAT.onnx OUT.onnx --calibration PATH``.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from evaluate.datasets import ImageSet, open_image_set
from evaluate.decoding import decode_all
from evaluate.errors import InputError
from evaluate.metadata import ModelMetadata
from evaluate.outputs import atomic_path
from evaluate.preprocessing import normalize
from evaluate.session import open_model

log = logging.getLogger(__name__)

DEFAULT_CALIBRATION_IMAGES = 300
# Images not used for calibration on which the int8 and float predictions are compared.
DEFAULT_CHECK_IMAGES = 500
# Samples per calibration call; calibration only collects ranges, so the batch size
# changes its speed, not its result.
CALIBRATION_BATCH = 32

CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}


@dataclass
class QuantizationResult:
    """The written int8 model and how closely it follows the float model."""

    path: Path
    calibration_images: int
    check_images: int
    # Fraction of check images on which the int8 and float models predict the same class.
    top1_agreement: float | None
    float_top1: float | None
    int8_top1: float | None
    provenance: dict[str, Any]


class ArrayCalibrationReader(CalibrationDataReader):
    """Feeds preprocessed images to the calibrator in batches of ``batch_size``."""

    def __init__(self, input_name: str, inputs: np.ndarray, batch_size: int) -> None:
        self.input_name = input_name
        self.batches = [inputs[start : start + batch_size] for start in range(0, len(inputs), batch_size)]
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.batches):
            return None
        batch = self.batches[self.position]
        self.position += 1
        return {self.input_name: batch}

    def __len__(self) -> int:
        return len(self.batches)

    def rewind(self) -> None:
        self.position = 0


def read_metadata(model: onnx.ModelProto, path: Path) -> ModelMetadata:
    props = {entry.key: entry.value for entry in model.metadata_props}
    metadata = ModelMetadata.from_props(props)
    if metadata is None:
        raise InputError(
            f"{path}: model has no inkbench metadata (class names and preprocessing recipe), so calibration "
            "images cannot be preprocessed for it; quantise a model written by 'python -m export'"
        )
    return metadata


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def split_samples(image_set: ImageSet, calibration: int, check: int, seed: int) -> tuple[list[int], list[int]]:
    """Draw disjoint random samples for calibration and for the agreement check."""
    if len(image_set) < 2:
        raise InputError(f"{image_set.source}: contains {len(image_set)} image; calibrate on a few hundred training images")
    order = np.random.default_rng(seed).permutation(len(image_set))
    calibration = min(calibration, len(order) - 1)
    calibration_indices = sorted(order[:calibration].tolist())
    check_indices = sorted(order[calibration : calibration + check].tolist())
    return calibration_indices, check_indices


def preprocess_samples(image_set: ImageSet, indices: list[int], metadata: ModelMetadata) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode and normalise the given samples; return the inputs and their labels (None if unlabelled)."""
    decoded = decode_all(image_set.subset(indices), metadata.recipe)
    if len(decoded.indices) == 0:
        raise InputError(f"{image_set.source}: none of the {len(indices)} sampled images could be decoded")
    subset_labels = image_set.subset(indices).labels
    labels = None if subset_labels is None else subset_labels[decoded.indices]
    return normalize(decoded.canvases, metadata.recipe), labels


def quantization_provenance(
    float_path: Path,
    calibration_path: str | Path,
    calibration_images: int,
    per_channel: bool,
    reduce_range: bool,
    calibrate_method: str,
    seed: int,
    split: str | None,
) -> dict[str, Any]:
    return {
        "method": "static",
        "format": "QDQ",
        "activation_type": "int8",
        "weight_type": "int8",
        "per_channel": per_channel,
        "reduce_range": reduce_range,
        "calibration_method": calibrate_method,
        "calibration_images": calibration_images,
        "calibration_source": str(calibration_path),
        # The MNIST split read from an IDX folder, or None for a folder or zip of images.
        "calibration_split": split,
        "calibration_seed": seed,
        "float_model": float_path.name,
        "float_model_sha256": file_sha256(float_path),
        "onnxruntime_version": ort.__version__,
        "quantized_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def run_quantize_static(
    float_path: Path, out_path: Path, reader: ArrayCalibrationReader, per_channel: bool, reduce_range: bool, method: str
) -> None:
    """Pre-process the float model and quantise it to ``out_path`` (without metadata)."""
    with tempfile.TemporaryDirectory(prefix="inkbench-quantize-") as folder:
        prepared = Path(folder) / "prepared.onnx"
        # The quantisation guide recommends symbolic shape inference for transformers and
        # ONNX shape inference for other models, such as these CNNs.
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out_path),
            calibration_data_reader=reader,
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CALIBRATION_METHODS[method],
        )


def attach_metadata(model: onnx.ModelProto, metadata: ModelMetadata, quantization: dict[str, Any]) -> None:
    """Replace the model's metadata_props with the float model's, plus the quantisation record."""
    provenance = dict(metadata.provenance)
    provenance["quantization"] = quantization
    props = ModelMetadata(metadata.class_names, metadata.recipe, provenance).to_props()
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def compare_predictions(
    float_path: Path, int8_path: Path, inputs: np.ndarray, labels: np.ndarray | None
) -> tuple[float, float | None, float | None]:
    """Return (top-1 agreement, float top-1, int8 top-1) on ``inputs``.

    The two accuracies are None when ``labels`` is None.
    """
    float_predicted = open_model(float_path, provider="cpu").run(inputs).argmax(axis=1)
    int8_predicted = open_model(int8_path, provider="cpu").run(inputs).argmax(axis=1)
    agreement = float((float_predicted == int8_predicted).mean())
    if labels is None:
        return agreement, None, None
    return agreement, float((float_predicted == labels).mean()), float((int8_predicted == labels).mean())


def quantize_model(
    float_onnx: str | Path,
    out_onnx: str | Path,
    calibration_path: str | Path,
    num_images: int = DEFAULT_CALIBRATION_IMAGES,
    *,
    per_channel: bool = True,
    reduce_range: bool = False,
    calibrate_method: str = "minmax",
    check_images: int = DEFAULT_CHECK_IMAGES,
    split: str = "train",
    seed: int = 0,
) -> QuantizationResult:
    """Write an int8 QDQ copy of ``float_onnx`` to ``out_onnx``, calibrated on ``num_images`` images.

    ``calibration_path`` is a folder, zip or MNIST IDX folder (its ``split``) of training
    images. Up to ``check_images`` further images of it measure how often the int8
    model predicts what the float model predicts. Raises InputError for bad input.
    """
    float_path, out_path = Path(float_onnx), Path(out_onnx)
    if not float_path.is_file():
        raise InputError(f"{float_path}: model file not found; pass the float .onnx file written by 'python -m export'")
    if not out_path.parent.is_dir():
        raise InputError(f"{out_path}: folder {out_path.parent} does not exist; create it or choose another path")
    if num_images < 1:
        raise InputError(f"calibration image count {num_images} is invalid; calibrate on at least 1 image")
    if check_images < 0:
        raise InputError(f"check image count {check_images} is invalid; pass 0 to skip the check")
    if calibrate_method not in CALIBRATION_METHODS:
        raise InputError(f"calibration method {calibrate_method!r} is unknown; use one of {', '.join(CALIBRATION_METHODS)}")

    float_model = onnx.load(str(float_path))
    metadata = read_metadata(float_model, float_path)
    input_name = float_model.graph.input[0].name
    image_set = open_image_set(calibration_path, class_names=metadata.class_names, split=split)
    calibration_indices, check_indices = split_samples(image_set, num_images, check_images, seed)
    calibration_inputs, _ = preprocess_samples(image_set, calibration_indices, metadata)
    log.info("calibrating on %d images from %s", len(calibration_inputs), calibration_path)

    batch_dim = float_model.graph.input[0].type.tensor_type.shape.dim[0]
    batch_size = batch_dim.dim_value if batch_dim.HasField("dim_value") else CALIBRATION_BATCH
    reader = ArrayCalibrationReader(input_name, calibration_inputs, batch_size)
    quantization = quantization_provenance(
        float_path,
        calibration_path,
        len(calibration_inputs),
        per_channel,
        reduce_range,
        calibrate_method,
        seed,
        split if image_set.kind == "idx" else None,
    )
    agreement, float_top1, int8_top1 = None, None, None
    with tempfile.TemporaryDirectory(prefix="inkbench-int8-") as folder:
        quantized_path = Path(folder) / "quantized.onnx"
        run_quantize_static(float_path, quantized_path, reader, per_channel, reduce_range, calibrate_method)
        if check_indices:
            check_inputs, check_labels = preprocess_samples(image_set, check_indices, metadata)
            agreement, float_top1, int8_top1 = compare_predictions(float_path, quantized_path, check_inputs, check_labels)
            quantization["check_images"] = len(check_inputs)
            quantization["top1_agreement_with_float"] = agreement
            log.info("int8 and float predictions agree on %.2f%% of %d held-out images", 100 * agreement, len(check_inputs))
        quantized = onnx.load(str(quantized_path))

    attach_metadata(quantized, metadata, quantization)
    with atomic_path(out_path) as temporary:
        onnx.save(quantized, str(temporary))
    return QuantizationResult(
        path=out_path,
        calibration_images=len(calibration_inputs),
        check_images=len(check_indices),
        top1_agreement=agreement,
        float_top1=float_top1,
        int8_top1=int8_top1,
        provenance=quantization,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export.quantize",
        description="Quantise an exported inkbench ONNX model to int8 (static, QDQ), calibrated on training images.",
    )
    parser.add_argument("float_model", type=Path, metavar="FLOAT.onnx", help="float model written by 'python -m export'")
    parser.add_argument("out", type=Path, metavar="OUT.onnx", help="int8 model to write")
    parser.add_argument(
        "--calibration", required=True, metavar="PATH", help="folder, zip or MNIST IDX folder of training images"
    )
    parser.add_argument(
        "--num-images",
        type=int,
        default=DEFAULT_CALIBRATION_IMAGES,
        help=f"images to calibrate activation ranges on (count; default: {DEFAULT_CALIBRATION_IMAGES})",
    )
    parser.add_argument(
        "--check-images",
        type=int,
        default=DEFAULT_CHECK_IMAGES,
        help=f"further images on which int8 and float predictions are compared (count; default: {DEFAULT_CHECK_IMAGES})",
    )
    parser.add_argument("--per-tensor", action="store_true", help="one scale per weight tensor instead of per output channel")
    parser.add_argument(
        "--reduce-range",
        action="store_true",
        help="7-bit weights, against int8 overflow on x86 CPUs with AVX2 or AVX-512 but without VNNI",
    )
    parser.add_argument(
        "--method", choices=sorted(CALIBRATION_METHODS), default="minmax", help="calibration method (default: minmax)"
    )
    parser.add_argument(
        "--split",
        choices=("train", "test"),
        default="train",
        help="MNIST split to read when PATH contains IDX files (default: train)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random choice of calibration images (default: 0)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # onnxruntime.quantization logs every step to the root logger at INFO, so the root
    # level stays at WARNING and only this package's progress messages show at INFO.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for name in ("export", log.name):  # log.name is "__main__" under python -m export.quantize
        logging.getLogger(name).setLevel(logging.INFO)
    args = build_parser().parse_args(argv)
    try:
        result = quantize_model(
            args.float_model,
            args.out,
            args.calibration,
            args.num_images,
            per_channel=not args.per_tensor,
            reduce_range=args.reduce_range,
            calibrate_method=args.method,
            check_images=args.check_images,
            split=args.split,
            seed=args.seed,
        )
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    summary = {
        "written": str(result.path),
        "calibration_images": result.calibration_images,
        "check_images": result.check_images,
        "top1_agreement_with_float": result.top1_agreement,
        "float_top1": result.float_top1,
        "int8_top1": result.int8_top1,
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

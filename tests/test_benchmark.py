"""Tests of ``python -m evaluate --benchmark`` on small CNNs built with onnx.helper.

Run counts are tiny, so the figures themselves mean nothing here; the tests check the
report's structure, its invariants (p50 <= p90 <= p99 <= max) and the error paths.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from evaluate.cli import main
from evaluate.datasets import read_idx
from evaluate.metadata import ModelMetadata
from evaluate.preprocessing import MNIST_RECIPE

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = REPO.parent / "shared" / "data" / "mnist"
TINY_RUN = ["--warmup", "2", "--runs", "5", "--batch-sizes", "1,4", "--throughput-images", "8", "--provider", "cpu"]


def build_cnn(path: Path, batch_axis: int | str = "N", metadata: bool = True, seed: int = 0) -> Path:
    """Save Conv(1->4, 3x3) -> Relu -> MaxPool(2) -> Flatten -> Gemm(->10) for 28x28 inputs."""
    rng = np.random.default_rng(seed)
    initializers = [
        numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "conv_weight"),
        numpy_helper.from_array(np.zeros(4, np.float32), "conv_bias"),
        numpy_helper.from_array((rng.standard_normal((4 * 14 * 14, 10)) * 0.05).astype(np.float32), "fc_weight"),
        numpy_helper.from_array(np.zeros(10, np.float32), "fc_bias"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "conv_weight", "conv_bias"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("MaxPool", ["relu"], ["pool"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["pool"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc_weight", "fc_bias"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch_axis, 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch_axis, 10])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    if metadata:
        helper.set_model_props(model, ModelMetadata([str(d) for d in range(10)], MNIST_RECIPE).to_props())
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def cnn(tmp_path: Path) -> Path:
    return build_cnn(tmp_path / "cnn.onnx")


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of 40 real MNIST test digits as PNGs in class folders 0-9."""
    if not MNIST_DIR.is_dir():
        pytest.skip(f"shared data {MNIST_DIR} is absent; the tests need the real data sets beside the repository")
    images = read_idx(MNIST_DIR / "t10k-images-idx3-ubyte.gz")[:40]
    labels = read_idx(MNIST_DIR / "t10k-labels-idx1-ubyte.gz")[:40]
    folder = tmp_path_factory.mktemp("digits")
    for index, (image, label) in enumerate(zip(images, labels)):
        (folder / str(label)).mkdir(exist_ok=True)
        Image.fromarray(image).save(folder / str(label) / f"{index:03d}.png")
    return folder


def run_cli(arguments: list[str]) -> int:
    return main(["--benchmark", *arguments])


def read_report(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))["benchmark"]


def test_report_has_latency_and_throughput(cnn: Path, tmp_path: Path) -> None:
    report_path, h5_path = tmp_path / "bench.json", tmp_path / "bench.h5"
    assert run_cli(["--model", str(cnn), *TINY_RUN, "--json", str(report_path), "--h5", str(h5_path)]) == 0

    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report["schema"] == "inkbench.benchmark/1"
    benchmark = report["benchmark"]
    onnx_record = benchmark["onnxruntime"]
    assert onnx_record["provider"] == "CPUExecutionProvider"
    assert isinstance(onnx_record["intra_op_threads"], int)
    assert onnx_record["intra_op_threads"] >= 1
    assert onnx_record["graph_optimization_level"] == "ORT_ENABLE_ALL"
    assert onnx_record["load_ms"] > 0
    assert onnx_record["first_run_ms"] > 0
    assert onnx_record["batch1_runs"] == 5
    for name in ("p50", "p90", "p99", "max", "min", "mean", "std"):
        assert isinstance(onnx_record[f"batch1_{name}_ms"], float), name
    assert onnx_record["batch1_min_ms"] <= onnx_record["batch1_p50_ms"]
    assert onnx_record["batch1_p50_ms"] <= onnx_record["batch1_p90_ms"]
    assert onnx_record["batch1_p90_ms"] <= onnx_record["batch1_p99_ms"]
    assert onnx_record["batch1_p99_ms"] <= onnx_record["batch1_max_ms"]
    assert onnx_record["batch1_min_ms"] <= onnx_record["batch1_mean_ms"] <= onnx_record["batch1_max_ms"]

    throughput = onnx_record["throughput"]
    assert [entry["batch_size"] for entry in throughput] == [1, 4]
    for entry in throughput:
        assert entry["batches"] >= 3
        assert entry["images"] == entry["batches"] * entry["batch_size"]
        assert entry["images_per_s"] == pytest.approx(entry["images"] / entry["total_s"])
    assert onnx_record["skipped_batch_sizes"] == []

    assert benchmark["settings"] == {"warmup": 2, "runs": 5, "batch_sizes": [1, 4], "throughput_images": 8, "seed": 0}
    assert benchmark["inputs"]["source"] == "random"
    assert benchmark["inputs"]["shape"] == [1, 28, 28]
    assert benchmark["torch"] is None
    assert "ratio" not in benchmark
    assert len(benchmark["models"]) == 1
    assert benchmark["models"][0]["onnxruntime"] == onnx_record

    environment = benchmark["environment"]
    for key in ("cpu_model", "onnxruntime_version", "numpy_version", "python_version", "date_utc"):
        assert isinstance(environment[key], str) and environment[key], key
    assert environment["cpus_in_affinity"] >= 1
    assert len(environment["load_average_at_start"]) == 3
    assert len(environment["load_average_1_5_15_min"]) == 3
    assert environment["torch_version"] is None

    with h5py.File(h5_path, "r") as h5:
        latencies = h5["onnxruntime/0/batch1_latency_ns"][:]
        assert latencies.shape == (5,)
        assert latencies.dtype == np.int64
        assert h5["onnxruntime/0/batch_latency_ns/batch_size_4"].shape == (throughput[1]["batches"],)
        assert json.loads(h5.attrs["report_json"]) == report


def test_latency_percentiles_match_raw_runs(cnn: Path, tmp_path: Path) -> None:
    report_path, h5_path = tmp_path / "bench.json", tmp_path / "bench.h5"
    assert run_cli(["--model", str(cnn), *TINY_RUN, "--runs", "40", "--json", str(report_path), "--h5", str(h5_path)]) == 0
    record = read_report(report_path)["onnxruntime"]
    with h5py.File(h5_path, "r") as h5:
        latencies_ms = h5["onnxruntime/0/batch1_latency_ns"][:] / 1e6
    assert record["batch1_max_ms"] == pytest.approx(latencies_ms.max())
    assert record["batch1_mean_ms"] == pytest.approx(latencies_ms.mean())
    assert np.isclose(latencies_ms, record["batch1_p50_ms"]).any()


def test_two_models_get_one_column_each(cnn: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    second = build_cnn(tmp_path / "second.onnx", seed=1)
    report_path = tmp_path / "bench.json"
    assert run_cli(["--model", str(cnn), "--model", str(second), *TINY_RUN, "--json", str(report_path)]) == 0
    benchmark = read_report(report_path)
    assert [entry["onnxruntime"]["model"] for entry in benchmark["models"]] == [str(cnn), str(second)]
    output = capsys.readouterr().out
    assert "cnn.onnx" in output
    assert "second.onnx" in output


def test_fixed_batch_axis_skips_batch_sizes(tmp_path: Path) -> None:
    model = build_cnn(tmp_path / "fixed.onnx", batch_axis=1)
    report_path = tmp_path / "bench.json"
    assert run_cli(["--model", str(model), *TINY_RUN, "--json", str(report_path)]) == 0
    record = read_report(report_path)["onnxruntime"]
    assert [entry["batch_size"] for entry in record["throughput"]] == [1]
    assert record["skipped_batch_sizes"] == [4]


def test_data_path_adds_end_to_end_run(cnn: Path, digit_folder: Path, tmp_path: Path) -> None:
    report_path = tmp_path / "bench.json"
    arguments = ["--model", str(cnn), str(digit_folder), *TINY_RUN, "--workers", "2", "--batch-size", "16"]
    assert run_cli([*arguments, "--repeats", "2", "--json", str(report_path)]) == 0
    benchmark = read_report(report_path)
    assert benchmark["inputs"]["source"] == "data"
    assert benchmark["inputs"]["images"] == 40

    pipeline = benchmark["pipeline"]
    assert pipeline["source_kind"] == "folder"
    assert pipeline["decode_processes"] == 2
    assert pipeline["batch_size"] == 16
    assert pipeline["repeats"] == 2
    assert len(pipeline["runs"]) == 2
    run = pipeline["runs"][0]
    assert run["images"] == 40
    assert run["failed"] == 0
    assert 0 <= run["top1"] <= 1
    assert run["listing_s"] + run["inference_s"] <= run["wall_s"]
    assert 0 < run["first_batch_s"] <= run["wall_s"]
    assert run["first_batch_since_process_start_s"] > run["first_batch_s"]
    assert pipeline["wall_s_mean"] == pytest.approx(np.mean([item["wall_s"] for item in pipeline["runs"]]))
    assert pipeline["baseline_decode_s_mean"] > 0
    assert pipeline["end_to_end_over_baseline_decode"] == pytest.approx(
        pipeline["wall_s_mean"] / pipeline["baseline_decode_s_mean"]
    )


def test_zip_data_path_is_graded(cnn: Path, digit_folder: Path, tmp_path: Path) -> None:
    archive = tmp_path / "digits.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for image in sorted(digit_folder.rglob("*.png")):
            handle.write(image, f"digits/{image.relative_to(digit_folder).as_posix()}")
    report_path = tmp_path / "bench.json"
    assert run_cli(["--model", str(cnn), str(archive), *TINY_RUN, "--batch-size", "16", "--json", str(report_path)]) == 0
    pipeline = read_report(report_path)["pipeline"]
    assert pipeline["source_kind"] == "zip"
    assert pipeline["runs"][0]["images"] == 40
    assert pipeline["baseline_decode_s_mean"] > 0


def test_idx_data_has_no_decode_baseline(cnn: Path, tmp_path: Path) -> None:
    if not MNIST_DIR.is_dir():
        pytest.skip(f"shared data {MNIST_DIR} is absent")
    report_path = tmp_path / "bench.json"
    assert run_cli(["--model", str(cnn), str(MNIST_DIR), *TINY_RUN, "--json", str(report_path)]) == 0
    pipeline = read_report(report_path)["pipeline"]
    assert pipeline["source_kind"] == "idx"
    assert pipeline["decode_processes"] == 0
    assert pipeline["runs"][0]["images"] == 10000
    assert pipeline["baseline_decode_s_mean"] is None
    assert pipeline["end_to_end_over_baseline_decode"] is None


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--batch-sizes", "0,4"], "--batch-sizes '0,4' is invalid"),
        (["--batch-sizes", "one"], "--batch-sizes 'one' is invalid"),
        (["--runs", "0"], "--runs 0 is invalid"),
        (["--warmup", "-1"], "--warmup -1 is invalid"),
        (["--repeats", "0"], "--repeats 0 is invalid"),
        (["--json", "/nonexistent-folder/bench.json"], "folder /nonexistent-folder does not exist"),
    ],
)
def test_invalid_flags_exit_2(cnn: Path, flags: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["--model", str(cnn), *flags]) == 2
    error_lines = capsys.readouterr().err.strip().splitlines()
    assert len(error_lines) == 1
    assert error_lines[0].startswith("error: ")
    assert message in error_lines[0]


def test_missing_model_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["--model", str(tmp_path / "absent.onnx")]) == 2
    error_lines = capsys.readouterr().err.strip().splitlines()
    assert error_lines == [f"error: {tmp_path / 'absent.onnx'}: model file not found; pass the path of an .onnx file"]


def test_model_without_metadata_on_data_exits_2(tmp_path: Path, digit_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = build_cnn(tmp_path / "bare.onnx", metadata=False)
    assert run_cli(["--model", str(model), str(digit_folder), *TINY_RUN]) == 2
    error_lines = capsys.readouterr().err.strip().splitlines()
    assert len(error_lines) == 1
    assert "no inkbench metadata" in error_lines[0]


def run_module(arguments: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "evaluate", *arguments], capture_output=True, text=True, cwd=REPO, timeout=120
    )


def test_cuda_without_gpu_is_clear_error(cnn: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        session = ort.InferenceSession(str(cnn), providers=["CUDAExecutionProvider"])
        if session.get_providers()[0] == "CUDAExecutionProvider":
            pytest.skip("this machine has a usable CUDA device")
    result = run_module(["--benchmark", "--model", str(cnn), "--provider", "cuda"])
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: --provider cuda:")
    assert "--provider cpu" in last_line


def test_benchmark_does_not_import_torch(cnn: Path) -> None:
    script = (
        "import sys\n"
        "from evaluate.cli import main\n"
        f"code = main(['--benchmark', '--model', {str(cnn)!r}, '--warmup', '1', '--runs', '2', '--batch-sizes', '2'])\n"
        "print('torch imported:', 'torch' in sys.modules, 'exit:', code)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert "torch imported: False exit: 0" in result.stdout

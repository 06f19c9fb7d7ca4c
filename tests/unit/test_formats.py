"""Every export format of one build: the files, their parity records, the int8 kernels of the
compiled package, the archive of each format, the one-line refusals, and LibTorch C++."""

import json
import shutil
import sys
import zipfile

import pytest
import torch
import torchvision

from distillserve.archiver import build_archive
from distillserve.errors import ArchiveError, ExportError, RecipeError
from distillserve.handlers.runtimes import MODEL_FILES, RuntimeLoadError, load_runtime
from distillserve.students.export_pt2 import int8_kernel_calls, quantize_pt2e
from distillserve.students.recipe import Recipe
from tests.helpers import small_recipe_dict

FORMATS = ("torchscript", "pt2", "onnx")


@pytest.mark.int8
def test_every_role_is_written_in_every_format_with_its_parity(build_result):
    for role, directory in build_result.artifacts.items():
        metrics = build_result.metrics[role]
        assert set(metrics["formats"]) == set(FORMATS), role
        assert metrics["format"] == "torchscript"  # the first listed is the primary format
        fp32 = build_result.metrics["student-fp32"]["formats"]
        for fmt, record in metrics["formats"].items():
            path = directory / MODEL_FILES[fmt]
            assert path.is_file() and record["size_bytes"] == path.stat().st_size
            parity = record["parity"]
            if metrics["quantized"]:
                assert parity["decisive_agreement"] >= 0.99, (role, fmt, parity)
                assert parity["decisive_samples"] >= 0.9 * parity["samples"]
                assert abs(record["test_accuracy"] - fp32[fmt]["test_accuracy"]) <= 0.01
            else:
                assert parity["max_abs_diff"] <= 1e-4, (role, fmt, parity)
                assert record["test_accuracy"] == metrics["formats"]["torchscript"]["test_accuracy"]
            assert record["latency_ms_batch1"] > 0 and record["latency_ms_batch8"] > 0


def test_onnx_files_carry_no_exporter_debug_metadata_and_weights_are_measured(build_result):
    import onnx

    from distillserve.students.measure import weight_bytes

    for role, directory in build_result.artifacts.items():
        model = onnx.load(str(directory / "model.onnx"))
        graph = model.graph
        for item in (*graph.node, *graph.initializer, *graph.input, *graph.output):
            assert not item.metadata_props and not item.doc_string, (role, item.name)
        for fmt in ("torchscript", "onnx"):
            path = directory / MODEL_FILES[fmt]
            assert 0 < weight_bytes(path) < path.stat().st_size, (role, fmt)
    assert weight_bytes(build_result.artifacts["student"] / "model.pt2") is None


@pytest.mark.int8
def test_int8_package_calls_int8_kernels_and_the_fp32_one_none(build_result):
    int8 = build_result.artifacts["student"] / "model.pt2"
    fp32 = build_result.artifacts["student-fp32"] / "model.pt2"
    calls = int8_kernel_calls(int8)
    assert calls == 4  # the three convolutions (the 1-channel stem rewritten) and the linear
    assert build_result.metrics["student"]["formats"]["pt2"]["parity"]["int8_kernels"] == calls
    assert int8_kernel_calls(fp32) == 0


def test_a_module_called_twice_is_refused_naming_it():
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    with pytest.raises(ExportError, match=r"ResNet\.layer1\.0\.relu is called 2 times"):
        quantize_pt2e(model, torch.zeros(1, 3, 32, 32), [])


def test_onnx_needs_onnxruntime_on_the_host(monkeypatch, tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not loaded")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as on a host without it
    with pytest.raises(RuntimeLoadError, match=r"needs the onnxruntime package"):
        load_runtime(path)
    with pytest.raises(RuntimeLoadError, match=r"unknown model format '\.bin'"):
        load_runtime(tmp_path / "model.bin")


@pytest.mark.parametrize(
    ("formats", "mode", "message"),
    [
        (["tflite"], "static", "'tflite' is not one of: torchscript, pt2, onnx"),
        (["pt2", "pt2"], "static", "lists a format twice"),
        ([], "static", "needs at least one of"),
        (["torchscript", "onnx"], "mixed", "onnx cannot carry quantize.mode mixed"),
    ],
)
def test_bad_formats_are_one_line_errors_naming_the_field(formats, mode, message):
    raw = small_recipe_dict()
    raw["export"]["formats"] = formats
    raw["quantize"]["mode"] = mode
    with pytest.raises(RecipeError, match=r"export\.formats") as refused:
        Recipe.from_dict(raw)
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_archive_picks_the_format(build_result, model_store, tmp_path):
    for fmt, mar_name in (("pt2", "digits-student-pt2.mar"), ("onnx", "digits-student-onnx.mar")):
        with zipfile.ZipFile(model_store / mar_name) as mar:
            manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"]
            info = json.loads(mar.read("build-info.json"))
            serialized = mar.read(MODEL_FILES[fmt])
        assert manifest["serializedFile"] == MODEL_FILES[fmt]
        assert manifest["modelName"] == mar_name.removesuffix(".mar")
        assert info["format"] == fmt and list(info["sha256"]) == [MODEL_FILES[fmt]]
        assert serialized == (build_result.artifacts["student"] / MODEL_FILES[fmt]).read_bytes()
        own = build_result.metrics["student"]["formats"][fmt]
        assert info["metrics"]["test_accuracy"] == own["test_accuracy"]

    partial = tmp_path / "artifact"
    shutil.copytree(
        build_result.artifacts["student"],
        partial,
        ignore=shutil.ignore_patterns("*.onnx", "student-fp32", "teacher"),
    )
    with pytest.raises(
        ArchiveError, match=r"has no onnx model .* add onnx to the recipe's export\.formats"
    ):
        build_archive(partial, tmp_path / "store", model_format="onnx")


def test_cpp_program_predicts_like_python(build_result, tmp_path):
    from distillserve.students.cpp_check import cpp_check, missing_toolchain

    reason = missing_toolchain()
    if reason:
        pytest.skip(f"the C++ check needs CMake and a C++ compiler: {reason}")
    report = cpp_check(build_result.artifacts["student"], tmp_path / "cpp")
    for fmt in ("torchscript", "pt2"):
        result = report[fmt]
        assert result["same_labels"] == result["samples"] == 450, (fmt, result)
        assert result["cpp_accuracy"] == pytest.approx(result["python_accuracy"], abs=1e-6)
        assert result["python_accuracy"] == pytest.approx(
            build_result.metrics["student"]["formats"][fmt]["test_accuracy"], abs=1e-6
        )
    assert report["same"]

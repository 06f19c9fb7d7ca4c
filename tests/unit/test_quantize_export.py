"""Static/dynamic int8 quantization and TorchScript export with parity checks."""

import pytest
import torch
from torch import nn

from students.data import make_loader, preprocess_spec
from students.errors import ExportError, QuantizationError
from students.export import export_torchscript, load_torchscript, top1_agreement
from students.quantize import check_engine, is_quantized, quantize_dynamic, quantize_static
from students.recipe import DataConfig, QuantizeConfig
from students.zoo import CifarResNet, TinyCNN

SPEC = preprocess_spec(DataConfig())


def test_built_int8_student_agrees_with_fp32_on_the_test_split(build_result, digits_splits):
    int8 = load_torchscript(build_result.artifacts["student"] / "model.pt")
    fp32 = load_torchscript(build_result.artifacts["student-fp32"] / "model.pt")
    assert is_quantized(int8) and not is_quantized(fp32)
    agreement, _, samples = top1_agreement(int8, fp32, make_loader(digits_splits.test, SPEC, 128))
    assert samples == len(digits_splits.test) == 450
    assert agreement >= 0.99
    assert build_result.metrics["student"]["parity"]["top1_agreement"] == pytest.approx(agreement)
    size = lambda role: (build_result.artifacts[role] / "model.pt").stat().st_size  # noqa: E731
    assert size("student") < 0.7 * size("student-fp32")


def test_static_quantization_fuses_and_converts(digits_splits):
    model = TinyCNN(num_classes=10).eval()
    loader = make_loader(digits_splits.train, SPEC, 64)
    int8 = quantize_static(model, loader, QuantizeConfig(calibration_batches=2))
    kinds = {type(m).__name__ for m in int8.modules()}
    assert "ConvReLU2d" in kinds and "Quantize" in kinds and "Linear" in kinds
    assert not any(isinstance(m, nn.BatchNorm2d) for m in int8.modules())
    weight = int8.features[0][0].weight()
    assert weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)
    assert weight.q_per_channel_scales().numel() == 16  # one scale per output channel
    assert is_quantized(int8) and not is_quantized(model)
    # the original is untouched
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_static_needs_a_quantization_ready_model(digits_splits):
    loader = make_loader(digits_splits.train, SPEC, 64)
    with pytest.raises(QuantizationError, match="QuantStub"):
        quantize_static(CifarResNet(10), loader, QuantizeConfig())


def test_dynamic_quantizes_linear_layers():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    int8 = quantize_dynamic(mlp, QuantizeConfig(mode="dynamic"))
    assert (
        sum(
            "DynamicQuantizedLinear" in type(m).__name__
            or type(m).__module__.startswith("torch.ao.nn.quantized.dynamic")
            for m in int8.modules()
        )
        == 2
    )
    x = torch.randn(4, 1, 8, 8)
    assert (int8(x) - mlp(x)).abs().max() < 0.1


def test_unsupported_engine_is_refused():
    with pytest.raises(QuantizationError, match="supported"):
        check_engine("not-an-engine")


def test_fp32_export_round_trips_within_tolerance(tmp_path, digits_splits):
    model = TinyCNN(num_classes=10).eval()
    loader = make_loader(digits_splits.test, SPEC, 128)
    for method in ("trace", "script"):
        report = export_torchscript(
            model, tmp_path / f"{method}.pt", torch.zeros(1, 1, 8, 8), loader, method=method
        )
        assert report.max_abs_diff <= 1e-4 and report.samples == 450
        loaded = load_torchscript(tmp_path / f"{method}.pt")
        x = torch.randn(3, 1, 8, 8)
        assert torch.allclose(loaded(x), model(x), atol=1e-5)


def test_export_refuses_a_model_that_disagrees_with_its_reference(tmp_path, digits_splits):
    loader = make_loader(digits_splits.test, SPEC, 128)
    torch.manual_seed(1)
    unrelated = TinyCNN(num_classes=10).eval()
    torch.manual_seed(2)
    reference = TinyCNN(num_classes=10).eval()
    path = tmp_path / "bad.pt"
    with pytest.raises(ExportError, match="agreement"):
        export_torchscript(unrelated, path, torch.zeros(1, 1, 8, 8), loader, reference=reference)
    assert not path.exists()

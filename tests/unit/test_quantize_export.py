"""Static/dynamic int8 quantization and TorchScript export with parity checks."""

import pytest
import torch
from torch import nn

from distillserve.errors import ExportError, QuantizationError
from distillserve.students.data import make_loader, preprocess_spec
from distillserve.students.export import (
    compare_top1,
    export_torchscript,
    load_torchscript,
    output_step,
    top1_agreement,
)
from distillserve.students.quantize import (
    check_engine,
    is_quantized,
    quantize_dynamic,
    quantize_static,
)
from distillserve.students.recipe import DataConfig, QuantizeConfig
from distillserve.students.zoo import CifarResNet, TinyCNN

pytestmark = pytest.mark.int8  # int8 results differ by CPU: also run under AVX2 kernels

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


def test_output_step_is_the_int8_logit_resolution(digits_splits):
    model = TinyCNN(num_classes=10).eval()
    loader = make_loader(digits_splits.train, SPEC, 64)
    int8 = quantize_static(model, loader, QuantizeConfig(calibration_batches=2))
    x = next(iter(loader))[0][:4]
    step = output_step(int8, x)
    assert step > 0 and output_step(model, x) == 0.0
    logits = int8(x)
    gaps = (logits.flatten()[:, None] - logits.flatten()[None, :]) / step
    assert torch.allclose(gaps, gaps.round(), atol=1e-3)  # logits sit on a grid of that step


def test_near_ties_are_reported_not_judged_and_decisive_flips_count():
    reference = torch.tensor([[2.0, 1.95, 0.0], [3.0, 0.0, 0.0], [0.0, 5.0, 1.0], [1.0, 1.0, 0.0]])
    flipped_at_ties = torch.tensor([[1.9, 2.0, 0.0], [3.0, 0.0, 0.0], [0.0, 5.0, 1.0], [0, 1.1, 0]])
    batches = [(torch.zeros(4, 1), None)]
    near = compare_top1(lambda _: flipped_at_ties, lambda _: reference, batches, tie_margin=0.25)
    assert near.top1_agreement == 0.5 and near.decisive_samples == 2
    assert near.decisive_agreement == 1.0
    flipped_decisive = reference.clone()
    flipped_decisive[2] = torch.tensor([0.0, 1.0, 5.0])
    far = compare_top1(lambda _: flipped_decisive, lambda _: reference, batches, tie_margin=0.25)
    assert far.decisive_agreement == 0.5 and far.top1_agreement == 0.75


def test_eager_qat_trains_with_the_teachers_weights(monkeypatch):
    """Multi-teacher KD (``teacher.combine: soft_targets``) weights its teachers in QAT too: the
    QAT settings come from the student's distillation settings, and both QAT passes get them."""
    from distillserve.students import training
    from distillserve.students.distill_settings import DistillSettings, for_qat
    from distillserve.students.quantize import quantize_qat
    from distillserve.students.recipe import Recipe
    from tests.helpers import small_recipe_dict

    seen = []

    def record(model, _train, _val, settings, **kwargs):  # a forward pass: observers see data
        seen.append(settings)
        model(torch.randn(4, 1, 8, 8))

    monkeypatch.setattr(training, "train", record)
    teachers = [TinyCNN(10), TinyCNN(10)]
    distilled = DistillSettings(60, 0.05, 1e-4, teachers=teachers, teacher_weights=[0.7, 0.3])
    recipe = Recipe.from_dict(small_recipe_dict())
    settings = for_qat(recipe, distilled)
    assert settings.teacher_weights == (0.7, 0.3) and settings.teachers == tuple(teachers)
    assert (settings.epochs, settings.lr) == (recipe.quantize.qat_epochs, recipe.quantize.qat_lr)
    quantize_qat(TinyCNN(10), [], [], QuantizeConfig(mode="qat"), settings)
    assert [s.teacher_weights for s in seen] == [(0.7, 0.3), (0.7, 0.3)]
    assert all(s.teachers == tuple(teachers) for s in seen)

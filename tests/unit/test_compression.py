"""QAT with KD, channel and L1 pruning on the built digits student; every variant exports and is
served by the unchanged handler."""

import copy
import shutil

import pytest
import torch

from distillserve.archiver import build_archive
from distillserve.errors import QuantizationError, RecipeError
from distillserve.students.data import encode_png, make_loader, preprocess_spec
from distillserve.students.distill import evaluate
from distillserve.students.distill_settings import DistillSettings
from distillserve.students.export import export_torchscript
from distillserve.students.mixed_precision import quantize_mixed
from distillserve.students.prune import channel_prune, l1_unstructured, sparsity
from distillserve.students.quantize import quantize_qat, quantize_static
from distillserve.students.recipe import DataConfig, QuantizeConfig
from distillserve.students.zoo import CifarResNet, count_parameters
from tests.helpers import handle, load_handler

SPEC = preprocess_spec(DataConfig())
pytestmark = [pytest.mark.int8, pytest.mark.slow]  # trains; int8 results differ by CPU


@pytest.fixture(scope="module")
def loaders(digits_splits):
    return {
        "train": make_loader(digits_splits.train, SPEC, 64, shuffle=True),
        "calib": make_loader(digits_splits.train, SPEC, 64),
        "val": make_loader(digits_splits.val, SPEC, 256),
        "test": make_loader(digits_splits.test, SPEC, 256),
    }


def _serve_in_process(artifact_dir, model, tmp_path, digits_splits):
    """Export ``model`` into a copy of the student artifact, archive it, and run the handler."""
    variant = tmp_path / "variant"
    shutil.copytree(artifact_dir, variant)
    export_torchscript(model, variant / "model.pt", torch.zeros(1, 1, 8, 8), [], atol=1e-4)
    handler, ctx = load_handler(build_archive(variant, tmp_path / "store").path, tmp_path)
    images = [digits_splits.test[i][0] for i in range(4)]
    answers = handle(handler, ctx, [{"body": encode_png(img)} for img in images])
    with torch.inference_mode():
        expected = model(next(iter(make_loader(digits_splits.test, SPEC, 4)))[0]).argmax(1)
    assert [next(iter(a)) for a in answers] == [str(i) for i in expected.tolist()]


def test_qat_with_kd_is_at_least_as_accurate_as_static_ptq(build_result, loaders):
    student, teacher = build_result.models["student-fp32"], build_result.models["teacher"]
    ptq = quantize_static(student, loaders["calib"], QuantizeConfig())
    settings = DistillSettings(epochs=3, lr=0.005, weight_decay=0.0, teachers=[teacher])
    qat = quantize_qat(student, loaders["train"], loaders["val"], QuantizeConfig(), settings)
    ptq_acc, qat_acc = evaluate(ptq, loaders["test"]), evaluate(qat, loaders["test"])
    # Both int8 models come from one student; which of a few near-tie test images each gets
    # right depends on the CPU's int8 kernels (QAT was 2 images ahead with AVX-512 VNNI kernels
    # and 1 with AVX2 ones). The claim is "no worse beyond that noise": 2 images of 450.
    noise = 2 / len(loaders["test"].dataset)
    assert qat_acc >= ptq_acc - noise, (qat_acc, ptq_acc)
    assert any("quantized" in type(m).__module__ for m in qat.modules())


def test_channel_pruning_really_shrinks_and_exports(build_result, loaders, tmp_path, digits_splits):
    student = build_result.models["student-fp32"]
    pruned = channel_prune(student, 0.5, "bn_gamma").eval()
    widths = [block[0].out_channels for block in pruned.features]
    assert widths == [8, 16, 16] and pruned.fc.in_features == 16
    assert count_parameters(pruned) <= 0.6 * count_parameters(student)

    before = export_torchscript(student, tmp_path / "full.pt", torch.zeros(1, 1, 8, 8), [])
    after = export_torchscript(
        pruned, tmp_path / "pruned.pt", torch.zeros(1, 1, 8, 8), loaders["test"]
    )
    assert before.samples == 0 and after.max_abs_diff <= 1e-4
    assert (tmp_path / "pruned.pt").stat().st_size <= 0.6 * (tmp_path / "full.pt").stat().st_size
    # still quantizable and servable unchanged
    int8 = quantize_static(pruned, loaders["calib"], QuantizeConfig())
    _serve_in_process(build_result.artifacts["student"], int8, tmp_path, digits_splits)


def test_l1_criterion_and_errors(build_result):
    student = build_result.models["student-fp32"]
    by_l1 = channel_prune(student, 0.25, "l1")
    assert [b[0].out_channels for b in by_l1.features] == [12, 24, 24]
    with pytest.raises(RecipeError, match=r"prune\.criterion"):
        channel_prune(student, 0.5, "random")
    with pytest.raises(RecipeError, match="conv-bn-relu blocks"):
        channel_prune(CifarResNet(10), 0.5)


def test_l1_unstructured_zeroes_weights_permanently(build_result):
    student = build_result.models["student-fp32"]
    sparse = l1_unstructured(student, 0.6)
    assert sparsity(sparse) == pytest.approx(0.6, abs=0.01)
    assert not any(name.endswith("_orig") for name, _ in sparse.named_parameters())
    assert sparsity(student) < 0.01  # the original is untouched


def test_qat_variant_is_served_by_the_handler(build_result, loaders, tmp_path, digits_splits):
    qat = quantize_qat(
        build_result.models["student-fp32"],
        loaders["train"],
        loaders["val"],
        QuantizeConfig(),
        DistillSettings(1, 0.005, 0.0, teachers=[build_result.models["teacher"]]),
    )
    _serve_in_process(build_result.artifacts["student"], qat, tmp_path, digits_splits)


def _quantization_hostile(student: torch.nn.Module) -> torch.nn.Module:
    """A copy whose fp32 answers barely change but whose classifier per-tensor int8 ruins: one
    channel of the last block is dead (ReLU after a large negative bias) and the classifier gives
    it huge weights, so per-tensor int8 rounds every other classifier weight to zero."""
    hostile = copy.deepcopy(student).eval()
    with torch.no_grad():
        hostile.features[-1][1].bias[0] = -1e4
        hostile.fc.weight[:, 0] = 1e3
    return hostile


def test_mixed_precision_keeps_the_sensitive_layer_fp32_within_budget(
    build_result, loaders, tmp_path, digits_splits
):
    hostile = _quantization_hostile(build_result.models["student-fp32"])
    config = QuantizeConfig(mode="mixed", per_channel=False, accuracy_budget=0.01)
    model, report = quantize_mixed(hostile, loaders["calib"], loaders["val"], config)

    assert report.fp32_accuracy == evaluate(hostile, loaders["val"]) > 0.9
    assert report.all_int8_accuracy < report.fp32_accuracy - 0.3  # plain int8 fails the budget
    assert max(report.sensitivity, key=report.sensitivity.get) == "fc"
    assert report.fp32_layers == ["fc"]
    assert report.int8_layers == ["features.0.0", "features.1.0", "features.2.0"]
    assert report.fp32_accuracy - report.accuracy <= config.accuracy_budget
    assert evaluate(model, loaders["val"]) == report.accuracy
    assert isinstance(model.fc[1], torch.nn.Linear)  # the island: dequant, fp32 linear, quant
    assert [type(b[0]).__module__ for b in model.features] == [
        "torch.ao.nn.intrinsic.quantized.modules.conv_relu"
    ] * 3
    test_drop = evaluate(hostile, loaders["test"]) - evaluate(model, loaders["test"])
    assert test_drop <= 0.02, test_drop  # held-out data agrees with the validation choice
    _serve_in_process(build_result.artifacts["student"], model, tmp_path, digits_splits)


def test_mixed_precision_quantizes_everything_when_int8_is_within_budget(build_result, loaders):
    student = build_result.models["student-fp32"]
    model, report = quantize_mixed(
        student, loaders["calib"], loaders["val"], QuantizeConfig(mode="mixed")
    )
    assert evaluate(model, loaders["val"]) == report.accuracy
    assert report.fp32_layers == [] and len(report.int8_layers) == 4
    assert report.accuracy == report.all_int8_accuracy
    assert set(report.sensitivity) == set(report.int8_layers)


def test_mixed_precision_refuses_a_budget_it_cannot_meet(build_result, loaders):
    # One calibration pixel of 1e4 stretches the input's int8 scale until every real image
    # quantizes to nearly nothing: no choice of fp32 layers can recover from that.
    inputs, labels = next(iter(loaders["calib"]))
    spoiled = inputs.clone()
    spoiled[0, 0, 0, 0] = 1e4
    with pytest.raises(QuantizationError, match=r"accuracy_budget 0\.01 cannot be met"):
        quantize_mixed(
            build_result.models["student-fp32"],
            [(spoiled, labels)],
            loaders["val"],
            QuantizeConfig(mode="mixed"),
        )

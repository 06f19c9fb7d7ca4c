"""QAT with KD, channel and L1 pruning on the built digits student; every variant exports and is
served by the unchanged handler."""

import shutil

import pytest
import torch

from archiver import build_archive
from scripts.demo import encode_png
from students.data import make_loader, preprocess_spec
from students.distill import evaluate
from students.errors import RecipeError
from students.export import export_torchscript
from students.prune import channel_prune, l1_unstructured, sparsity
from students.quantize import quantize_qat, quantize_static
from students.recipe import DataConfig, QuantizeConfig
from students.zoo import CifarResNet, count_parameters
from tests.conftest import handle, load_handler

SPEC = preprocess_spec(DataConfig())


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
    qat = quantize_qat(
        student, loaders["train"], loaders["val"], QuantizeConfig(), teacher=teacher, epochs=3
    )
    ptq_acc, qat_acc = evaluate(ptq, loaders["test"]), evaluate(qat, loaders["test"])
    assert qat_acc >= ptq_acc, (qat_acc, ptq_acc)
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
        teacher=build_result.models["teacher"],
        epochs=1,
    )
    _serve_in_process(build_result.artifacts["student"], qat, tmp_path, digits_splits)

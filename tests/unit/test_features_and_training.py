"""Feature KD hooks and adapters; early stopping."""

import pytest
import torch

from distillserve.errors import RecipeError
from distillserve.students.data import make_loader, preprocess_spec
from distillserve.students.distill_settings import DistillSettings
from distillserve.students.features import FeatureKD
from distillserve.students.recipe import DataConfig
from distillserve.students.training import train
from distillserve.students.zoo import CifarResNet, TinyCNN

SPEC = preprocess_spec(DataConfig())


def test_hooks_capture_the_named_layers_and_adapters_fix_shapes():
    teacher = CifarResNet(10, widths=(32, 64, 128), blocks=1).eval()
    student = TinyCNN(10, widths=(8, 16, 24))
    example = torch.zeros(2, 1, 8, 8)
    # teacher layers.1 is (64, 4, 4); student features.0 is (8, 8, 8): channels and size differ
    kd = FeatureKD(
        teacher,
        student,
        [("layers.1", "features.0"), ("layers.2", "features.2")],
        example,
        loss="mse",
        weight=2.0,
    )
    x = torch.randn(4, 1, 8, 8)
    teacher(x), student(x)
    assert kd.teacher_hooks.outputs["layers.1"].shape == (4, 64, 4, 4)
    assert kd.student_hooks.outputs["features.0"].shape == (4, 8, 8, 8)
    aligned = kd.align(0, kd.student_hooks.outputs["features.0"], (4, 4))
    assert aligned.shape == (4, 64, 4, 4)
    assert isinstance(kd.adapters[0], torch.nn.Conv2d) and kd.adapters[0].in_channels == 8
    loss = kd()
    assert loss.ndim == 0 and loss.item() > 0
    loss.backward()
    assert student.features[0][0].weight.grad is not None
    assert kd.adapters[0].weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())


def test_cosine_loss_is_zero_for_identical_features():
    model = TinyCNN(10)
    twin = TinyCNN(10)
    twin.load_state_dict(model.state_dict())
    kd = FeatureKD(model, twin, [("features.1", "features.1")], torch.zeros(1, 1, 8, 8), "cosine")
    x = torch.randn(3, 1, 8, 8)
    model.eval(), twin.eval()
    model(x), twin(x)
    assert kd().item() == pytest.approx(0.0, abs=1e-6)


def test_unknown_layer_names_the_known_ones():
    with pytest.raises(RecipeError, match=r"student has no layer 'features\.9'.*features\.0"):
        FeatureKD(TinyCNN(10), TinyCNN(10), [("features.0", "features.9")], torch.zeros(1, 1, 8, 8))


@pytest.mark.slow  # trains
def test_feature_kd_trains_with_the_student(digits_splits):
    torch.manual_seed(0)
    teacher = CifarResNet(10, widths=(16, 32, 64), blocks=1).eval()
    student = TinyCNN(10)
    kd = FeatureKD(teacher, student, [("layers.2", "features.2")], torch.zeros(1, 1, 8, 8))
    before = kd.adapters[0].weight.detach().clone()
    loader = make_loader(digits_splits.train, SPEC, 64, shuffle=True)
    val = make_loader(digits_splits.val, SPEC, 256)
    settings = DistillSettings(epochs=2, lr=0.05, weight_decay=0.0, teachers=[teacher])
    result = train(student, loader, val, settings, feature_kd=kd)
    assert not torch.equal(before, kd.adapters[0].weight)
    assert result.best_val_accuracy > 0.3


@pytest.mark.slow  # trains
def test_early_stopping_stops(digits_splits):
    torch.manual_seed(0)
    loader = make_loader(digits_splits.train, SPEC, 64, shuffle=True)
    val = make_loader(digits_splits.val, SPEC, 256)
    # a learning rate this high makes the validation loss stop improving quickly
    settings = DistillSettings(epochs=40, lr=5.0, weight_decay=0.0, patience=2)
    result = train(TinyCNN(10), loader, val, settings)
    assert result.stopped_early
    assert len(result.history) < 40
    losses = [h["val_loss"] for h in result.history]
    best = min(range(len(losses)), key=losses.__getitem__)
    assert len(losses) - 1 - best == 2  # stopped exactly `patience` epochs after the best

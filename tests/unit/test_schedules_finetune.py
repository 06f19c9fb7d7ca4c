"""Alpha/temperature schedules, fine-tuning modes, and KD against CE with 10 % of the labels."""

import pytest
import torch

from distillserve.errors import RecipeError
from distillserve.students.data import labelled_fraction, make_loader, preprocess_spec
from distillserve.students.distill import evaluate
from distillserve.students.distill_settings import AUGMENT, DistillSettings
from distillserve.students.finetune import blocks_from_top, make_trainable
from distillserve.students.recipe import DataConfig
from distillserve.students.schedules import make_schedule
from distillserve.students.training import train
from distillserve.students.zoo import TinyCNN

SPEC = preprocess_spec(DataConfig())


def test_schedules():
    assert [make_schedule(None, 0.9, "a")(e, 10) for e in (0, 9)] == [0.9, 0.9]
    linear = make_schedule({"key": "linear", "kwargs": {"start": 0.5, "end": 1.0}}, 0.9, "a")
    assert [linear(e, 11) for e in (0, 5, 10)] == pytest.approx([0.5, 0.75, 1.0])
    step = make_schedule(
        {"key": "step", "kwargs": {"values": [8, 4, 2], "milestones": [3, 6]}}, 4.0, "t"
    )
    assert [step(e, 10) for e in range(8)] == [8, 8, 8, 4, 4, 4, 2, 2]
    with pytest.raises(RecipeError, match=r"'t\.key'.*constant, linear, step"):
        make_schedule({"key": "cosine"}, 4.0, "t")
    with pytest.raises(RecipeError, match=r"'t\.kwargs'"):
        make_schedule({"key": "step", "kwargs": {"values": [1], "milestones": [3]}}, 4.0, "t")


@pytest.mark.slow  # trains
def test_train_follows_the_schedule(digits_splits):
    loader = make_loader(digits_splits.train, SPEC, 256)
    val = make_loader(digits_splits.val, SPEC, 256)
    teacher = TinyCNN(10).eval()
    schedule = make_schedule({"key": "linear", "kwargs": {"start": 0.2, "end": 0.8}}, 0.9, "a")
    settings = DistillSettings(
        epochs=3, lr=0.01, weight_decay=0.0, teachers=[teacher], alpha=schedule, temperature=2.0
    )
    result = train(TinyCNN(10), loader, val, settings)
    assert [h["alpha"] for h in result.history] == pytest.approx([0.2, 0.5, 0.8])
    assert {h["temperature"] for h in result.history} == {2.0}


@pytest.mark.slow  # trains
def test_frozen_backbone_trains_only_the_head(digits_splits):
    model = TinyCNN(10)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith("fc")}
    head = model.fc.weight.detach().clone()
    bn_mean = model.features[0][1].running_mean.clone()
    loader = make_loader(digits_splits.train, SPEC, 64, shuffle=True)
    val = make_loader(digits_splits.val, SPEC, 256)
    settings = DistillSettings(epochs=2, lr=0.05, weight_decay=1e-3)
    train(model, loader, val, settings, trainable=make_trainable("frozen_backbone"))
    for name, before in frozen.items():
        assert torch.equal(dict(model.named_parameters())[name], before), name
    assert torch.equal(model.features[0][1].running_mean, bn_mean)
    assert not torch.equal(model.fc.weight, head)


def test_layerwise_unfreezes_one_block_from_the_top_per_step():
    model = TinyCNN(10)
    assert [n for n, _ in blocks_from_top(model)] == [
        "fc",
        "features.2",
        "features.1",
        "features.0",
    ]
    gradual = make_trainable("layerwise", unfreeze_every=2)
    seen = []
    for epoch in range(8):
        gradual(model, epoch)
        seen.append(
            [n for n, b in blocks_from_top(model) if all(p.requires_grad for p in b.parameters())]
        )
    assert [len(s) for s in seen] == [1, 1, 2, 2, 3, 3, 4, 4]
    assert seen[2] == ["fc", "features.2"]
    assert make_trainable("full") is None
    with pytest.raises(RecipeError, match=r"distill\.finetune"):
        make_trainable("half")


@pytest.mark.slow  # trains
def test_kd_beats_cross_entropy_with_ten_percent_of_the_labels(build_result, digits_splits):
    """The teacher saw every label; the students see 10 % of them (116 images)."""
    teacher = build_result.models["teacher"]
    few = labelled_fraction(digits_splits.train, 0.1, seed=0)
    assert len(few) == 116  # 10 % of 1,167, stratified by class
    loader = make_loader(few, SPEC, 32, shuffle=True)
    val = make_loader(digits_splits.val, SPEC, 256)
    test = make_loader(digits_splits.test, SPEC, 256)
    accuracy = {}
    for name, kwargs in (
        ("ce", {}),
        ("kd", {"teachers": [teacher], "alpha": 0.9, "temperature": 4.0}),
    ):
        torch.manual_seed(0)
        student = TinyCNN(10)
        settings = DistillSettings(
            epochs=40, lr=0.05, weight_decay=1e-4, augment=AUGMENT, seed=0, **kwargs
        )
        train(student, loader, val, settings)
        accuracy[name] = evaluate(student, test)
    assert accuracy["kd"] >= accuracy["ce"] + 0.02, accuracy

"""Recipe-driven variants end to end: multi-teacher soft targets, progressive stages, feature KD,
early stopping, iterative channel pruning and QAT in one small build, archived and served."""

import pytest
import torch

from distillserve.archiver import build_archive
from distillserve.students.data import encode_png
from distillserve.students.pipeline import build
from distillserve.students.recipe import Recipe
from tests.helpers import handle, load_handler, small_recipe_dict

pytestmark = [pytest.mark.int8, pytest.mark.slow]  # trains; int8 results differ by CPU


def test_variant_recipe_runs_its_stages_in_order_and_serves(tmp_path, digits_splits):
    raw = small_recipe_dict()
    raw["teacher"].update(members=2, epochs=3, combine="soft_targets", weights=[2.0, 1.0])
    raw["distill"].update(
        epochs=6,
        patience=50,
        stages=[{"arch": "tiny_cnn", "kwargs": {"widths": [24, 48, 48]}, "epochs": 3}],
        feature={"pairs": [["features.2", "features.2"]], "loss": "cosine", "weight": 0.5},
    )
    raw["prune"] = {"method": "channel", "amount": 0.5, "rounds": 2, "finetune_epochs": 1}
    raw["quantize"].update(mode="qat", qat_epochs=2)
    raw["export"]["formats"] = ["torchscript"]  # the variants, not the formats (test_formats)
    logs: list[str] = []
    result = build(Recipe.from_dict(raw), tmp_path / "out", log=logs.append)

    order = [
        next(i for i, line in enumerate(logs) if line.startswith(prefix))
        for prefix in (
            "teacher: training cifar_resnet 1/2",
            "teacher: training cifar_resnet 2/2",
            "teacher: multi-teacher KD",
            "stage 1/1: distilling tiny_cnn",
            "student: distilling tiny_cnn",
            "prune: round 1/2",
            "prune: round 2/2",
            "quantize: QAT with KD",
        )
    ]
    assert order == sorted(order), logs
    assert "feature KD on 1 layer pair(s)" in next(x for x in logs if x.startswith("student:"))

    metrics = result.metrics["student"]
    assert [s["arch"] for s in metrics["stages"]] == ["tiny_cnn"]
    assert metrics["quantized"] and metrics["params"] <= 0.6 * 14458
    assert [b[0].out_channels for b in result.models["student-fp32"].features] == [8, 16, 16]

    handler, ctx = load_handler(build_archive(result.root, tmp_path / "store").path, tmp_path, 2)
    answers = handle(
        handler, ctx, [{"body": encode_png(digits_splits.test[i][0])} for i in range(2)]
    )
    assert len(answers) == 2 and all(len(a) == 3 for a in answers)
    assert torch.backends.quantized.engine == "x86"

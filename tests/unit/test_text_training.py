"""The text task keeps what images have where it applies: multi-teacher KD over soft targets,
early stopping, and a build interrupted mid-distillation resuming to the same weights with the
same tokenizer (WordPiece training is not deterministic, so the tokenizer must be the kept one)."""

from __future__ import annotations

import pytest
import torch

from distillserve.students.pipeline import build
from distillserve.students.recipe import Recipe
from tests.texts import text_recipe_dict

pytestmark = pytest.mark.slow  # trains


class _Stop(Exception):
    pass


def _recipe(**distill) -> Recipe:
    raw = text_recipe_dict(formats=["onnx"])
    raw["data"]["limit"] = 300
    raw["teacher"].update(members=2, combine="soft_targets", weights=[0.5, 0.5])
    raw["distill"].update(epochs=2, hidden_weight=0.0, attention_weight=0.0, **distill)
    raw["quantize"] = {"mode": "none"}
    return Recipe.from_dict(raw)


def test_an_interrupted_text_build_resumes_to_the_same_weights(tmp_path):
    recipe = _recipe()
    cache = tmp_path / "cache"  # one tokenizer and teacher for both builds
    whole = build(recipe, tmp_path / "whole", teacher_cache_dir=cache)

    def stop_after_first(epoch: int, _epochs: int, _acc: float) -> None:
        if epoch == 0:
            raise _Stop

    with pytest.raises(_Stop):
        build(recipe, tmp_path / "cut", on_epoch=stop_after_first, teacher_cache_dir=cache)
    lines = []
    resumed = build(recipe, tmp_path / "cut", log=lines.append, resume=True)
    checkpoints = tmp_path / "cut" / "reviews-ci" / "1.0" / ".checkpoints"
    assert any(f"tokenizer: reused {checkpoints}" in line for line in lines), lines
    assert any("multi-teacher KD over 2" in line for line in lines), lines
    expected = whole.models["student"].state_dict()
    got = resumed.models["student"].state_dict()
    assert all(torch.equal(expected[k], got[k]) for k in expected), "weights differ after resume"
    assert (tmp_path / "cut" / "reviews-ci" / "1.0" / "tokenizer.json").is_file()
    assert not checkpoints.exists()

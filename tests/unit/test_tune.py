"""``distillserve tune``: a real 3-trial search on a small recipe, its report and Pareto set, a
best.yaml that builds to the same student, and a re-run that resumes instead of starting over."""

from __future__ import annotations

import json

import pytest
import yaml

from distillserve.search.tune import run_tune, trial_overrides
from distillserve.students.data import load_splits
from distillserve.students.pipeline import build
from distillserve.students.recipe import Recipe, load_recipe
from tests.helpers import small_recipe_dict


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory):
    raw = small_recipe_dict()
    raw["name"] = "tiny-tune"
    raw["teacher"].update(epochs=3, kwargs={"widths": [8, 16, 32], "blocks": 1})
    raw["distill"]["epochs"] = 6
    raw["export"]["formats"] = ["torchscript"]
    raw["tune"] = {
        "width": [0.25, 1.0],
        "depth": [2, 3],
        "temperature": [2.0, 6.0],
        "quantize": ["static"],
        "epochs": 6,
        "cv_folds": 2,
        "finalists": 1,
    }
    path = tmp_path_factory.mktemp("tune") / "tiny-tune.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_overrides_scale_the_student_and_set_the_search_values():
    recipe = Recipe.from_dict({**small_recipe_dict(), "tune": {"width": [0.5, 1.0]}})
    out = trial_overrides(recipe, {"width": 0.5, "depth": 4, "quantize": "qat", "temperature": 3})
    assert out["student"]["kwargs"]["widths"] == [8, 16, 16, 16]
    assert out["student"]["kwargs"]["strides"] == [1, 2, 2, 1]
    assert out["quantize"] == {"mode": "qat"} and out["distill"]["temperature"] == 3


@pytest.mark.slow  # trains
def test_a_three_trial_search_reports_chooses_and_resumes(recipe_file, tmp_path):
    out = tmp_path / "tune"
    cache = tmp_path / "cache"
    report = run_tune(
        recipe_file, budget=0.5, trials=2, out=out, teacher_cache_dir=cache, log=lambda _: None
    )
    assert len(report["rows"]) == 2
    report = run_tune(
        recipe_file, budget=0.5, trials=3, out=out, teacher_cache_dir=cache, log=lambda _: None
    )
    rows = report["rows"]
    assert len(rows) == 3  # resumed: one more trial, not three
    assert (
        rows[0]["reference"] and rows[0]["space"]["width"] == 1.0 and rows[0]["space"]["depth"] == 3
    )
    done = [r for r in rows if r["status"] == "complete"]
    assert done and all(r["val_accuracy"] > 0 and r["latency_ms_batch1"] > 0 for r in done)
    assert any(r["pareto"] for r in done)
    saved = json.loads((out / "report.json").read_text())
    assert saved["best_trial"] == report["best_trial"] is not None
    assert "★" in (out / "report.md").read_text()
    best = next(r for r in rows if r["trial"] == report["best_trial"])
    recipe = load_recipe(recipe_file)
    train_images = len(load_splits(recipe.data, recipe.seed).train)
    # every training image scored once, by a student that did not train on it
    assert best["cv"]["folds"] == 2 and best["cv"]["images"] == train_images
    assert best["cv_accuracy"] == best["cv"]["correct"] / best["cv"]["images"] > 0.5
    assert "cross-validation (2 folds" in report["choice"]
    assert best["format"] == "torchscript" and 0 < best["weight_bytes"] < best["size_bytes"]
    assert (out / "pareto.png").stat().st_size > 10_000

    rebuilt = build(
        load_recipe(out / "best.yaml"),
        tmp_path / "rebuild",
        log=lambda _: None,
        teacher_cache_dir=cache,
    )
    student = rebuilt.metrics["student"]
    assert student["val_accuracy"] == best["val_accuracy"]
    assert student["test_accuracy"] == best["test_accuracy"]
    assert student["params"] == best["params"]


def test_a_trial_far_below_the_target_is_stopped_at_half_its_epochs():
    import optuna

    from distillserve.search.tune import _Threshold

    threshold = _Threshold(target=0.95, margin=0.05)
    threshold(0, 10, 0.5)  # too early to judge
    threshold(3, 10, 0.89)
    with pytest.raises(optuna.TrialPruned, match="below the target"):
        threshold(4, 10, 0.6)
    _Threshold(target=None, margin=0.05)(9, 10, 0.1)  # no teacher measured yet: never stops
    _Threshold(target=0.95, margin=0.05)(9, 10, 0.91)  # within the margin


def test_a_space_with_feature_kd_needs_its_pairs():
    from distillserve.errors import RecipeError

    with pytest.raises(RecipeError, match=r"tune\.feature"):
        Recipe.from_dict({**small_recipe_dict(), "tune": {"feature_kd": True}})
    with pytest.raises(RecipeError, match=r"tune\.width"):
        Recipe.from_dict({**small_recipe_dict(), "tune": {"width": [1.0, 0.5]}})


@pytest.mark.slow  # trains
def test_cross_validation_stops_once_the_floor_is_out_of_reach(recipe_file, tmp_path):
    from distillserve.search.tune_cv import cross_validated_accuracy

    recipe = load_recipe(recipe_file)
    train_images = len(load_splits(recipe.data, recipe.seed).train)
    result = cross_validated_accuracy(recipe, 3, tmp_path / "cache", floor=1.0)
    assert result["correct"] < result["images"]  # an error: 100% is out of reach, so it stops
    assert not result["complete"] and len(result["fold_accuracies"]) < 3
    assert result["images"] < train_images

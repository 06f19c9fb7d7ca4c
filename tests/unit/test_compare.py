"""``distillserve compare``, the teacher cache and recipe inheritance, on tiny digits recipes."""

import json

import pytest
import yaml

from distillserve.errors import RecipeError
from distillserve.scripts.cli import main
from distillserve.search.compare import pareto_front
from distillserve.students.recipe import load_recipe
from tests.helpers import DIGITS_RECIPE, small_recipe_dict


def _tiny(tmp_path, name: str, **sections) -> str:
    raw = small_recipe_dict()
    raw["teacher"].update(epochs=2)
    raw["distill"]["epochs"] = 4
    raw["export"]["min_int8_agreement"] = 0.9  # a 4-epoch student is not yet int8-stable
    raw["export"]["formats"] = ["torchscript"]
    raw["name"] = name
    raw["archive"]["model_name"] = name
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


@pytest.mark.slow  # trains
def test_compare_builds_variants_reuses_the_teacher_and_writes_table_json_and_plot(
    tmp_path, capsys
):
    recipes = [
        _tiny(tmp_path, "tiny-ce", distill={"alpha": 0.0}),
        _tiny(tmp_path, "tiny-pruned", prune={"method": "channel", "finetune_epochs": 1}),
        _tiny(tmp_path, "tiny-mixed", quantize={"mode": "mixed", "accuracy_budget": 0.02}),
    ]
    out, cache = tmp_path / "compare", tmp_path / "cache"
    assert main(["compare", *recipes, "--out", str(out), "--teacher-cache", str(cache)]) == 0
    logs = capsys.readouterr().err
    assert logs.count("teacher: training cifar_resnet 1/1") == 1
    assert logs.count("teacher: reused 1 trained cifar_resnet") == 2

    report = json.loads((out / "report.json").read_text())
    models = [row["model"] for row in report["rows"]]
    assert models == [
        "teacher",
        "tiny-ce int8",
        "tiny-ce fp32",
        "tiny-pruned int8",
        "tiny-pruned fp32",
        "tiny-mixed int8",
        "tiny-mixed fp32",
    ]
    for row in report["rows"]:
        assert (
            row["latency_ms_batch1"] > 0 and row["size_bytes"] > 0 and 0 < row["test_accuracy"] <= 1
        )
    pruned, full = report["rows"][3], report["rows"][1]
    assert pruned["params"] < 0.6 * full["params"] and pruned["size_bytes"] < full["size_bytes"]
    assert report["rows"][1]["what"] == "CE only, static int8"
    mixed = report["rows"][5]
    assert mixed["what"] == "KD, mixed int8/fp32 (budget 0.02)" and mixed["quantized"]
    assert isinstance(mixed["fp32_layers"], list) and report["rows"][1]["fp32_layers"] is None
    assert "quantize: mixed precision within 0.02 of fp32 on validation" in logs
    for cost, key in (("latency_ms_batch1", "pareto_latency"), ("size_bytes", "pareto_size")):
        assert {i for i, r in enumerate(report["rows"]) if r[key]} == pareto_front(
            report["rows"], cost
        )
        assert any(r[key] for r in report["rows"])

    table = (out / "report.md").read_text()
    assert all(f"| {model}" in table for model in models)
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pareto_front_keeps_only_undominated_rows():
    rows = [
        {"test_accuracy": 0.99, "cost": 2.0},  # best accuracy
        {"test_accuracy": 0.98, "cost": 1.0},  # cheapest
        {"test_accuracy": 0.97, "cost": 1.5},  # dominated by row 1
        {"test_accuracy": 0.99, "cost": 3.0},  # dominated by row 0 (same accuracy, dearer)
    ]
    assert pareto_front(rows, "cost") == {0, 1}


@pytest.mark.slow  # trains
def test_teacher_cache_is_reused_only_when_the_teacher_would_train_the_same(tmp_path):
    from distillserve.students.pipeline import build

    first, cache = load_recipe(_tiny(tmp_path, "one")), tmp_path / "cache"
    logs: list[str] = []
    a = build(first, tmp_path / "a", logs.append, teacher_cache_dir=cache)
    b = build(
        load_recipe(_tiny(tmp_path, "two", distill={"alpha": 0.5})),
        tmp_path / "b",
        logs.append,
        teacher_cache_dir=cache,
    )
    assert a.metrics["teacher"]["test_accuracy"] == b.metrics["teacher"]["test_accuracy"]
    assert sum("teacher: reused" in line for line in logs) == 1

    logs.clear()
    build(
        load_recipe(_tiny(tmp_path, "three", teacher={"epochs": 1})),
        tmp_path / "c",
        logs.append,
        teacher_cache_dir=cache,
    )
    assert not any("teacher: reused" in line for line in logs)
    assert len(list(cache.glob("teacher-*.pt"))) == 2


def test_recipe_base_merges_mappings_and_reports_problems(tmp_path):
    variant = load_recipe(DIGITS_RECIPE.parent / "digits-pruned.yaml")
    base = load_recipe(DIGITS_RECIPE)
    assert variant.prune.method == "channel" and variant.archive.model_name == "digits-pruned"
    assert variant.distill == base.distill and variant.archive.batch_size == base.archive.batch_size

    (tmp_path / "loop.yaml").write_text("base: loop.yaml\nname: x\n")
    with pytest.raises(RecipeError, match="inherits from itself"):
        load_recipe(tmp_path / "loop.yaml")
    (tmp_path / "orphan.yaml").write_text("base: missing.yaml\nname: x\n")
    with pytest.raises(RecipeError, match=r"^recipe key 'base': file not found: .*missing\.yaml"):
        load_recipe(tmp_path / "orphan.yaml")
    (tmp_path / "typo.yaml").write_text(f"base: {DIGITS_RECIPE}\nquantize: {{mode: mixd}}\n")
    with pytest.raises(RecipeError, match=r"^recipe key 'quantize\.mode': 'mixd' is not one of"):
        load_recipe(tmp_path / "typo.yaml")

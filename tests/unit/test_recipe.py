"""Recipes: the shipped one loads; every bad key or value is a one-line RecipeError naming it."""

import pytest
import yaml

from distillserve.errors import RecipeError
from distillserve.students.distill_settings import of_recipe, student_seed
from distillserve.students.recipe import Recipe, load_recipe
from tests.helpers import DIGITS_RECIPE


def test_digits_recipe_loads_and_round_trips():
    recipe = load_recipe(DIGITS_RECIPE)
    assert recipe.name == "digits"
    assert recipe.student.max_params == 15000
    assert recipe.archive.model_name == "digits-student"
    assert Recipe.from_dict(recipe.to_dict()) == recipe


def _with(path, tmp_path, **changes):
    raw = yaml.safe_load(DIGITS_RECIPE.read_text())
    for dotted, value in changes.items():
        section, _, key = dotted.partition("__")
        if key:
            raw.setdefault(section, {})[key] = value
        else:
            raw[section] = value
    out = tmp_path / path
    out.write_text(yaml.safe_dump(raw))
    return out


@pytest.mark.parametrize(
    ("changes", "key", "hint"),
    [
        ({"distill__tempreature": 3}, "distill.tempreature", "allowed: alpha, alpha_schedule"),
        ({"distil": {}}, "distil", "allowed: name, seed, task, data"),
        ({"quantize__engine": "fbgemmm"}, "quantize.engine", "x86, fbgemm, qnnpack"),
        ({"quantize__mode": "int4"}, "quantize.mode", "static, dynamic, qat, mixed, none"),
        ({"teacher__checkpoint": "/no/such/teacher.pt"}, "teacher.checkpoint", "file not found"),
        ({"student__arch": "resnet9000"}, "student.arch", "tiny_cnn"),
        ({"distill__alpha": 1.5}, "distill.alpha", "between 0.0 and 1.0"),
        ({"archive__batch_size": "eight"}, "archive.batch_size", "integer"),
        ({"data__source": "imagefolder"}, "data.root", "required"),
        ({"data__mean": [0.5, 0.5]}, "data.mean", "1 value"),
        ({"distill__seed": "one"}, "distill.seed", "integer"),
    ],
)
def test_bad_recipe_names_the_key(tmp_path, changes, key, hint):
    with pytest.raises(RecipeError) as caught:
        load_recipe(_with("bad.yaml", tmp_path, **changes))
    message = str(caught.value)
    assert f"'{key}'" in message and hint in message
    assert "\n" not in message


def test_yaml_float_written_without_dot_is_accepted(tmp_path):
    path = _with("ok.yaml", tmp_path, distill__weight_decay="1e-4")
    assert load_recipe(path).distill.weight_decay == pytest.approx(1e-4)


def test_missing_file_and_invalid_yaml(tmp_path):
    with pytest.raises(RecipeError, match="file not found"):
        load_recipe(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\n  bad: [\n")
    with pytest.raises(RecipeError, match="not valid YAML at line 2"):
        load_recipe(broken)


def test_recipe_cannot_run_code(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("name: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(evil)


def test_distill_seed_moves_the_students_random_state_alone(tmp_path):
    """``distill.seed`` seeds the students (initialisation, dropout, batch order); the data
    split and the teacher keep the recipe's seed."""
    plain = load_recipe(DIGITS_RECIPE)
    assert student_seed(plain) == of_recipe(plain).seed == plain.seed
    seeded = load_recipe(_with("seeded.yaml", tmp_path, distill__seed=plain.seed + 7))
    assert student_seed(seeded) == of_recipe(seeded).seed == plain.seed + 7
    assert seeded.seed == plain.seed

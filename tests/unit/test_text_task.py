"""The text task's parts without a server: recipe keys per task, request decoding and its
errors, the text adapter on the handler core (one tokenizer call per batch, padding to the
longest text, truncation said or refused, v2 BYTES), the TinyBERT losses, DistilBERT-style
initialisation, user CSV/JSONL data and a user's Hugging Face directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from distillserve.errors import DataError, RecipeError
from distillserve.handlers import kserve_v2
from distillserve.handlers.classification import HandlerSettings
from distillserve.handlers.core import HandlerCore, Request
from distillserve.handlers.imageprep import InputError
from distillserve.handlers.text_task import TextClassification
from distillserve.handlers.textprep import TextSpec, text_of
from distillserve.students.recipe import Recipe
from distillserve.students.text_data import load_text_splits
from distillserve.students.text_kd import TransformerKD, uniform_layer_map
from distillserve.students.text_models import (
    build_classifier,
    init_from_teacher,
    load_huggingface,
    student_like,
    train_wordpiece,
)
from tests.texts import save_hf_teacher, text_recipe_dict

CORPUS = ["a good film", "a bad film", "great acting and a fine story", "dull, slow and long"] * 5
SIZES = {"layers": 2, "hidden": 32, "heads": 2, "intermediate": 64}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tok")
    (directory / "tokenizer.json").write_text(train_wordpiece(CORPUS, 200, True).to_str())
    return directory


def _adapter(directory: Path, **spec) -> TextClassification:
    settings = HandlerSettings(spec=TextSpec(max_length=8, max_bytes=200, **spec), topk=2)
    return TextClassification(settings, {"0": "negative", "1": "positive"}, directory)


class _Model:
    """Logits from the ids (sum parity), recording the shapes it was called with."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(ids.shape))
        score = (ids != 0).sum(1, keepdim=True).float()
        return torch.cat([score, -score], 1)


# -- recipe --------------------------------------------------------------------------------------
def test_text_recipe_loads_round_trips_and_defaults_to_static_int8():
    recipe = Recipe.from_dict(text_recipe_dict())
    assert recipe.is_text and recipe.quantize.mode == "static"
    assert Recipe.from_dict(recipe.to_dict()).to_dict() == recipe.to_dict()


@pytest.mark.parametrize(
    ("section", "change", "key"),
    [
        ("distill", {"augment": False}, "distill.augment"),
        ("prune", {"method": "channel"}, "prune.method"),
        ("quantize", {"mode": "qat"}, "quantize.mode"),
        ("data", {"too_long": "drop"}, "data.too_long"),
        ("student", {"hidden": 30, "heads": 4}, "student.heads"),
        ("teacher", {"source": "huggingface"}, "teacher.path"),
    ],
)
def test_keys_that_do_not_fit_the_text_task_are_named(section, change, key):
    raw = text_recipe_dict()
    raw[section] = {**raw.get(section, {}), **change}
    with pytest.raises(RecipeError) as err:
        Recipe.from_dict(raw)
    assert err.value.key == key


def test_text_only_keys_are_refused_in_an_image_recipe():
    with pytest.raises(RecipeError) as err:
        Recipe.from_dict({"name": "x", "distill": {"hidden_weight": 1.0}})
    assert err.value.key == "distill.hidden_weight" and "text-classification" in str(err.value)


# -- request decoding ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("payload", "content_type", "status"),
    [
        ({"body": b""}, "application/octet-stream", 400),
        ({"body": "   "}, "text/plain", 400),
        ({"body": b"\xff\xfe"}, "application/octet-stream", 400),
        ({"body": b"x" * 201}, "application/octet-stream", 413),
        ({"body": {"text": 3}}, "application/json", 400),
        ({"body": [1]}, "application/json", 400),
        ({"body": b'{"text": "x"'}, "application/json; charset=utf-8", 400),
        ({"body": {"text": "bad \ud800"}}, "application/json", 400),
        ({}, None, 400),
    ],
)
def test_a_bad_text_request_is_its_own_error(payload, content_type, status):
    with pytest.raises(InputError) as err:
        text_of(payload, content_type, TextSpec(max_bytes=200))
    assert err.value.status == status


def test_text_request_forms():
    spec = TextSpec()
    assert text_of({"body": "plain"}, "text/plain", spec) == "plain"
    assert text_of({"data": b"ok"}, None, spec) == "ok"
    assert text_of({"body": {"data": "from data"}}, "application/json", spec) == "from data"
    raw = json.dumps({"text": "with params"}).encode()
    assert text_of({"body": raw}, "application/json; charset=utf-8", spec) == "with params"


# -- the adapter on the core ---------------------------------------------------------------------
class _Counting:
    """A tokenizer that counts its batch calls."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.calls = tokenizer, []

    def encode_batch(self, texts):
        self.calls.append(len(texts))
        return self.tokenizer.encode_batch(texts)


def test_one_tokenizer_call_per_batch_padded_to_the_longest(tokenizer_dir):
    adapter, model = _adapter(tokenizer_dir), _Model()
    adapter.tokenizer = counting = _Counting(adapter.tokenizer)
    core = HandlerCore(adapter, adapter.bind(model))
    requests = [Request({"body": t}) for t in ("a good film", "bad", "", "a fine story")]
    answers = core.handle(requests)
    assert [a.status for a in answers] == [200, 200, 400, 200]
    assert counting.calls == [3]  # the three good texts, in one call
    assert model.shapes == [(3, 5)]  # [CLS] a good film [SEP]: the longest of the three
    assert answers[1].body["truncated"] is False and set(answers[1].body["probabilities"]) == {
        "negative",
        "positive",
    }


def test_past_max_length_is_truncated_and_said_or_refused(tokenizer_dir):
    long_text = "a good film " * 10
    for too_long, status in (("truncate", 200), ("refuse", 413)):
        adapter = _adapter(tokenizer_dir, too_long=too_long)
        core = HandlerCore(adapter, adapter.bind(_Model()))
        good, long = core.handle([Request({"body": "a good film"}), Request({"body": long_text})])
        assert good.status == 200 and good.body["truncated"] is False
        assert long.status == status
        if status == 200:
            assert long.body["truncated"] is True
        else:
            assert long.kind == "TooLong"


def test_v2_bytes_strings_json_and_binary(tokenizer_dir):
    adapter = _adapter(tokenizer_dir)
    core = HandlerCore(adapter, adapter.bind(_Model()), model_name="m", model_version="1")
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a", "b c"]}]}
    (answer,) = core.handle([Request({"body": body})])
    outputs = {o["name"]: o for o in answer.body["outputs"]}
    assert outputs["labels"]["shape"] == [2, 2] and outputs["truncated"]["data"] == [False] * 2
    raw = b"".join(len(t).to_bytes(4, "little") + t for t in (b"good", b"\xff"))
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "datatype": "BYTES",
                    "shape": [2],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    ).encode()
    headers = {kserve_v2.HEADER_LENGTH: str(len(header))}
    (refused,) = core.handle([Request({"body": header + raw}, headers)])
    assert refused.status == 400 and "UTF-8" in refused.body["message"]
    fp32 = {"inputs": [{"name": "t", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
    (wrong,) = core.handle([Request({"body": fp32})])
    assert wrong.status == 400 and "BYTES" in wrong.body["message"]


# -- training pieces -----------------------------------------------------------------------------
def test_tinybert_losses_vanish_for_a_copy_and_ignore_padding():
    torch.manual_seed(0)
    teacher = build_classifier(SIZES, 200, ["a", "b"], 16)
    student = student_like(teacher, SIZES, ["a", "b"])
    student.hf.load_state_dict(teacher.hf.state_dict())
    kd = TransformerKD(teacher.eval(), student.eval(), None, 1.0, 1.0)
    ids = torch.tensor([[2, 5, 6, 3, 0, 0], [2, 7, 8, 9, 10, 3]])
    teacher(ids), student(ids)
    assert kd().item() == pytest.approx(0.0, abs=1e-6)
    other = student_like(teacher, {**SIZES, "hidden": 16, "heads": 1}, ["a", "b"]).eval()
    kd = TransformerKD(teacher, other, [[0, 0], [2, 2]], 1.0, 1.0)
    teacher(ids), other(ids)
    loss = kd()
    assert loss.item() > 0 and isinstance(kd.project, torch.nn.Linear)
    longer = torch.cat([ids, torch.zeros(2, 3, dtype=torch.long)], 1)
    teacher(longer), other(longer)
    assert kd().item() == pytest.approx(loss.item(), rel=1e-4)  # more padding, same loss
    kd.remove()
    assert not teacher.keep_states and teacher.states is None
    assert uniform_layer_map(4, 2) == [(0, 0), (2, 1), (4, 2)]


def test_student_layers_come_from_every_other_teacher_layer():
    teacher = build_classifier({**SIZES, "layers": 4}, 200, ["a", "b"], 16)
    student = student_like(teacher, SIZES, ["a", "b"])
    copied, total, layers = init_from_teacher(student, teacher)
    assert layers == [0, 2] and copied == total
    key = "bert.encoder.layer.{}.attention.self.query.weight"
    state_t, state_s = teacher.hf.state_dict(), student.hf.state_dict()
    assert torch.equal(state_s[key.format(1)], state_t[key.format(2)])


def test_user_csv_jsonl_and_split_directory(tmp_path):
    rows = [("good", "pos"), ("bad", "neg")] * 20
    csv_file = tmp_path / "reviews.csv"
    csv_file.write_text("review,stars\n" + "".join(f"{t},{y}\n" for t, y in rows))
    raw = text_recipe_dict()
    raw["data"] = {"source": "csv", "path": str(csv_file), "text_field": "review"}
    raw["data"]["label_field"] = "stars"
    splits = load_text_splits(Recipe.from_dict(raw).data)
    assert splits.classes == ["neg", "pos"] and len(splits.train) + len(splits.test) > 30
    split_dir = tmp_path / "split"
    split_dir.mkdir()
    for name in ("train", "val", "test"):
        lines = [json.dumps({"text": t, "label": y}) for t, y in rows[:6]]
        (split_dir / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    raw["data"] = {"source": "jsonl", "path": str(split_dir)}
    splits = load_text_splits(Recipe.from_dict(raw).data)
    assert len(splits.train) == len(splits.val) == len(splits.test) == 6
    (split_dir / "test.jsonl").write_text('{"text": "no label"}\n')
    with pytest.raises(DataError, match="lacks"):
        load_text_splits(Recipe.from_dict(raw).data)


def test_a_users_hugging_face_directory_loads_offline_or_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    directory = save_hf_teacher(tmp_path / "bert", CORPUS, ["neg", "pos"])
    model, tokenizer = load_huggingface(directory, ["neg", "pos"])
    assert model.pad_id == 0 and tokenizer.encode("a good film").ids[0] == 2
    with pytest.raises(RecipeError, match="classifies 2 labels"):
        load_huggingface(directory, ["a", "b", "c"])
    with pytest.raises(RecipeError, match=r"no config\.json"):
        load_huggingface(tmp_path, ["neg", "pos"])


def test_a_trained_tokenizer_is_kept_with_the_teacher_cache(tmp_path):
    """WordPiece training is not deterministic across processes: the one a cached teacher was
    trained with is the one reused."""
    from distillserve.students.text_stages import _trained_tokenizer

    recipe = Recipe.from_dict(text_recipe_dict())
    first, origin = _trained_tokenizer(recipe, CORPUS, tmp_path, None)
    again, reused = _trained_tokenizer(recipe, ["other words entirely"] * 3, tmp_path, None)
    assert "trained" in origin and reused.startswith("reused")
    assert again.to_str() == first.to_str()

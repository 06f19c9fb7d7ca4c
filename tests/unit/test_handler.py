"""The handler in process, with TorchServe's own Context and metrics recorded in memory."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from distillserve.handlers.distill_classifier import DistillClassifierHandler
from distillserve.students.data import encode_png, make_loader, preprocess_spec
from distillserve.students.export import load_torchscript
from distillserve.students.recipe import DataConfig
from tests.helpers import handle, handler_context, resign

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture
def loaded(extracted_student):
    (extracted_student / "index_to_name.json").write_text(
        json.dumps({str(i): n for i, n in enumerate(NAMES)})
    )
    resign(extracted_student)
    handler = DistillClassifierHandler()
    ctx = handler_context(extracted_student)
    handler.initialize(ctx)
    return handler, ctx


def test_initialize_sets_engine_threads_and_loads_int8(loaded):
    handler, _ = loaded
    assert handler.initialized
    assert torch.backends.quantized.engine == "x86"
    assert handler.settings.quantized and handler.device.type == "cpu"


def test_batch_of_four_gives_four_labelled_answers(loaded, digits_splits, build_result):
    handler, ctx = loaded
    images = [digits_splits.test[i][0] for i in range(4)]
    answers = handle(handler, ctx, [{"body": encode_png(img)} for img in images])
    assert len(answers) == 4
    spec = preprocess_spec(DataConfig())
    inputs, _ = next(iter(make_loader(digits_splits.test, spec, 4)))
    expected = load_torchscript(build_result.artifacts["student"] / "model.pt")(inputs).argmax(1)
    for answer, index in zip(answers, expected.tolist()):
        assert next(iter(answer)) == NAMES[index]
        assert set(answer) <= set(NAMES) and len(answer) == 3
        assert sum(answer.values()) <= 1.0 + 1e-6
        assert list(answer.values()) == sorted(answer.values(), reverse=True)
    assert all(p.get_response_status_code() == 200 for p in ctx.request_processor)
    assert ctx.metrics.last("BatchSize") == 4


def test_bad_item_gets_its_own_4xx_and_the_rest_are_answered(loaded, digits_splits):
    handler, ctx = loaded
    good = encode_png(digits_splits.test[0][0])
    rgb = io.BytesIO()
    Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(rgb, format="JPEG")
    requests = [
        {"body": good},
        {"body": b"not an image"},
        {"data": {"data": "%%% not base64"}},
        {"body": rgb.getvalue()},
        {"body": b""},
    ]
    answers = handle(handler, ctx, requests)
    statuses = [p.get_response_status_code() for p in ctx.request_processor]
    assert statuses == [200, 415, 400, 200, 400]
    assert next(iter(answers[0])) in NAMES and next(iter(answers[3])) in NAMES
    for idx in (1, 2, 4):
        assert answers[idx]["code"] == statuses[idx] and answers[idx]["message"]


def test_all_bad_batch_still_answers_each_request(loaded):
    handler, ctx = loaded
    answers = handle(handler, ctx, [{"body": b"x"}, {"body": b"y"}])
    assert [a["code"] for a in answers] == [415, 415]


def test_altered_model_is_refused_at_load(extracted_student):
    with open(extracted_student / "model.pt", "ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(RuntimeError, match=r"changed since signing: model\.pt"):
        DistillClassifierHandler().initialize(handler_context(extracted_student))
    resign(extracted_student)  # signed again: the build's own record still refuses it
    with pytest.raises(RuntimeError, match=r"does not match build-info\.json"):
        DistillClassifierHandler().initialize(handler_context(extracted_student))


def test_ties_rank_the_lower_class_first_like_argmax():
    from distillserve.handlers.classification import topk_answers

    logits = torch.tensor([[0.0, 3.5, 1.0, 3.5], [2.0, 2.0, 2.0, 2.0]])
    answers = topk_answers(logits, {str(i): f"c{i}" for i in range(4)}, 3)
    assert list(answers[0]) == ["c1", "c3", "c2"]
    assert list(answers[1]) == ["c0", "c1", "c2"]
    assert [next(iter(a)) for a in answers] == [f"c{i}" for i in logits.argmax(1).tolist()]


def test_a_host_torch_older_than_the_archive_build_is_refused(extracted_student):
    from distillserve.handlers.classification import check_torch_version

    info_path = extracted_student / "build-info.json"
    info = json.loads(info_path.read_text())
    check_torch_version(extracted_student, info["versions"]["torch"])  # the same: fine
    check_torch_version(extracted_student, "99.0.0+cpu")  # newer: fine
    info["versions"]["torch"] = "99.1.0"
    info_path.write_text(json.dumps(info))
    resign(extracted_student)
    with pytest.raises(RuntimeError, match=r"built with torch 99\.1\.0 .* install torch>=99\.1\.0"):
        DistillClassifierHandler().initialize(handler_context(extracted_student))


def test_a_pt2_package_needs_the_torch_release_that_compiled_it(extracted_student):
    from distillserve.handlers.classification import check_torch_version

    built = json.loads((extracted_student / "build-info.json").read_text())["versions"]["torch"]
    major, minor = built.split(".")[:2]
    check_torch_version(extracted_student, f"{major}.{minor}.9", "pt2")  # a patch release: fine
    for host in (f"{major}.{int(minor) + 1}.0", f"{major}.{int(minor) - 1}.0"):
        with pytest.raises(RuntimeError, match=r"\.pt2 package was compiled by torch"):
            check_torch_version(extracted_student, host, "pt2")


def test_an_explanation_request_gets_its_own_501_in_a_batch(loaded, digits_splits):
    """TorchServe marks each /explanations and v2 explain request with ``explain: True``; the
    first request of this batch is one, so BaseHandler alone would divert the whole batch."""
    handler, ctx = loaded
    good = encode_png(digits_splits.test[0][0])
    headers = [{"explain": "True"}, {"explain": "False"}, {"explain": "True"}, {}]
    answers = handle(handler, ctx, [{"body": good}] * 4, headers)
    statuses = [p.get_response_status_code() for p in ctx.request_processor]
    assert statuses == [501, 200, 501, 200]
    assert answers[0]["type"] == "NotImplemented" and "explanations" in answers[0]["message"]
    assert next(iter(answers[1])) in NAMES and answers[1] == answers[3]


@pytest.mark.parametrize(
    ("labels", "reason"),
    [
        ({str(i): [n] for i, n in enumerate(NAMES)}, "labels must be strings"),
        ({str(i): {"name": n} for i, n in enumerate(NAMES)}, "labels must be strings"),
        ({str(i): n for i, n in enumerate(NAMES[:9])}, r"no label for \[9\]"),
    ],
)
def test_labels_that_cannot_answer_are_refused_at_load(extracted_student, labels, reason):
    """A hand-edited index_to_name.json never reaches a live model: the worker fails to load."""
    (extracted_student / "index_to_name.json").write_text(json.dumps(labels))
    resign(extracted_student)  # hand-edited and signed again: the label check still refuses
    with pytest.raises(ValueError, match=reason):
        DistillClassifierHandler().initialize(handler_context(extracted_student))


def test_numeric_labels_are_answered_as_strings(extracted_student, digits_splits):
    (extracted_student / "index_to_name.json").write_text(json.dumps(dict(enumerate(range(10)))))
    resign(extracted_student)
    handler = DistillClassifierHandler()
    ctx = handler_context(extracted_student)
    handler.initialize(ctx)
    answers = handle(handler, ctx, [{"body": encode_png(digits_splits.test[0][0])}])
    assert all(isinstance(label, str) for label in answers[0])


def test_warm_up_never_runs_past_the_largest_batch(extracted_student, monkeypatch):
    from distillserve.handlers.serving_policy import MAX_BATCH_SIZE

    seen = []
    handler = DistillClassifierHandler()
    original = handler._warm_up
    monkeypatch.setattr(handler, "_warm_up", lambda size: seen.append(size) or original(size))
    handler.initialize(handler_context(extracted_student, batch_size=100_000))
    assert seen == [MAX_BATCH_SIZE]


def test_a_worker_says_when_its_configured_workers_exceed_the_hosts_cores(
    extracted_student, caplog
):
    from distillserve.handlers.serving_policy import usable_cores

    cores = usable_cores()
    for workers, warned in ((cores, False), (cores + 1, True)):
        ctx = handler_context(extracted_student)
        ctx.model_yaml_config = {**ctx.model_yaml_config, "minWorkers": 1, "maxWorkers": workers}
        ctx.model_yaml_config["handler"] = {**ctx.model_yaml_config["handler"], "threads": 1}
        caplog.clear()
        with caplog.at_level("WARNING"):
            DistillClassifierHandler().initialize(ctx)
        said = [r.getMessage() for r in caplog.records if "usable cores" in r.getMessage()]
        assert bool(said) == warned
        if warned:
            assert f"{workers} workers x 1 thread(s) and this host has {cores} usable" in said[0]
            assert f"run at most {cores} workers" in said[0]

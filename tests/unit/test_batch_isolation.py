"""Batch isolation, property-tested: whatever a client sends, a bad request gets its own 4xx JSON
and every good request in the same batch of 8 gets its in-process prediction.

Requests are generated as a client sends them (bytes with a content type) and turned into what
the handler receives exactly as TorchServe's worker does (``json.loads`` for ``application/json``,
UTF-8 text for ``text/*``, raw bytes otherwise, the raw bytes again when that fails). Every bad
request must be refused by a precise decoding guard: an answer from the handler's last-resort
safety net (type ``UnreadableRequest``) fails the test, because it means a decoding step let an
exception through.
"""

from __future__ import annotations

import base64
import json
import logging

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distillserve.handlers.distill_classifier import DistillClassifierHandler
from distillserve.students.data import encode_png, make_loader, preprocess_spec
from distillserve.students.export import load_torchscript
from distillserve.students.recipe import DataConfig
from tests.helpers import handle, handler_context

BATCH = 8
CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "application/octet-stream",
    "image/png",
    "text/plain",
    "multipart/form-data",
    "application/x-www-form-urlencoded",
    None,
]
KEYS = ["body", "data", "file"]


@pytest.fixture(scope="module")
def served(model_store, tmp_path_factory):
    """The int8 student's handler, initialised from its unpacked .mar."""
    import zipfile

    root = tmp_path_factory.mktemp("isolation")
    with zipfile.ZipFile(model_store / "digits-student.mar") as mar:
        mar.extractall(root)
    handler = DistillClassifierHandler()
    ctx = handler_context(root, BATCH)
    handler.initialize(ctx)
    return handler, ctx


@pytest.fixture(scope="module")
def good(build_result, digits_splits) -> list[tuple[bytes, str]]:
    """Sixteen test digits as PNG with their in-process top-1 labels."""
    model = load_torchscript(build_result.artifacts["student"] / "model.pt")
    inputs, _ = next(iter(make_loader(digits_splits.test, preprocess_spec(DataConfig()), 16)))
    with torch.inference_mode():
        labels = model(inputs).argmax(1).tolist()
    return [(encode_png(digits_splits.test[i][0]), str(labels[i])) for i in range(16)]


def as_torchserve_passes_it(body: bytes, content_type: str | None):
    """What TorchServe 0.12's worker hands the handler for ``body`` (``_retrieve_input_data``)."""
    if content_type == "application/json":
        try:
            return json.loads(body.decode("utf-8"))
        except Exception:  # the worker logs "Failed json decoding" and forwards the bytes
            return body
    if (content_type or "").startswith("text"):
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            return body
    return body


def _nest(depth: int, container: str, leaf) -> str:
    """JSON text nested ``depth`` levels deep (far beyond Python's recursion limit if asked)."""
    leaf_text = json.dumps(leaf)
    if container == "list":
        return "[" * depth + leaf_text + "]" * depth
    return '{"a":' * depth + leaf_text + "}" * depth


json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=16),
    st.sampled_from(["BYTES", "FP32", "INT64", "", "!!", "iVBORw0KGgo="]),
)
json_values = st.recursive(
    json_leaves,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["data", "b64", "inputs", "id", "shape", "datatype", "name", "x"]),
            inner,
            max_size=4,
        )
    ),
    max_leaves=24,
)
deep_text = st.builds(_nest, st.integers(2, 30_000), st.sampled_from(["list", "dict"]), json_leaves)
shapes = st.one_of(
    json_values,
    st.lists(st.integers(-3, 10**30), max_size=10),
    st.sampled_from([[1, 1, 8, 8], [2, 1, 8, 8], [1], [64], [0], [1, 3, 8, 8], [True, 1, 8, 8]]),
)
tensor_data = st.one_of(
    json_values,
    st.lists(st.floats(allow_nan=True, allow_infinity=True) | st.integers(), max_size=70),
    st.lists(st.text(max_size=12), max_size=3),
    st.integers(64, 4096).map(lambda n: [[1e308, -1e308] * (n // 2)]),
)
v2_tensors = st.fixed_dictionaries(
    {"name": st.text(max_size=6)},
    optional={
        "shape": shapes,
        "datatype": st.sampled_from(["BYTES", "FP32", "INT8", "fp32"]) | json_values,
        "data": tensor_data,
        "parameters": json_values,
    },
)
v2_bodies = st.fixed_dictionaries(
    {"inputs": st.lists(v2_tensors, max_size=3) | json_values},
    optional={"id": json_values, "outputs": json_values, "parameters": json_values},
)
envelopes = st.fixed_dictionaries(
    {}, optional={"data": json_values | st.text(), "b64": json_values | st.text()}
)


def _text_of(value) -> str:
    return json.dumps(value, allow_nan=True)


# Near-valid requests: a well-formed request with exactly one defect, so that every guard deep in
# the parsing is reached (random JSON rarely gets past the first checks).
_PNG = base64.b64encode(
    encode_png(torch.arange(64, dtype=torch.uint8).reshape(1, 8, 8) * 4)
).decode()
non_strings = json_values.filter(
    lambda v: v is not None and not isinstance(v, str) and type(v) is not int
)


def _with(base: dict, path: tuple, value) -> dict:
    """A copy of ``base`` with the item at ``path`` (keys and indices) replaced by ``value``."""
    out = json.loads(json.dumps(base))
    target = out
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return out


_BYTES = {"id": "x", "inputs": [{"name": "i", "shape": [1], "datatype": "BYTES", "data": [_PNG]}]}
_FP32 = {"inputs": [{"name": "i", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.5] * 64}]}
bytes_defects = st.one_of(
    st.builds(lambda v: _with(_BYTES, ("id",), v), non_strings),
    st.builds(lambda v: _with(_BYTES, ("inputs", 0, "data"), v), st.just([[_PNG]]) | non_strings),
    st.builds(lambda v: _with(_BYTES, ("inputs", 0, "data", 0), v), non_strings | st.text()),
    st.builds(
        lambda v: _with(_BYTES, ("inputs", 0, "shape"), v), shapes.filter(lambda s: s != [1])
    ),
    st.builds(
        lambda v: _with(_BYTES, ("inputs", 0, "datatype"), v),
        json_values.filter(lambda v: v != "BYTES"),
    ),
    st.builds(lambda v: _with(_BYTES, ("inputs",), v), json_values),
)
bad_numbers = st.one_of(
    st.integers(min_value=10**39, max_value=10**400),
    st.sampled_from([1e39, -1e300, float("nan"), float("inf"), True, None, "1.0", [0.5], {}]),
)
fp32_defects = st.one_of(
    st.builds(
        lambda i, v: _with(_FP32, ("inputs", 0, "data", i), v), st.integers(0, 63), bad_numbers
    ),
    st.builds(
        lambda v: _with(_FP32, ("inputs", 0, "shape"), v),
        shapes.filter(lambda s: s != [1, 1, 8, 8]),
    ),
    st.builds(
        lambda n: _with(_FP32, ("inputs", 0, "data"), [0.5] * n),
        st.integers(0, 200).filter(lambda n: n != 64),
    ),
)
envelope_defects = st.one_of(
    st.builds(lambda v: {"data": v}, non_strings | st.text(max_size=20)),
    st.builds(lambda v: {"b64": v}, non_strings),
    st.just({"data": _PNG + "%"}),
    st.just([{"data": _PNG}]),
)


# What a hostile client sends: (body bytes, content type).
client_bodies = st.one_of(
    st.binary(max_size=512),
    st.text(max_size=128).map(lambda t: t.encode("utf-8", "surrogatepass")),
    json_values.map(_text_of).map(str.encode),
    v2_bodies.map(_text_of).map(str.encode),
    envelopes.map(_text_of).map(str.encode),
    deep_text.map(str.encode),
    st.builds(
        lambda d: ('{"inputs":[{"shape":[1],"datatype":"BYTES","data":' + d + "}]}").encode(),
        deep_text,
    ),
    st.integers(4301, 6000).map(lambda n: ("1" * n).encode()),  # over Python's int digits limit
    bytes_defects.map(_text_of).map(str.encode),
    fp32_defects.map(_text_of).map(str.encode),
    envelope_defects.map(_text_of).map(str.encode),
)


# No example database: examples saved while checking mutated guards would replay here.
@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(
    bad=st.lists(
        st.tuples(client_bodies, st.sampled_from(CONTENT_TYPES), st.sampled_from(KEYS)),
        min_size=1,
        max_size=BATCH - 1,
    ),
    slots=st.permutations(range(BATCH)),
    envelope=st.sampled_from(["raw", "json", "v2"]),
    first_good=st.integers(0, 15),
)
def test_a_batch_of_good_and_arbitrary_requests_answers_each_on_its_own(
    served, good, bad, slots, envelope, first_good
):
    handler, ctx = served
    requests: list = [None] * BATCH
    headers: list = [None] * BATCH
    expected: dict[int, str] = {}
    bad_slots = slots[: len(bad)]
    for slot, (body, content_type, key) in zip(bad_slots, bad):
        requests[slot] = {key: as_torchserve_passes_it(body, content_type)}
        headers[slot] = {key: {"content-type": content_type}}
        if content_type:
            headers[slot]["Content-Type"] = content_type
    for n, slot in enumerate(slots[len(bad) :]):
        png, label = good[(first_good + n) % len(good)]
        encoded = base64.b64encode(png).decode()
        if envelope == "raw":
            requests[slot], content_type = {"body": png}, "image/png"
        elif envelope == "json":
            requests[slot], content_type = {"body": {"data": encoded}}, "application/json"
        else:
            tensor = {"name": "images", "shape": [1], "datatype": "BYTES", "data": [encoded]}
            requests[slot] = {"body": {"id": f"r{slot}", "inputs": [tensor]}}
            content_type = "application/json"
        headers[slot] = {"body": {"content-type": content_type}, "Content-Type": content_type}
        expected[slot] = label

    answers = handle(handler, ctx, requests, headers)

    assert len(answers) == BATCH
    for slot, answer in enumerate(answers):
        status = ctx.request_processor[slot].get_response_status_code()
        if slot in expected:
            assert status == 200, (slot, answer)
            if envelope == "v2":
                assert answer["id"] == f"r{slot}"
                assert answer["outputs"][1]["data"][0] == expected[slot]
            else:
                assert next(iter(answer)) == expected[slot]
        else:
            assert 400 <= status < 500, (slot, requests[slot], answer)
            assert isinstance(answer, dict) and answer["code"] == status
            assert isinstance(answer["message"], str) and answer["message"]
            # a precise guard refused it, not the last-resort safety net
            assert answer["type"] != "UnreadableRequest", (requests[slot], answer)
            json.dumps(answer)  # the body TorchServe sends back is valid JSON


def test_the_safety_net_keeps_an_unforeseen_error_to_its_request(served, good, monkeypatch, caplog):
    """A decoding step that raises something unexpected fails its request (400, logged with the
    traceback), never its neighbours."""
    import distillserve.handlers.imageprep as module

    handler, ctx = served
    real = module.decode_image

    def decode(data, *args, **kwargs):
        if data == b"boom":
            raise ZeroDivisionError("a decoder bug")
        return real(data, *args, **kwargs)

    monkeypatch.setattr(module, "decode_image", decode)
    requests = [{"body": good[0][0]}, {"body": b"boom"}, {"body": good[1][0]}]
    with caplog.at_level(logging.ERROR):
        answers = handle(handler, ctx, requests)
    statuses = [p.get_response_status_code() for p in ctx.request_processor]
    assert statuses == [200, 400, 200]
    assert next(iter(answers[0])) == good[0][1] and next(iter(answers[2])) == good[1][1]
    assert (
        answers[1]["type"] == "UnreadableRequest" and "ZeroDivisionError" in answers[1]["message"]
    )
    assert "could not be read" in caplog.text and "a decoder bug" in caplog.text


def test_a_failing_forward_pass_fails_the_batch_with_500_and_a_logged_reason(
    served, good, monkeypatch, caplog
):
    from ts.utils.util import PredictionException

    handler, ctx = served

    def broken(_batch):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(handler.core, "model", broken)
    with caplog.at_level(logging.ERROR), pytest.raises(PredictionException) as failed:
        handle(handler, ctx, [{"body": good[0][0]}, {"body": good[1][0]}])
    assert failed.value.error_code == 500 and "kernel exploded" in str(failed.value)
    assert "forward pass failed on a batch of 2" in caplog.text

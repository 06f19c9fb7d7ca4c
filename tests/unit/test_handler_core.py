"""The handler core is task-independent: a toy second task (a JSON vector classifier, the
adapter below, under 60 lines) gets per-request errors, KServe v2 and metrics from the core
without touching it, and the core's contract holds: one answer per request, in order."""

from __future__ import annotations

import json

import torch
from torch import nn

from distillserve.handlers import payloads
from distillserve.handlers.core import HandlerCore, Request, V2Output
from distillserve.handlers.imageprep import InputError


class VectorClassifier:  # the whole second task: decode, collate, answer
    decode_metric = "VectorDecodeTime"
    size = 4

    def _vector(self, value) -> torch.Tensor:
        ok = isinstance(value, list) and len(value) == self.size
        if not ok or not all(isinstance(v, (int, float)) for v in value):
            raise InputError(f"need a list of {self.size} numbers", 422, "BadVector")
        return torch.tensor(value, dtype=torch.float32)

    def decode(self, request: Request) -> list:
        _, body = request.body
        parsed = payloads.parse_json(body) if isinstance(body, (bytes, str)) else body
        if not isinstance(parsed, dict) or "vector" not in parsed:
            raise InputError('JSON needs "vector"', 400, "MalformedRequest")
        return [self._vector(parsed["vector"])]

    def decode_v2(self, tensor) -> list:
        if tensor.datatype != "FP32" or tensor.shape[-1:] != [self.size]:
            raise InputError(f"v2 input must be FP32 [N, {self.size}]")
        return list(tensor.values.reshape(-1, self.size))

    def collate(self, items) -> torch.Tensor:
        return torch.stack(list(items))

    def empty(self) -> torch.Tensor:
        return torch.empty((0, self.size))

    def prepare_outputs(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs

    def answer(self, rows: torch.Tensor) -> dict:
        return {"class": int(rows.argmax(1)[0])}

    def v2_outputs(self, rows: torch.Tensor) -> list[V2Output]:
        classes = rows.argmax(1).tolist()
        return [V2Output("class", "FP32", [len(classes)], [float(c) for c in classes])]


def v2(data, shape, datatype="FP32", request_id="r1") -> Request:
    tensor = {"name": "x", "shape": shape, "datatype": datatype, "data": data}
    return Request({"body": json.dumps({"id": request_id, "inputs": [tensor]}).encode()})


def test_a_second_task_gets_errors_v2_and_metrics_from_the_core():
    torch.manual_seed(0)
    model, metrics = nn.Linear(4, 3).eval(), []
    core = HandlerCore(VectorClassifier(), model, model_name="vec", model_version="1.0",
                       metrics=lambda *record: metrics.append(record))  # fmt: skip
    good = [1.0, 2.0, 3.0, 4.0]
    answers = core.handle(
        [
            Request({"body": json.dumps({"vector": good}).encode()}),
            Request({"body": b"{not json"}),
            v2([good, good], [2, 4]),
            Request({"data": {"vector": [1, 2]}}),
            v2([1.0, 2.0], [2], request_id="r2"),
            v2(["aGk="], [1], datatype="BYTES"),
        ]
    )
    expected = model(torch.tensor([good])).argmax(1).item()
    assert [a.status for a in answers] == [200, 400, 200, 422, 400, 400]
    assert answers[0].body == {"class": expected}
    assert answers[1].body["type"] == "MalformedRequest"
    message = "need a list of 4 numbers"
    assert answers[3].body == {
        "code": 422,
        "type": "BadVector",
        "message": message,
        "error": message,
    }
    reply = answers[2].body
    assert reply["id"] == "r1" and reply["model_name"] == "vec" and reply["model_version"] == "1.0"
    assert reply["outputs"] == [
        {"name": "class", "datatype": "FP32", "shape": [2], "data": [float(expected)] * 2}
    ]
    names = [record[0] for record in metrics]
    assert names[0] == "VectorDecodeTime" and {"ForwardTime", "BatchSize"} <= set(names)
    assert [r[4] for r in metrics if r[0] == "RejectedInputs"] == [
        {"Reason": "MalformedRequest"},
        {"Reason": "BadVector"},
        {"Reason": "InvalidInput"},
        {"Reason": "InvalidInput"},
    ]


def test_binary_v2_answers_carry_their_header_length():
    core = HandlerCore(VectorClassifier(), nn.Linear(4, 3).eval())
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    body["parameters"] = {"binary_data_output": True}
    (answer,) = core.handle([Request({"body": json.dumps(body).encode()})])
    length = int(answer.headers["inference-header-content-length"])
    header = json.loads(answer.body[:length])
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 4}
    assert answer.headers["Content-Type"] == "application/octet-stream"


def test_a_batch_of_only_bad_requests_runs_no_forward_pass():
    def never(_batch):
        raise AssertionError("no forward pass for a batch without a usable request")

    answers = HandlerCore(VectorClassifier(), never).handle([Request({"body": b""})] * 3)
    assert [a.status for a in answers] == [400, 400, 400]


def test_a_request_that_decodes_to_nothing_is_its_own_400():
    class Nothing(VectorClassifier):
        def decode(self, request: Request) -> list:
            return [] if request.body[1] == b"[]" else super().decode(request)

    good = Request({"body": json.dumps({"vector": [1, 2, 3, 4]}).encode()})
    answers = HandlerCore(Nothing(), nn.Linear(4, 3).eval()).handle(
        [Request({"body": b"[]"}), good]
    )
    assert [a.status for a in answers] == [400, 200] and answers[0].kind == "EmptyRequest"

"""Hostile and odd input against a real TorchServe: every format answers, every bad request gets
its own 4xx with a JSON body, a bad request never spoils its batch, and the worker never dies."""

from __future__ import annotations

import base64
import json
import threading
import zipfile

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from distillserve.archiver.properties import ServerConfig
from distillserve.archiver.signing import SIGNATURE_NAME, sign_mar, signing_key
from distillserve.handlers.imageprep import decode_image, preprocess
from distillserve.handlers.runtimes import MODEL_FILES, load_runtime
from distillserve.serving.server import TorchServe
from distillserve.students.data import preprocess_spec
from distillserve.students.recipe import DataConfig
from tests.helpers import STUDENT_MARS, refused_at_load, register
from tests.images import format_variants, pixel_bomb_png, save

pytestmark = pytest.mark.slow
SPEC = preprocess_spec(DataConfig())


@pytest.fixture(scope="module")
def server(model_store, tmp_path_factory):
    run = tmp_path_factory.mktemp("hostile")
    config = ServerConfig.with_free_ports(model_store, enable_model_api=True)
    ts = TorchServe(config.write(run / "config.properties"), run / "serve", model_store)
    try:
        ts.start(timeout=120, models=[])
        yield ts
    finally:
        ts.stop()


@pytest.fixture(scope="module", params=list(STUDENT_MARS))
def fmt(request) -> str:
    """Every test here runs against the student's archive in each format."""
    return request.param


def _register(ts: TorchServe, fmt: str, name: str, batch_size: int, delay_ms: int) -> dict:
    response = register(
        ts, STUDENT_MARS[fmt], model_name=name, batch_size=batch_size, max_batch_delay=delay_ms
    )
    assert response.status_code == 200, response.text
    return _worker(ts, name)


def _worker(ts: TorchServe, name: str) -> dict:
    described = requests.get(
        f"{ts.management_url}/models/{name}", headers=ts.headers("management"), timeout=10
    ).json()
    (worker,) = described[0]["workers"]
    return worker


def _post(ts: TorchServe, name: str, body: bytes, content_type: str) -> requests.Response:
    return requests.post(
        f"{ts.inference_url}/predictions/{name}",
        data=body,
        headers={**ts.headers(), "Content-Type": content_type},
        timeout=60,
    )


@pytest.fixture(scope="module")
def student(build_result, fmt):
    """The archived file of ``fmt``, loaded in process."""
    return load_runtime(build_result.artifacts["student"] / MODEL_FILES[fmt])


def _expected_label(model, payload: bytes) -> str:
    with torch.inference_mode():
        logits = model(preprocess([decode_image(payload, channels=1)], SPEC))
    return str(int(logits.argmax(1)))


def _digit(splits, index: int) -> np.ndarray:
    return splits.test[index][0][0].numpy()


def test_every_format_is_answered_like_in_process(server, fmt, student, digits_splits):
    model = f"formats-{fmt}"
    worker = _register(server, fmt, model, batch_size=4, delay_ms=50)
    variants = format_variants(_digit(digits_splits, 3))
    for name, payload in variants.items():
        content_type = "image/" + name.split("-")[0]
        answer = _post(server, model, payload, content_type)
        assert answer.status_code == 200, (name, answer.text)
        assert next(iter(answer.json())) == _expected_label(student, payload), name
    png = variants["png-gray8"]
    as_json = requests.post(
        f"{server.inference_url}/predictions/{model}",
        json={"data": base64.b64encode(png).decode()},
        headers=server.headers(),
        timeout=60,
    )
    as_b64 = requests.post(
        f"{server.inference_url}/predictions/{model}",
        json={"b64": base64.b64encode(png).decode()},
        headers=server.headers(),
        timeout=60,
    )
    multipart = requests.post(
        f"{server.inference_url}/predictions/{model}",
        files={"file": ("digit.png", png, "image/png")},
        headers=server.headers(),
        timeout=60,
    )
    expected = _expected_label(student, png)
    for response in (as_json, as_b64, multipart):
        assert response.status_code == 200 and next(iter(response.json())) == expected
    assert _worker(server, model)["pid"] == worker["pid"]


def test_bad_requests_get_their_own_4xx_and_the_worker_survives(server, fmt, digits_splits):
    model = f"hostile-{fmt}"
    worker = _register(server, fmt, model, batch_size=4, delay_ms=50)
    jpeg = save(Image.fromarray(_digit(digits_splits, 0)).resize((64, 64)), "JPEG")
    cases = {
        "empty": (b"", "application/octet-stream", 400),
        "random bytes": (bytes(range(256)) * 4, "application/octet-stream", 415),
        "truncated jpeg": (jpeg[: len(jpeg) // 2], "image/jpeg", 400),
        "text": (b"hello, this is not an image", "text/plain", 415),
        "html": (b"<!doctype html><html><body>hi</body></html>", "text/html", 415),
        "invalid base64": (b'{"data": "%%%not-base64%%%"}', "application/json", 400),
        "malformed json": (b'{"data": "abc', "application/json", 400),
        "json without data": (b'{"image": "abc"}', "application/json", 400),
        "900-megapixel png": (pixel_bomb_png(), "image/png", 413),
    }
    assert len(cases["900-megapixel png"][0]) < 500_000
    for name, (body, content_type, status) in cases.items():
        answer = _post(server, model, body, content_type)
        assert answer.status_code == status, (name, answer.status_code, answer.text)
        payload = answer.json()
        assert payload["code"] == status and payload["message"] and payload["type"], name
    ping = requests.get(f"{server.inference_url}/ping", headers=server.headers(), timeout=10)
    assert ping.json()["status"] == "Healthy"
    after = _worker(server, model)
    assert (after["pid"], after["startTime"], after["status"]) == (
        worker["pid"],
        worker["startTime"],
        "READY",
    )


def test_good_and_bad_requests_in_one_batch(server, fmt, student, digits_splits):
    model = f"mixed-{fmt}"
    _register(server, fmt, model, batch_size=8, delay_ms=5000)
    good = {i: format_variants(_digit(digits_splits, i))["png-gray8"] for i in (0, 2, 4, 6)}
    bodies = [
        (good[0], "image/png"),
        (b"garbage", "application/octet-stream"),
        (good[2], "image/png"),
        (b'{"data": "!!"}', "application/json"),
        (good[4], "image/png"),
        (b"", "application/octet-stream"),
        (good[6], "image/png"),
        (pixel_bomb_png(20_000, 20_000), "image/png"),
    ]
    expected_status = [200, 415, 200, 400, 200, 400, 200, 413]
    barrier = threading.Barrier(len(bodies))
    answers: list = [None] * len(bodies)

    def send(i: int) -> None:
        barrier.wait()
        answers[i] = _post(server, model, *bodies[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert [a.status_code for a in answers] == expected_status
    for i, (body, _) in enumerate(bodies):
        if expected_status[i] == 200:
            assert next(iter(answers[i].json())) == _expected_label(student, body)
        else:
            assert answers[i].json()["code"] == expected_status[i]
    log = (server.log_dir / "model_metrics.log").read_text()
    sizes = [
        int(float(line.split("BatchSize.Count:")[1].split("|")[0]))
        for line in log.splitlines()
        if "BatchSize.Count:" in line and f"ModelName:{model}," in line
    ]
    assert sizes == [8], sizes  # all eight requests, good and bad, shared one batch


def test_altered_archive_is_refused_at_load(server, fmt, model_store):
    tampered = model_store / f"tampered-student-{fmt}.mar"
    serialized = MODEL_FILES[fmt]
    with (
        zipfile.ZipFile(model_store / STUDENT_MARS[fmt]) as src,
        zipfile.ZipFile(tampered, "w", zipfile.ZIP_DEFLATED) as dst,
    ):
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == serialized:
                data = data[:-64] + bytes(64)  # same size, different bytes
            dst.writestr(item, data)
    try:
        reason = f"IntegrityError: changed since signing: {serialized}"
        refused_at_load(server, tampered.name, f"tampered-{fmt}", reason)
    finally:
        tampered.unlink()


def _hostile_json_bodies() -> list[tuple[bytes, str]]:
    """JSON that is hostile in structure, not in content: each must be its request's 4xx."""
    deep = 200_000
    png = base64.b64encode(format_variants(np.zeros((8, 8), np.uint8))["png-gray8"]).decode()

    def v2(tensor: dict, **extra) -> bytes:
        return json.dumps({"inputs": [tensor], **extra}).encode()

    return [
        (b"[" * deep + b"]" * deep, "application/json"),  # beyond any recursion limit
        (b'{"data":' + b"[" * 500 + b'"x"' + b"]" * 500 + b"}", "application/json"),
        (
            v2({"name": "x", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [10**400] * 64}),
            "application/json",
        ),
        (v2({"name": "x", "shape": [1], "datatype": "BYTES", "data": [png]}, id=[[[[]]]]), ""),
        (v2({"name": "x", "shape": [True], "datatype": "BYTES", "data": [[png]]}), "text/plain"),
        (b'{"inputs":' + b"[" * deep + b"]" * deep + b"}", "application/octet-stream"),
        (json.dumps({"b64": {"data": png}}).encode(), "application/json; charset=utf-8"),
        (json.dumps([{"data": png}] * 3).encode(), "application/json"),
    ]


@pytest.mark.parametrize("endpoint", ["predictions", "v2"])
def test_hostile_json_structures_share_a_batch_with_good_images(
    server, fmt, student, digits_splits, endpoint
):
    """Eight hostile JSON structures and eight good images in two full batches: every good image
    is answered like in process, every hostile body gets its own precise 4xx JSON."""
    name = f"structures-{endpoint}-{fmt}"
    worker = _register(server, fmt, name, batch_size=8, delay_ms=3000)
    goods = [format_variants(_digit(digits_splits, i))["png-gray8"] for i in range(8)]
    bodies = [
        item
        for pair in zip([(g, "image/png") for g in goods], _hostile_json_bodies())
        for item in pair
    ]
    path = f"predictions/{name}" if endpoint == "predictions" else f"v2/models/{name}/infer"
    barrier = threading.Barrier(len(bodies))
    answers: list = [None] * len(bodies)

    def send(i: int) -> None:
        body, content_type = bodies[i]
        headers = {**server.headers(), **({"Content-Type": content_type} if content_type else {})}
        barrier.wait()
        answers[i] = requests.post(
            f"{server.inference_url}/{path}", data=body, headers=headers, timeout=60
        )

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    for i, answer in enumerate(answers):
        if i % 2 == 0:
            assert answer.status_code == 200, (i, answer.text)
            assert next(iter(answer.json())) == _expected_label(student, bodies[i][0])
        else:
            assert 400 <= answer.status_code < 500, (i, answer.status_code, answer.text[:300])
            error = answer.json()
            assert error["code"] == answer.status_code and error["message"]
            assert error["type"] != "UnreadableRequest", error  # a precise guard refused it
    after = _worker(server, name)
    assert (after["pid"], after["status"]) == (worker["pid"], "READY")
    log = (server.log_dir / "model_metrics.log").read_text()
    sizes = [
        int(float(line.split("BatchSize.Count:")[1].split("|")[0]))
        for line in log.splitlines()
        if "BatchSize.Count:" in line and f"ModelName:{name}," in line
    ]
    assert sum(sizes) == 16 and max(sizes) > 2, sizes  # good and hostile shared batches


def test_explanation_requests_get_501_and_their_batch_is_answered(server, digits_splits):
    """/explanations and v2 explain, sent at once with predictions: one batch, each explanation
    request its own 501, every prediction its label."""
    model = "explain-torchscript"
    _register(server, "torchscript", model, batch_size=6, delay_ms=5000)
    png = format_variants(_digit(digits_splits, 0))["png-gray8"]
    v2 = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 1, 8, 8],
                    "datatype": "FP32",
                    "data": [0.0] * 64,
                }
            ]
        }
    ).encode()
    base, headers = server.inference_url, server.headers()
    sends = [
        (f"{base}/predictions/{model}", png, "image/png"),
        (f"{base}/explanations/{model}", png, "image/png"),
        (f"{base}/predictions/{model}", png, "image/png"),
        (f"{base}/v2/models/{model}/explain", v2, "application/json"),
        (f"{base}/v2/models/{model}/infer", v2, "application/json"),
        (f"{base}/predictions/{model}", png, "image/png"),
    ]
    barrier = threading.Barrier(len(sends))
    answers: list = [None] * len(sends)

    def send(i: int) -> None:
        url, body, content_type = sends[i]
        barrier.wait()
        answers[i] = requests.post(
            url, data=body, headers={**headers, "Content-Type": content_type}, timeout=60
        )

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(sends))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert [a.status_code for a in answers] == [200, 501, 200, 501, 200, 200]
    for i in (1, 3):
        assert "explanations are not supported" in answers[i].json()["message"]
    labels = {next(iter(answers[i].json())) for i in (0, 2, 5)}
    assert len(labels) == 1 and answers[4].json()["outputs"]


def test_labels_edited_by_hand_never_go_live(server, model_store):
    """Edited by hand and signed again (so the signature check passes), registered straight
    through the management API (our client refuses it first): the worker refuses the labels at
    load and the model never answers."""
    edited = model_store / "edited-labels.mar"
    with (
        zipfile.ZipFile(model_store / STUDENT_MARS["torchscript"]) as src,
        zipfile.ZipFile(edited, "w", zipfile.ZIP_DEFLATED) as dst,
    ):
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "index_to_name.json":
                data = json.dumps({str(i): [str(i)] for i in range(10)}).encode()
            if item.filename != SIGNATURE_NAME:
                dst.writestr(item, data)
    sign_mar(edited, signing_key())
    try:
        refused_at_load(
            server, edited.name, "edited-labels", "index_to_name.json label of 0 is list"
        )
    finally:
        edited.unlink()

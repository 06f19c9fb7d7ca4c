"""A real TorchServe on free loopback ports with a private TMPDIR: register, batch, answer, stop."""

from __future__ import annotations

import re
import threading
import time

import pytest
import requests

from distillserve.archiver.properties import ServerConfig
from distillserve.serving.rest import InferenceClient
from distillserve.serving.server import TorchServe
from distillserve.students.data import encode_png, make_loader, preprocess_spec
from distillserve.students.export import load_torchscript
from distillserve.students.recipe import DataConfig
from tests.helpers import register

pytestmark = pytest.mark.slow


@pytest.fixture
def server(model_store, tmp_path):
    config = ServerConfig.with_free_ports(model_store, enable_model_api=True)
    ts = TorchServe(config.write(tmp_path / "config.properties"), tmp_path / "serve", model_store)
    try:
        ts.start(timeout=120, models=[])
        yield ts
    finally:
        ts.stop()
        assert ts.pid() is None


def _batch_sizes(ts: TorchServe, model: str) -> list[int]:
    """BatchSize values the handler recorded in TorchServe's own model metrics log."""
    log = ts.log_dir / "model_metrics.log"
    pattern = re.compile(rf"BatchSize\.Count:(\d+(?:\.\d+)?)\|#[^|]*\bModelName:{model},")
    return [int(float(m)) for m in pattern.findall(log.read_text())] if log.exists() else []


def test_registered_student_batches_concurrent_requests(server, build_result, digits_splits):
    management = server.headers("management")
    registered = register(server, "digits-student.mar", batch_size=4, max_batch_delay=200)
    assert registered.status_code == 200, registered.text
    described = requests.get(
        f"{server.management_url}/models/digits-student", headers=management, timeout=10
    ).json()[0]
    assert described["batchSize"] == 4 and described["maxBatchDelay"] == 200
    assert described["workers"][0]["status"] == "READY"

    images = [digits_splits.test[i][0] for i in range(8)]
    spec = preprocess_spec(DataConfig())
    inputs, _ = next(iter(make_loader(digits_splits.test, spec, 8)))
    model = load_torchscript(build_result.artifacts["student"] / "model.pt")
    expected = [str(i) for i in model(inputs).argmax(1).tolist()]

    client = InferenceClient(server.inference_url, server.keys()["inference"])
    start = threading.Barrier(8)
    answers: list = [None] * 8

    def send(i: int) -> None:
        start.wait()
        answers[i] = client.predict_raw("digits-student", encode_png(images[i]))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert [a.status for a in answers] == [200] * 8
    assert [a.top1 for a in answers] == expected
    assert all(len(a.body) == 3 for a in answers)

    deadline = time.monotonic() + 10  # the metrics log is written asynchronously
    while sum(_batch_sizes(server, "digits-student")) < 8 and time.monotonic() < deadline:
        time.sleep(0.2)
    sizes = _batch_sizes(server, "digits-student")
    assert sum(sizes) == 8, sizes  # every request went through the handler exactly once
    assert max(sizes) > 1, sizes  # and the server aggregated some of them into batches
    # each log line once, in its own file (serving/server_logs.py): the requests' metric lines
    # are in ts_metrics.log and nowhere else, and stdout (launcher.log) holds no INFO line
    logs = {f.name: f.read_text() for f in server.log_dir.glob("*.log")}
    assert "Requests2XX" in logs["ts_metrics.log"]
    assert "Requests2XX" not in logs["ts_log.log"] + logs["launcher.log"]
    assert "[INFO ]" not in logs["launcher.log"] and "[DEBUG]" not in logs["ts_log.log"]


def test_requests_without_the_token_are_refused(server, digits_splits):
    payload = encode_png(digits_splits.test[0][0])
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        refused = requests.post(
            f"{server.inference_url}/predictions/digits-student",
            data=payload,
            headers=headers,
            timeout=10,
        )
        assert refused.status_code in (400, 401, 403)
        listing = requests.get(f"{server.management_url}/models", headers=headers, timeout=10)
        assert listing.status_code in (400, 401, 403)

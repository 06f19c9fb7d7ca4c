"""The Triton engine for real: the session's signed student archives (every format) exported as
a Triton model repository and served by the bundled tritonserver on free loopback ports, asked
through tritonclient over KServe v2 HTTP and gRPC: the whole test split answered as in process,
hostile requests inside a batch answered alone, the batch proven from Triton's statistics,
the handler's metrics beside Triton's, tampering refused at export and at load, and the CLI."""

from __future__ import annotations

import io
import shutil
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

from distillserve.archiver.mar import ArchiveError
from distillserve.archiver.signing import Trust
from distillserve.archiver.triton import export_triton
from distillserve.errors import ServerError
from distillserve.handlers.runtimes import MODEL_FILES
from distillserve.serving.triton_client import TritonClient
from distillserve.serving.triton_engine import TritonAddresses, TritonEngine
from distillserve.serving.triton_env import find_dist
from distillserve.students.data import digits_test_pngs, make_loader, preprocess_spec
from distillserve.students.recipe import DataConfig
from tests.helpers import STUDENT_MARS, run_cli, student_labels

pytestmark = pytest.mark.slow
MODELS = {fmt: mar.removesuffix(".mar") for fmt, mar in STUDENT_MARS.items()}
BATCHED = "digits-student-batched"  # the ONNX student with a long batch delay (one batch of 8)


def _short_dir(prefix: str) -> Path:
    """Triton's Python backend keeps sockets and links under the run directory: a short path."""
    return Path(tempfile.mkdtemp(prefix=prefix))


@pytest.fixture(scope="module")
def repository(model_store, tmp_path_factory) -> Path:
    try:
        find_dist()
    except ServerError as err:
        pytest.skip(f"Triton engine unavailable: {err}")
    repo = tmp_path_factory.mktemp("triton") / "repository"
    export_triton([model_store / mar for mar in STUDENT_MARS.values()], repo, Trust.resolve())
    # a copy of the ONNX student that waits up to 5 s for a batch of 8: concurrent requests
    # share one batch however busy the machine is
    shutil.copytree(repo / MODELS["onnx"], repo / BATCHED)
    config = (repo / BATCHED / "config.pbtxt").read_text()
    config = config.replace(f'name: "{MODELS["onnx"]}"', f'name: "{BATCHED}"')
    config = config.replace(
        "max_queue_delay_microseconds: 20000", "max_queue_delay_microseconds: 5000000"
    )
    (repo / BATCHED / "config.pbtxt").write_text(config)
    return repo


@pytest.fixture(scope="module")
def engine(repository):
    run = _short_dir("ds-triton-")
    server = TritonEngine(repository, run, TritonAddresses.free(), Trust.resolve())
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(run, ignore_errors=True)


@pytest.fixture(scope="module", params=list(STUDENT_MARS))
def fmt(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def pngs() -> list[bytes]:
    return digits_test_pngs()


@pytest.mark.parametrize("grpc", [False, True], ids=["http", "grpc"])
def test_every_format_answers_the_test_split_like_in_process(
    engine, fmt, grpc, pngs, build_result, digits_splits
):
    expected = student_labels(build_result, digits_splits, fmt)
    client = TritonClient(engine.addresses, grpc=grpc)
    answers = client.predict_many(MODELS[fmt], pngs, concurrency=16)
    assert [a.status for a in answers] == [200] * len(pngs)
    assert [a.top1 for a in answers] == expected


def _statistics(engine, model: str) -> tuple[int, int]:
    url = f"{engine.addresses.http_url}/v2/models/{model}/stats"
    stats = requests.get(url, timeout=10).json()["model_stats"][0]
    return int(stats["inference_count"]), int(stats["execution_count"])


def _hostile() -> list[bytes]:
    from PIL import Image

    huge = io.BytesIO()
    Image.new("L", (6000, 6000)).save(huge, "PNG")  # 36 M pixels: beyond max_pixels
    return [b"not an image", digits_test_pngs()[0][:40], huge.getvalue()]


def test_hostile_requests_inside_one_batch_are_answered_alone(engine, pngs):
    """Five good and three hostile requests in flight together reach the model as one batch
    (Triton's statistics); each hostile one gets its own 400, its neighbours their labels."""
    hostile = _hostile()
    mixed = [pngs[0], hostile[0], pngs[1], pngs[2], hostile[1], pngs[3], hostile[2], pngs[4]]
    before = _statistics(engine, BATCHED)
    client = TritonClient(engine.addresses)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda p: client.predict(BATCHED, p), mixed))
    inferences, executions = (a - b for a, b in zip(_statistics(engine, BATCHED), before))
    assert (inferences, executions) == (8, 1)  # eight requests, one forward pass
    alone = client.predict_many(MODELS["onnx"], [pngs[i] for i in range(5)])
    good = [a for a, p in zip(answers, mixed) if p not in hostile]
    assert [a.status for a in good] == [200] * 5
    assert [a.body for a in good] == [a.body for a in alone]
    bad = [a for a, p in zip(answers, mixed) if p in hostile]
    assert [a.status for a in bad] == [400] * 3
    assert "not an image" in bad[0].body["error"]
    assert "pixels" in bad[2].body["error"]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_v2_fp32_input_matches_in_process(engine, fmt, protocol, build_result, digits_splits):
    """The normalised FP32 input (the model's own tensor) over both protocols."""
    import tritonclient.grpc as grpc_client
    import tritonclient.http as http_client

    inputs = next(iter(make_loader(digits_splits.test, preprocess_spec(DataConfig()), 4)))[0]
    expected = student_labels(build_result, digits_splits, fmt)[:4]
    module = grpc_client if protocol == "grpc" else http_client
    a = engine.addresses
    target = a.grpc_target if protocol == "grpc" else f"{a.host}:{a.http_port}"
    client = module.InferenceServerClient(target)
    tensor = module.InferInput("input", list(inputs.shape), "FP32")
    tensor.set_data_from_numpy(inputs.numpy().astype(np.float32))
    answer = client.infer(MODELS[fmt], [tensor])
    assert [row[0].decode() for row in answer.as_numpy("labels")] == expected
    assert answer.as_numpy("probabilities").shape == (4, 3)


def test_metrics_show_the_handlers_beside_tritons(engine, pngs):
    TritonClient(engine.addresses).predict_many(MODELS["onnx"], [pngs[0], b"junk"])
    text = requests.get(engine.addresses.metrics_url, timeout=10).text
    assert f'nv_inference_request_success{{model="{MODELS["onnx"]}"' in text
    assert "distillserve_forward_time_ms{" in text
    assert 'distillserve_rejected_inputs_count_total{Reason="NotAnImage"' in text


def _tampered(source: Path, target: Path, member: str) -> Path:
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            dst.writestr(item, data + b"\n# changed" if item.filename == member else data)
    return target


def test_tampering_is_refused_at_export_and_at_load(model_store, tmp_path):
    """A changed handler is refused by export-triton; a repository changed after export is
    refused by the handler when Triton loads it, and the start says which file and why."""
    onnx = model_store / STUDENT_MARS["onnx"]
    changed = _tampered(onnx, tmp_path / STUDENT_MARS["onnx"], "image_task.py")
    with pytest.raises(ArchiveError, match=r"changed since signing: image_task\.py"):
        export_triton([changed], tmp_path / "refused", Trust.resolve())
    assert not (tmp_path / "refused").exists()
    repo = tmp_path / "repository"
    export_triton([onnx], repo, Trust.resolve())
    model_file = repo / MODELS["onnx"] / "1" / MODEL_FILES["onnx"]
    data = bytearray(model_file.read_bytes())
    data[-64:] = bytes(64)
    model_file.write_bytes(bytes(data))
    run = _short_dir("ds-tamper-")
    try:
        server = TritonEngine(repo, run, TritonAddresses.free(), Trust.resolve())
        with pytest.raises(ServerError) as refused:
            server.start()
        message = str(refused.value)
        assert f"{MODELS['onnx']} failed to load" in message
        assert "changed since signing: model.onnx" in message
    finally:
        shutil.rmtree(run, ignore_errors=True)


def test_cli_serves_predicts_and_stops_on_triton(model_store, pngs, tmp_path):
    """``serve start --engine triton --models``, ``predict --engine triton`` (REST and gRPC),
    a TorchServe-only verb refused in one line, ``serve stop``."""
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        (images / f"{i}.png").write_bytes(pngs[i])
    (images / "bad.png").write_bytes(b"not an image")
    run = _short_dir("ds-cli-")
    config = tmp_path / "config.properties"
    a = TritonAddresses.free()
    config.write_text(
        f"inference_address=http://127.0.0.1:{a.http_port}\n"
        f"metrics_address=http://127.0.0.1:{a.metrics_port}\n"
        f"grpc_inference_port={a.grpc_port}\n"
    )
    server = ["--config", str(config), "--run-dir", str(run)]
    try:
        store = str(model_store / STUDENT_MARS["torchscript"])
        started = run_cli("serve", "start", "--engine", "triton", "--models", store, *server)
        assert started.returncode == 0, started.stderr[-2000:]
        assert f"Triton ready: HTTP http://127.0.0.1:{a.http_port}" in started.stdout
        for route in ([], ["--grpc"]):
            answer = run_cli("predict", "digits-student", str(images), "--engine", "triton",
                             *route, *server)  # fmt: skip
            assert answer.returncode == 1  # one image failed
            lines = answer.stdout.strip().splitlines()
            assert ['"status": 400' in line for line in lines] == [False, False, False, True]
            assert "4 images, 1 failed" in answer.stderr
        refused = run_cli("load", "digits-student", "--engine", "triton", *server)
        assert refused.returncode == 2
        assert "load works with TorchServe only" in refused.stderr.strip().splitlines()[-1]
    finally:
        stopped = run_cli("serve", "stop", *server)
        shutil.rmtree(run, ignore_errors=True)
    assert stopped.stdout.strip() == "stopped"

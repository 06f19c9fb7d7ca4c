"""The Triton engine for real: the session's signed student archives (every format) exported as
a Triton model repository and served by the bundled tritonserver on free loopback ports, asked
through tritonclient over KServe v2 HTTP and gRPC: the whole test split answered as in process,
hostile requests inside a batch answered alone, the batch proven from Triton's statistics,
the handler's metrics beside Triton's, tampering refused at export and at load, the CLI, and
the Kubernetes / KServe export's own command line, run where torch cannot be imported."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

from distillserve.archiver import build_archive
from distillserve.archiver.mar import ArchiveError
from distillserve.archiver.signing import Trust
from distillserve.archiver.triton import export_triton
from distillserve.errors import ServerError
from distillserve.handlers.runtimes import MODEL_FILES
from distillserve.serving.triton_client import TritonClient
from distillserve.serving.triton_engine import TritonAddresses, TritonEngine
from distillserve.serving.triton_env import TritonDist, ensure_torch_free_env, find_dist
from distillserve.serving.triton_versions import scale, unregister, versions
from distillserve.students.data import digits_test_pngs, make_loader, preprocess_spec
from distillserve.students.recipe import DataConfig
from tests.helpers import STUDENT_MARS, kubernetes_validate_strict, run_cli, student_labels

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
        assert server.without_torch  # every model ONNX: run where torch cannot be imported
        message = str(refused.value)
        assert f"{MODELS['onnx']} failed to load" in message
        assert "changed since signing: model.onnx" in message
    finally:
        shutil.rmtree(run, ignore_errors=True)


def test_cli_serves_predicts_and_stops_on_triton(model_store, build_result, pngs, tmp_path):
    """``serve start --engine triton --models``, ``predict --engine triton`` (REST and gRPC),
    ``load``, ``list`` and ``describe`` against it; versions while it serves: ``register`` a
    2.0 (the default from then on, 1.0 still answering at its own version), ``ab`` of the two,
    ``rollback``, ``scale``, ``unregister``; the verbs that need TorchServe's management API
    refused in one line; ``serve stop``."""
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
        load = ["load", "digits-student", "--engine", "triton", "--requests", "40"]
        loaded = run_cli(*load, "--concurrency", "4", "--images", str(images), "--json", *server)
        report = json.loads(loaded.stdout)
        assert loaded.returncode == 1  # the bad image, every time it is sent
        assert (report["requests"], report["completed"]) == (40, 40), report
        assert report["errors_by_status"] == {"400": 10}, report  # 1 in 4 images is bad
        listed = run_cli("list", "--engine", "triton", *server)
        assert listed.returncode == 0, listed.stderr[-2000:]
        row = listed.stdout.strip().splitlines()[1].split()
        assert row == ["digits-student", "1", "READY", "1.0", "*"], listed.stdout
        described = json.loads(run_cli("describe", "digits-student", "--engine", "triton",
                                       *server).stdout)  # fmt: skip
        assert {i["name"] for i in described["metadata"]["inputs"]} == {"images", "input"}
        assert described["config"]["max_batch_size"] == 8
        _versions_while_serving(run, server, build_result, pngs, tmp_path)
        for verb in (["set-default", "digits-student", "1.0"], ["models"]):
            refused = run_cli(*verb, "--engine", "triton", *server)
            assert refused.returncode == 2, refused.stderr
            last = refused.stderr.strip().splitlines()[-1]
            assert f"{verb[0]} works with TorchServe only" in last
    finally:
        stopped = run_cli("serve", "stop", *server)
        shutil.rmtree(run, ignore_errors=True)
    assert stopped.stdout.strip() == "stopped"


def _versions_while_serving(run: Path, server: list[str], build_result, pngs, tmp_path) -> None:
    """The version verbs on the engine started by the CLI test (digits-student 1.0 served)."""
    engine = TritonEngine.attach(run)
    v2 = build_archive(build_result.artifacts["student"], tmp_path / "v2", version="2.0")
    registered = run_cli("register", str(v2.path), "--engine", "triton", *server)
    assert registered.returncode == 0, registered.stderr[-2000:]
    assert "digits-student 2.0 as Triton version 2 (now the default)" in registered.stdout
    table = [(v.number, v.archive_version, v.state, v.default) for v in versions(engine)]
    assert table == [(1, "1.0", "READY", False), (2, "2.0", "READY", True)]
    again = run_cli("register", str(v2.path), "--engine", "triton", *server)
    assert again.returncode == 2 and "2.0 is already served" in again.stderr

    def served() -> list[int]:  # requests answered by Triton's versions 1 and 2
        return [_statistics(engine, f"digits-student/versions/{n}")[0] for n in (1, 2)]

    before, client = served(), TritonClient(engine.addresses)
    answers = [client.predict("digits-student", p) for p in pngs[:2]]  # the default: 2
    answers.append(client.predict("digits-student", pngs[2], version="1"))
    assert [a.status for a in answers] == [200] * 3
    assert [a - b for a, b in zip(served(), before)] == [1, 2]
    for i, png in enumerate(pngs[:4]):  # ab's DATA_DIR/LABEL/ layout
        (tmp_path / "ab" / "0").mkdir(parents=True, exist_ok=True)
        (tmp_path / "ab" / "0" / f"{i}.png").write_bytes(png)
    before = served()
    ab = run_cli("ab", "digits-student", "1.0", "2.0", str(tmp_path / "ab"), "--json",
                 "--engine", "triton", *server)  # fmt: skip
    assert ab.returncode == 0, ab.stderr[-2000:]
    report = json.loads(ab.stdout)
    assert report["agreement"] == 1.0 and report["images"] == 4
    assert [report["versions"][v]["failures"] for v in ("1.0", "2.0")] == [0, 0]
    assert [a - b for a, b in zip(served(), before)] == [4, 4]  # each version asked 4 times

    rolled = run_cli("rollback", "digits-student", "--engine", "triton", *server)
    assert rolled.returncode == 0, rolled.stderr[-2000:]
    assert "default is 1.0 again; 2.0 unregistered" in rolled.stdout
    assert [(v.number, v.default) for v in versions(engine)] == [(1, True)]
    assert not (engine.repository / "digits-student" / "2").exists()
    scale(engine, "digits-student", 2)
    config = engine.describe("digits-student", ("config",))["config"]
    assert config["instance_group"][0]["count"] == 2
    assert client.predict("digits-student", pngs[3]).status == 200
    unregister(engine, "digits-student", "1.0")
    assert versions(engine) == [] and not (engine.repository / "digits-student").exists()
    assert client.predict("digits-student", pngs[3]).status >= 400


def test_export_triton_deploy_writes_valid_manifests_whose_command_serves(
    model_store, pngs, tmp_path, build_result, digits_splits
):
    """``export-triton --deploy``: the Deployment and storage validate against Kubernetes'
    schemas, the KServe runtime and service agree, the signing key sits at the repository's
    top, and the pods' own command line and environment (paths and ports moved to this
    machine) start the bundled tritonserver on that repository where torch cannot be imported,
    as in the image of ONNX archives, which has none: with no libtorch in its model process
    the ONNX student answers the test split as in process (images and the FP32 input) and a
    bad image alone."""
    import subprocess

    import psutil
    import tritonclient.http as http_client
    import yaml

    repo, deploy = tmp_path / "repository", tmp_path / "deploy"
    onnx = str(model_store / STUDENT_MARS["onnx"])
    image = "registry.example/team/digits-triton:1"
    written = run_cli("export-triton", onnx, "--out", str(repo), "--deploy", str(deploy),
                      "--name", "digits", "--image", image)  # fmt: skip
    assert written.returncode == 0, written.stderr[-2000:]
    assert f"Kubernetes / KServe manifests to {deploy}" in written.stdout
    # the CI archive's workers were given (1), not auto: the pods' CPU limit does not change them
    assert "(digits-student-onnx 1.0, 1 instance)" in written.stdout
    key = repo / "archive-signing.pub.pem"
    assert key.read_bytes() == Trust.resolve().public_key.read_bytes()
    for manifest in ("kubernetes.yaml", "storage.yaml"):
        kubernetes_validate_strict(deploy / "manifests" / manifest)
    runtime, isvc = yaml.safe_load_all((deploy / "manifests" / "kserve.yaml").read_text())
    assert runtime["kind"] == "ServingRuntime" and isvc["kind"] == "InferenceService"
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"] == "digits-triton"
    assert model["modelFormat"]["name"] == runtime["spec"]["supportedModelFormats"][0]["name"]
    assert model["protocolVersion"] == "v2" and model["storageUri"] == "pvc://digits-models"
    assert set(runtime["spec"]["protocolVersions"]) == {"v2", "grpc-v2"}
    deployment = next(yaml.safe_load_all((deploy / "manifests" / "kubernetes.yaml").read_text()))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    serving = runtime["spec"]["containers"][0]
    assert container["args"] == serving["args"] and container["env"] == serving["env"]
    assert container["image"] == serving["image"] == image
    assert "/dev/shm" in {m["mountPath"] for m in container["volumeMounts"]}
    dockerfile = (deploy / "Dockerfile").read_text()
    assert "nvidia-pytriton==0.7.0" in dockerfile and "numpy==1.26.4" in dockerfile
    assert "onnxruntime==" in dockerfile and "torch==" not in dockerfile  # ONNX: no torch

    # The pod's command on this machine: the repository, backends and ports moved here, and
    # torch unimportable, as in the image (ONNX archives only: no torch installed there).
    dist = TritonDist(ensure_torch_free_env())
    run = _short_dir("ds-deploy-")
    a = TritonAddresses.free()
    moved = {"http": a.http_port, "grpc": a.grpc_port, "metrics": a.metrics_port}
    command = [str(dist.binary)]
    for arg in container["args"][1:]:
        flag, _, value = arg.partition("=")
        if flag == "--model-repository":
            value = str(repo)
        elif flag == "--backend-directory":
            value = str(dist.backends(run / "backends"))
        elif flag.endswith("-port"):
            value = str(moved[flag.removeprefix("--").removesuffix("-port")])
        command.append(f"{flag}={value}")
    command += [f"--{p}-address=127.0.0.1" for p in moved]
    prefix = f"ds_deploy_{run.name[-8:]}_"
    command.append(f"--backend-config=python,shm-region-prefix-name={prefix}")
    env = {e["name"]: e["value"].replace("/mnt/models", str(repo)) for e in container["env"]}
    assert env["DISTILLSERVE_PUBLIC_KEY"] == str(key)
    log = open(run / "triton.log", "wb")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(command, env=dist.environment({**os.environ, **env}),
                               stdout=log, stderr=subprocess.STDOUT, cwd=run)  # fmt: skip
    try:
        ready = f"{a.http_url}/v2/models/{MODELS['onnx']}/ready"
        for _ in range(600):
            if process.poll() is not None:
                break
            with contextlib.suppress(requests.RequestException):
                if requests.get(ready, timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        assert process.poll() is None, (run / "triton.log").read_text()[-3000:]
        stubs = psutil.Process(process.pid).children(recursive=True)
        assert stubs and not any("libtorch" in Path(f"/proc/{c.pid}/maps").read_text()
                                 for c in stubs)  # fmt: skip
        expected = student_labels(build_result, digits_splits, "onnx")
        answers = TritonClient(a).predict_many(MODELS["onnx"], [*pngs, b"junk"], concurrency=8)
        assert [x.top1 for x in answers[:-1]] == expected
        assert answers[-1].status == 400 and "not an image" in answers[-1].body["error"]
        inputs = next(iter(make_loader(digits_splits.test, preprocess_spec(DataConfig()), 4)))[0]
        client = http_client.InferenceServerClient(f"{a.host}:{a.http_port}")
        tensor = http_client.InferInput("input", list(inputs.shape), "FP32")
        tensor.set_data_from_numpy(inputs.numpy().astype(np.float32))
        answer = client.infer(MODELS["onnx"], [tensor])
        assert [row[0].decode() for row in answer.as_numpy("labels")] == expected[:4]
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()
        for region in Path("/dev/shm").glob(f"{prefix}*"):
            region.unlink(missing_ok=True)
        shutil.rmtree(run, ignore_errors=True)

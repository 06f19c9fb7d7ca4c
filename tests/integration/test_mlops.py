"""MLOps flows against a real TorchServe (the shipped MLOps profile on free ports): versions,
REST and gRPC clients, KServe v2 through tritonclient, Prometheus metrics, A/B, KServe export."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml

from distillserve.archiver import build_archive, inspect_archive
from distillserve.archiver.properties import free_port, read_properties, write_properties
from distillserve.archiver.signing import Trust
from distillserve.serving.grpc_client import GrpcClient
from distillserve.serving.rest import InferenceClient
from distillserve.serving.server import TorchServe
from distillserve.students.data import encode_png, make_loader, preprocess_spec
from distillserve.students.recipe import DataConfig
from tests.helpers import (
    ROOT,
    STUDENT_MARS,
    CliResult,
    kubernetes_validate_strict,
    register,
    run_cli,
    shipped_profile,
    student_labels,
)

pytestmark = pytest.mark.slow
SPEC = preprocess_spec(DataConfig())


@pytest.fixture(scope="module")
def store(build_result, tmp_path_factory) -> Path:
    """digits-student 1.0 and 2.0 (the same student archived twice), and 1.0 as the pt2 and
    onnx archives."""
    store = tmp_path_factory.mktemp("mlops_store")
    for fmt in STUDENT_MARS:
        build_archive(build_result.artifacts["student"], store, model_format=fmt)
    build_archive(
        build_result.artifacts["student"],
        store,
        version="2.0",
        file_name="digits-student-2.0.mar",
    )
    return store


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    ts = shipped_profile("config.mlops.properties", store, tmp_path_factory.mktemp("mlops"))
    try:
        ts.start(timeout=120, models=[])
        yield ts
    finally:
        ts.stop()


@pytest.fixture(scope="module", params=list(STUDENT_MARS))
def fmt(request) -> str:
    """The client tests run against the student's archive in each format."""
    return request.param


@pytest.fixture(scope="module")
def expected(build_result, digits_splits, fmt) -> list[str]:
    """In-process top-1 labels of the student's ``fmt`` file on the test split."""
    return student_labels(build_result, digits_splits, fmt)


@pytest.fixture(scope="module")
def expected_torchscript(build_result, digits_splits) -> list[str]:
    """In-process top-1 labels of the TorchScript student (digits-student.mar's)."""
    return student_labels(build_result, digits_splits, "torchscript")


def _cli(ts: TorchServe, *args: str) -> CliResult:
    return run_cli(*args, "--config", str(ts.config_file), "--run-dir", str(ts.run_dir))


def _describe(ts: TorchServe, version: str = "all") -> list[dict]:
    path = "/models/digits-student" + (f"/{version}" if version else "")
    response = requests.get(ts.management_url + path, headers=ts.headers("management"), timeout=10)
    return response.json() if response.ok else []


def test_versions_register_switch_rollback_scale_unregister(server, store, tmp_path, digits_splits):
    ts = server
    first = _cli(
        ts,
        "register",
        str(store / "digits-student.mar"),
        "--batch-size",
        "4",
        "--max-batch-delay",
        "50",
    )
    assert first.returncode == 0, first.stderr
    second = _cli(
        ts,
        "register",
        str(store / "digits-student-2.0.mar"),
        "--batch-size",
        "8",
        "--max-batch-delay",
        "100",
    )
    assert second.returncode == 0, second.stderr
    by_version = {d["modelVersion"]: d for d in _describe(ts)}
    assert (by_version["1.0"]["batchSize"], by_version["1.0"]["maxBatchDelay"]) == (4, 50)
    assert (by_version["2.0"]["batchSize"], by_version["2.0"]["maxBatchDelay"]) == (8, 100)
    assert _describe(ts, "")[0]["modelVersion"] == "1.0"  # the first registered is default

    assert _cli(ts, "set-default", "digits-student", "2.0").returncode == 0
    assert _describe(ts, "")[0]["modelVersion"] == "2.0"

    data = tmp_path / "labelled"
    for i in range(40):
        image, label = digits_splits.test[i]
        (data / str(label)).mkdir(parents=True, exist_ok=True)
        (data / str(label) / f"{i}.png").write_bytes(encode_png(image))
    ab = _cli(ts, "ab", "digits-student", "1.0", "2.0", str(data), "--json")
    assert ab.returncode == 0, ab.stderr
    report = json.loads(ab.stdout)
    assert report["images"] == 40 and report["agreement"] == 1.0
    assert report["versions"]["1.0"]["accuracy"] == report["versions"]["2.0"]["accuracy"] > 0.8

    registry = json.loads((store / "index.json").read_text())["models"]["digits-student"]
    assert registry["default_history"] == ["1.0"]  # earlier defaults, never the current one

    rolled = _cli(ts, "rollback", "digits-student")
    assert rolled.returncode == 0, rolled.stderr
    assert [d["modelVersion"] for d in _describe(ts)] == ["1.0"]
    assert _describe(ts, "")[0]["modelVersion"] == "1.0"
    registry = json.loads((store / "index.json").read_text())["models"]["digits-student"]
    assert registry["default_history"] == []
    assert registry["versions"]["2.0"]["last_registered"]["how"] == "register"

    assert _cli(ts, "scale", "digits-student", "--min", "2", "--max", "2").returncode == 0
    (described,) = _describe(ts, "1.0")
    assert described["minWorkers"] == 2 and len(described["workers"]) == 2

    models = _cli(ts, "models")
    assert re.search(r"digits-student\s+1\.0\s+\*\s+yes\s+2", models.stdout), models.stdout
    assert re.search(r"digits-student\s+2\.0\s+no", models.stdout), models.stdout

    gone = _cli(ts, "unregister", "digits-student", "1.0")
    assert gone.returncode == 0, gone.stderr
    assert _describe(ts) == []


def test_register_refuses_an_altered_unsigned_archive_even_when_unsigned_ones_are_allowed(
    server, store, tmp_path
):
    """Allowing unsigned archives skips only the signature: the model file is still checked
    against build-info.json (signed archives: tests/integration/test_signatures.py)."""
    import zipfile

    altered = tmp_path / "altered.mar"
    with zipfile.ZipFile(store / "digits-student.mar") as src, zipfile.ZipFile(altered, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename != "archive.sig":
                dst.writestr(item, data[:-8] + bytes(8) if item.filename == "model.pt" else data)
    result = _cli(server, "register", str(altered), "--allow-unsigned")
    assert result.returncode == 2
    assert (
        "does not match build-info.json" in result.stderr and len(result.stderr.splitlines()) == 1
    )


@pytest.fixture(scope="module")
def served(server, fmt):
    """digits-rest (batch 8) and digits-v2 (batch 4, long delay) registered for the clients from
    the ``fmt`` archive; unregistered after that format's tests."""
    names = (("digits-rest", 8, 10), ("digits-v2", 4, 1000))
    for name, batch, delay in names:
        response = register(
            server, STUDENT_MARS[fmt], model_name=name, batch_size=batch, max_batch_delay=delay
        )
        assert response.status_code == 200, response.text
    yield server
    for name, _, _ in names:
        requests.delete(
            f"{server.management_url}/models/{name}",
            headers=server.headers("management"),
            timeout=60,
        )


def test_rest_and_grpc_clients_match_in_process(served, digits_splits, expected):
    payloads = [encode_png(digits_splits.test[i][0]) for i in range(len(digits_splits.test))]
    rest = InferenceClient(served.inference_url, served.keys()["inference"])
    assert [r.top1 for r in rest.predict_many("digits-rest", payloads, 16)] == expected

    props = read_properties(served.config_file)
    with GrpcClient(
        f"127.0.0.1:{props['grpc_inference_port']}",
        f"127.0.0.1:{props['grpc_management_port']}",
        served.keys()["inference"],
        served.keys()["management"],
    ) as grpc_client:
        assert json.loads(grpc_client.ping())["status"] == "Healthy"
        with ThreadPoolExecutor(max_workers=16) as pool:
            answers = list(pool.map(lambda p: grpc_client.predict("digits-rest", p), payloads))
        assert [next(iter(a)) for a in answers] == expected
        described = grpc_client.describe("digits-rest")
        assert described[0]["batchSize"] == 8
        assert "digits-rest" in {m["modelName"] for m in grpc_client.list_models()}

    files = []
    for i in range(3):
        files.append(Path(served.run_dir) / f"digit{i}.png")
        files[-1].write_bytes(payloads[i])
    cli = _cli(served, "predict", "digits-rest", *map(str, files), "--grpc")
    assert cli.returncode == 0, cli.stderr
    assert [next(iter(json.loads(line)["result"])) for line in cli.stdout.splitlines()] == (
        expected[:3]
    )


def test_grpc_keeps_hostile_bodies_to_their_own_request(served, digits_splits, expected):
    """Over gRPC (which drops per-request HTTP codes) a hostile body sharing a batch with good
    images is answered with its own error object; the good images get their predictions."""
    from tests.integration.test_hostile_input import _hostile_json_bodies

    hostile = [body for body, _ in _hostile_json_bodies()]
    good = [encode_png(digits_splits.test[i][0]) for i in range(len(hostile))]
    bodies = [b for pair in zip(good, hostile) for b in pair]
    props = read_properties(served.config_file)
    with (
        GrpcClient(
            f"127.0.0.1:{props['grpc_inference_port']}", None, served.keys()["inference"]
        ) as client,
        ThreadPoolExecutor(max_workers=len(bodies)) as pool,
    ):
        answers = list(pool.map(lambda body: client.predict("digits-v2", body), bodies))
    for i, answer in enumerate(answers):
        if i % 2 == 0:
            assert next(iter(answer)) == expected[i // 2], answer
        else:
            assert 400 <= answer["code"] < 500 and answer["type"] != "UnreadableRequest", answer


def _text(value) -> str:
    """A BYTES element as tritonclient returns it from a JSON response (str) or binary (bytes)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def test_kserve_v2_through_tritonclient_is_batched(served, digits_splits, expected):
    """tritonclient with its defaults: the binary tensor extension both ways (image files as
    BYTES, normalised FP32 input), batched 4 at a time; errors as the protocol's {"error"}."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    url = served.inference_url.removeprefix("http://")
    client = httpclient.InferenceServerClient(url=url, concurrency=8)
    # tritonclient writes Inference-Header-Content-Length into the headers it is given: a fresh
    # dict per call, or a later request would carry an earlier one's length.
    pending = []
    for i in range(8):
        data = np.array([encode_png(digits_splits.test[i][0])], dtype=np.object_)
        tensor = httpclient.InferInput("images", [1], "BYTES")
        tensor.set_data_from_numpy(data)  # binary_data=True, the default
        pending.append(
            client.async_infer(
                "digits-v2", [tensor], headers=served.headers(), request_id=f"req-{i}"
            )
        )
    results = [p.get_result() for p in pending]
    for i, result in enumerate(results):
        response = result.get_response()
        assert response["id"] == f"req-{i}" and response["model_name"] == "digits-v2"
        assert response["model_version"] == "1.0"
        assert all("binary_data_size" in out["parameters"] for out in response["outputs"])
        labels = result.as_numpy("labels")
        assert labels.shape == (1, 3) and _text(labels[0][0]) == expected[i]
        assert result.as_numpy("probabilities").shape == (1, 3)

    scrape = requests.get(f"{served.metrics_url}/metrics", timeout=10).text
    sizes = [
        float(value)
        for value in re.findall(
            r'^BatchSize\{[^}]*ModelName="digits-v2"[^}]*\} (\S+)', scrape, re.M
        )
    ]
    assert sizes and max(sizes) > 1, sizes  # the gauge holds the last batch: several requests

    inputs = next(iter(make_loader(digits_splits.test, SPEC, 2)))[0].numpy()  # normalised
    for binary in (True, False):
        tensor = httpclient.InferInput("input", list(inputs.shape), "FP32")
        tensor.set_data_from_numpy(inputs, binary_data=binary)
        result = client.infer("digits-v2", [tensor], headers=served.headers())
        assert [_text(row[0]) for row in result.as_numpy("labels")] == expected[:2]

    bad = httpclient.InferInput("images", [1], "BYTES")
    bad.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_))
    with pytest.raises(InferenceServerException) as refused:
        client.infer("digits-v2", [bad], headers=served.headers())
    assert refused.value.status() == "415" and "not an image" in refused.value.message()
    client.close()

    described = requests.get(
        f"{served.management_url}/models/digits-v2?customized=true",
        headers=served.headers("management"),
        timeout=10,
    ).json()[0]
    metadata = described["customizedMetadata"]
    (fp32,) = [i for i in metadata["inputs"] if i["datatype"] == "FP32"]
    assert fp32["shape"] == [-1, 1, 8, 8] and fp32["parameters"]["mean"] == [0.5]


def test_prometheus_endpoint_has_the_handler_metrics_per_version(served, digits_splits):
    response = register(served, "digits-student-2.0.mar", model_name="digits-rest")
    assert response.status_code == 200, response.text
    client = InferenceClient(served.inference_url, served.keys()["inference"])
    for version in ("1.0", "2.0"):
        client.predict_many("digits-rest", [encode_png(digits_splits.test[0][0])] * 8, 8, version)
        client.predict_raw("digits-rest", b"not an image", version)
    scrape = requests.get(f"{served.metrics_url}/metrics", timeout=10).text
    for metric in ("BatchSize", "ImageDecodeTime", "ForwardTime", "RejectedInputs"):
        series = re.findall(
            rf'^{metric}\{{([^}}]*ModelName="digits-rest"[^}}]*)\}} (\S+)', scrape, re.M
        )
        versions = {re.search(r'ModelVersion="([^"]+)"', labels).group(1) for labels, _ in series}
        assert versions == {"1.0", "2.0"}, (metric, scrape[:2000])  # two series, side by side
        assert all(float(v) >= 0 for _, v in series)
    assert re.search(r'^RejectedInputs\{[^}]*Reason="NotAnImage"', scrape, re.M)
    assert requests.delete(
        f"{served.management_url}/models/digits-rest/2.0",
        headers=served.headers("management"),
        timeout=60,
    ).ok


def test_export_kserve_layout_manifests_and_real_start(
    store, tmp_path, digits_splits, expected_torchscript
):
    expected = expected_torchscript
    out = tmp_path / "kserve"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "distillserve.scripts.cli",
            "export-kserve",
            str(store / "digits-student.mar"),
            str(store / "digits-student-2.0.mar"),
            "--out",
            str(out),
            "--name",
            "digits",
            "--image",
            "registry.example/team/digits:1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    build_torch = inspect_archive(store / "digits-student.mar")["build_info"]["versions"]["torch"]
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.startswith(f"wrote {sum(p.is_file() for p in out.rglob('*'))} files to {out}")
    assert f"the image installs torch=={build_torch.split('+')[0]}, torchvision==" in summary
    dockerfile = (out / "Dockerfile").read_text()
    assert dockerfile.startswith("# ") and "FROM pytorch/torchserve:0.12.0-cpu" in dockerfile
    assert f"torch=={build_torch.split('+')[0]} " in dockerfile  # the archives' own torch
    assert "model-signing==1.1.1" in dockerfile  # the handler verifies the archives
    public_key = out / "config" / "archive-signing.pub.pem"
    assert public_key.read_bytes() == Path(os.environ["DISTILLSERVE_PUBLIC_KEY"]).read_bytes()
    for manifest in ("kserve.yaml", "kubernetes.yaml"):
        documents = yaml.safe_load_all((out / "manifests" / manifest).read_text())
        images = {
            c["image"]
            for d in documents
            for c in (d["spec"].get("template", {}).get("spec", d["spec"]).get("containers", []))
        }
        assert images == {"registry.example/team/digits:1"}, manifest
        text = (out / "manifests" / manifest).read_text()
        assert "name: DISTILLSERVE_PUBLIC_KEY\n" in text, manifest
        assert "value: /mnt/models/config/archive-signing.pub.pem\n" in text, manifest
        assert "DISTILLSERVE_ALLOW_UNSIGNED" not in text, manifest
    kubernetes_validate_strict(out / "manifests" / "kubernetes.yaml")
    kubernetes_validate_strict(out / "manifests" / "storage.yaml")
    claims = [d for d in yaml.safe_load_all((out / "manifests" / "storage.yaml").read_text())]
    assert claims[0]["kind"] == "PersistentVolumeClaim" and claims[0]["metadata"]["name"] == (
        "digits-models"
    )
    assert "kubectl cp model-store digits-models-fill:/mnt/models/model-store" in (
        (out / "README.md").read_text()
    )
    props = read_properties(out / "config" / "config.properties")
    snapshot = json.loads(props["model_snapshot"])
    assert snapshot["modelCount"] == 2
    versions = snapshot["models"]["digits-student"]
    assert set(versions) == {"1.0", "2.0"} and versions["1.0"]["defaultVersion"] is True
    for spec in versions.values():
        assert (out / "model-store" / spec["marName"]).is_file()
        assert spec["batchSize"] == 8 and spec["maxBatchDelay"] == 20
    assert props["load_models"] == "all" and props["enable_envvars_config"] == "true"
    assert props["model_store"] == "/mnt/models/model-store"
    assert props["management_address"].startswith("http://127.0.0.1:")
    assert props["allowed_urls"] == "^$" and props["enable_model_api"] == "false"

    kserve = list(yaml.safe_load_all((out / "manifests" / "kserve.yaml").read_text()))
    runtime, isvc = kserve
    assert (runtime["kind"], runtime["apiVersion"]) == (
        "ServingRuntime",
        "serving.kserve.io/v1alpha1",
    )
    container = runtime["spec"]["containers"][0]
    assert "--ts-config=/mnt/models/config/config.properties" in container["args"]
    assert "--model-store=/mnt/models/model-store" in container["args"]
    assert runtime["spec"]["supportedModelFormats"][0]["name"] == "pytorch"
    assert (isvc["kind"], isvc["apiVersion"]) == ("InferenceService", "serving.kserve.io/v1beta1")
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"] and model["storageUri"]
    assert model["modelFormat"]["name"] == "pytorch" and model["protocolVersion"] == "v2"

    deployment, service, hpa = yaml.safe_load_all(
        (out / "manifests" / "kubernetes.yaml").read_text()
    )
    assert [d["kind"] for d in (deployment, service, hpa)] == [
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
    ]
    template = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"] == template["metadata"]["labels"]
    assert service["spec"]["selector"] == template["metadata"]["labels"]
    port_names = {p["name"] for p in template["spec"]["containers"][0]["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    assert template["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/ping"
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]

    # The exported config.properties serves for real (addresses moved to free loopback ports).
    local = dict(props)
    for key in ("inference", "management", "metrics"):
        local[f"{key}_address"] = f"http://127.0.0.1:{free_port()}"
    local["grpc_inference_port"], local["grpc_management_port"] = str(free_port()), str(free_port())
    local["model_store"] = str(out / "model-store")
    config = write_properties(local, tmp_path / "local.properties")
    ts = TorchServe(config, tmp_path / "run", trust=Trust(public_key))  # the layout's key
    with ts:
        ts.start(timeout=120, models=["digits-student"])
        client = InferenceClient(ts.inference_url)
        payloads = [encode_png(digits_splits.test[i][0]) for i in range(16)]
        assert [r.top1 for r in client.predict_many("digits-student", payloads, 8)] == (
            expected[:16]
        )
    shutil.rmtree(tmp_path / "run", ignore_errors=True)

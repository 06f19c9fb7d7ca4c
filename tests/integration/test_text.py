"""Text classification end to end on a real TorchServe: a user's own Hugging Face teacher
directory (offline), a distilled int8 student archived in every format with its tokenizer,
served over REST, KServe v2 (tritonclient with its defaults) and gRPC; hostile texts inside a
batch of good ones get their own 4xx while their neighbours get 200. The same archives on the
Triton engine too."""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
import yaml

from distillserve.archiver import build_archive
from distillserve.archiver.properties import ServerConfig, read_properties
from distillserve.archiver.signing import Trust
from distillserve.archiver.triton import export_triton
from distillserve.errors import ServerError
from distillserve.handlers.classification import sha256_file
from distillserve.handlers.runtimes import MODEL_FILES
from distillserve.handlers.textprep import TextSpec, encode_batch, load_tokenizer
from distillserve.serving.grpc_client import GrpcClient
from distillserve.serving.server import TorchServe
from distillserve.serving.triton_client import TritonClient
from distillserve.serving.triton_engine import TritonAddresses, TritonEngine
from distillserve.serving.triton_env import find_dist
from distillserve.students.distill import predict
from distillserve.students.exported import load_exported
from distillserve.students.pipeline import build
from distillserve.students.recipe import Recipe
from distillserve.students.text_data import load_text_splits, make_text_loader
from tests.helpers import register
from tests.texts import ODD_BUT_VALID, hostile_requests, save_hf_teacher, text_recipe_dict

pytestmark = pytest.mark.slow
FORMATS = ("torchscript", "pt2", "onnx")


@pytest.fixture(scope="module")
def text_build(tmp_path_factory):
    """The CI text recipe built from a save_pretrained teacher directory, with the Hub off."""
    root = tmp_path_factory.mktemp("text")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("HF_HOME", str(root / "empty-hf-home"))  # nothing cached to fall back on
        probe = Recipe.from_dict(text_recipe_dict())
        splits = load_text_splits(probe.data, probe.seed)
        teacher_dir = save_hf_teacher(root / "my-bert", splits.train.texts, splits.classes)
        recipe = Recipe.from_dict(text_recipe_dict(teacher_dir))
        result = build(recipe, root / "build")
    return recipe, result, splits


@pytest.fixture(scope="module")
def text_store(text_build, tmp_path_factory):
    _, result, _ = text_build
    store = tmp_path_factory.mktemp("text-store")
    names = {}
    for fmt in FORMATS:
        archive = build_archive(result.artifacts["student"], store, model_format=fmt)
        names[fmt] = archive
    return store, names


@pytest.fixture(scope="module")
def server(text_store, tmp_path_factory):
    store, archives = text_store
    run = tmp_path_factory.mktemp("text-serve")
    config = ServerConfig.with_free_ports(store, enable_model_api=True)
    ts = TorchServe(config.write(run / "config.properties"), run / "serve", store)
    try:
        ts.start(timeout=120, models=[])
        for archive in archives.values():
            response = register(ts, archive.path.name, batch_size=8, max_batch_delay=100)
            assert response.status_code == 200, response.text
        yield ts
    finally:
        ts.stop()


@pytest.fixture(scope="module")
def in_process(text_build):
    """Each format's file on the test split in process, tokenized with the artifact's own
    tokenizer and settings: probabilities per text."""
    _, result, splits = text_build
    directory = result.artifacts["student"]
    spec = TextSpec.from_dict(yaml.safe_load((directory / "handler.yaml").read_text()))
    loader = make_text_loader(splits.test, load_tokenizer(directory / spec.tokenizer, spec), 64)
    out = {}
    for fmt in FORMATS:
        logits, _ = predict(load_exported(directory / MODEL_FILES[fmt]), loader)
        out[fmt] = torch.softmax(logits, 1)
    return out


def _post(ts, name: str, body: bytes, content_type: str) -> tuple[int, dict]:
    response = requests.post(
        f"{ts.inference_url}/predictions/{name}",
        data=body,
        headers={**ts.headers(), "Content-Type": content_type},
        timeout=60,
    )
    return response.status_code, response.json()


def test_the_archive_carries_the_tokenizer_and_no_transformers_code(text_store, text_build):
    _, archives = text_store
    _, result, _ = text_build
    with zipfile.ZipFile(archives["torchscript"].path) as mar:
        names = set(mar.namelist())
        info = json.loads(mar.read("build-info.json"))
        config = yaml.safe_load(mar.read("model-config.yaml"))
    assert {"tokenizer.json", "distill_text_classifier.py", "text_task.py"} <= names
    assert "image_task.py" not in names and "distill_classifier.py" not in names
    tokenizer = result.artifacts["student"] / "tokenizer.json"
    assert info["sha256"]["tokenizer.json"] == sha256_file(tokenizer)
    assert info["task"] == "text-classification"
    handler = config["handler"]
    assert handler["task"] == "text-classification" and handler["max_length"] == 48
    assert handler["tokenizer"] == "tokenizer.json" and handler["pad_id"] == 0


def test_a_text_archives_image_installs_tokenizers(text_store):
    """The deployment images (export-kserve, export-triton --deploy) install the tokenizers
    the text handler imports, at this host's version."""
    from importlib import metadata

    from distillserve.archiver.image import dockerfile, runtime_versions, triton_dockerfile

    _, archives = text_store
    versions = runtime_versions([archives["onnx"].path])
    assert versions["tokenizers"] == metadata.version("tokenizers")
    for text in (dockerfile(versions), triton_dockerfile(versions)):
        assert f"tokenizers=={versions['tokenizers']}" in text
        assert f"onnxruntime=={versions['onnxruntime']}" in text


@pytest.mark.parametrize("fmt", FORMATS)
def test_served_answers_equal_in_process_ones(server, text_store, text_build, in_process, fmt):
    """Every test text over REST, 8 at a time (so TorchServe batches them): the served
    probabilities are the file's own in process, batched and padded differently (static int8
    scales: a text's answer does not depend on its neighbours), and so is every label but an
    exact tie's."""
    _, archives = text_store
    _, _, splits = text_build
    name = archives[fmt].model_name
    texts = splits.test.texts
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda t: _post(server, name, t.encode(), "text/plain"), texts))
    assert all(status == 200 for status, _ in answers), answers[:3]
    expected = in_process[fmt]
    classes = splits.classes
    for (_, answer), probs in zip(answers, expected):
        served = torch.tensor([answer["probabilities"].get(c, 0.0) for c in classes])
        assert torch.allclose(served, probs, atol=0.002), (answer, probs)
        top2 = probs.topk(2).values
        if top2[0] - top2[1] > 0.004:
            assert answer["label"] == classes[int(probs.argmax())]


@pytest.mark.parametrize("fmt", FORMATS)
def test_hostile_texts_in_a_batch_get_their_own_4xx(server, text_store, fmt):
    """Each hostile request sent among good ones at once: it gets its own 4xx with a JSON
    error, every good neighbour (odd scripts and emoji included) gets 200, and a text past
    max_length is answered and says it was truncated."""
    _, archives = text_store
    name = archives[fmt].model_name
    hostile = hostile_requests(2048)
    good = {
        f"good-{i}": (t.encode(), "text/plain; charset=utf-8", 200)
        for i, t in enumerate(["a gripping, beautifully shot film", "dull and far too long"])
    }
    valid = {k: (v.encode(), "application/octet-stream", 200) for k, v in ODD_BUT_VALID.items()}
    as_json = {"json-text": (json.dumps({"text": "a fine film"}).encode(), "application/json", 200)}
    as_data = {"json-data": (json.dumps({"data": "a bad film"}).encode(), "application/json", 200)}
    long_text = {"long": (("very " * 200 + "good").encode(), "text/plain", 200)}
    cases = {**good, **valid, **as_json, **as_data, **long_text}
    mixed = []
    for key, case in hostile.items():  # each hostile request between two good ones
        mixed += [("good-0", cases["good-0"]), (key, case), ("good-1", cases["good-1"])]
    mixed += list(cases.items())
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda item: _post(server, name, item[1][0], item[1][1]), mixed))
    for (key, (_, _, want)), (status, answer) in zip(mixed, results):
        if want == 200:
            assert status == 200 and answer["label"] in ("negative", "positive"), (key, answer)
        else:
            assert status == want, (key, status, answer)
            assert answer["code"] == want and answer["message"], (key, answer)
            assert answer["type"] != "UnreadableRequest", (key, answer)
    by_key = {key: answer for (key, _), (_, answer) in zip(mixed, results)}
    assert by_key["long"]["truncated"] is True and by_key["good-0"]["truncated"] is False


def test_kserve_v2_through_tritonclient(server, text_store, text_build, in_process):
    """tritonclient with its defaults (binary tensors both ways): N strings in one BYTES input
    come back as N rows; an empty string refuses that request alone."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    _, archives = text_store
    _, _, splits = text_build
    name = archives["onnx"].model_name
    client = httpclient.InferenceServerClient(url=server.inference_url.removeprefix("http://"))
    texts = splits.test.texts[:3]
    tensor = httpclient.InferInput("text", [3], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))
    result = client.infer(name, [tensor], headers=server.headers(), request_id="t-1")
    assert result.get_response()["id"] == "t-1"
    labels = result.as_numpy("labels")
    directory = text_build[1].artifacts["student"]
    spec = TextSpec.from_dict(yaml.safe_load((directory / "handler.yaml").read_text()))
    _, cut = encode_batch(load_tokenizer(directory / spec.tokenizer, spec), texts)
    assert labels.shape == (3, 2) and result.as_numpy("truncated").tolist() == cut
    probs = result.as_numpy("probabilities")
    expected = in_process["onnx"][:3]
    for row, label_row, want in zip(probs, labels, expected):
        got = {(v.decode() if isinstance(v, bytes) else v): p for v, p in zip(label_row, row)}
        served = torch.tensor([got[c] for c in splits.classes])
        assert torch.allclose(served, want, atol=0.02)
    bad = httpclient.InferInput("text", [2], "BYTES")
    bad.set_data_from_numpy(np.array([b"fine", b"   "], dtype=np.object_))
    with pytest.raises(InferenceServerException) as refused:
        client.infer(name, [bad], headers=server.headers())
    assert refused.value.status() == "400" and "empty" in refused.value.message()
    client.close()


def test_grpc_predictions(server, text_store):
    """Over gRPC: a text's answer, and a refused one's error object (gRPC drops per-request
    status codes, so the body carries the code)."""
    _, archives = text_store
    name = archives["pt2"].model_name
    props = read_properties(server.config_file)
    with GrpcClient(
        f"127.0.0.1:{props['grpc_inference_port']}", None, server.keys()["inference"]
    ) as client:
        answer = client.predict(name, b"a moving and funny film")
        refused = client.predict_result(name, b"caf\xe9")
    assert answer["label"] in ("negative", "positive") and set(answer["probabilities"])
    assert refused.status == 400 and "UTF-8" in refused.body["message"]


@pytest.fixture(scope="module")
def triton(text_store, tmp_path_factory):
    """The three text archives on the Triton engine (export-triton, the bundled server)."""
    try:
        find_dist()
    except ServerError as err:
        pytest.skip(f"Triton engine unavailable: {err}")
    _, archives = text_store
    repo = tmp_path_factory.mktemp("text-triton") / "repository"
    export_triton([a.path for a in archives.values()], repo, Trust.resolve())
    run = Path(tempfile.mkdtemp(prefix="ds-text-triton-"))
    engine = TritonEngine(repo, run, TritonAddresses.free(), Trust.resolve())
    try:
        engine.start()
        yield engine
    finally:
        engine.stop()
        shutil.rmtree(run, ignore_errors=True)


@pytest.mark.parametrize("fmt", FORMATS)
def test_triton_answers_every_test_text_like_in_process(
    triton, text_store, text_build, in_process, fmt
):
    """The whole test split through Triton (the text input, KServe v2 HTTP): the file's own
    probabilities in process, and its labels but an exact tie's."""
    _, archives = text_store
    _, _, splits = text_build
    texts = [t.encode() for t in splits.test.texts]
    answers = TritonClient(triton.addresses).predict_many(
        archives[fmt].model_name, texts, text=True, concurrency=8
    )
    assert [a.status for a in answers] == [200] * len(texts), answers[:3]
    for answer, probs in zip(answers, in_process[fmt]):
        served = torch.tensor([answer.body.get(c, 0.0) for c in splits.classes])
        assert torch.allclose(served, probs, atol=0.002), (answer, probs)
        top2 = probs.topk(2).values
        if top2[0] - top2[1] > 0.004:
            assert answer.top1 == splits.classes[int(probs.argmax())]


def test_triton_hostile_texts_inside_a_batch_are_answered_alone(triton, text_store, text_build):
    """Empty, blank, invalid UTF-8 and oversized texts sent at once with good ones over gRPC:
    each gets its own error (Triton answers 400 for every input error), its neighbours their
    labels as when sent alone."""
    _, archives = text_store
    _, result, splits = text_build
    spec = TextSpec.from_dict(
        yaml.safe_load((result.artifacts["student"] / "handler.yaml").read_text())
    )
    hostile = {
        name: body
        for name, (body, _, _) in hostile_requests(spec.max_bytes).items()
        if name in ("empty", "whitespace", "invalid-utf8", "too-large")
    }
    good = [t.encode() for t in [*splits.test.texts[:4], *ODD_BUT_VALID.values()]]
    mixed = [*good[:3], *hostile.values(), *good[3:]]
    client = TritonClient(triton.addresses, grpc=True)
    name = archives["onnx"].model_name
    with ThreadPoolExecutor(len(mixed)) as pool:
        answers = list(pool.map(lambda body: client.predict(name, body, text=True), mixed))
    alone = [client.predict(name, body, text=True) for body in good]
    by_body = dict(zip(mixed, answers))
    assert [by_body[b].body for b in good] == [a.body for a in alone]
    for kind, body in hostile.items():
        assert by_body[body].status == 400, (kind, by_body[body])
        assert by_body[body].body["error"], kind


def test_the_onnx_text_student_serves_on_a_host_without_torch(
    text_store, text_build, in_process, tmp_path
):
    """torch unimportable in Triton's model process (``without_torch``): the int8 ONNX
    text student, tokenizer and all, answers every test text with the file's in-process
    probabilities, refuses a bad text alone, and has no libtorch mapped."""
    import psutil

    try:
        find_dist()
    except ServerError as err:
        pytest.skip(f"Triton engine unavailable: {err}")
    _, archives = text_store
    _, _, splits = text_build
    repo = tmp_path / "repository"
    export_triton([archives["onnx"].path], repo, Trust.resolve())
    run = Path(tempfile.mkdtemp(prefix="ds-text-notorch-"))
    engine = TritonEngine(repo, run, TritonAddresses.free(), Trust.resolve(), without_torch=True)
    try:
        engine.start()
        stubs = psutil.Process(engine.pid()).children(recursive=True)
        assert stubs and not any("libtorch" in Path(f"/proc/{s.pid}/maps").read_text()
                                 for s in stubs)  # fmt: skip
        texts = [t.encode() for t in splits.test.texts]
        answers = TritonClient(engine.addresses).predict_many(
            archives["onnx"].model_name, [*texts, b"caf\xe9"], text=True, concurrency=8
        )
    finally:
        engine.stop()
        shutil.rmtree(run, ignore_errors=True)
    assert answers[-1].status == 400 and "UTF-8" in answers[-1].body["error"]
    for answer, probs in zip(answers[:-1], in_process["onnx"]):
        served = torch.tensor([answer.body.get(c, 0.0) for c in splits.classes])
        assert torch.allclose(served, probs, atol=0.002), (answer, probs)

"""The .mar: every file present, model-config.yaml values, build-info, isolation of builds."""

import hashlib
import json
import zipfile
from concurrent.futures import ProcessPoolExecutor

import pytest
import yaml

from distillserve.archiver import build_archive
from distillserve.errors import ArchiveError
from distillserve.handlers.serving_policy import AUTO, Measured, choose
from distillserve.students.recipe_sections import ArchiveConfig

EXPECTED_FILES = {
    "model.pt",
    "distill_classifier.py",
    "core_handler.py",
    "served_model.py",
    "triton_model.py",
    "core.py",
    "arrays.py",
    "image_task.py",
    "classification.py",
    "integrity.py",
    "imageprep.py",
    "textprep.py",
    "kserve_v2.py",
    "payloads.py",
    "runtimes.py",
    "serving_policy.py",
    "index_to_name.json",
    "model-config.yaml",
    "build-info.json",
    "MAR-INF/MANIFEST.json",
    "archive.sig",
}


def test_student_archive_contents(build_result, model_store):
    artifact = build_result.artifacts["student"]
    with zipfile.ZipFile(model_store / "digits-student.mar") as mar:
        assert set(mar.namelist()) == EXPECTED_FILES
        manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
        config = yaml.safe_load(mar.read("model-config.yaml"))
        info = json.loads(mar.read("build-info.json"))
        model_bytes = mar.read("model.pt")
        labels = json.loads(mar.read("index_to_name.json"))

    assert manifest["model"]["modelName"] == "digits-student"
    assert manifest["model"]["modelVersion"] == "1.0"
    assert manifest["model"]["handler"] == "distill_classifier.py"
    assert manifest["model"]["serializedFile"] == "model.pt"
    assert model_bytes == (artifact / "model.pt").read_bytes()

    recipe = yaml.safe_load((artifact / "recipe.yaml").read_text())["archive"]
    assert config["batchSize"] == recipe["batch_size"] == 8
    assert config["maxBatchDelay"] == recipe["max_batch_delay"] == 20
    assert config["responseTimeout"] == recipe["response_timeout"] == 120
    # threads: auto, resolved from the model's cost measured at archive time (the CI build
    # gives the workers: one; the walkthrough's test serves auto's one per core)
    assert recipe["min_workers"] == recipe["max_workers"] == 1 and recipe["threads"] == AUTO
    serving = info["serving"]
    section = ArchiveConfig.parse(recipe)
    chosen = choose(
        section.min_workers, section.max_workers, section.threads, Measured(**serving["measured"])
    )
    assert serving == chosen.record() and "thread per worker" in serving["why"]
    assert config["minWorkers"] == config["maxWorkers"] == serving["min_workers"] == 1
    assert config["handler"]["threads"] == serving["threads"] >= 1
    handler_yaml = yaml.safe_load((artifact / "handler.yaml").read_text())
    assert config["handler"] == {**handler_yaml, "threads": serving["threads"]}
    assert config["handler"]["quantized"] is True and config["handler"]["engine"] == "x86"

    assert info["sha256"]["model.pt"] == hashlib.sha256(model_bytes).hexdigest()
    assert info["versions"]["torch"].startswith("2.14.1")
    assert info["versions"]["distillserve"] == "0.1.0"
    assert info["metrics"] == json.loads((artifact / "metrics.json").read_text())
    assert info["recipe"]["name"] == "digits"
    assert labels == {str(i): str(i) for i in range(10)}


def test_teacher_archive_is_fp32(model_store):
    with zipfile.ZipFile(model_store / "digits-teacher.mar") as mar:
        assert (
            json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"]["modelName"] == "digits-teacher"
        )
        assert yaml.safe_load(mar.read("model-config.yaml"))["handler"]["quantized"] is False


def test_incomplete_artifact_is_refused(tmp_path, build_result):
    with pytest.raises(ArchiveError, match="not found"):
        build_archive(tmp_path / "absent", tmp_path)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "model.pt").write_bytes(
        (build_result.artifacts["student"] / "model.pt").read_bytes()
    )
    with pytest.raises(ArchiveError, match=r"missing index_to_name\.json, handler\.yaml"):
        build_archive(partial, tmp_path)


def _archive_version(args):
    artifact, store, version = args
    result = build_archive(
        artifact, store, version=version, file_name=f"digits-student-{version}.mar"
    )
    return str(result.path)


def test_concurrent_builds_of_one_model_do_not_collide(build_result, tmp_path):
    versions = [f"2.{i}" for i in range(4)]
    jobs = [(str(build_result.artifacts["student"]), str(tmp_path), v) for v in versions]
    with ProcessPoolExecutor(max_workers=2) as pool:
        paths = list(pool.map(_archive_version, jobs))
    for version, path in zip(versions, paths):
        with zipfile.ZipFile(path) as mar:
            assert set(mar.namelist()) == EXPECTED_FILES
            manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
            assert manifest["model"]["modelVersion"] == version
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".staging")]


def test_an_archive_of_another_model_is_refused_before_the_model_is_loaded(
    build_result, model_store, tmp_path, monkeypatch
):
    """The refusal costs no probe process: it is decided from the artifact's files alone."""
    import shutil

    from distillserve.archiver import mar

    store = tmp_path / "store"
    store.mkdir()
    shutil.copy2(model_store / "digits-student.mar", store / "digits-student.mar")

    def no_probe(*args, **kwargs):
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr(mar, "probe", no_probe)
    artifact = build_result.artifacts["student"]
    with pytest.raises(ArchiveError, match=r"holds digits-student 1\.0"):
        build_archive(artifact, store, version="3.0", file_name="digits-student.mar")


def test_an_onnx_archive_needs_onnxruntime_in_its_image(model_store):
    from distillserve.archiver.image import dockerfile, runtime_versions

    signing = {"model-signing", "pyopenssl"}  # every image: the handler verifies archives
    onnx = runtime_versions([model_store / "digits-student-onnx.mar"])
    assert set(onnx) == {"torch", "torchvision", "onnxruntime", *signing}
    assert f"onnxruntime=={onnx['onnxruntime']}" in dockerfile(onnx)
    assert "model-signing==1.1.1" in dockerfile(onnx)
    assert set(runtime_versions([model_store / "digits-student.mar"])) == {
        "torch",
        "torchvision",
        *signing,
    }


def _artifact_copy(build_result, tmp_path, labels) -> object:
    import shutil

    copy = tmp_path / "artifact"
    shutil.copytree(build_result.artifacts["student"], copy)
    for other in ("student-fp32", "teacher"):
        shutil.rmtree(copy / other, ignore_errors=True)
    (copy / "index_to_name.json").write_text(json.dumps(labels))
    return copy


@pytest.mark.parametrize(
    ("labels", "reason"),
    [
        ({str(i): [f"d{i}"] for i in range(10)}, "label of 0 is list"),
        ({str(i): {"n": i} for i in range(10)}, "label of 0 is dict"),
        ({str(i): None for i in range(10)}, "label of 0 is NoneType"),
        ({str(i): f"d{i}" for i in range(9)}, r"10 outputs: no label for \[9\]"),
        ({str(i): f"d{i}" for i in range(11)}, r"labels past them: \[10\]"),
        ({"zero": "d0"}, "not an output index"),
    ],
)
def test_labels_that_cannot_name_the_outputs_are_refused(build_result, tmp_path, labels, reason):
    artifact = _artifact_copy(build_result, tmp_path, labels)
    with pytest.raises(ArchiveError, match=reason):
        build_archive(artifact, tmp_path / "store")
    assert not (tmp_path / "store" / "digits-student.mar").exists()


def test_numeric_labels_are_archived_as_strings(build_result, tmp_path):
    artifact = _artifact_copy(build_result, tmp_path, {str(i): i for i in range(10)})
    result = build_archive(artifact, tmp_path / "store")
    with zipfile.ZipFile(result.path) as mar:
        assert json.loads(mar.read("index_to_name.json")) == {str(i): str(i) for i in range(10)}


def test_batch_sizes_above_the_maximum_are_refused(model_store, tmp_path):
    from distillserve.archiver import inspect_archive
    from distillserve.errors import RecipeError
    from distillserve.handlers.serving_policy import MAX_BATCH_SIZE

    with pytest.raises(
        RecipeError, match=f"batch_size': 100000: is above the maximum of {MAX_BATCH_SIZE}"
    ):
        ArchiveConfig.parse({"batch_size": 100_000})
    assert ArchiveConfig.parse({"batch_size": MAX_BATCH_SIZE}).batch_size == MAX_BATCH_SIZE
    # an archive whose model-config.yaml was edited by hand is refused before any server sees it
    edited = tmp_path / "edited.mar"
    with (
        zipfile.ZipFile(model_store / "digits-student.mar") as src,
        zipfile.ZipFile(edited, "w") as dst,
    ):
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "model-config.yaml":
                config = yaml.safe_load(data)
                config["batchSize"] = 100_000
                data = yaml.safe_dump(config).encode()
            dst.writestr(item, data)
    with pytest.raises(ArchiveError, match="batchSize: 100000 is above the maximum"):
        inspect_archive(edited)


def test_register_refuses_a_batch_size_above_the_maximum(model_store):
    """Refused on the client, before any server is asked (no client is even needed)."""
    from distillserve.errors import ServerError
    from distillserve.serving.versions import register_archive

    with pytest.raises(ServerError, match="--batch-size 1000: is above the maximum of 256"):
        register_archive(None, model_store, model_store / "digits-student.mar", batch_size=1000)


@pytest.mark.parametrize(
    ("workers", "threads", "warned"), [(2, 1, False), (1, 2, False), (8, 1, True), (2, 2, True)]
)
def test_export_kserve_warns_of_workers_the_pods_cannot_run(tmp_path, workers, threads, warned):
    from distillserve.archiver.kserve import oversubscribed

    mar = tmp_path / "m.mar"
    config = {"minWorkers": workers, "maxWorkers": workers, "handler": {"threads": threads}}
    with zipfile.ZipFile(mar, "w") as archive:
        archive.writestr("model-config.yaml", yaml.safe_dump(config))
    lines = oversubscribed([mar], cores=2)
    assert bool(lines) == warned
    if warned:
        (line,) = lines
        assert f"m.mar runs {workers} workers x {threads} thread(s)" in line
        assert f"at most {2 // threads}" in line and "limited to 2 CPUs" in line


class _Management:
    """The management calls ``register_archive`` makes, recorded; ``workers`` what the server
    started for the registration."""

    def __init__(self, workers: list) -> None:
        self.workers, self.calls = workers, []

    def default_version(self, name):
        return None

    def register(self, url, **params):
        self.calls.append(("register", params))

    def describe(self, name, version):
        return [{"modelName": name, "modelVersion": version, "workers": self.workers}]

    def scale(self, name, version, *, min_worker, max_worker):
        self.calls.append(("scale", min_worker, max_worker))


@pytest.mark.parametrize("started", [[], [{"id": "9000", "status": "READY"}]])
def test_register_leaves_workers_to_the_server_and_starts_one_when_it_started_none(
    model_store, tmp_path, started
):
    from distillserve.serving.versions import register_archive

    client = _Management(started)
    result = register_archive(client, tmp_path, model_store / "digits-student.mar")
    assert client.calls[0] == (
        "register",
        {"model_name": "digits-student", "batch_size": None, "max_batch_delay": None,
         "initial_workers": None},
    )  # fmt: skip
    if started:
        assert len(client.calls) == 1 and result["workers_note"] == ""
    else:
        assert client.calls[1] == ("scale", 1, 1)
        assert "started no worker" in result["workers_note"]
        assert "distillserve scale digits-student --min N" in result["workers_note"]
    given = _Management([])
    register_archive(given, tmp_path, model_store / "digits-student.mar", initial_workers=2)
    assert given.calls == [("register", {**client.calls[0][1], "initial_workers": 2})]

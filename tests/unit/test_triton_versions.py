"""The Triton engine's version bookkeeping without a server: which numbered folder holds which
archive version, and what every version of a model must share."""

from __future__ import annotations

import json

import pytest

from distillserve.archiver.triton import (
    instance_count,
    instances_served,
    model_formats,
    needs_torch,
    read_versions,
    write_versions,
)
from distillserve.errors import ServerError
from distillserve.handlers.serving_policy import usable_cores
from distillserve.serving import triton_versions
from distillserve.serving.triton_versions import _signature

CONFIG = """name: "m"
backend: "python"
version_policy: { all { } }
max_batch_size: 8
input [
  { name: "images" data_type: TYPE_STRING dims: [ 1 ] }
]
output [
  { name: "labels" data_type: TYPE_STRING dims: [ -1 ] }
]
dynamic_batching {
  max_queue_delay_microseconds: 20000
}
instance_group [ { kind: KIND_CPU count: 1 } ]
"""


def test_versions_come_from_versions_json_or_else_from_each_folders_manifest(tmp_path):
    for number, version in ((1, "1.0"), (3, "2.0")):
        (tmp_path / str(number) / "MAR-INF").mkdir(parents=True)
        manifest = {"model": {"modelVersion": version}}
        (tmp_path / str(number) / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(manifest))
    (tmp_path / "notes").mkdir()  # not a version folder
    assert read_versions(tmp_path) == {1: "1.0", 3: "2.0"}  # a repository without versions.json
    write_versions(tmp_path, {3: "2.0", 1: "1.0"})
    assert json.loads((tmp_path / "versions.json").read_text()) == {"1": "1.0", "3": "2.0"}
    write_versions(tmp_path, {1: "1.0"})  # what the server serves wins over the folders
    assert read_versions(tmp_path) == {1: "1.0"}
    assert read_versions(tmp_path / "no-such-model") == {}


def test_versions_must_share_batch_size_inputs_and_outputs_not_delay_or_instances():
    scaled = CONFIG.replace("count: 1", "count: 2").replace("20000", "5000")
    assert _signature(scaled) == _signature(CONFIG)
    assert len(_signature(CONFIG)) == 3  # max_batch_size, input, output
    for other in (
        CONFIG.replace('name: "images"', 'name: "text"'),
        CONFIG.replace("max_batch_size: 8", "max_batch_size: 16"),
        CONFIG.replace('name: "labels"', 'name: "scores"'),
    ):
        assert _signature(other) != _signature(CONFIG)


def _version(repository, model, number, fmt):
    folder = repository / model / str(number)
    folder.mkdir(parents=True)
    (folder / "build-info.json").write_text(json.dumps({"format": fmt}))


def test_a_repository_needs_torch_when_any_version_of_any_model_is_not_onnx(tmp_path):
    _version(tmp_path, "digits", 1, "onnx")
    _version(tmp_path, "mobilenet", 1, "onnx")
    assert model_formats(tmp_path) == {"digits": {"onnx"}, "mobilenet": {"onnx"}}
    assert not needs_torch(tmp_path)
    _version(tmp_path, "digits", 2, "torchscript")  # a later version, not only version 1
    assert model_formats(tmp_path)["digits"] == {"onnx", "torchscript"}
    assert needs_torch(tmp_path)


def test_an_engine_without_torch_refuses_a_torch_archive_in_one_line(tmp_path, monkeypatch):
    class Engine:  # what register reads of a running torch-free engine
        without_torch = True
        repository = tmp_path

    info = {"model_name": "m", "version": "2.0", "build_info": {"format": "pt2"}}
    monkeypatch.setattr(triton_versions, "inspect_archive", lambda archive, trust: info)
    refused = r"pt2 model and this engine runs its models without torch .*: start it with --with"
    with pytest.raises(ServerError, match=refused):
        triton_versions.register(Engine(), tmp_path / "m.mar", trust=None)
    assert not (tmp_path / "m").exists()  # nothing written to the repository


@pytest.mark.parametrize(
    ("serving", "cores", "expected"),
    [
        ({"per_core": True}, 2, 2),  # auto on a 16-core build host, served in a 2-CPU pod
        ({"per_core": True}, None, "host"),  # served here: this host's usable cores
        ({"per_core": False}, 2, 16),  # given workers stay what was given
        (None, 2, 16),  # an archive built before per_core was recorded: its count
    ],
)
def test_auto_workers_become_one_instance_per_core_of_the_serving_host(
    tmp_path, serving, cores, expected
):
    info = {"model_name": "m"} | ({"serving": serving} if serving else {})
    (tmp_path / "build-info.json").write_text(json.dumps(info))
    settings = {"minWorkers": 16, "maxWorkers": 16}  # a count, as a 16-core build would write
    count = instance_count(tmp_path, settings, cores)
    assert count == (usable_cores() if expected == "host" else expected)


def test_instances_served_reads_the_count_and_whether_it_is_per_core(tmp_path):
    (tmp_path / "2").mkdir()
    (tmp_path / "2" / "build-info.json").write_text(json.dumps({"serving": {"per_core": True}}))
    write_versions(tmp_path, {2: "1.0"})
    (tmp_path / "config.pbtxt").write_text(CONFIG.replace("count: 1", "count: 4"))
    assert instances_served(tmp_path) == (4, True)
    (tmp_path / "2" / "build-info.json").write_text("{}")
    assert instances_served(tmp_path) == (4, False)

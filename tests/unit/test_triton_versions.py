"""The Triton engine's version bookkeeping without a server: which numbered folder holds which
archive version, and what every version of a model must share."""

from __future__ import annotations

import json

from distillserve.archiver.triton import read_versions, write_versions
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

"""The model store's index and the server agree: models loaded at start-up are known, `models`
and `list` tell the same story at every step, rollback works for a start-up model, verbs refuse
versions the server lacks, and no archive of one version ever replaces another's."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from distillserve.archiver import build_archive
from distillserve.archiver.mar import sha256_file
from distillserve.archiver.properties import ServerConfig
from distillserve.serving.server import TorchServe
from distillserve.students.data import encode_png
from tests.helpers import ROOT, CliResult, run_cli, shipped_profile

pytestmark = pytest.mark.slow


def _cli(*args: str, config: Path | None = None, run_dir: Path | None = None) -> CliResult:
    server = ["--config", str(config), "--run-dir", str(run_dir)] if config else []
    return run_cli(*args, *server)


@pytest.fixture(scope="module")
def store(build_result, tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("registry_store")
    assert build_archive(build_result.artifacts["student"], store).path.name == "digits-student.mar"
    two = build_archive(build_result.artifacts["student"], store, version="2.0")
    assert two.path.name == "digits-student-2.0.mar"  # another version: its own file
    return store


@pytest.fixture(scope="module")
def startup(store, tmp_path_factory):
    """A registration-profile server that loads digits-student 1.0 at start, started by the CLI."""
    run = tmp_path_factory.mktemp("startup")
    config = ServerConfig.with_free_ports(
        store, enable_model_api=True, load_models=("digits-student.mar",)
    ).write(run / "config.properties")
    started = _cli("serve", "start", config=config, run_dir=run / "serve")
    ts = TorchServe(config, run / "serve", store)
    try:
        assert started.returncode == 0, started.stderr
        yield ts
    finally:
        ts.stop()


def _cli_of(ts: TorchServe, *args: str):
    return _cli(*args, config=ts.config_file, run_dir=ts.run_dir)


def _models(ts: TorchServe) -> dict[str, tuple[bool, bool]]:
    """``distillserve models``: version -> (registered, default) for digits-student."""
    out = _cli_of(ts, "models")
    assert out.returncode == 0, out.stderr
    rows = re.findall(r"^digits-student\s+(\S+)\s+(\*?)\s*(yes|no)\b", out.stdout, re.M)
    return {version: (registered == "yes", star == "*") for version, star, registered in rows}


def _list(ts: TorchServe) -> dict[str, tuple[bool, bool]]:
    """``distillserve list``: version -> (registered, default) for digits-student."""
    out = _cli_of(ts, "list")
    assert out.returncode == 0, out.stderr
    rows = re.findall(r"^digits-student\s+(\S+)\s+(\*| )", out.stdout, re.M)
    return {version: (True, star == "*") for version, star in rows}


def _agree(ts: TorchServe) -> dict[str, tuple[bool, bool]]:
    models = _models(ts)
    registered = {v: state for v, state in models.items() if state[0]}
    assert registered == _list(ts), (models, _list(ts))
    return models


def _index(store: Path) -> dict:
    return json.loads((store / "index.json").read_text())["models"]["digits-student"]


def test_startup_models_are_known_and_roll_back(startup, store):
    assert _agree(startup) == {"1.0": (True, True), "2.0": (False, False)}
    assert _index(store)["versions"]["1.0"]["last_registered"]["how"] == "start-up"

    registered = _cli_of(
        startup, "register", str(store / "digits-student-2.0.mar"), "--set-default"
    )
    assert registered.returncode == 0, registered.stderr
    assert _agree(startup) == {"1.0": (True, False), "2.0": (True, True)}
    assert _index(store)["default_history"] == ["1.0"]

    rolled = _cli_of(startup, "rollback", "digits-student")
    assert rolled.returncode == 0, rolled.stderr
    assert "default is 1.0 again; 2.0 unregistered" in rolled.stdout
    assert _agree(startup) == {"1.0": (True, True), "2.0": (False, False)}
    assert _index(store)["default_history"] == []  # never the current default

    entry = _index(store)["versions"]["1.0"]
    assert entry["archive_sha256"] == sha256_file(store / "digits-student.mar")
    assert entry["model_sha256"] != entry["archive_sha256"]  # each hash names its file


def test_verbs_refuse_a_version_the_server_lacks(startup, tmp_path, digits_splits):
    data = tmp_path / "labelled" / "0"
    data.mkdir(parents=True)
    (data / "a.png").write_bytes(encode_png(digits_splits.test[0][0]))
    for args in (
        ["set-default", "digits-student", "9.9"],
        ["scale", "digits-student", "--version", "9.9", "--min", "1"],
        ["unregister", "digits-student", "9.9"],
        ["describe", "digits-student", "--version", "9.9"],
        ["ab", "digits-student", "1.0", "9.9", str(tmp_path / "labelled")],
    ):
        result = _cli_of(startup, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        (line,) = result.stderr.strip().splitlines()
        assert "no version '9.9' of digits-student (it has 1.0" in line, line
    gone = _cli_of(startup, "describe", "no-such-model")
    assert gone.returncode == 2 and "has no model 'no-such-model'" in gone.stderr


def test_the_serving_profile_and_a_stale_key_say_what_to_do(model_store, tmp_path):
    ts = shipped_profile("config.properties", model_store, tmp_path)
    with ts:
        ts.start(timeout=120, models=[])
        refused = _cli_of(ts, "register", str(model_store / "digits-student.mar"))
        assert refused.returncode == 2
        (line,) = refused.stderr.strip().splitlines()
        assert "registration API is off" in line and "config.mlops.properties" in line
        stale = tmp_path / "stale.json"
        stale.write_text(json.dumps({"management": {"key": "expired"}}))
        result = _cli("list", config=ts.config_file, run_dir=ts.run_dir)
        assert result.returncode == 0, result.stderr
        expired = subprocess.run(
            [
                sys.executable,
                "-m",
                "distillserve.scripts.cli",
                "list",
                "--config",
                str(ts.config_file),
                "--key-file",
                str(stale),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert expired.returncode == 2
        (line,) = expired.stderr.strip().splitlines()
        assert "refused the management key" in line and "--key-file" in line


def test_archive_never_replaces_another_version(build_result, tmp_path):
    artifact = str(build_result.artifacts["student"])
    store = tmp_path / "store"
    assert _cli("archive", artifact, "--model-store", str(store)).returncode == 0
    released = sha256_file(store / "digits-student.mar")

    other = _cli("archive", artifact, "--model-store", str(store), "--version", "2.0")
    assert other.returncode == 0 and other.stdout.strip().endswith("digits-student-2.0.mar")
    clash = ["--model-store", str(store), "--version", "3.0", "--file-name", "digits-student.mar"]
    refused = _cli("archive", artifact, *clash)
    assert refused.returncode == 2
    (line,) = refused.stderr.strip().splitlines()
    assert "holds digits-student 1.0" in line and "--file-name" in line and "--force" in line
    assert sha256_file(store / "digits-student.mar") == released  # 1.0 untouched
    assert _cli("archive", artifact, "--model-store", str(store)).returncode == 0  # a rebuild
    assert _cli("archive", artifact, *clash, "--force").returncode == 0


def test_concurrent_verbs_keep_the_index_consistent(build_result, tmp_path):
    artifact = str(build_result.artifacts["student"])
    store = tmp_path / "store"
    commands = [
        [
            sys.executable,
            "-m",
            "distillserve.scripts.cli",
            "archive",
            artifact,
            "--model-store",
            str(store),
            "--version",
            version,
        ]
        for version in ("1.0", "2.0", "3.0")
    ]
    running = [subprocess.Popen(c, cwd=ROOT, stderr=subprocess.PIPE, text=True) for c in commands]
    assert all(p.wait(timeout=300) == 0 for p in running), [p.stderr.read() for p in running]
    versions = json.loads((store / "index.json").read_text())["models"]["digits-student"]
    assert set(versions["versions"]) == {"1.0", "2.0", "3.0"}
    for version, entry in versions["versions"].items():
        assert entry["archive_sha256"] == sha256_file(store / entry["file"]), version

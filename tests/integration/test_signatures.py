"""Signed archives against a real TorchServe: every tampering is refused by `distillserve
register` before the server sees the file, and by the handler when the server is handed the
file directly (the management API, bypassing our client)."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
import requests

from distillserve.archiver.properties import ServerConfig
from distillserve.archiver.signing import SIGNATURE_NAME, init_keys, sign_mar
from distillserve.serving.server import TorchServe
from tests.helpers import STUDENT_MARS, refused_at_load, register, run_cli

pytestmark = pytest.mark.slow
ARCHIVE = STUDENT_MARS["torchscript"]


@pytest.fixture(scope="module")
def server(model_store, tmp_path_factory):
    """A server that verifies with the session's public key (conftest), on its own copy of
    the model store so that tampered archives never sit beside other tests' ones."""
    run = tmp_path_factory.mktemp("signatures")
    store = run / "store"
    store.mkdir()
    shutil.copy2(model_store / ARCHIVE, store / ARCHIVE)
    config = ServerConfig.with_free_ports(store, enable_model_api=True)
    ts = TorchServe(config.write(run / "config.properties"), run / "serve", store)
    try:
        ts.start(timeout=120, models=[])
        yield ts
    finally:
        ts.stop()


def _append(name: str, text: bytes):
    return lambda n, data: data + text if n == name else data


def _resign_with_another_key(path: Path, tmp: Path) -> None:
    private, _ = init_keys(tmp / "attacker-keys")
    sign_mar(path, private)


# what is done to the archive, then what both refusals must name
TAMPERING = {
    "handler": (_append("distill_classifier.py", b"\n# changed\n"), "distill_classifier.py"),
    "helper module": (_append("core.py", b"\n# changed\n"), "changed since signing: core.py"),
    "labels": (
        lambda n, d: d.replace(b'"3"', b'"8"', 1) if n == "index_to_name.json" else d,
        "changed since signing: index_to_name.json",
    ),
    "model-config": (
        _append("model-config.yaml", b"startupTimeout: 1000\n"),
        "changed since signing: model-config.yaml",
    ),
    "model file": (
        lambda n, d: d[:-64] + bytes(64) if n == "model.pt" else d,
        "changed since signing: model.pt",
    ),
    "removed file": (
        lambda n, d: None if n == "build-info.json" else d,
        "removed after signing: build-info.json",
    ),
    "added file": (None, "added after signing: notes.txt"),
    "wrong signature": (
        lambda n, d: None if n == SIGNATURE_NAME else d,
        "signed with another key",
    ),
    "unsigned": (lambda n, d: None if n == SIGNATURE_NAME else d, "unsigned"),
}


def _tampered(source: Path, kind: str, target: Path) -> Path:
    change, _ = TAMPERING[kind]
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            data = data if change is None else change(item.filename, data)
            if data is not None:
                dst.writestr(item, data)
        if kind == "added file":
            dst.writestr("notes.txt", "not signed\n")
    if kind == "wrong signature":
        _resign_with_another_key(target, target.parent)
    return target


@pytest.mark.parametrize("kind", list(TAMPERING))
def test_tampering_is_refused_by_register_and_at_load(server, kind, tmp_path):
    name = f"tampered-{kind.replace(' ', '-')}"
    outside = _tampered(server.model_store / ARCHIVE, kind, tmp_path / f"{name}.mar")
    expected = TAMPERING[kind][1]

    # 1. our client: one line, and the server never sees the file
    result = run_cli(
        "register", str(outside), "--model-name", name,
        "--config", str(server.config_file), "--run-dir", str(server.run_dir),
    )  # fmt: skip
    err = result.stderr.strip()
    code = result.returncode
    assert code == 2
    assert expected in err and len(err.splitlines()) == 1, err
    assert not list(server.model_store.glob(f"{name}*"))
    models = server.management_client().list_models()
    assert name not in str(models)

    # 2. the server handed the file directly: the handler refuses at load, nothing goes live
    inside = server.model_store / outside.name
    shutil.copy2(outside, inside)
    try:
        # the worker's refusal: TorchServe's line naming the model and the handler's message
        name, line = refused_at_load(server, inside.name, name, "Failed to load model ")
        assert f"Failed to load model {name}, exception " in line, line
        assert expected in line.split(", exception ", 1)[1], line
        answer = requests.post(
            f"{server.inference_url}/predictions/{name}",
            data=b"x",
            headers=server.headers(),
            timeout=30,
        )
        assert answer.status_code != 200
    finally:
        inside.unlink()


def test_the_untouched_archive_registers_and_answers(server):
    result = run_cli(
        "verify", str(server.model_store / ARCHIVE), "--config", str(server.config_file)
    )
    assert result.returncode == 0, result.stderr
    assert "signature verified with" in result.stdout
    response = register(server, ARCHIVE, model_name="signed-student")
    assert response.status_code == 200, response.text

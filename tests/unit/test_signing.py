"""Archive signatures without a server: sign a small .mar, then tamper with it every way an
attacker or a careless user would; each is refused in one line naming what differs."""

from __future__ import annotations

import base64
import json
import os
import re
import stat
import zipfile
from pathlib import Path

import pytest

from distillserve.archiver.signing import (
    SIGNATURE_NAME,
    Trust,
    init_keys,
    sign_mar,
    signing_key,
    verify_mar,
)
from distillserve.errors import ArchiveError
from distillserve.handlers.integrity import IntegrityError, check_model_dir

FILES = {
    "MAR-INF/MANIFEST.json": b'{"model": {"modelName": "m", "serializedFile": "model.pt"}}',
    "distill_classifier.py": b"class Handler:\n    pass\n",
    "core.py": b"def helper():\n    return 1\n",
    "index_to_name.json": b'{"0": "cat", "1": "dog"}',
    "model-config.yaml": b"batchSize: 8\n",
    "model.pt": bytes(range(256)) * 64,
}


def _rewrite(src: Path, dst: Path, change) -> Path:
    """Copy ``src`` into ``dst`` with ``change(name, data)`` applied: it returns new bytes, or
    None to drop the file."""
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as new:
        for item in old.infolist():
            data = change(item.filename, old.read(item.filename))
            if data is not None:
                new.writestr(item, data)
    return dst


@pytest.fixture
def keys(tmp_path) -> tuple[Path, Path]:
    return init_keys(tmp_path / "keys")


@pytest.fixture
def signed(tmp_path, keys) -> Path:
    mar = tmp_path / "m.mar"
    with zipfile.ZipFile(mar, "w") as archive:
        for name, data in FILES.items():
            archive.writestr(name, data)
    sign_mar(mar, keys[0])
    return mar


def test_a_signed_archive_verifies_and_carries_its_signature(signed, keys):
    assert verify_mar(signed, Trust(keys[1])) == f"signature verified with {keys[1]}"
    with zipfile.ZipFile(signed) as archive:
        assert SIGNATURE_NAME in archive.namelist()


def _edit(name: str):
    return lambda n, data: data + b"\n# changed\n" if n == name else data


TAMPERING = {
    "handler": (_edit("distill_classifier.py"), "changed since signing: distill_classifier.py"),
    "helper module": (_edit("core.py"), "changed since signing: core.py"),
    "labels": (
        lambda n, d: b'{"0": "dog", "1": "cat"}' if n == "index_to_name.json" else d,
        "changed since signing: index_to_name.json",
    ),
    "model-config": (_edit("model-config.yaml"), "changed since signing: model-config.yaml"),
    "model file": (
        lambda n, d: d[:-16] + bytes(16) if n == "model.pt" else d,
        "changed since signing: model.pt",
    ),
    "manifest": (_edit("MAR-INF/MANIFEST.json"), "changed since signing: MAR-INF/MANIFEST.json"),
    "removed file": (lambda n, d: None if n == "core.py" else d, "removed after signing: core.py"),
    "unsigned": (lambda n, d: None if n == SIGNATURE_NAME else d, "unsigned (no archive.sig)"),
}


@pytest.mark.parametrize("kind", list(TAMPERING))
def test_every_tampering_is_refused_naming_the_file(signed, keys, tmp_path, kind):
    change, expected = TAMPERING[kind]
    tampered = _rewrite(signed, tmp_path / "tampered.mar", change)
    with pytest.raises(ArchiveError) as err:
        verify_mar(tampered, Trust(keys[1]))
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_an_added_file_is_refused(signed, keys):
    with zipfile.ZipFile(signed, "a") as archive:
        archive.writestr("sitecustomize.py", "import os\n")
        archive.writestr("__pycache__/core.cpython-311.pyc", b"\0" * 16)
    with pytest.raises(
        ArchiveError,
        match=re.escape("added after signing: __pycache__/core.cpython-311.pyc, sitecustomize.py"),
    ):
        verify_mar(signed, Trust(keys[1]))


def test_another_key_and_a_forged_signature_are_refused(signed, keys, tmp_path):
    _, other_public = init_keys(tmp_path / "other")
    with pytest.raises(ArchiveError, match="signed with another key than"):
        verify_mar(signed, Trust(other_public))

    def forge(name: str, data: bytes) -> bytes:
        if name != SIGNATURE_NAME:
            return data
        bundle = json.loads(data)
        envelope = bundle["dsseEnvelope"]
        signature = base64.b64decode(envelope["signatures"][0]["sig"])
        envelope["signatures"][0]["sig"] = base64.b64encode(signature[:-4] + bytes(4)).decode()
        return json.dumps(bundle).encode()

    forged = _rewrite(signed, tmp_path / "forged.mar", forge)
    with pytest.raises(ArchiveError, match="invalid signature"):
        verify_mar(forged, Trust(keys[1]))


def test_resigning_with_another_key_is_refused(signed, tmp_path, keys):
    other_private, _ = init_keys(tmp_path / "attacker")
    stripped = _rewrite(
        signed,
        tmp_path / "x.mar",
        lambda n, d: None if n == SIGNATURE_NAME else _edit("core.py")(n, d),
    )
    sign_mar(stripped, other_private)
    with pytest.raises(ArchiveError, match="signed with another key"):
        verify_mar(stripped, Trust(keys[1]))


def test_unsigned_archives_pass_only_when_allowed_and_the_refusal_names_both_ways(
    signed, keys, tmp_path
):
    unsigned = _rewrite(signed, tmp_path / "u.mar", TAMPERING["unsigned"][0])
    with pytest.raises(ArchiveError) as err:
        verify_mar(unsigned, Trust(keys[1]))
    assert "--allow-unsigned" in str(err.value)
    assert "distillserve_allow_unsigned=true" in str(err.value)
    assert verify_mar(unsigned, Trust(keys[1], allow_unsigned=True)) == "unsigned (allowed)"
    tampered = _rewrite(signed, tmp_path / "t.mar", _edit("core.py"))
    with pytest.raises(
        ArchiveError, match=re.escape("core.py")
    ):  # allowing unsigned ones is not a bypass
        verify_mar(tampered, Trust(keys[1], allow_unsigned=True))


def test_keys_are_private_and_never_replaced_by_accident(keys, tmp_path):
    private, public = keys
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"PUBLIC KEY" in public.read_bytes()
    with pytest.raises(ArchiveError, match="already holds a signing key pair"):
        init_keys(private.parent)
    new_private, _ = init_keys(private.parent, force=True)
    assert new_private.read_bytes() != b""


def test_where_keys_are_found(keys, tmp_path, monkeypatch):
    private, public = keys
    monkeypatch.setenv("DISTILLSERVE_SIGNING_KEY", str(private))
    assert signing_key() == private
    monkeypatch.setenv("DISTILLSERVE_SIGNING_KEY", str(tmp_path / "missing.pem"))
    with pytest.raises(ArchiveError, match="DISTILLSERVE_SIGNING_KEY: signing key not found"):
        signing_key()
    monkeypatch.delenv("DISTILLSERVE_PUBLIC_KEY", raising=False)
    monkeypatch.delenv("DISTILLSERVE_ALLOW_UNSIGNED", raising=False)
    props = {"distillserve_public_key": "k/pub.pem", "distillserve_allow_unsigned": "true"}
    trust = Trust.resolve(props=props, base=tmp_path)
    assert trust == Trust((tmp_path / "k/pub.pem").resolve(), allow_unsigned=True)
    monkeypatch.setenv("DISTILLSERVE_PUBLIC_KEY", str(public))
    assert Trust.resolve(props=props, base=tmp_path).public_key == public.resolve()
    assert Trust.resolve(public_key=tmp_path / "flag.pem").public_key == tmp_path / "flag.pem"
    assert Trust(public, True).environment() == {
        "DISTILLSERVE_PUBLIC_KEY": str(public),
        "DISTILLSERVE_ALLOW_UNSIGNED": "1",
    }


def _extract(mar: Path, into: Path) -> Path:
    with zipfile.ZipFile(mar) as archive:
        archive.extractall(into)
    return into


def test_the_handler_check_at_load(signed, keys, tmp_path, monkeypatch):
    """As in a worker: the extracted directory, the key from the environment, and the byte
    code Python wrote there when it imported the handler."""
    model_dir = _extract(signed, tmp_path / "model_dir")
    (model_dir / "__pycache__").mkdir()
    (model_dir / "__pycache__" / "core.cpython-311.pyc").write_bytes(b"\0" * 16)
    monkeypatch.setenv("DISTILLSERVE_PUBLIC_KEY", str(keys[1]))
    monkeypatch.delenv("DISTILLSERVE_ALLOW_UNSIGNED", raising=False)
    assert check_model_dir(model_dir) == f"signature verified with {keys[1]}"
    (model_dir / "index_to_name.json").write_text('{"0": "dog", "1": "cat"}')
    with pytest.raises(
        IntegrityError, match=re.escape("changed since signing: index_to_name.json")
    ):
        check_model_dir(model_dir)
    monkeypatch.delenv("DISTILLSERVE_PUBLIC_KEY")
    with pytest.raises(IntegrityError) as err:
        check_model_dir(model_dir)
    assert "DISTILLSERVE_PUBLIC_KEY is not set" in str(err.value)
    assert "DISTILLSERVE_ALLOW_UNSIGNED=1" in str(err.value)
    monkeypatch.setenv("DISTILLSERVE_ALLOW_UNSIGNED", "1")
    assert check_model_dir(model_dir).startswith("not verified")
    unsigned_dir = _extract(signed, tmp_path / "unsigned_dir")
    os.remove(unsigned_dir / SIGNATURE_NAME)
    monkeypatch.setenv("DISTILLSERVE_PUBLIC_KEY", str(keys[1]))
    assert check_model_dir(unsigned_dir).startswith("unsigned, allowed")
    monkeypatch.delenv("DISTILLSERVE_ALLOW_UNSIGNED")
    with pytest.raises(IntegrityError, match=re.escape("unsigned: no archive.sig")):
        check_model_dir(unsigned_dir)

"""Sign finished ``.mar`` files and verify them before a server sees them.

Keys: an elliptic-curve (P-256) pair made by ``distillserve keys init`` (``keys/`` by default,
the private key readable by its owner only). The private key is found as ``--signing-key``,
then ``DISTILLSERVE_SIGNING_KEY``, then ``keys/archive-signing.pem``; the public key as
``--public-key``, then ``DISTILLSERVE_PUBLIC_KEY``, then ``distillserve_public_key`` in the
serving config (relative to that file), then ``keys/archive-signing.pub.pem``.

Signing covers every file of the finished archive, ``MAR-INF/MANIFEST.json`` included
(``handlers.integrity`` holds the check both sides share). Unsigned archives are refused unless
``--allow-unsigned`` or ``distillserve_allow_unsigned=true`` says otherwise.
"""

from __future__ import annotations

import logging
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from distillserve.errors import ArchiveError
from distillserve.handlers.integrity import (
    ALLOW_UNSIGNED_ENV,
    PUBLIC_KEY_ENV,
    SIGNATURE_NAME,
    IntegrityError,
    verify_directory,
)

__all__ = [
    "PUBLIC_KEY_NAME",
    "SIGNATURE_NAME",
    "Trust",
    "ensure_keys",
    "init_keys",
    "sign_directory",
    "sign_mar",
    "signing_key",
    "verify_mar",
]

logger = logging.getLogger(__name__)

KEY_DIR = Path("keys")
PRIVATE_KEY_NAME = "archive-signing.pem"
PUBLIC_KEY_NAME = "archive-signing.pub.pem"
SIGNING_KEY_ENV = "DISTILLSERVE_SIGNING_KEY"
PUBLIC_KEY_PROPERTY = "distillserve_public_key"
ALLOW_UNSIGNED_PROPERTY = "distillserve_allow_unsigned"
UNSIGNED_HINT = (
    f"pass --allow-unsigned or set {ALLOW_UNSIGNED_PROPERTY}=true in the serving config "
    "to accept unsigned archives"
)


def init_keys(directory: str | Path = KEY_DIR, force: bool = False) -> tuple[Path, Path]:
    """Write a new P-256 key pair into ``directory``: (private key, public key) paths. An
    existing pair is never replaced unless ``force`` (archives signed with it would no longer
    verify)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    directory = Path(directory)
    private, public = directory / PRIVATE_KEY_NAME, directory / PUBLIC_KEY_NAME
    if not force and (private.exists() or public.exists()):
        raise ArchiveError(
            f"{directory} already holds a signing key pair: archives signed with it would "
            "no longer verify if it were replaced; use another --dir, or --force"
        )
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    private.unlink(missing_ok=True)
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def signing_key(explicit: str | Path | None = None) -> Path | None:
    """The private key ``archive`` signs with (see the module docstring), or None."""
    given = explicit or os.environ.get(SIGNING_KEY_ENV)
    if given:
        if not Path(given).is_file():
            source = "--signing-key" if explicit else SIGNING_KEY_ENV
            raise ArchiveError(f"{source}: signing key not found: {given}")
        return Path(given)
    default = KEY_DIR / PRIVATE_KEY_NAME
    return default if default.is_file() else None


def ensure_keys() -> Path:
    """The signing key, made at ``keys/`` first if there is none (the demo, bench and tune
    build and serve their own archives)."""
    found = signing_key()
    if found is None:
        found, public = init_keys()
        logger.info("made a signing key pair: %s and %s (distillserve keys init)", found, public)
    return found


@dataclass(frozen=True)
class Trust:
    """What a gate accepts: archives signed by ``public_key``, and unsigned ones only when
    ``allow_unsigned``."""

    public_key: Path | None
    allow_unsigned: bool = False

    @classmethod
    def resolve(
        cls,
        public_key: str | Path | None = None,
        allow_unsigned: bool = False,
        props: dict[str, str] | None = None,
        base: Path | None = None,
    ) -> Trust:
        """From a flag, the environment, the serving config's keys (``props``, paths relative
        to ``base``), or the default key location."""
        props = props or {}
        allowed = (
            allow_unsigned
            or props.get(ALLOW_UNSIGNED_PROPERTY, "").strip().lower() == "true"
            or os.environ.get(ALLOW_UNSIGNED_ENV, "") == "1"
        )
        given = public_key or os.environ.get(PUBLIC_KEY_ENV)
        if given:
            return cls(Path(given).resolve(), allowed)
        configured = props.get(PUBLIC_KEY_PROPERTY)
        if configured:  # relative to the config file, like its other paths
            return cls(((base or Path.cwd()) / configured).resolve(), allowed)
        default = KEY_DIR / PUBLIC_KEY_NAME
        return cls(default.resolve() if default.is_file() else None, allowed)

    def environment(self) -> dict[str, str]:
        """The variables that pass this trust on to the handler inside TorchServe's workers."""
        env = {}
        if self.public_key is not None:
            env[PUBLIC_KEY_ENV] = str(self.public_key)
        if self.allow_unsigned:
            env[ALLOW_UNSIGNED_ENV] = "1"
        return env


def sign_directory(directory: Path, private_key: Path, signature: Path | None = None) -> Path:
    """Sign every file under ``directory`` (an extracted archive) into ``signature`` (default:
    ``directory/archive.sig``, which the signature leaves out); returns its path."""
    from model_signing import hashing, signing

    signature = signature or directory / SIGNATURE_NAME
    hashing_config = hashing.Config().set_ignored_paths(
        paths=[SIGNATURE_NAME], ignore_git_paths=False
    )
    try:
        config = signing.Config().set_hashing_config(hashing_config)
        config.use_elliptic_key_signer(private_key=private_key).sign(directory, signature)
    except (ValueError, TypeError) as err:
        raise ArchiveError(f"cannot sign with {private_key}: {err}") from None
    return signature


def sign_mar(mar: Path, private_key: Path) -> None:
    """Sign every file ``mar`` holds and add the signature to it as ``archive.sig``."""
    with tempfile.TemporaryDirectory(prefix=".sign-", dir=mar.parent) as tmp:
        tree = Path(tmp) / "archive"
        with zipfile.ZipFile(mar) as archive:
            if SIGNATURE_NAME in archive.namelist():
                raise ArchiveError(f"{mar} already carries {SIGNATURE_NAME}")
            archive.extractall(tree)
        signature = sign_directory(tree, private_key, Path(tmp) / SIGNATURE_NAME)
        with zipfile.ZipFile(mar, "a", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.write(signature, SIGNATURE_NAME)


def verify_mar(mar: Path, trust: Trust) -> str:
    """Raise ``ArchiveError`` (one line naming the file that differs, or the missing or invalid
    signature) unless ``mar`` verifies under ``trust``; return how it was accepted."""
    with zipfile.ZipFile(mar) as archive:
        names = archive.namelist()
        signed = SIGNATURE_NAME in names
        if not signed:
            if trust.allow_unsigned:
                return "unsigned (allowed)"
            raise ArchiveError(f"{mar}: unsigned (no {SIGNATURE_NAME}); {UNSIGNED_HINT}")
        if trust.public_key is None:
            raise ArchiveError(
                f"{mar}: no public key to verify its signature: set {PUBLIC_KEY_PROPERTY} in the "
                f"serving config, {PUBLIC_KEY_ENV}, or pass --public-key (distillserve keys "
                "init makes a pair)"
            )
        if len(names) != len(set(names)):
            duplicated = sorted({n for n in names if names.count(n) > 1})
            raise ArchiveError(f"{mar}: the zip lists {', '.join(duplicated)} twice")
        with tempfile.TemporaryDirectory(prefix="distillserve-verify-") as tmp:
            archive.extractall(tmp)
            try:
                verify_directory(Path(tmp), trust.public_key)
            except IntegrityError as err:
                raise ArchiveError(f"{mar}: {err}") from None
    return f"signature verified with {trust.public_key}"

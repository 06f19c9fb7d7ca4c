"""Check an archive's files against its signed manifest (shipped inside every ``.mar``).

``distillserve archive`` signs the sha256 of every file the ``.mar`` carries with the OpenSSF
``model-signing`` library (an elliptic-curve key; the signature is a Sigstore bundle stored in
the archive as ``archive.sig``). The same check runs on the client (``register``, ``serve
start``, ``export-kserve``, ``verify``: on the extracted archive, before TorchServe sees it)
and in the handler's ``initialize`` (on the directory TorchServe extracted, the second line of
defence for the files the handler reads). The handler finds the public key through
``DISTILLSERVE_PUBLIC_KEY``, which ``distillserve serve start`` sets from the serving config.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = [
    "ALLOW_UNSIGNED_ENV",
    "PUBLIC_KEY_ENV",
    "SIGNATURE_NAME",
    "IntegrityError",
    "check_model_dir",
    "verify_directory",
]

SIGNATURE_NAME = "archive.sig"
PUBLIC_KEY_ENV = "DISTILLSERVE_PUBLIC_KEY"
ALLOW_UNSIGNED_ENV = "DISTILLSERVE_ALLOW_UNSIGNED"
# Python writes the byte code of the handler's modules into the extracted directory when the
# worker imports them, before initialize: the handler's check ignores that folder (the client's
# check refuses any archive that carries one).
BYTECODE_DIR = "__pycache__"

# model-signing 1.1.1 reports a mismatch as the repr of a list of sentences: read the file
# names back out of it (quotes inside may be escaped)
_HASH_MISMATCH = re.compile(r"Hash mismatch for \\?'(.+?)\\?': Expected")
_LISTED = re.compile(r"(Extra|Missing) files (?:found )?in model '[^']*': ([^\"]+)")


class IntegrityError(RuntimeError):
    """An archive whose files or signature do not check out (one line: what and where)."""


def _describe(message: str) -> str:
    """model-signing's mismatch message as one line naming the files."""
    parts = []
    changed = _HASH_MISMATCH.findall(message)
    if changed:
        parts.append(f"changed since signing: {', '.join(changed)}")
    for match in _LISTED.finditer(message):
        kind, files = match.group(1), match.group(2).strip()
        parts.append(f"{'added' if kind == 'Extra' else 'removed'} after signing: {files}")
    return "; ".join(parts) or message


def verify_directory(directory: Path, public_key: Path, ignore: tuple[str, ...] = ()) -> None:
    """Raise ``IntegrityError`` unless every file under ``directory`` (but the signature and
    ``ignore``) is exactly one the signature in it lists, signed by ``public_key``."""
    signature = directory / SIGNATURE_NAME
    if not signature.is_file():
        raise IntegrityError(f"unsigned: no {SIGNATURE_NAME} in the archive")
    if not Path(public_key).is_file():
        raise IntegrityError(f"public key not found: {public_key}")
    from model_signing import hashing, verifying

    hashing_config = hashing.Config().set_ignored_paths(
        paths=[SIGNATURE_NAME, *ignore], ignore_git_paths=False
    )
    config = verifying.Config().set_hashing_config(hashing_config)
    try:
        config.use_elliptic_key_verifier(public_key=public_key).verify(directory, signature)
    except ValueError as err:
        message = str(err).strip()
        if message.startswith("Signature mismatch"):
            raise IntegrityError(_describe(message)) from None
        if message.startswith("Key mismatch"):
            raise IntegrityError(f"signed with another key than {public_key}") from None
        raise IntegrityError(f"invalid signature ({message})") from None
    except Exception as err:  # a malformed bundle: JSON, protobuf or key errors
        raise IntegrityError(f"invalid signature {SIGNATURE_NAME} ({err})") from None


def check_model_dir(model_dir: Path) -> str:
    """The handler's check at ``initialize``: raise ``IntegrityError`` unless the extracted
    archive verifies with the key ``DISTILLSERVE_PUBLIC_KEY`` names, or unsigned archives are
    allowed (``DISTILLSERVE_ALLOW_UNSIGNED=1``). Returns what was checked, for the log."""
    allowed = os.environ.get(ALLOW_UNSIGNED_ENV, "") == "1"
    key = os.environ.get(PUBLIC_KEY_ENV, "")
    if not key:
        if allowed:
            return f"not verified ({ALLOW_UNSIGNED_ENV}=1 and no {PUBLIC_KEY_ENV})"
        raise IntegrityError(
            f"cannot verify the archive: {PUBLIC_KEY_ENV} is not set (distillserve serve start "
            f"sets it from distillserve_public_key in the config); set it to the archive signing "
            f"public key, or {ALLOW_UNSIGNED_ENV}=1 to serve unverified archives"
        )
    if allowed and not (model_dir / SIGNATURE_NAME).is_file():
        return f"unsigned, allowed by {ALLOW_UNSIGNED_ENV}=1"
    try:
        verify_directory(model_dir, Path(key), ignore=(BYTECODE_DIR,))
    except ModuleNotFoundError:
        raise IntegrityError(
            "cannot verify the archive: the model-signing package is not installed in the "
            f"worker's Python (pip install model-signing==1.1.1 pyopenssl), or set "
            f"{ALLOW_UNSIGNED_ENV}=1"
        ) from None
    return f"signature verified with {key}"

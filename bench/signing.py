"""Why archives are signed with model-signing: its cost measured beside the alternative the
issue allowed, Ed25519 over a sha256 manifest through ``cryptography`` (hand-written here only
to measure it). ``python -m distillserve.bench.signing A.mar ...`` prints a Markdown table.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from importlib import metadata
from pathlib import Path

from distillserve.archiver.signing import SIGNATURE_NAME, Trust, init_keys, sign_mar, verify_mar

__all__ = ["compare_signers", "dependency_closure", "main"]


def _ed25519_manifest(mar: Path) -> bytes:
    with zipfile.ZipFile(mar) as archive:
        digests = {
            name: hashlib.sha256(archive.read(name)).hexdigest()
            for name in sorted(archive.namelist())
            if name != SIGNATURE_NAME
        }
    return json.dumps(digests, sort_keys=True).encode()


def _median_ms(action, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 1)


def compare_signers(mars: list[Path], rounds: int = 5) -> list[dict]:
    """Median sign and verify milliseconds of each archive with both signers."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        private, public = init_keys(Path(tmp) / "keys")
        ed_key = Ed25519PrivateKey.generate()
        for mar in mars:
            copy = Path(tmp) / mar.name

            def sign_once(copy=copy, mar=mar) -> None:
                shutil.copy2(mar, copy)
                with zipfile.ZipFile(copy) as archive:
                    present = SIGNATURE_NAME in archive.namelist()
                if present:  # measure on the archive as torch-model-archiver wrote it
                    _strip(copy)
                sign_mar(copy, private)

            ms_sign = _median_ms(sign_once, rounds)
            ms_verify = _median_ms(lambda copy=copy: verify_mar(copy, Trust(public)), rounds)
            signature = ed_key.sign(_ed25519_manifest(copy))
            ed_sign = _median_ms(lambda copy=copy: ed_key.sign(_ed25519_manifest(copy)), rounds)
            ed_verify = _median_ms(
                lambda copy=copy, sig=signature: ed_key.public_key().verify(
                    sig, _ed25519_manifest(copy)
                ),
                rounds,
            )
            rows.append(
                {
                    "archive": mar.name,
                    "size_mb": round(mar.stat().st_size / 2**20, 1),
                    "model_signing_sign_ms": ms_sign,
                    "model_signing_verify_ms": ms_verify,
                    "ed25519_sign_ms": ed_sign,
                    "ed25519_verify_ms": ed_verify,
                }
            )
    return rows


def _strip(mar: Path) -> None:
    kept = mar.with_suffix(".tmp")
    with zipfile.ZipFile(mar) as src, zipfile.ZipFile(kept, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            if item.filename != SIGNATURE_NAME:
                dst.writestr(item, src.read(item.filename))
    kept.replace(mar)


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def dependency_closure(root: str) -> dict[str, float]:
    """``root`` and every distribution it needs, installed here, with their size in MB."""
    seen: dict[str, float] = {}
    pending = [root]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        size = sum((f.size or 0) for f in dist.files or [])
        seen[name] = round(size / 2**20, 1)
        pending += [_name(r) for r in dist.requires or [] if "extra ==" not in r]
    return seen


def _import_seconds(statement: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", statement], check=True)
    return round(time.perf_counter() - started, 2)


def main(argv: list[str] | None = None) -> int:
    mars = [Path(a) for a in (sys.argv[1:] if argv is None else argv)]
    rows = compare_signers(mars)
    print("| archive | MB | model-signing sign / verify ms | Ed25519 sign / verify ms |")
    print("| --- | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['archive']} | {r['size_mb']} | {r['model_signing_sign_ms']} / "
            f"{r['model_signing_verify_ms']} | {r['ed25519_sign_ms']} / {r['ed25519_verify_ms']} |"
        )
    signing = dependency_closure("model-signing")
    crypto = dependency_closure("cryptography")
    print(
        f"\nmodel-signing needs {len(signing)} distributions, {sum(signing.values()):.0f} MB "
        f"(cryptography alone: {len(crypto)}, {sum(crypto.values()):.0f} MB); a fresh "
        f"interpreter imports it in "
        f"{_import_seconds('import model_signing.signing, model_signing.verifying')} s "
        f"(Python alone: {_import_seconds('pass')} s; cryptography's Ed25519: "
        f"{_import_seconds('from cryptography.hazmat.primitives.asymmetric import ed25519')} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

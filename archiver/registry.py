"""``model_store/index.json``: what only the model store knows about its archives.

    {"models": {NAME: {"default_history": [VERSION, ...],   # earlier defaults, oldest first
                       "versions": {VERSION: {
                           "file",              # the .mar in the store
                           "archive_sha256",    # sha256 of that .mar file
                           "model_sha256",      # sha256 of the model.pt inside it
                           "built_at", "metrics",
                           "last_registered": {"at", "how"}}}}}}   # how: register | start-up

Which versions are registered, which is the default and how many workers run is the server's
to say: ``distillserve models`` and ``list`` ask it (``versions_table`` / ``store_table`` in
``serving.versions``); the index never claims it. The history of defaults never holds the current
default. Updates take a file lock and replace the file atomically, so concurrent commands keep it
consistent.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["Registry"]

_SUMMARY_KEYS = ("role", "quantized", "params", "size_bytes", "latency_ms_batch1", "test_accuracy")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class Registry:
    """The index of one model store."""

    def __init__(self, model_store: str | Path) -> None:
        self.store = Path(model_store)
        self.path = self.store / "index.json"

    def read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"models": {}}
        for model in data.get("models", {}).values():  # indexes written by earlier versions
            model.pop("default", None)
            for entry in model.get("versions", {}).values():
                if "sha256" in entry:
                    entry.setdefault("model_sha256", entry.pop("sha256"))
                entry.pop("registered", None)
                entry.pop("registered_at", None)
        return data

    @contextlib.contextmanager
    def _update(self) -> Iterator[dict]:
        self.store.mkdir(parents=True, exist_ok=True)
        with open(self.store / ".index.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self.read()
            yield data
            fd, tmp = tempfile.mkstemp(prefix=".index-", dir=self.store)
            with os.fdopen(fd, "w") as out:
                json.dump(data, out, indent=2, sort_keys=True)
                out.write("\n")
            os.replace(tmp, self.path)

    @staticmethod
    def _model(data: dict, name: str) -> dict:
        model = data["models"].setdefault(name, {})
        model.setdefault("default_history", [])
        model.setdefault("versions", {})
        return model

    def record_archive(
        self, name: str, version: str, file: str, build_info: dict, archive_sha256: str
    ) -> None:
        """An archive built (or copied) into the store."""
        metrics = build_info.get("metrics", {})
        with self._update() as data:
            versions = self._model(data, name)["versions"]
            previous = versions.get(version, {})
            versions[version] = {
                "file": file,
                "archive_sha256": archive_sha256,
                "model_sha256": next(iter(build_info["sha256"].values())),
                "built_at": build_info.get("built_at"),
                "metrics": {k: metrics[k] for k in _SUMMARY_KEYS if k in metrics},
                "last_registered": previous.get("last_registered"),
            }

    def record_registered(self, name: str, version: str, file: str, how: str) -> None:
        """A version the server registered: by ``register``, or loaded at ``start-up``."""
        with self._update() as data:
            entry = self._model(data, name)["versions"].setdefault(version, {"file": file})
            entry["last_registered"] = {"at": _now(), "how": how}

    def record_default_change(self, name: str, previous: str | None, new: str) -> None:
        """The server's default moved from ``previous`` to ``new``: ``previous`` joins the
        history (most recent last); ``new``, now the default, leaves it."""
        with self._update() as data:
            model = self._model(data, name)
            history = [v for v in model["default_history"] if v not in (previous, new)]
            model["default_history"] = history + (
                [previous] if previous and previous != new else []
            )

    def record_unregistered(self, name: str, version: str) -> None:
        with self._update() as data:
            model = self._model(data, name)
            model["default_history"] = [v for v in model["default_history"] if v != version]

    def previous_default(self, name: str, candidates: Iterable[str]) -> str | None:
        """The most recent earlier default among ``candidates`` (versions the server has)."""
        candidates = set(candidates)
        history = self.read()["models"].get(name, {}).get("default_history", [])
        return next((v for v in reversed(history) if v in candidates), None)

    def versions(self) -> dict[str, dict[str, dict]]:
        """``{name: {version: entry}}`` of every archive in the index."""
        return {name: m.get("versions", {}) for name, m in self.read()["models"].items()}

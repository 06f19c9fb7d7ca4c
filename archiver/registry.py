"""``model_store/index.json``: every archive built into a store and what the server did with it.

    {"models": {NAME: {"default": VERSION | null,
                       "default_history": [VERSION, ...],      # earlier defaults, oldest first
                       "versions": {VERSION: {"file", "sha256", "built_at", "metrics",
                                              "registered", "registered_at"}}}}}

Updated by ``archive`` and by ``register`` / ``set-default`` / ``unregister`` / ``rollback``
under a file lock, and replaced atomically, so concurrent commands cannot corrupt it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
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
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"models": {}}

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
        return data["models"].setdefault(
            name, {"default": None, "default_history": [], "versions": {}}
        )

    def record_archive(self, name: str, version: str, file: str, build_info: dict) -> None:
        metrics = build_info.get("metrics", {})
        with self._update() as data:
            versions = self._model(data, name)["versions"]
            previous = versions.get(version, {})
            versions[version] = {
                "file": file,
                "sha256": build_info["sha256"]["model.pt"],
                "built_at": build_info.get("built_at"),
                "metrics": {k: metrics[k] for k in _SUMMARY_KEYS if k in metrics},
                "registered": previous.get("registered", False),
                "registered_at": previous.get("registered_at"),
            }

    def record_registered(self, name: str, version: str, file: str, is_default: bool) -> None:
        with self._update() as data:
            model = self._model(data, name)
            entry = model["versions"].setdefault(version, {"file": file})
            entry.update(registered=True, registered_at=_now())
            if is_default:
                self._set_default(model, version)

    def record_default(self, name: str, version: str) -> None:
        with self._update() as data:
            self._set_default(self._model(data, name), version)

    def record_unregistered(self, name: str, version: str) -> None:
        with self._update() as data:
            model = self._model(data, name)
            if version in model["versions"]:
                model["versions"][version]["registered"] = False
            if model["default"] == version:
                model["default"] = None
            model["default_history"] = [v for v in model["default_history"] if v != version]

    @staticmethod
    def _set_default(model: dict, version: str) -> None:
        current = model.get("default")
        if current and current != version:
            history = [v for v in model["default_history"] if v != current]
            model["default_history"] = [*history, current]
        model["default"] = version

    def previous_default(self, name: str) -> str | None:
        """The most recent earlier default that is still registered."""
        model = self.read()["models"].get(name, {})
        versions = model.get("versions", {})
        for version in reversed(model.get("default_history", [])):
            if versions.get(version, {}).get("registered"):
                return version
        return None

    def table(self) -> str:
        """All models and versions as a text table."""
        header = (
            f"{'model':<22}{'version':<10}{'default':<9}{'registered':<12}{'accuracy':>9}"
            f"{'size KB':>10}  {'built':<26}{'file'}"
        )
        lines = [header, "-" * (len(header) + 10)]
        for name, model in sorted(self.read()["models"].items()):
            for version, entry in sorted(model["versions"].items()):
                metrics = entry.get("metrics", {})
                accuracy = metrics.get("test_accuracy")
                size = metrics.get("size_bytes")
                lines.append(
                    f"{name:<22}{version:<10}{'*' if model['default'] == version else '':<9}"
                    f"{'yes' if entry.get('registered') else 'no':<12}"
                    f"{'' if accuracy is None else f'{accuracy:.2%}':>9}"
                    f"{'' if size is None else f'{size / 1024:.1f}':>10}  "
                    f"{entry.get('built_at') or '':<26}{entry.get('file', '')}"
                )
        return "\n".join(lines)

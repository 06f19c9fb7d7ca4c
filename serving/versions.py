"""Model versions on a running server: register (after verifying the archive), set the default,
roll back, and keep ``model_store/index.json`` in step."""

from __future__ import annotations

import shutil
from pathlib import Path

from distillserve.archiver import Registry, inspect_archive
from distillserve.errors import ServerError
from distillserve.serving.management import ManagementClient

__all__ = ["register_archive", "rollback", "set_default", "unregister", "versions_table"]


def register_archive(
    client: ManagementClient,
    model_store: Path,
    mar: Path,
    *,
    model_name: str | None = None,
    batch_size: int | None = None,
    max_batch_delay: int | None = None,
    initial_workers: int = 1,
    make_default: bool = False,
) -> dict:
    """Verify ``mar`` (sha256 of model.pt against build-info.json), place it in the model store
    (the only place the server loads from), register it, and record it in the index."""
    info = inspect_archive(mar)
    name, version = model_name or info["model_name"], info["version"]
    store = model_store.resolve()
    if mar.resolve().parent != store:
        target = store / f"{name}-{version}.mar"
        if target.exists() and inspect_archive(target)["build_info"] != info["build_info"]:
            raise ServerError(f"{target} exists and holds a different build; remove it first")
        shutil.copy2(mar, target)
        mar = target
    client.register(
        mar.name,
        model_name=name,
        batch_size=batch_size,
        max_batch_delay=max_batch_delay,
        initial_workers=initial_workers,
    )
    registry = Registry(store)
    registry.record_archive(name, version, mar.name, info["build_info"])
    if make_default:
        client.set_default(name, version)
    registry.record_registered(
        name, version, mar.name, make_default or _is_default(client, name, version)
    )
    return {"model_name": name, "version": version, "file": mar.name}


def _is_default(client: ManagementClient, name: str, version: str) -> bool:
    return client.default_version(name) == version


def set_default(client: ManagementClient, model_store: Path, name: str, version: str) -> None:
    client.set_default(name, version)
    Registry(model_store).record_default(name, version)


def unregister(client: ManagementClient, model_store: Path, name: str, version: str) -> None:
    client.unregister(name, version)
    Registry(model_store).record_unregistered(name, version)


def rollback(client: ManagementClient, model_store: Path, name: str) -> tuple[str, str]:
    """Make the previous default version the default again, then retire the current one.

    The previous default comes from the index's history; without one, the highest registered
    version below the current default is used. Returns ``(retired, restored)``.
    """
    current = client.default_version(name)
    if current is None:
        raise ServerError(f"model {name!r} is not registered")
    registry = Registry(model_store)
    previous = registry.previous_default(name)
    registered = [entry["modelVersion"] for entry in client.describe(name, "all")]
    if previous not in registered or previous == current:
        previous = _highest_below(registered, current)
    if previous is None:
        raise ServerError(f"{name} has no earlier registered version to roll back to")
    set_default(client, model_store, name, previous)
    unregister(client, model_store, name, current)
    return current, previous


def _highest_below(versions: list[str], current: str) -> str | None:
    from packaging.version import InvalidVersion, Version

    def key(v: str):
        try:
            return (0, Version(v))
        except InvalidVersion:
            return (1, v)

    earlier = [v for v in versions if key(v) < key(current)]
    return max(earlier, key=key) if earlier else None


def versions_table(client: ManagementClient) -> str:
    """The server's models and versions, the default marked ``*``, one line each."""
    lines = []
    for model in client.list_models():
        default = client.default_version(model["modelName"])
        for v in client.describe(model["modelName"], "all"):
            workers = ",".join(w.get("status", "?") for w in v.get("workers", []))
            mark = "*" if v["modelVersion"] == default else " "
            lines.append(
                f"{model['modelName']:<24}{v['modelVersion']:<10}{mark} batch {v['batchSize']:<3}"
                f" delay {v['maxBatchDelay']:<5} workers [{workers}]"
            )
    return "\n".join(lines)

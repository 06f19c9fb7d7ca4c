"""Model versions on a running server: what it has, register (after verifying the archive), set
the default, scale, roll back, unregister; ``model_store/index.json`` keeps what only the store
knows (archives, their hashes, the history of defaults) and the server says the rest."""

from __future__ import annotations

import shutil
from pathlib import Path

from distillserve.archiver import Registry, inspect_archive
from distillserve.archiver.mar import sha256_file
from distillserve.archiver.signing import Trust
from distillserve.errors import DistillServeError, ServerError
from distillserve.handlers.serving_policy import PolicyError, check_batch_size
from distillserve.serving.management import ManagementClient

__all__ = [
    "is_unknown_model",
    "record_startup",
    "register_archive",
    "registered_models",
    "require_version",
    "rollback",
    "server_state",
    "set_default",
    "store_table",
    "unknown_model_error",
    "unregister",
    "versions_table",
]

# {model: {version: {"default": bool, "workers": [status], "batch_size", "max_batch_delay",
#                    "file"}}}: what the server says.
State = dict[str, dict[str, dict]]


def server_state(client: ManagementClient) -> State:
    """Every model and version the server has, its default and its workers."""
    state: State = {}
    for model in client.list_models():
        name = model["modelName"]
        default = client.default_version(name)
        state[name] = {
            v["modelVersion"]: {
                "default": v["modelVersion"] == default,
                "workers": [w.get("status", "?") for w in v.get("workers", [])],
                "batch_size": v.get("batchSize"),
                "max_batch_delay": v.get("maxBatchDelay"),
                "file": v.get("modelUrl"),
            }
            for v in client.describe(name, "all")
        }
    return state


def registered_models(client: ManagementClient) -> str:
    """What the server has, in words: ``a (1.0*, 2.0), b (1.0*)`` (``*`` the default)."""
    try:
        state = server_state(client)
    except DistillServeError as err:
        return f"the server did not list its models ({err})"
    if not state:
        return "it has no models"
    return "it has " + "; ".join(
        f"{name} ({', '.join(v + ('*' if s['default'] else '') for v, s in versions.items())})"
        for name, versions in sorted(state.items())
    )


def unknown_model_error(client: ManagementClient, name: str, version: str | None):
    """The one-line error for a model (or version) the server does not have, with what it has."""
    what = f"model {name!r}" if version is None else f"model {name!r} version {version!r}"
    return DistillServeError(f"the server has no {what}: {registered_models(client)}")


def is_unknown_model(status: int | None, code: str | None, message: str) -> bool:
    """Whether an inference error says the model or version is not registered: REST 404, or
    gRPC's INTERNAL/NOT_FOUND "Model not found" / "does not exist" (TorchServe 0.12 maps an
    unknown model to INTERNAL over gRPC)."""
    words = ("Model not found" in message) or ("does not exist" in message)
    return (status == 404 and words) or (code in ("INTERNAL", "NOT_FOUND") and words)


def require_version(client: ManagementClient, name: str, version: str | None) -> list[str]:
    """The versions the server has of ``name``; a one-line ``DistillServeError`` listing what
    it has when it has no such model, or not ``version``."""
    try:
        described = client.describe(name, "all")
    except ServerError as err:
        if err.status == 404:
            raise unknown_model_error(client, name, None) from None
        raise
    versions = [v["modelVersion"] for v in described]
    if version is not None and version not in versions:
        raise DistillServeError(
            f"the server has no version {version!r} of {name} (it has {', '.join(versions)})"
        )
    return versions


def register_archive(
    client: ManagementClient,
    model_store: Path,
    mar: Path,
    *,
    model_name: str | None = None,
    batch_size: int | None = None,
    max_batch_delay: int | None = None,
    initial_workers: int | None = None,
    make_default: bool = False,
    trust: Trust | None = None,
) -> dict:
    """Verify ``mar`` (every file against its signature under ``trust``, default the keys'
    default locations; the model file against build-info.json), place it in the model store
    (the only place the server loads from), register it, and record it in the index.

    Workers: the archive's model-config.yaml wins over ``initial_workers``; an archive of
    'auto' workers names none, and without ``initial_workers`` the server's default applies
    (``serve start``: one per core of its host). A server with no default starts none: then
    one is started, and ``workers_note`` says so."""
    if batch_size is not None:
        try:
            check_batch_size(batch_size, "--batch-size")
        except PolicyError as err:
            raise ServerError(f"{err.key} {batch_size}: {err}") from None
    info = inspect_archive(mar, trust or Trust.resolve())
    name, version = model_name or info["model_name"], info["version"]
    store = model_store.resolve()
    if mar.resolve().parent != store:
        target = store / f"{name}-{version}.mar"
        if target.exists() and inspect_archive(target)["build_info"] != info["build_info"]:
            raise ServerError(f"{target} exists and holds a different build; remove it first")
        shutil.copy2(mar, target)
        mar = target
    previous = _default_or_none(client, name)
    client.register(
        mar.name,
        model_name=name,
        batch_size=batch_size,
        max_batch_delay=max_batch_delay,
        initial_workers=initial_workers,
    )
    note = _at_least_one_worker(client, name, version) if initial_workers is None else ""
    registry = Registry(store)
    registry.record_archive(name, version, mar.name, info["build_info"], sha256_file(mar))
    registry.record_registered(name, version, mar.name, "register")
    if make_default:
        client.set_default(name, version)
        registry.record_default_change(name, previous, version)
    return {"model_name": name, "version": version, "file": mar.name, "workers_note": note}


def _at_least_one_worker(client: ManagementClient, name: str, version: str) -> str:
    """Start one worker for ``name`` ``version`` when the server started none (a server whose
    config sets no ``default_workers_per_model``, given an archive that names no workers)."""
    (described,) = client.describe(name, version)
    if described.get("workers"):
        return ""
    client.scale(name, version, min_worker=1, max_worker=1)
    return (
        "the server started no worker (its config sets no default_workers_per_model and the "
        "archive names none: 'auto', one per core): started 1; scale it with "
        f"distillserve scale {name} --min N"
    )


def _default_or_none(client: ManagementClient, name: str) -> str | None:
    try:
        return client.default_version(name)
    except ServerError as err:
        if err.status == 404:
            return None
        raise


def set_default(client: ManagementClient, model_store: Path, name: str, version: str) -> None:
    """Make ``version`` the default; the one it replaces joins the index's history."""
    require_version(client, name, version)
    previous = client.default_version(name)
    client.set_default(name, version)
    Registry(model_store).record_default_change(name, previous, version)


def unregister(client: ManagementClient, model_store: Path, name: str, version: str) -> None:
    require_version(client, name, version)
    client.unregister(name, version)
    Registry(model_store).record_unregistered(name, version)


def rollback(client: ManagementClient, model_store: Path, name: str) -> tuple[str, str]:
    """Make the previous default version the default again, then retire the current one.

    The previous default is the most recent earlier default in the index that the server still
    has; without one (a model loaded at start-up never switched), the highest registered version
    below the current one. Returns ``(retired, restored)``.
    """
    registered = require_version(client, name, None)
    current = client.default_version(name)
    others = [v for v in registered if v != current]
    previous = Registry(model_store).previous_default(name, others) or _highest_below(
        others, current
    )
    if previous is None:
        raise DistillServeError(f"{name} has no earlier registered version to roll back to")
    set_default(client, model_store, name, previous)
    unregister(client, model_store, name, current)
    return current, previous


def record_startup(client: ManagementClient, model_store: Path) -> int:
    """Record in the index every version the server loaded at start (from ``load_models``),
    with the archive it came from; returns how many."""
    registry = Registry(model_store)
    count = 0
    for name, versions in server_state(client).items():
        for version, state in versions.items():
            file = state.get("file") or ""
            path = model_store / file
            if file and path.is_file():
                try:
                    info = inspect_archive(path)
                except DistillServeError:
                    continue
                registry.record_archive(name, version, file, info["build_info"], sha256_file(path))
            registry.record_registered(name, version, file, "start-up")
            count += 1
    return count


def _highest_below(versions: list[str], current: str | None) -> str | None:
    from packaging.version import InvalidVersion, Version

    def key(v: str):
        try:
            return (0, Version(v))
        except InvalidVersion:
            return (1, v)

    earlier = [v for v in versions if current is None or key(v) < key(current)]
    return max(earlier, key=key) if earlier else None


def versions_table(state: State) -> str:
    """The server's models and versions, the default marked ``*``, one line each."""
    lines = []
    for name, versions in sorted(state.items()):
        for version, v in sorted(versions.items()):
            lines.append(
                f"{name:<24}{version:<10}{'*' if v['default'] else ' '} batch "
                f"{v['batch_size']!s:<3} delay {v['max_batch_delay']!s:<5} "
                f"workers [{','.join(v['workers'])}]"
            )
    return "\n".join(lines) or "(no models registered)"


def store_table(registry: Registry, state: State | None) -> str:
    """The model store's archives beside what the server says of them (``?`` when it did not
    answer): registered, default, workers, accuracy, size, build time, file."""
    header = (
        f"{'model':<22}{'version':<10}{'default':<9}{'registered':<12}{'workers':<9}"
        f"{'accuracy':>9}{'size KB':>10}  {'built':<26}{'file'}"
    )
    lines = [header, "-" * (len(header) + 10)]
    known = registry.versions()
    for name in sorted(set(known) | set(state or {})):
        for version in sorted(set(known.get(name, {})) | set((state or {}).get(name, {}))):
            entry = known.get(name, {}).get(version, {})
            served = None if state is None else state.get(name, {}).get(version)
            metrics = entry.get("metrics", {})
            accuracy, size = metrics.get("test_accuracy"), metrics.get("size_bytes")
            registered = "?" if state is None else "yes" if served else "no"
            default = "?" if state is None else "*" if served and served["default"] else ""
            workers = "?" if state is None else str(len(served["workers"])) if served else ""
            lines.append(
                f"{name:<22}{version:<10}{default:<9}{registered:<12}{workers:<9}"
                f"{'' if accuracy is None else f'{accuracy:.2%}':>9}"
                f"{'' if size is None else f'{size / 1024:.1f}':>10}  "
                f"{entry.get('built_at') or '':<26}{entry.get('file', '')}"
            )
    return "\n".join(lines)

"""``tune --objective served``: the final candidates (the Pareto front) served through a real
TorchServe on loopback, side by side under the same closed-loop load."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from distillserve.archiver import build_archive
from distillserve.archiver.properties import ServerConfig
from distillserve.archiver.signing import ensure_keys
from distillserve.bench.served import register_timed, served_point, unregister
from distillserve.serving.server import TorchServe
from distillserve.students.artifact import Artifact
from distillserve.students.data import encode_png, load_splits
from distillserve.students.recipe import DataConfig

__all__ = ["served_throughput"]

CONCURRENCY = 16
SECONDS = 4.0


def served_throughput(rows: list[dict], out: Path, log: Callable[[str], None]) -> None:
    """Set ``served_rps`` (and ``served_p50_ms``) on each row from its student's archive."""
    store = (out / "served-store").resolve()
    store.mkdir(parents=True, exist_ok=True)
    ensure_keys()
    archives = {}
    for row in rows:
        name = f"trial-{row['trial']:04d}"
        archives[row["trial"]] = build_archive(
            row["artifact"], store, model_name=name, force=True
        ).path
    recipe = Artifact.read(rows[0]["artifact"]).recipe
    test = load_splits(DataConfig.parse(recipe["data"]), recipe.get("seed", 0)).test
    payloads = [encode_png(test[i][0]) for i in range(min(len(test), 256))]
    config = ServerConfig.with_free_ports(store, enable_model_api=True)
    server = TorchServe(config.write(out / "served.properties"), out / "served-run", store)
    log(f"serving {len(rows)} Pareto candidates at concurrency {CONCURRENCY}, {SECONDS:g} s each")
    with server:
        server.start(timeout=180, models=[])
        for row in rows:
            name = archives[row["trial"]].stem
            register_timed(server, archives[row["trial"]], name, payloads[0], 8, 10)
            point = served_point(server, name, payloads, CONCURRENCY, SECONDS)
            row["served_rps"], row["served_p50_ms"] = point["throughput_rps"], point["p50_ms"]
            unregister(server, name)

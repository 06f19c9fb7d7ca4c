"""The served comparisons of ``distillserve bench``, each side by side on one server:

- ``builtin_rows``: our handler against TorchServe's built-in ``image_classifier`` on the same
  TorchScript file and the same JPEGs (the decode-bound case: a small int8 model, large images).
- ``product_rows``: what a team runs before this toolkit (the built-in handler on its fp32
  ResNet-50) against our handler on the int8 students, same images and load.
- ``multi_image_rows``: KServe v2 requests carrying several images against as many single-image
  requests, in images/s.

Our archives run the workers and threads their ``auto`` chose. The built-in handler never sets
intra-op threads, so each of its workers runs torch's default (every core): it is measured with
one worker and with as many as ours, and judged at its better one at each concurrency.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from distillserve.bench.profile import fixed_serving_archive, profile_worker
from distillserve.bench.served import (
    archive_serving,
    archive_workers,
    builtin_archive,
    register_timed,
    served_point,
    unregister,
)
from distillserve.handlers.serving_policy import AUTO
from distillserve.serving.server import TorchServe

__all__ = [
    "builtin_rows",
    "multi_image_rows",
    "product_rows",
    "profile_rows",
    "v2_images_request",
]

BATCH = (8, 10)  # batch size, max batch delay (ms) of every comparison


def _serve(
    ts: TorchServe,
    archive: Path,
    name: str,
    images: Sequence[bytes],
    concurrencies: Sequence[int],
    seconds: float,
    workers: int,
    route: str = "predictions",
) -> dict[int, dict]:
    """Register ``archive``, load it at each concurrency, unregister: ``{concurrency: point}``."""
    register_timed(ts, archive, name, images[0], *BATCH, workers=workers)
    try:
        return {c: served_point(ts, name, images, c, seconds, route) for c in concurrencies}
    finally:
        unregister(ts, name)


def _builtin_best(
    ts: TorchServe,
    archive: Path,
    name: str,
    images: Sequence[bytes],
    concurrencies: Sequence[int],
    seconds: float,
    workers: int,
    try_one: bool = True,
) -> dict[int, dict]:
    """The built-in handler with ``workers`` and (``try_one``) with one worker: at each
    concurrency the better point, with its worker count and every count's throughput
    (``by_workers``) in it."""
    tried = {
        count: _serve(ts, archive, f"{name}-w{count}", images, concurrencies, seconds, count)
        for count in sorted({1, workers} if try_one else {workers})
    }
    best = {}
    for c in concurrencies:
        count = max(tried, key=lambda n: tried[n][c]["throughput_rps"])
        by_workers = {str(n): tried[n][c]["throughput_rps"] for n in tried}
        best[c] = {**tried[count][c], "workers": count, "by_workers": by_workers}
    return best


def builtin_rows(
    ts: TorchServe,
    store: Path,
    model: str,
    artifact: Path,
    ours: Path,
    image_sets: dict[str, Sequence[bytes]],
    concurrencies: Sequence[int],
    seconds: float,
    log: Callable[[str], None],
    try_one: bool = True,
) -> list[dict]:
    """Ours and the built-in handler on ``artifact``'s model.pt, per image set and concurrency
    (the built-in also with one worker when ``try_one``)."""
    workers = archive_workers(ours)
    builtin = builtin_archive(
        artifact / "model.pt", artifact / "index_to_name.json", f"builtin-{model}", store
    )
    rows = []
    for kind, images in image_sets.items():
        tag = kind.split()[0]
        mine = _serve(ts, ours, f"ours-{tag}", images, concurrencies, seconds, workers)
        theirs = _builtin_best(
            ts, builtin, f"builtin-{tag}", images, concurrencies, seconds, workers, try_one
        )
        for c in concurrencies:
            ratio = round(mine[c]["throughput_rps"] / theirs[c]["throughput_rps"], 2)
            rows.append(
                {
                    "model": model,
                    "images": kind,
                    "concurrency": c,
                    "workers": workers,
                    "ours": mine[c],
                    "builtin": theirs[c],
                    "ratio": ratio,
                }
            )
            log(f"built-in comparison {model} {kind} c{c}: ours / built-in = {ratio}")
    return rows


def product_rows(
    ts: TorchServe,
    store: Path,
    teacher_artifact: Path,
    students: dict[str, Path],
    images: Sequence[bytes],
    kind: str,
    concurrencies: Sequence[int],
    seconds: float,
    log: Callable[[str], None],
    try_one: bool = True,
) -> list[dict]:
    """The built-in handler on the fp32 teacher, then our handler on each student archive:
    requests/s at each concurrency, each student's ratio to the teacher at the same one."""
    workers = max(archive_workers(a) for a in students.values())
    teacher = builtin_archive(
        teacher_artifact / "model.pt",
        teacher_artifact / "index_to_name.json",
        "builtin-teacher",
        store,
    )
    base = _builtin_best(
        ts, teacher, "builtin-teacher", images, concurrencies, seconds, workers, try_one
    )
    rows = [
        {"who": "built-in handler, fp32 ResNet-50", "images": kind, "concurrency": c, **base[c]}
        for c in concurrencies
    ]
    for name, archive in students.items():
        points = _serve(ts, archive, f"ours-{name}", images, concurrencies, seconds, workers)
        for c in concurrencies:
            ratio = round(points[c]["throughput_rps"] / base[c]["throughput_rps"], 2)
            rows.append(
                {
                    "who": f"ours, {name}",
                    "images": kind,
                    "concurrency": c,
                    **points[c],
                    "workers": archive_workers(archive),
                    "vs_builtin_resnet50": ratio,
                }
            )
            log(f"product comparison {name} c{c}: {ratio}x the built-in fp32 ResNet-50")
    return rows


def v2_images_request(images: Sequence[bytes]) -> bytes:
    """A KServe v2 JSON request carrying ``images`` as one BYTES tensor (base64 elements)."""
    data = [base64.b64encode(image).decode("ascii") for image in images]
    tensor = {"name": "images", "datatype": "BYTES", "shape": [len(data)], "data": data}
    return json.dumps({"inputs": [tensor]}).encode()


def multi_image_rows(
    ts: TorchServe,
    models: dict[str, tuple[Path, Sequence[bytes]]],
    per_request: int,
    concurrency: int,
    seconds: float,
    log: Callable[[str], None],
) -> list[dict]:
    """Images/s for single-image requests at ``concurrency``, and for v2 requests of
    ``per_request`` images at ``concurrency / per_request`` (the same images in flight) and at
    ``concurrency``."""
    rows = []
    for name, (archive, images) in models.items():
        workers = archive_workers(archive)
        single = _serve(ts, archive, f"single-{name}", images, [concurrency], seconds, workers)
        groups = [
            v2_images_request([images[(i + k) % len(images)] for k in range(per_request)])
            for i in range(0, len(images), per_request)
        ]
        grouped_at = sorted({max(1, concurrency // per_request), concurrency})
        grouped = _serve(
            ts, archive, f"v2-{name}", groups, grouped_at, seconds, workers, route="v2"
        )
        cases = [(f"{per_request} single-image requests", 1, concurrency, single[concurrency])]
        cases += [
            (f"KServe v2, {per_request} images", per_request, c, grouped[c]) for c in grouped_at
        ]
        for request, count, c, point in cases:
            rows.append(
                {
                    "model": name,
                    "request": request,
                    "images_per_request": count,
                    "concurrency": c,
                    "images_in_flight": c * count,
                    "images_per_s": round(point["throughput_rps"] * count, 2),
                    **point,
                }
            )
        best = max(r["images_per_s"] for r in rows[-len(cases) :] if r["images_per_request"] > 1)
        log(
            f"multi-image {name}: {single[concurrency]['throughput_rps']} images/s single, "
            f"{best} images/s in v2 requests of {per_request}"
        )
    return rows


def profile_rows(
    ts: TorchServe,
    store: Path,
    sources: dict[str, tuple[Path, Path, Sequence[bytes]]],
    cores: int,
    plan,
    work: Path,
    log: Callable[[str], None],
) -> list[dict]:
    """Per model (``{name: (artifact, archive, payloads)}``): its archive as ``auto`` chose,
    and the same model with one worker and every core as intra-op threads (torch's default),
    each loaded at the highest concurrency while py-spy samples its worker."""
    rows = []
    concurrency, seconds = max(plan.concurrencies), plan.seconds * 2
    for name, (artifact, archive, images) in sources.items():
        variants = [(AUTO, archive)]
        if plan.levers:
            fixed = fixed_serving_archive(artifact, store, f"{name}-1x{cores}", 1, cores, work)
            variants.append((f"1 worker × {cores} threads", fixed))
        for label, mar in variants:
            serving = archive_serving(mar)
            register_timed(ts, mar, "profiled", images[0], *BATCH)
            try:
                profile = profile_worker(ts, "profiled", images, concurrency, seconds)
            finally:
                unregister(ts, "profiled")
            point = profile.pop("point", {})
            rows.append({"model": name, "serving": label, **serving, **point, **profile})
            log(f"profile {name} {label}: {point.get('throughput_rps')} rps, {profile}")
    return rows

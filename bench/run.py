"""``distillserve bench`` / ``make bench``: how close the served student gets to the raw model,
and how far ahead of the alternatives, measured side by side in one run on one machine.

Writes ``docs/bench/<date>.json``, ``<date>-served.png``, ``<date>-models.png`` and
``<date>.md`` (the summary that ``--readme`` puts into the README's "Performance" section).
Nothing here asserts anything about time: the figures are written, and the summary says plainly
where one misses its target.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import yaml

from distillserve.archiver import build_archive
from distillserve.archiver.mar import package_versions
from distillserve.archiver.properties import ServerConfig
from distillserve.archiver.signing import ensure_keys
from distillserve.bench import report as bench_report
from distillserve.bench.alternatives import (
    builtin_rows,
    multi_image_rows,
    product_rows,
    profile_rows,
)
from distillserve.bench.distillation import measure_distillation
from distillserve.bench.models import (
    handler_ceiling,
    model_ceiling,
    photo_jpegs,
    served_model_ceiling,
    vision_artifact,
)
from distillserve.bench.plan import Plan
from distillserve.bench.plots import write_plots
from distillserve.bench.report_util import cpu_name
from distillserve.bench.runtimes import (
    add_vision_formats,
    digits_export_seconds,
    measure_runtimes,
)
from distillserve.bench.served import (
    archive_serving,
    floor_archive,
    paired_points,
    register_timed,
    served_point,
    unregister,
    worker_peak_rss_mb,
)
from distillserve.log import progress
from distillserve.serving.rest import InferenceClient, timed_predictions
from distillserve.serving.server import TorchServe
from distillserve.students.data import encode_png, load_splits
from distillserve.students.pipeline import build
from distillserve.students.recipe import Recipe, merge

__all__ = ["Plan", "run_bench"]  # Plan: bench.plan


# served name of each digits model -> its role in the build
DIGITS_ROLES = {
    "digits-int8": "student",
    "digits-fp32": "student-fp32",
    "digits-teacher": "teacher",
}


_log = progress("bench")


def _int8_features() -> list[str]:
    """The CPU flags that decide how much int8 kernels gain (VNNI, AMX) on x86."""
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")),
        [],
    )
    return [flag for flag in wanted if flag in flags]


def run_bench(
    quick: bool = False,
    out: str | Path = "docs/bench",
    recipe_path: str | Path = "recipes/digits.yaml",
    work: str | Path = "build/bench",
    log: Callable[[str], None] = _log,
) -> Path:
    """Run every section, write the JSON, plots and summary; returns the JSON's path."""
    ensure_keys()  # the bench's archives are signed and verified like any others
    plan = Plan.make(quick)
    out, work = Path(out), Path(work).resolve()
    out.mkdir(parents=True, exist_ok=True)
    store = work / "model_store"
    store.mkdir(parents=True, exist_ok=True)
    cores = len(os.sched_getaffinity(0))
    results: dict = {
        "meta": {
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "mode": "quick" if quick else "full",
            "cores": cores,
            "cpu": cpu_name(),
            "cpu_int8_features": _int8_features(),
            "serving": {},  # workers and threads of each archive, as its `auto` chose them
            "versions": package_versions(
                ("torch", "torchvision", "torchserve", "torch-model-archiver", "captum")
            ),
            "plan": {
                "batch_sizes": plan.batch_sizes,
                "concurrencies": plan.concurrencies,
                "batch_settings": plan.batch_settings,
                "seconds_per_point": plan.seconds,
            },
        },
        "pipeline": {},
        "model_ceiling": {},
        "served_model_ceiling": {},  # at each served archive's workers and threads
        "handler_ceiling": {},
        "served": [],
        "floor_paired": [],  # a small student and the floor loaded in turn, three rounds
        "builtin": [],
        "product": [],
        "multi_image": [],
        "profile": [],
        "teacher_vs_students": {},
        "cold_start_s": {},
        "runtimes": [],
        "distillation": [],
    }

    # -- pipeline: the stages of `make demo`, timed (install excluded) -----------------------
    started = time.perf_counter()
    raw = merge(yaml.safe_load(Path(recipe_path).read_text()), plan.recipe_overrides)
    recipe = Recipe.from_dict(raw)
    log(f"pipeline: building {recipe_path} ({'shortened' if quick else 'as shipped'})")
    result = build(recipe, work / "build", log=log, teacher_cache_dir=None)
    pipeline = {f"build: {k}": v for k, v in result.stage_seconds.items()}
    clock = time.perf_counter()
    digits, model_files = {}, {}
    for name, role in DIGITS_ROLES.items():
        digits[name] = build_archive(
            result.artifacts[role], store, model_name=name, force=True
        ).path
        model_files[name] = result.artifacts[role] / "model.pt"
    pipeline["archive"] = round(time.perf_counter() - clock, 2)
    results["meta"]["serving"]["digits-int8"] = archive_serving(digits["digits-int8"])

    splits = load_splits(recipe.data, recipe.seed)
    png = [encode_png(splits.test[i][0]) for i in range(len(splits.test))]
    jpeg224 = photo_jpegs(16, (224, 224))
    large = {f"{w}x{h} JPEG": photo_jpegs(16, (w, h), seed=1) for w, h in plan.builtin_images}
    payloads = {"digits": png, "224": jpeg224}

    # -- ceilings ------------------------------------------------------------------------------
    for name in digits:
        results["model_ceiling"][name] = model_ceiling(
            model_files[name],
            (recipe.data.channels, *recipe.data.image_size),
            plan.batch_sizes,
            cores,
        )
    vision = {}
    for name in plan.vision_models:
        log(f"ceilings: exporting {name} (random weights, 224x224)")
        artifact = vision_artifact(name, work / "artifacts")
        vision[name] = build_archive(artifact, store, force=True).path
        results["meta"]["serving"][name] = archive_serving(vision[name])
        model_files[name] = artifact / "model.pt"
        results["model_ceiling"][name] = model_ceiling(
            artifact / "model.pt", (3, 224, 224), plan.batch_sizes, cores
        )
    log("ceilings: the served models at their archives' workers and threads")
    digits_shape = (recipe.data.channels, *recipe.data.image_size)
    served_models = {"digits-int8": (digits["digits-int8"], digits_shape)}
    served_models |= {name: (vision[name], (3, 224, 224)) for name in plan.matrix_models}
    for name, (archive, shape) in served_models.items():
        results["served_model_ceiling"][name] = served_model_ceiling(
            archive, model_files[name], shape, plan.batch_sizes
        )
    log("ceilings: our handler in process")
    ceiling_work = work / "inprocess"
    results["handler_ceiling"]["digits-int8 (8x8 PNG)"] = handler_ceiling(
        digits["digits-int8"], png, plan.batch_sizes, ceiling_work / "digits"
    )
    for name in plan.matrix_models:
        results["handler_ceiling"][f"{name} (224x224 JPEG)"] = handler_ceiling(
            vision[name], jpeg224, plan.batch_sizes, ceiling_work / f"{name}-224"
        )
    for kind, images in large.items():
        results["handler_ceiling"][f"{plan.builtin_model} ({kind})"] = handler_ceiling(
            vision[plan.builtin_model], images, plan.batch_sizes, ceiling_work / kind.split()[0]
        )

    # -- served --------------------------------------------------------------------------------
    config = ServerConfig.with_free_ports(store, enable_model_api=True)
    ts = TorchServe(config.write(work / "config.properties"), work / "serve", store)
    clock = time.perf_counter()
    ts.start(timeout=180, models=[])
    pipeline["server start"] = round(time.perf_counter() - clock, 2)
    try:
        # cold start and the demo's query stage on the digits student
        clock = time.perf_counter()
        results["cold_start_s"]["digits-int8"] = round(
            register_timed(ts, digits["digits-int8"], "digits-int8", png[0], 8, 20), 2
        )
        pipeline["register"] = round(time.perf_counter() - clock, 2)
        client = InferenceClient(ts.inference_url, ts.keys().get("inference"), pool_size=16)
        clock = time.perf_counter()
        timed_predictions(client, "digits-int8", png, 16)
        pipeline["query test set"] = round(time.perf_counter() - clock, 2)
        pipeline["total"] = round(time.perf_counter() - started, 2)
        results["pipeline"] = pipeline
        unregister(ts, "digits-int8")

        log("served: efficiency matrix, TorchServe's floor (a no-op handler) at every point")
        floor = floor_archive(store)
        matrix = [
            ("digits-int8", digits["digits-int8"], "digits"),
            (bench_report.FLOOR_OF["digits-int8"], floor, "digits"),
            *((name, vision[name], "224") for name in plan.matrix_models),
            (bench_report.FLOOR_OF["resnet18-int8"], floor, "224"),
        ]
        for label, archive, kind in matrix:
            for batch_size, delay in plan.batch_settings:
                name = f"{label}-b{batch_size}-d{delay}"
                register_timed(ts, archive, name, payloads[kind][0], batch_size, delay)
                for concurrency in plan.concurrencies:
                    point = served_point(ts, name, payloads[kind], concurrency, plan.seconds)
                    point.update(model=label, batch_size=batch_size, max_batch_delay=delay)
                    results["served"].append(point)
                    log(
                        f"served {name} c{concurrency}: {point['throughput_rps']} rps, "
                        f"mean batch {point['mean_batch']}"
                    )
                unregister(ts, name)

        log("served: each small student and the floor in turn, three rounds (the floor target)")
        for label in ("digits-int8", "mobilenetv3-int8"):
            if label != "digits-int8" and label not in plan.matrix_models:
                continue
            archive, kind = (
                (digits[label], "digits") if label == "digits-int8" else (vision[label], "224")
            )
            for name, mar in (("paired-ours", archive), ("paired-floor", floor)):
                register_timed(ts, mar, name, payloads[kind][0], 8, 10)
            for concurrency in [c for c in sorted(plan.concurrencies)[-2:] if c >= 8]:
                pair = paired_points(
                    ts, ("paired-ours", "paired-floor"), payloads[kind], concurrency, plan.seconds
                )
                results["floor_paired"].append(
                    {"model": label, "concurrency": concurrency, "batch": "8 / 10 ms", **pair}
                )
                log(f"paired {label} c{concurrency}: {pair['ratio']} of the floor {pair['rounds']}")
            for name in ("paired-ours", "paired-floor"):
                unregister(ts, name)

        log("served: worker profiles, auto workers/threads against 1 worker with every core")
        sources = {"digits-int8": (result.artifacts["student"], digits["digits-int8"], png)}
        for name in plan.profile_models:
            if name in vision:
                sources[name] = (work / "artifacts" / name, vision[name], payloads["224"])
        results["profile"] = profile_rows(
            ts,
            store,
            {n: sources[n] for n in plan.profile_models},
            cores,
            plan,
            work / "levers",
            log,
        )

        log("served: ours against the built-in image_classifier, the product, multi-image")
        artifacts = work / "artifacts"
        results["builtin"] = builtin_rows(
            ts,
            store,
            plan.builtin_model,
            artifacts / plan.builtin_model,
            vision[plan.builtin_model],
            large,
            plan.compare_concurrencies,
            plan.seconds * 2,
            log,
            try_one=plan.levers,
        )
        kind = next(iter(large))
        results["product"] = product_rows(
            ts,
            store,
            artifacts / "resnet50-fp32",
            {name: vision[name] for name in plan.product_students},
            large[kind],
            kind,
            plan.compare_concurrencies,
            plan.seconds * 2,
            log,
            try_one=plan.levers,
        )
        multi = {
            **{n: (a, payloads["224"]) for n, a in vision.items()},
            "digits-int8": (digits["digits-int8"], png),
        }
        results["multi_image"] = multi_image_rows(
            ts,
            {name: multi[name] for name in plan.multi_image_models},
            8,
            max(plan.concurrencies),
            plan.seconds,
            log,
        )

        log("served: teacher against students")
        models = {
            **{n: (a, payloads["224"]) for n, a in vision.items()},
            **{n: (a, png) for n, a in digits.items()},
        }
        for name, (archive, images) in models.items():
            cold = register_timed(ts, archive, name, images[0], 8, 10)
            results["cold_start_s"].setdefault(name, round(cold, 2))
            one = served_point(ts, name, images, 1, plan.seconds)
            loaded = served_point(ts, name, images, 16, plan.seconds * 1.5)
            ceiling = results["model_ceiling"][name]
            results["teacher_vs_students"][name] = {
                "model_ms_batch1": ceiling["1"]["ms_per_batch"],
                "model_ms_batch8": ceiling["8"]["ms_per_batch"],
                "model_images_per_s_batch8": ceiling["8"]["images_per_s"],
                "served_p50_ms_c1": one["p50_ms"],
                "served_throughput_rps_c16": loaded["throughput_rps"],
                "served_p99_ms_c16": loaded["p99_ms"],
                "served_mean_batch_c16": loaded["mean_batch"],
                "model_pt_bytes": model_files[name].stat().st_size,
                "mar_bytes": archive.stat().st_size,
                "worker_peak_rss_mb": worker_peak_rss_mb(ts, name),
            }
            unregister(ts, name)
            log(f"{name}: {loaded['throughput_rps']} rps at c16")

        log("runtimes: every export format")
        entries = {
            "digits-int8": (
                result.artifacts["student"],
                (recipe.data.channels, *recipe.data.image_size),
                png,
                digits_export_seconds(result.artifacts["student"]),
            )
        }
        for name in plan.runtime_models:
            if name in vision:
                directory = work / "artifacts" / name
                entries[name] = (
                    directory,
                    (3, 224, 224),
                    jpeg224,
                    add_vision_formats(name, directory),
                )
        results["runtimes"] = measure_runtimes(
            ts, store, entries, cores=cores, concurrency=16, seconds=plan.seconds, log=log
        )
    finally:
        ts.stop()

    log("distillation: 1 and 2 processes, the teacher's outputs cached and recomputed")
    results["distillation"] = measure_distillation(
        result.artifacts["teacher"] / "model.pt",
        recipe_path,
        digits_epochs=plan.distill_epochs,
        resnet_images=plan.resnet_images,
        log=log,
    )

    bench_report.add_derived(results)
    stamp = "quick" if quick else datetime.now(UTC).strftime("%Y-%m-%d")
    path = out / f"{stamp}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    write_plots(results, out / f"{stamp}-served.png", out / f"{stamp}-models.png")
    (out / f"{stamp}.md").write_text(bench_report.summary(results, stamp))
    log(f"wrote {path}, its plots and {out / f'{stamp}.md'}")
    return path

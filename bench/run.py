"""``distillserve bench`` / ``make bench``: how close the served student gets to the raw model,
and how far ahead of the alternatives, measured side by side in one run on one machine.

Writes ``bench/results/<date>.json``, ``<date>-served.png``, ``<date>-models.png`` and
``<date>.md`` (the summary that ``--readme`` puts into the README's "Performance" section).
Nothing here asserts anything about time: the figures are written, and the summary says plainly
where one misses its target.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import yaml

from distillserve.archiver import build_archive
from distillserve.archiver.mar import package_versions
from distillserve.archiver.properties import ServerConfig
from distillserve.bench import report as bench_report
from distillserve.bench.distillation import measure_distillation
from distillserve.bench.models import (
    VISION_MODELS,
    handler_ceiling,
    model_ceiling,
    photo_jpegs,
    vision_artifact,
)
from distillserve.bench.plots import write_plots
from distillserve.bench.runtimes import (
    add_vision_formats,
    digits_export_seconds,
    measure_runtimes,
)
from distillserve.bench.served import (
    builtin_archive,
    floor_archive,
    register_timed,
    served_point,
    unregister,
    worker_peak_rss_mb,
)
from distillserve.serving.rest import InferenceClient, timed_predictions
from distillserve.serving.server import TorchServe
from distillserve.students.data import encode_png, load_splits
from distillserve.students.pipeline import build
from distillserve.students.recipe import Recipe, merge

__all__ = ["Plan", "run_bench"]


@dataclass(frozen=True)
class Plan:
    """How much to measure: ``quick`` fits a CI smoke run, ``full`` the published figures."""

    batch_sizes: tuple[int, ...]
    concurrencies: tuple[int, ...]
    batch_settings: tuple[tuple[int, int], ...]  # (batch_size, max_batch_delay ms)
    seconds: float  # per served point
    vision_models: tuple[str, ...]
    recipe_overrides: dict
    distill_epochs: int  # digits distillation epochs in the distillation section
    resnet_images: int  # random 64x64 images ResNet-50 -> ResNet-18 distils in it (0: skip)
    runtime_models: tuple[str, ...]  # the 224x224 models of the runtimes section
    matrix_models: tuple[str, ...]  # the 224x224 models of the served matrix (digits always)

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls(
                batch_sizes=(1, 8),
                concurrencies=(1, 8),
                batch_settings=((1, 1), (8, 10)),
                seconds=2.0,
                vision_models=("resnet50-fp32", "resnet18-int8"),
                recipe_overrides={
                    "teacher": {"members": 1, "epochs": 2, "kwargs": {"widths": [8, 16, 32]}},
                    "distill": {"epochs": 4},
                    "export": {"min_int8_agreement": 0.9},
                },
                distill_epochs=1,
                resnet_images=0,
                runtime_models=(),
                matrix_models=("resnet18-int8",),
            )
        return cls(
            batch_sizes=(1, 4, 8, 16),
            concurrencies=(1, 8, 16, 32),
            batch_settings=((1, 1), (8, 2), (8, 10), (8, 50)),
            seconds=4.0,
            vision_models=tuple(VISION_MODELS),
            recipe_overrides={},
            distill_epochs=60,
            resnet_images=512,
            runtime_models=("resnet18-fp32", "resnet18-int8"),
            matrix_models=("resnet18-int8", "mobilenetv3-int8"),
        )


# served name of each digits model -> its role in the build
DIGITS_ROLES = {
    "digits-int8": "student",
    "digits-fp32": "student-fp32",
    "digits-teacher": "teacher",
}


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
    out: str | Path = "bench/results",
    recipe_path: str | Path = "recipes/digits.yaml",
    work: str | Path = "build/bench",
    log: Callable[[str], None] = _log,
) -> Path:
    """Run every section, write the JSON, plots and summary; returns the JSON's path."""
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
            "cpu": _cpu_name(),
            "cpu_int8_features": _int8_features(),
            "worker_threads": cores,
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
        "handler_ceiling": {},
        "served": [],
        "builtin": {},
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
        digits[name] = build_archive(result.artifacts[role], store, model_name=name).path
        model_files[name] = result.artifacts[role] / "model.pt"
    pipeline["archive"] = round(time.perf_counter() - clock, 2)

    splits = load_splits(recipe.data, recipe.seed)
    png = [encode_png(splits.test[i][0]) for i in range(len(splits.test))]
    jpeg224 = photo_jpegs(16, (224, 224))
    jpeg640 = photo_jpegs(16, (640, 480), seed=1)
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
        vision[name] = build_archive(artifact, store).path
        model_files[name] = artifact / "model.pt"
        results["model_ceiling"][name] = model_ceiling(
            artifact / "model.pt", (3, 224, 224), plan.batch_sizes, cores
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
    results["handler_ceiling"]["resnet18-int8 (640x480 JPEG)"] = handler_ceiling(
        vision["resnet18-int8"], jpeg640, plan.batch_sizes, ceiling_work / "r18-640"
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

        log("served: ours against the built-in image_classifier handler")
        artifact = work / "artifacts" / "resnet18-int8"
        builtin = builtin_archive(
            artifact / "model.pt", artifact / "index_to_name.json", "builtin-r18-int8", store
        )
        concurrency = max(plan.concurrencies)
        for kind, images in (("640x480 JPEG", jpeg640), ("224x224 JPEG", jpeg224)):
            pair = {}
            for who, archive in (("ours", vision["resnet18-int8"]), ("builtin", builtin)):
                name = f"{who}-{kind[:3]}"
                register_timed(ts, archive, name, images[0], 8, 10)
                pair[who] = served_point(ts, name, images, concurrency, plan.seconds * 2)
                unregister(ts, name)
            pair["ratio"] = round(
                pair["ours"]["throughput_rps"] / pair["builtin"]["throughput_rps"], 2
            )
            results["builtin"][kind] = pair
            log(f"{kind}: ours / built-in = {pair['ratio']}")

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

"""``distillserve bench --engines``: build what the engines section serves, start the engines on
it (TorchServe; Triton as ``serve --engine triton`` runs these ONNX students, its model
processes where torch cannot be imported; and Triton ``--with-torch``), measure
(``bench.engines``) and summarise against the targets. Beside each archive as it is (its
``auto`` workers: one per core), TorchServe and Triton serve it with one model process too
(``-1w``), measured in the same rounds: what the serving policy's worker rule rests on."""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from distillserve.archiver import build_archive
from distillserve.archiver.properties import ServerConfig
from distillserve.archiver.signing import Trust, ensure_keys
from distillserve.archiver.triton import export_triton, model_config
from distillserve.bench.engines import (
    TRITON_FLOOR,
    engines_section,
    floor_of,
    is_floor,
    model_stubs,
    process_memory,
    write_triton_floor,
)
from distillserve.bench.models import handler_ceiling, photo_jpegs, vision_artifact
from distillserve.bench.report_util import cpu_name
from distillserve.bench.served import floor_archive, register_timed, unregister
from distillserve.serving.load import v2_image_bodies, worker_pids
from distillserve.serving.server import TorchServe
from distillserve.serving.triton_engine import TritonAddresses, TritonEngine
from distillserve.students.data import encode_png, load_splits
from distillserve.students.export_onnx import export_onnx, quantize_onnx
from distillserve.students.pipeline import build
from distillserve.students.recipe import Recipe
from distillserve.students.zoo import build_model

__all__ = ["engines_summary", "run_engines_bench"]

MOBILENET = "mobilenetv3-int8"
ONE_WORKER = "-1w"  # the suffix of an engine (and a TorchServe model name) with one model process


def _digits_onnx(
    recipe_path: Path, work: Path, store: Path, log, quick: bool
) -> tuple[Path, list[bytes]]:
    raw = yaml.safe_load(recipe_path.read_text())
    raw["export"] = {**raw.get("export", {}), "formats": ["onnx"], "teacher_formats": ["onnx"]}
    if quick:  # a smoke run: speed does not depend on how well the student learned
        raw["distill"] = {**raw.get("distill", {}), "epochs": 3}
    recipe = Recipe.from_dict(raw)
    log(f"engines: building {recipe_path} (ONNX only)")
    result = build(recipe, work / "build", log=log, teacher_cache_dir=Path("build/teacher-cache"))
    archive = build_archive(
        result.artifacts["student"], store, model_format="onnx", model_name="digits-int8-onnx",
        force=True,
    ).path  # fmt: skip
    test = load_splits(recipe.data, recipe.seed).test
    return archive, [encode_png(test[i][0]) for i in range(len(test))]


def _mobilenet_onnx(work: Path, store: Path, log) -> Path:
    """MobileNetV3-Large with random weights, static int8 through ONNX Runtime."""
    directory = vision_artifact(MOBILENET, work / "artifacts")
    if not (directory / "model.onnx").is_file():
        log("engines: MobileNetV3-Large to int8 ONNX (random weights)")
        torch.manual_seed(0)
        model = build_model("mobilenet_v3_large", 1000, 3).eval()
        fp32 = directory / "fp32.onnx"
        export_onnx(model, torch.rand(2, 3, 224, 224), fp32)
        calibration = [(torch.rand(4, 3, 224, 224), None) for _ in range(2)]
        quantize_onnx(fp32, directory / "model.onnx", calibration, "static")
        fp32.unlink()
    return build_archive(
        directory, store, model_format="onnx", model_name=f"{MOBILENET}-onnx", force=True
    ).path


def _settings(archive: Path) -> dict:
    import zipfile

    with zipfile.ZipFile(archive) as mar:
        return yaml.safe_load(mar.read("model-config.yaml"))


def run_engines_bench(
    work: Path,
    recipe_path: Path = Path("recipes/digits.yaml"),
    seconds: float = 5.0,
    rounds: int = 3,
    concurrencies: tuple[int, ...] = (16, 32),
    log: Callable[[str], None] = print,
    quick: bool = False,
) -> dict:
    ensure_keys()
    work = work.resolve()
    store = work / "model_store"
    store.mkdir(parents=True, exist_ok=True)
    digits, pngs = _digits_onnx(recipe_path, work, store, log, quick)
    mobilenet = _mobilenet_onnx(work, store, log)
    jpegs = photo_jpegs(16, (224, 224))
    archives = {"digits": (digits, pngs), "mobilenet": (mobilenet, jpegs)}
    ceilings = _Ceilings(archives, work, log)
    digits_settings = _settings(digits)
    batch, delay = int(digits_settings["batchSize"]), int(digits_settings["maxBatchDelay"])

    config = ServerConfig.with_free_ports(store, enable_model_api=True)
    torchserve = TorchServe(config.write(work / "config.properties"), work / "serve", store)
    trust = Trust.resolve()
    repository = work / "triton"
    export_triton([digits, mobilenet], repository, trust, force=True)
    write_triton_floor(repository, batch, delay)
    # every model ONNX: the engine runs them where torch cannot be imported, as its default
    triton = TritonEngine(repository, work / "triton-run", TritonAddresses.free(), trust)
    # the same repository with torch importable (serve --engine triton --with-torch)
    with_torch = TritonEngine(repository, work / "triton-torch-run", TritonAddresses.free(),
                              trust, without_torch=False)  # fmt: skip
    one_each = _one_instance_repository([digits, mobilenet], work / "triton-1w", trust)
    triton_one = TritonEngine(one_each, work / "triton-1w-run", TritonAddresses.free(), trust)
    bodies = {"digits": v2_image_bodies(pngs), "mobilenet": v2_image_bodies(jpegs)}
    # each engine's no-op floor on each model's own requests (the frontend's cost grows with
    # the body: a 224x224 JPEG is about 20 kB of base64, a digit 0.4 kB)
    bodies |= {floor_of(model): bodies[model] for model in list(bodies)}
    with torchserve, triton, with_torch, triton_one:
        torchserve.start(models=[])
        for archive, payloads in archives.values():
            s = _settings(archive)
            for name in (archive.stem, archive.stem + ONE_WORKER):
                register_timed(torchserve, archive, name, payloads[0],
                               int(s["batchSize"]), int(s["maxBatchDelay"]))  # fmt: skip
            torchserve.management_client().scale(
                archive.stem + ONE_WORKER, min_worker=1, max_worker=1
            )
        register_timed(torchserve, floor_archive(store), "floor", pngs[0], batch, delay)
        models = {key: archive.stem for key, (archive, _) in archives.items()}
        engines = {
            "torchserve": {
                "url": torchserve.inference_url,
                "pid": torchserve.pid(),
                "token": torchserve.keys().get("inference"),
                "names": {**models, **dict.fromkeys(map(floor_of, archives), "floor")},
            },
            **{
                name: {
                    "url": engine.addresses.http_url,
                    "pid": engine.pid(),
                    "names": {**models, **dict.fromkeys(map(floor_of, archives), TRITON_FLOOR)},
                }
                for name, engine in (("triton", triton), (WITH_TORCH, with_torch))
            },
        }
        engines["torchserve" + ONE_WORKER] = {
            **engines["torchserve"],
            "names": {key: name + ONE_WORKER for key, name in models.items()},
        }
        engines["triton" + ONE_WORKER] = {
            "url": triton_one.addresses.http_url, "pid": triton_one.pid(), "names": models,
        }  # fmt: skip
        headers = torchserve.headers("management")
        for name, engine in engines.items():
            engine["model_pids"] = {
                key: worker_pids(torchserve.management_url, served, headers)
                if name.startswith("torchserve")
                else model_stubs(engine["pid"], served)
                for key, served in engine["names"].items()
            }
        rows = engines_section(engines, bodies, concurrencies, seconds, rounds, log,
                               before_round=ceilings.measure)  # fmt: skip
        for name in engines["torchserve" + ONE_WORKER]["names"].values():
            unregister(torchserve, name)  # TorchServe's memory with the archives as they are
        memory = {
            name: process_memory(e["pid"]) for name, e in engines.items()
            if name != "torchserve" + ONE_WORKER
        }  # fmt: skip
    limits = ceilings.medians()
    return {
        "cpu": cpu_name(),
        "cores": len(os.sched_getaffinity(0)),
        "seconds_per_point": seconds,
        "rounds": rounds,
        "batch_size": batch,
        "max_batch_delay_ms": delay,
        "handler_ceiling_rps": limits,
        "handler_ceiling_rounds": ceilings.rounds,
        "handler_ceiling_workers": ceilings.workers,
        "rows": rows,
        "memory": memory,
        "targets": _targets(rows, limits, len(os.sched_getaffinity(0))),
    }


class _Ceilings:
    """The handler's in-process ceiling of each model (req/s at its archive's batch size, one
    worker's rate times the archive's workers), measured on the engines' own requests (v2 JSON
    in and out, as the handler serves them) at the start of every round, with every engine up
    and idle, as the served points are. Taken once before the rounds (runs before 2026-12-05) it
    wandered: against MobileNetV3's served model processes' CPU per request, which it bounds, it
    was 5 % to 12 % cheaper in one run and 3 % to 7 % dearer in the next; one per round, the
    first run gave 415 to 419 req/s, 0 % to 5 % under the served processes' cost."""

    def __init__(
        self, archives: dict[str, tuple[Path, list[bytes]]], work: Path, log: Callable[[str], None]
    ) -> None:
        self.archives, self.work, self.log = archives, work, log
        self.rounds: dict[str, list[float]] = {key: [] for key in archives}
        self.workers: dict[str, int] = {}

    def measure(self, round_index: int) -> None:
        """Every model's ceiling once more (``engines_section``'s ``before_round``)."""
        for key, (archive, payloads) in self.archives.items():
            batch = int(_settings(archive).get("batchSize", 1))
            measured = handler_ceiling(
                archive, v2_image_bodies(payloads), [batch], self.work / f"ceiling-{key}"
            )[str(batch)]
            self.rounds[key].append(measured["images_per_s"])
            self.workers[key] = measured["workers"]  # the ceiling counts each
            self.log(
                f"engines: round {round_index + 1} {key} handler ceiling in process "
                f"{measured['images_per_s']:,.0f} req/s ({measured['workers']} workers)"
            )

    def medians(self) -> dict[str, float]:
        """Each model's ceiling: the median of its rounds' measurements."""
        return {key: round(statistics.median(v), 2) for key, v in self.rounds.items() if v}


# Triton with torch importable in its model processes (``--with-torch``)
WITH_TORCH = "triton-with-torch"


def _one_instance_repository(archives: list[Path], out: Path, trust: Trust) -> Path:
    """A Triton repository of ``archives`` with one model instance (process) each."""
    for model in export_triton(archives, out, trust, force=True):
        (model.path / "config.pbtxt").write_text(model_config(model.path / "1", model.name, 1))
    return out


def _targets(rows: list[dict], ceilings: dict[str, float], cores: int = 0) -> dict:
    """Per point: served ÷ min(the engine's floor, the handler ceiling), the issue's limit, and
    served ÷ the shared-cores limit 1 / (1/floor + 1/ceiling), what the two allow when the
    engine's work and the handler's come out of the same cores one after the other (each
    limit is measured with the cores to itself; here a request needs both). Then Triton's
    CPU-ms per request over TorchServe's for the digits student, each engine's req/s with the
    archive's workers over its ``ONE_WORKER`` variant's (which has no limit of its own), and
    (with ``cores``) how busy the cores were at each point: served × (server + load-generator
    CPU per request) ÷ cores (near 1: the machine had nothing left)."""
    by = {(r["model"], r["concurrency"], r["engine"]): r for r in rows}
    limit, shared, workers = {}, {}, {}
    for (model, concurrency, engine), row in by.items():
        if is_floor(model):
            continue
        if engine.endswith(ONE_WORKER):  # a variant: against the engine with the archive's own
            base = by.get((model, concurrency, engine.removesuffix(ONE_WORKER)))
            if base and row["rps"]:
                name = f"{engine.removesuffix(ONE_WORKER)} {model} c{concurrency}"
                workers[name] = round(base["rps"] / row["rps"], 3)
            continue
        floor = by[(floor_of(model), concurrency, engine)]["rps"]
        ceiling = ceilings[model]
        name = f"{engine} {model} c{concurrency}"
        bound = min(floor, ceiling)
        limit[name] = round(row["rps"] / bound, 3) if bound else 0.0
        both = 1 / (1 / floor + 1 / ceiling) if floor and ceiling else 0.0
        shared[name] = round(row["rps"] / both, 3) if both else 0.0

    def cpu_ratio(engine: str) -> dict:
        return {
            c: round(by[("digits", c, engine)]["cpu_ms_per_request"]
                     / by[("digits", c, "torchserve")]["cpu_ms_per_request"], 3)
            for (m, c, e) in by if m == "digits" and e == engine
        }  # fmt: skip

    targets = {
        "served_over_limit": limit,
        "served_over_shared_limit": shared,
        "triton_cpu_over_torchserve_digits": cpu_ratio("triton"),
    }
    if workers:
        targets["archive_workers_over_one"] = workers
    busy = {
        f"{engine} {model} c{concurrency}": round(
            row["rps"] * (row["cpu_ms_per_request"] + row["client_cpu_ms_per_request"])
            / (1000 * cores), 3)
        for (model, concurrency, engine), row in by.items()
        if cores and not is_floor(model) and "client_cpu_ms_per_request" in row
    }  # fmt: skip
    if busy:
        targets["cores_busy"] = busy
    if any(e == WITH_TORCH for (_, _, e) in by):
        targets["with_torch_cpu_over_torchserve_digits"] = cpu_ratio(WITH_TORCH)
    return targets


def engines_summary(results: dict) -> str:
    """The engines table and the targets, as Markdown."""
    lines = [
        f"Engines: {results['cpu']} ({results['cores']} cores), batch {results['batch_size']}, "
        f"delay {results['max_batch_delay_ms']} ms, {results['rounds']} rounds of "
        f"{results['seconds_per_point']:.0f} s per point (medians), KServe v2 JSON bodies. "
        "triton: as `serve --engine triton` runs these ONNX students (its model processes "
        f"without torch); {WITH_TORCH}: `--with-torch`.",
        "",
        "| engine | model | model processes | clients | req/s | p50 / p99 ms | CPU-ms per request "
        "| errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in sorted(results["rows"], key=lambda r: (r["model"], r["concurrency"], r["engine"])):
        lines.append(
            f"| {r['engine']} | {r['model']} | {r.get('model_processes', '')} | "
            f"{r['concurrency']} | {r['rps']:,.0f} | "
            f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f} | {r['cpu_ms_per_request']:.2f} | "
            f"{r['errors']} |"
        )
    lines += ["", "| engine | RSS MiB | USS MiB (all processes, every model loaded) |",
              "| --- | ---: | ---: |"]  # fmt: skip
    for engine, memory in results["memory"].items():
        lines.append(f"| {engine} | {memory['rss_mib']:,.0f} | {memory['uss_mib']:,.0f} |")
    # measured at each round's start (runs before 2026-12-05: once, before them)
    rounds = results.get("handler_ceiling_rounds") or {}
    ceilings = ", ".join(
        f"{k} {v:,.0f}"
        + (f" ({' / '.join(f'{x:,.0f}' for x in rounds[k])})" if rounds.get(k) else "")
        for k, v in results["handler_ceiling_rps"].items()
    )
    lines += ["", "Handler ceiling in process (req/s at the archive's batch, one worker's rate "
              "times the archive's workers"
              + ("; the median of its measurements at each round's start, in brackets"
                 if rounds else "") + f"): {ceilings}."]  # fmt: skip
    for key, title in (
        ("served_over_limit", "Served / min(floor, ceiling), target >= 0.9"),
        ("served_over_shared_limit", "Served / the shared-cores limit 1 / (1/floor + 1/ceiling) "
         "(on the same cores a request needs the engine's work and the handler's)"),
        ("archive_workers_over_one", "The archive's workers (auto: one per core) against one "
         "model process (-1w), req/s ratio in the same rounds"),
        ("cores_busy", "Cores busy at each point, served x (server + load-generator CPU-ms per "
         "request) / cores (near 1: the machine had nothing left to give)"),
    ):  # fmt: skip
        per_point = results["targets"].get(key)
        if per_point:
            lines.append(f"{title}: " + ", ".join(f"{k} {v:.2f}" for k, v in per_point.items()))
    lines += _model_process_lines(results)
    for key, who in (("triton_cpu_over_torchserve_digits", "Triton's"),
                     ("with_torch_cpu_over_torchserve_digits", f"{WITH_TORCH}'s")):  # fmt: skip
        cpu = results["targets"].get(key)
        if cpu:
            lines.append(
                f"{who} CPU-ms per request / TorchServe's, digits, target <= 0.7: "
                + ", ".join(f"c{c} {v:.2f}" for c, v in cpu.items())
            )
    return "\n".join(lines) + "\n"


def _model_process_lines(results: dict) -> list[str]:
    """Each point's model processes (TorchServe's workers, Triton's stubs): their CPU-ms per
    request beside one in-process handler's, and each one's CPU seconds per second."""
    rows = [r for r in results["rows"] if "model_busy" in r and not is_floor(r["model"])]
    if not rows:
        return []
    workers = results.get("handler_ceiling_workers", {})
    in_process = ", ".join(
        f"{model} {1000 * workers.get(model, 1) / rps:.3f}"
        for model, rps in results["handler_ceiling_rps"].items()
        if rps
    )
    points = ", ".join(
        f"{r['engine']} {r['model']} c{r['concurrency']} {r['model_cpu_ms_per_request']:.3f} ms "
        f"busy {r['model_busy']:.2f}"
        for r in sorted(rows, key=lambda r: (r["model"], r["concurrency"], r["engine"]))
    )
    return [
        "Model processes at each point (TorchServe's workers, Triton's Python-backend stubs; "
        "how many: the table): their CPU-ms per request together, and each one's CPU seconds "
        "per second (1.0: it never waited; above 1: threads; the handler in process at its "
        f"ceiling, one worker's ms per request: {in_process}): " + points
    ]

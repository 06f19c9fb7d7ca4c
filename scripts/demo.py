"""``make demo``: for each demo recipe (the digits images, then the movie-review texts) build the
teacher and student, archive them (the students once per export format: TorchScript,
AOTInductor .pt2, ONNX), serve them, query them over REST with the whole test split, and report
size, speed and accuracy in process and served."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from distillserve.archiver import build_archive
from distillserve.archiver.signing import ensure_keys
from distillserve.handlers.runtimes import MODEL_FILES
from distillserve.log import progress
from distillserve.serving.rest import InferenceClient, timed_predictions
from distillserve.serving.server import TorchServe
from distillserve.serving.versions import record_startup
from distillserve.students.artifact import Artifact
from distillserve.students.data import encode_png, load_splits, make_loader, preprocess_spec
from distillserve.students.distill import predict
from distillserve.students.exported import load_exported
from distillserve.students.pipeline import build
from distillserve.students.recipe import load_recipe

__all__ = ["format_table", "run_demo"]

# (role, format, title): what is archived, served and reported, when the recipe exports it.
ENTRIES = (
    ("teacher", "torchscript", "teacher fp32"),
    ("student-fp32", "torchscript", "student fp32"),
    ("student", "torchscript", "student int8"),
    ("student", "pt2", "int8 .pt2"),
    ("student", "onnx", "int8 .onnx"),
)
# A text model: the fp32 and the int8 student in each format.
TEXT_ENTRIES = (
    ("teacher", "torchscript", "teacher fp32"),
    ("student-fp32", "torchscript", "student fp32"),
    ("student-fp32", "pt2", "fp32 .pt2"),
    ("student-fp32", "onnx", "fp32 .onnx"),
    ("student", "torchscript", "student int8"),
    ("student", "pt2", "int8 .pt2"),
    ("student", "onnx", "int8 .onnx"),
)
DEMO_RECIPES = ("recipes/digits.yaml", "recipes/reviews.yaml")


_log = progress("demo")


def format_table(rows: list[dict]) -> str:
    """The report as a fixed-width text table."""
    header = (
        f"{'model':<14}{'params':>10}{'file KB':>10}{'b1 ms':>9}"
        f"{'acc (proc)':>12}{'acc (served)':>14}{'agree':>8}{'decisive':>10}"
        f"{'served p50 ms':>15}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        served = "n/a" if r["accuracy_served"] is None else f"{r['accuracy_served']:.2%}"
        agree = "n/a" if r["agreement"] is None else f"{r['agreement']:.2%}"
        clear = f"{r['decisive_agreement']:.2%}" if r.get("decisive_agreement") is not None else ""
        p50 = "n/a" if r["served_p50_ms"] is None else f"{r['served_p50_ms']:.1f}"
        lines.append(
            f"{r['model']:<14}{r['params']:>10,}{r['size_bytes'] / 1024:>10.1f}"
            f"{r['latency_ms_batch1']:>9.3f}{r['accuracy_in_process']:>12.2%}{served:>14}"
            f"{agree:>8}{clear:>10}{p50:>15}"
        )
    return "\n".join(lines)


def _decisive(logits: torch.Tensor, quantized: bool) -> list[bool]:
    """Which inputs' top-1 leads its runner-up by more than int8 resolution (2.5 steps of an
    8-bit grid over the logits' range, as the build's parity check judges): dynamic int8
    computes activation scales per batch, so a closer call may fall either way in another
    batch. Every input counts for an fp32 model."""
    if not quantized or logits.shape[1] < 2:
        return [True] * len(logits)
    margin = 2.5 * float(logits.max() - logits.min()) / 255.0
    top2 = logits.topk(2, dim=1).values
    return ((top2[:, 0] - top2[:, 1]) > margin).tolist()


def _test_inputs(recipe, result) -> tuple[list[bytes], list[str], dict]:
    """The test split as requests (PNG files, or UTF-8 texts), its labels, and a loader of
    model input per role (the artifact's own preprocessing or tokenizer)."""
    if recipe.is_text:
        from distillserve.handlers.classification import HandlerSettings
        from distillserve.handlers.textprep import load_tokenizer
        from distillserve.students.text_data import load_text_splits, make_text_loader

        splits = load_text_splits(recipe.data, recipe.seed)
        payloads = [text.encode("utf-8") for text in splits.test.texts]
        loaders = {}
        for role, directory in result.artifacts.items():
            spec = HandlerSettings.from_dict(Artifact.read(directory).handler_dict).spec
            tokenizer = load_tokenizer(directory / spec.tokenizer, spec)
            loaders[role] = make_text_loader(splits.test, tokenizer, 256)
    else:
        splits = load_splits(recipe.data, recipe.seed)
        loader = make_loader(splits.test, preprocess_spec(recipe.data), 256)
        payloads = [encode_png(splits.test[i][0]) for i in range(len(splits.test))]
        loaders = dict.fromkeys(result.artifacts, loader)
    labels = [splits.classes[int(y)] for y in splits.test.labels]
    return payloads, labels, loaders


def _on_triton(
    names: dict, model_store, out_root, payloads: list[bytes], text: bool
) -> dict | None:
    """The students' archives on the Triton engine (``serve start --engine triton``): each
    test input's top-1 label (None for a failed request), by (role, format); None when the
    engine is not installed (said in one line)."""
    from distillserve.archiver.signing import Trust
    from distillserve.archiver.triton import export_triton
    from distillserve.errors import ServerError
    from distillserve.serving.triton_client import TritonClient
    from distillserve.serving.triton_engine import TritonAddresses, TritonEngine
    from distillserve.serving.triton_env import find_dist

    try:
        find_dist()
    except ServerError as err:
        _log(f"Triton engine skipped: {err}")
        return None
    students = {key: name for key, name in names.items() if key[0] == "student"}
    trust = Trust.resolve()
    archives = [Path(model_store) / f"{name}.mar" for name in students.values()]
    repository = export_triton(archives, Path(out_root) / "triton", trust, force=True)
    engine = TritonEngine(
        Path(out_root) / "triton", Path(out_root) / "triton-run", TritonAddresses.free(), trust
    )
    _log(
        f"starting Triton with {', '.join(m.name for m in repository)} (logs in {engine.log_file})"
    )
    with engine:
        client = TritonClient(engine.addresses)
        return {
            key: [a.top1 for a in client.predict_many(name, payloads, text, concurrency=16)]
            for key, name in students.items()
        }


def run_demo(
    recipe_path: str | Path = "recipes/digits.yaml",
    config: str | Path = "config.properties",
    out_root: str | Path = "build",
    model_store: str | Path = "model_store",
    concurrency: int = 16,
) -> dict:
    """The whole flow for one recipe; writes ``build/report-NAME.json`` and returns the
    report."""
    stage_seconds: dict[str, float] = {}
    ensure_keys()  # keys/archive-signing.pem signs the demo's archives (made on first run)
    clock = time.perf_counter()

    def stage(name: str) -> None:
        nonlocal clock
        stage_seconds[name] = round(time.perf_counter() - clock, 2)
        clock = time.perf_counter()

    recipe = load_recipe(recipe_path)
    result = build(recipe, out_root, teacher_cache_dir=Path(out_root) / "teacher-cache")
    stage("build")
    entries = [
        e
        for e in (TEXT_ENTRIES if recipe.is_text else ENTRIES)
        if e[1] in result.metrics[e[0]]["formats"]
    ]
    names, files = {}, []
    for role, fmt, _ in entries:
        archive = build_archive(
            result.artifacts[role], model_store, model_format=fmt, replace_rebuild=True
        )
        names[role, fmt] = archive.model_name
        files.append(archive.path.name)
        _log(f"archived {archive.path} ({archive.path.stat().st_size / 1024:.0f} KB, signed)")
    stage("archive")

    payloads, labels, loaders = _test_inputs(recipe, result)
    in_process, decisive = {}, {}
    for role, fmt, _ in entries:
        logits, _ = predict(load_exported(result.artifacts[role] / MODEL_FILES[fmt]), loaders[role])
        names_of = Artifact.read(result.artifacts[role]).index_to_name
        in_process[role, fmt] = [names_of[str(i)] for i in logits.argmax(1).tolist()]
        decisive[role, fmt] = _decisive(logits, result.metrics[role]["quantized"])

    # this recipe's archives, with the profile's security and ports (serve start --models)
    server = TorchServe(config, Path(out_root) / "serve", model_store, archives=files)
    _log(f"starting TorchServe with {config} (logs in {server.log_dir})")
    with server:
        server.start(models=list(names.values()))
        record_startup(server.management_client(), server.model_store)
        _log(f"ready; token file {server.key_file}")
        stage("serve start")
        client = InferenceClient(
            server.inference_url, server.keys()["inference"], pool_size=concurrency * len(names)
        )
        _log(
            f"sending {len(payloads)} test {'texts' if recipe.is_text else 'images'} to "
            f"{len(names)} models in turn, {concurrency} concurrent requests each"
        )
        served = {  # one model at a time: each gets the two cores, not a share of them
            key: timed_predictions(client, name, payloads, concurrency)
            for key, name in names.items()
        }
        stage("query")
    stage("serve stop")
    triton = _on_triton(names, model_store, out_root, payloads, recipe.is_text)
    if triton is not None:
        stage("triton")

    rows = []
    for role, fmt, title in entries:
        m, own = result.metrics[role], result.metrics[role]["formats"][fmt]
        s = served[role, fmt]
        correct = sum(p == y for p, y in zip(in_process[role, fmt], labels))
        served_correct = sum(p == y for p, y in zip(s["labels"], labels))
        agree = sum(p == q for p, q in zip(in_process[role, fmt], s["labels"]))
        clear = decisive[role, fmt]
        agree_clear = sum(p == q for p, q, c in zip(in_process[role, fmt], s["labels"], clear) if c)
        rows.append(
            {
                "model": title,
                "model_name": names[role, fmt],
                "format": fmt,
                "params": m["params"],
                "size_bytes": own["size_bytes"],
                "latency_ms_batch1": own["latency_ms_batch1"],
                "accuracy_in_process": correct / len(labels),
                "accuracy_served": served_correct / len(labels),
                "agreement": agree / len(labels),
                "decisive_agreement": agree_clear / max(1, sum(clear)),
                "decisive_samples": sum(clear),
                "served_failures": s["failures"],
                "served_p50_ms": s["p50_ms"],
                "served_throughput_rps": s["throughput_rps"],
            }
        )
    if triton is not None:
        report_triton = []
        for (role, fmt), answers in triton.items():
            agree = sum(p == q for p, q in zip(in_process[role, fmt], answers))
            failures = sum(a is None for a in answers)
            report_triton.append(
                {"model_name": names[role, fmt], "format": fmt, "agreement": agree / len(labels),
                 "failures": failures}
            )  # fmt: skip
    report = {
        "recipe": str(recipe_path),
        "task": recipe.task,
        "triton": report_triton if triton is not None else None,
        "test_samples": len(labels),
        "rows": rows,
        "stage_seconds": {
            **{f"build/{k}": v for k, v in result.stage_seconds.items()},
            **stage_seconds,
        },
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
    }
    out = Path(out_root) / f"report-{recipe.name}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    what = "texts" if recipe.is_text else "images"
    print(f"\n{recipe.name} ({recipe.task}):\n{format_table(rows)}")
    for row in report["triton"] or []:
        print(
            f"Triton engine: {row['model_name']} ({row['format']}) {row['agreement']:.2%} "
            f"agree with in-process, {row['failures']} failed"
        )
    print(
        f"\n{len(labels)} test {what}; b1 ms = in-process batch-1 latency; agree = served top-1 "
        "equal to in-process top-1; decisive = the same on the inputs whose in-process top-1 "
        "leads by more than int8 resolution (all of them for fp32).\n"
        f"Report written to {out}"
    )
    return report

"""``distillserve bench --text``: the text task, measured side by side in one run on one machine.

- models: the teacher, the fp32 and the int8 student in each format (size, batch-1 and batch-8
  latency at the worker's threads, test accuracy), from the build's own measurements;
- padding: tokens the model computes per real token, padding each batch of 8 (in arrival order)
  to its longest text against padding every text to 150 tokens (the Hugging Face example);
- served: requests/s and p50/p99 at 16 and 32 clients, batch 8, for our handler on the teacher and
  on the int8 student in each format, and for the Hugging Face example's approach
  (``hf_example_handler``) on the same fp32 teacher, in rotating order over ``rounds`` rounds
  (medians); with ``bert_base`` also a BERT-base-sized teacher with random weights (speed does
  not depend on the weights): the size of model teams serve;
- tokenizing: the share of the worker's batch time our handler spends decoding and tokenizing
  (its ``TextDecodeTime`` against its ``ForwardTime``, per batch, from TorchServe's metrics log);
- limits (``text_limits``): TorchServe's no-op floor served alongside, each model's handler
  ceiling in process, and the int8 student's served ratio against the ratio of the limits;
- distillation (``text_kd``): the distilled student against the same student on the labels
  alone, at several student seeds.

Nothing here asserts anything about time: the figures are written, and the summary says whether
each meets its target (the int8 student at 4x the teacher's requests/s at 16 clients; a point
from distillation on the mean of the seeds).
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import statistics
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

import torch

from distillserve.archiver import build_archive
from distillserve.archiver.properties import ServerConfig
from distillserve.archiver.signing import ensure_keys
from distillserve.bench.served import (
    _archive,
    _management,
    archive_workers,
    floor_archive,
    served_point,
    unregister,
)
from distillserve.bench.text_kd import kd_against_labels_only, kd_lines
from distillserve.bench.text_limits import FLOOR, kernel_ratios, limit_lines, measure_ceilings
from distillserve.handlers.textprep import TextSpec, load_tokenizer
from distillserve.serving.server import TorchServe
from distillserve.students.distill_settings import student_seed
from distillserve.students.pipeline import build
from distillserve.students.recipe import load_recipe
from distillserve.students.text_data import load_text_splits

__all__ = ["kernel_ratios", "padding_waste", "run_text_bench", "text_summary"]

FIXED_LENGTH = 150  # what the Hugging Face example pads every request to
BERT_BASE = {"layers": 12, "hidden": 768, "heads": 12, "intermediate": 3072}


def padding_waste(tokenizer, texts: list[str], batch: int = 8) -> dict:
    """Tokens computed per real token for batches of ``batch`` texts in arrival order: padded to
    the batch's longest, and each padded to ``FIXED_LENGTH``."""
    lengths = [len(e.ids) - e.ids.count(0) for e in tokenizer.encode_batch(texts)]
    real = sum(lengths)
    longest = sum(
        max(lengths[i : i + batch]) * len(lengths[i : i + batch])
        for i in range(0, len(lengths), batch)
    )
    return {
        "texts": len(texts),
        "real_tokens": real,
        "mean_tokens": round(real / len(texts), 1),
        "pad_to_longest": round(longest / real, 3),
        "pad_to_150": round(FIXED_LENGTH * len(texts) / real, 3),
    }


def _hf_example_archive(teacher_dir: Path, store: Path, name: str) -> Path:
    handler = resources.files("distillserve.bench") / "hf_example_handler.py"
    with resources.as_file(handler) as path:
        extra = ",".join(str(teacher_dir / f) for f in ("tokenizer.json", "index_to_name.json"))
        return _archive(
            store,
            name,
            handler=str(path),
            serialized_file=str(teacher_dir / "model.pt"),
            extra_files=extra,
        )


def _bert_base_artifact(teacher_dir: Path, directory: Path, max_length: int) -> Path:
    """The teacher's artifact with a BERT-base-sized model of random weights as its model.pt."""
    from distillserve.students.text_models import build_classifier

    shutil.copytree(teacher_dir, directory, dirs_exist_ok=True)
    for other in ("model.pt2", "model.onnx"):
        (directory / other).unlink(missing_ok=True)
    labels = json.loads((directory / "index_to_name.json").read_text())
    vocab = len(json.loads((directory / "tokenizer.json").read_text())["model"]["vocab"])
    model = build_classifier(BERT_BASE, vocab, list(labels.values()), max_length).eval()
    example = torch.randint(5, vocab, (2, 16))
    with torch.inference_mode():
        torch.jit.save(torch.jit.trace(model, example, check_trace=False), directory / "model.pt")
    metrics = json.loads((directory / "metrics.json").read_text())
    metrics.update(params=sum(p.numel() for p in model.parameters()), formats={})
    (directory / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return directory


def _stage_means(ts: TorchServe, model: str) -> dict[str, float]:
    """Mean TextDecodeTime and ForwardTime (ms per batch) of ``model`` in the metrics logs."""
    # TorchServe rolls the log over by size into model_metrics.<day>.log.gz during a run
    text = "".join(
        (gzip.decompress(f.read_bytes()).decode() if f.suffix == ".gz" else f.read_text())
        for f in sorted(ts.log_dir.glob("model_metrics*.log*"))
    )
    out = {}
    for metric in ("TextDecodeTime", "ForwardTime"):
        pattern = rf"{metric}\.\w+:([0-9.]+)\|#ModelVersion:[^,]*,ModelName:{re.escape(model)},"
        values = [float(v) for v in re.findall(pattern, text)]
        out[metric] = round(statistics.mean(values), 3) if values else None
    return out


def run_text_bench(
    work: Path,
    recipe_path: str = "recipes/reviews-bert-small.yaml",
    seconds: float = 6.0,
    rounds: int = 3,
    bert_base: bool = True,
    log: Callable[[str], None] = print,
    extra_seeds: Sequence[int] = (1, 2),
) -> dict:
    """Build the recipe in ``work`` (its teacher from ``build/teacher-cache`` when trained
    before), serve its models and the alternatives, and return the results."""
    ensure_keys()
    recipe = load_recipe(recipe_path)
    work = Path(work) / "text"
    result = build(recipe, work / "build", teacher_cache_dir=Path("build/teacher-cache"))
    splits = load_text_splits(recipe.data, recipe.seed)
    texts = splits.test.texts
    payloads = [t.encode("utf-8") for t in texts]
    spec = TextSpec.from_dict(_yaml(result.artifacts["student"] / "handler.yaml"))
    tokenizer = load_tokenizer(result.artifacts["student"] / spec.tokenizer, spec)
    results: dict = {
        "recipe": recipe_path,
        "models": {role: result.metrics[role] for role in result.artifacts},
        "padding": padding_waste(tokenizer, texts),
        "kd_against_labels_only": kd_against_labels_only(
            recipe_path, work, result.metrics, student_seed(recipe), extra_seeds, log
        ),
        "served": {},
    }
    store = work / "store"
    store.mkdir(parents=True, exist_ok=True)
    archives = {
        "teacher": build_archive(result.artifacts["teacher"], store, force=True).path,
        "hf-example-teacher": _hf_example_archive(
            result.artifacts["teacher"], store, "hf-example-teacher"
        ),
    }
    for fmt in result.metrics["student"]["formats"]:
        archive = build_archive(result.artifacts["student"], store, model_format=fmt, force=True)
        archives[f"int8-{fmt}"] = archive.path
    if bert_base:
        directory = _bert_base_artifact(
            result.artifacts["teacher"], work / "bert-base", recipe.data.max_length
        )
        archives["bert-base"] = build_archive(
            directory, store, model_name="bert-base", force=True
        ).path
    ours = {n: a for n, a in archives.items() if n != "hf-example-teacher"}
    results["ceilings_rps"] = measure_ceilings(ours, payloads, work)
    archives[FLOOR] = floor_archive(store, FLOOR)
    config = ServerConfig.with_free_ports(store, enable_model_api=True)
    shutil.rmtree(work / "serve" / "logs", ignore_errors=True)  # this run's metrics alone
    ts = TorchServe(config.write(work / "config.properties"), work / "serve", store)
    ts.start(timeout=180, models=[])
    try:
        results["served"] = _served(ts, archives, payloads, seconds, rounds, log)
        results["tokenizing"] = _stage_means(ts, "int8-torchscript")
    finally:
        ts.stop()
    results["ratios_c16"] = _ratios(results["served"], 16)
    results["cpu"] = _cpu()
    return results


def _yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def _served(ts, archives: dict[str, Path], payloads, seconds, rounds, log) -> dict:
    management = _management(ts)
    for name, archive in archives.items():
        management.register(
            archive.name,
            model_name=name,
            batch_size=8,
            max_batch_delay=10,
            initial_workers=archive_workers(archive),  # as its model-config.yaml asks
            response_timeout=300,
        )
    points: dict[str, dict[int, list[dict]]] = {name: {16: [], 32: []} for name in archives}
    names = list(archives)
    for index in range(rounds):
        order = names[index % len(names) :] + names[: index % len(names)]
        for name in order:
            for clients in (16, 32):
                point = served_point(ts, name, payloads, clients, seconds)
                points[name][clients].append(point)
                log(f"text served: {name} c{clients} {point['throughput_rps']} rps")
    summary = {}
    for name in names:
        summary[name] = {
            str(c): {
                key: statistics.median(p[key] for p in pts)
                for key in ("throughput_rps", "p50_ms", "p99_ms", "mean_batch")
            }
            | {"errors": sum(p["errors"] for p in pts)}
            for c, pts in points[name].items()
        }
    for name in names:
        unregister(ts, name)
    return summary


def _ratios(served: dict, clients: int) -> dict:
    """Each model's requests/s over the teacher's (ours), and over the Hugging Face example's."""
    key = str(clients)
    teacher = served["teacher"][key]["throughput_rps"]
    example = served["hf-example-teacher"][key]["throughput_rps"]
    return {
        name: {
            "vs_teacher": round(point[key]["throughput_rps"] / teacher, 2),
            "vs_hf_example": round(point[key]["throughput_rps"] / example, 2),
        }
        for name, point in served.items()
    }


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    return "unknown"


def text_summary(results: dict) -> str:
    """The text section as Markdown: models, served, padding, tokenizing, and the target."""
    lines = [f"Text: `{results['recipe']}` on {results['cpu']}.", ""]
    lines += [
        "| model | format | params | file KB | b1 ms | b8 ms | test accuracy |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for role, metrics in results["models"].items():
        for fmt, own in metrics["formats"].items():
            lines.append(
                f"| {role} | {fmt} | {metrics['params']:,} | {own['size_bytes'] / 1024:,.0f} | "
                f"{own['latency_ms_batch1']:.2f} | {own['latency_ms_batch8']:.2f} | "
                f"{own['test_accuracy']:.2%} |"
            )
    lines += ["", *kd_lines(results["kd_against_labels_only"])]
    lines += [
        "",
        "| served (batch 8) | req/s c16 | p50 / p99 ms c16 | req/s c32 | x teacher c16 | "
        "x HF example c16 |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, point in results["served"].items():
        c16, c32 = point["16"], point["32"]
        ratio = results["ratios_c16"][name]
        lines.append(
            f"| {name} | {c16['throughput_rps']:.0f} | {c16['p50_ms']:.1f} / "
            f"{c16['p99_ms']:.1f} | {c32['throughput_rps']:.0f} | {ratio['vs_teacher']:.2f} | "
            f"{ratio['vs_hf_example']:.2f} |"
        )
    pad, tok = results["padding"], results["tokenizing"]
    lines += [
        "",
        f"Padding, {pad['texts']} test texts of {pad['mean_tokens']} tokens on average, batches "
        f"of 8 in arrival order: tokens computed per real token {pad['pad_to_longest']} padded "
        f"to each batch's longest, {pad['pad_to_150']} padded to 150 (the Hugging Face "
        "example).",
    ]
    if tok.get("TextDecodeTime") is not None and tok.get("ForwardTime") is not None:
        share = tok["TextDecodeTime"] / (tok["TextDecodeTime"] + tok["ForwardTime"])
        lines.append(
            f"Tokenizing: the int8 TorchScript student's worker spent {tok['TextDecodeTime']:.2f} "
            f"ms per batch decoding and tokenizing against {tok['ForwardTime']:.2f} ms in the "
            f"forward pass ({share:.0%} of the two)."
        )
    best = max(
        (r["vs_teacher"] for n, r in results["ratios_c16"].items() if n.startswith("int8")),
        default=0.0,
    )
    verdict = "meets" if best >= 4 else "misses"
    lines.append(
        f"Target, the int8 student at 4x the teacher's requests/s at 16 clients: {verdict} it "
        f"({best:.2f}x at best)."
    )
    lines += limit_lines(results)
    kernels = kernel_ratios(results)
    if kernels:
        lines.append(
            "Against the kernels' ratio in this run (the teacher's batch-8 forward time over "
            "the int8 student's, in process), the served ratio at 16 clients: "
            + ", ".join(
                f"{fmt} {k['served']:.2f}x of {k['kernels']:.2f}x ({k['fraction']:.0%})"
                for fmt, k in kernels.items()
            )
            + "."
        )
    return "\n".join(lines) + "\n"

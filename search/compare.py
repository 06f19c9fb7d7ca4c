"""``distillserve compare RECIPE...``: build several student variants and put them side by side.

Writes, under ``--out`` (default ``build/compare``):

    report.json   one row per model (each variant's student, its fp32 student, the teacher)
    report.md     the same as a Markdown table, Pareto-optimal rows marked
    pareto.png    test accuracy against batch-1 latency and against file size

Every variant's teacher comes from the shared teacher cache when the recipes agree on it, so only
the first build trains one. Latencies are re-measured here, all models in the same process and
interleaved over several rounds, so they compare fairly with each other.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import torch

from distillserve.errors import RecipeError
from distillserve.handlers import serving_policy
from distillserve.log import progress
from distillserve.students.exported import load_exported
from distillserve.students.measure import latency_ms, threads
from distillserve.students.pipeline import BuildResult, build
from distillserve.students.recipe import Recipe, load_recipe

__all__ = [
    "describe",
    "measure_latencies",
    "pareto_front",
    "run_compare",
    "write_markdown",
    "write_plot",
]

ROUNDS = 3  # interleaved latency rounds; the best median of each model is kept


_log = progress("compare")


def describe(recipe: Recipe) -> str:
    """A short name for what a recipe does to its student, e.g. ``KD + feature KD, pruned 50%``."""
    kd = recipe.distill
    parts = ["CE only" if kd.alpha == 0 and not kd.feature else "KD"]
    if kd.feature:
        parts[0] += " + feature KD"
    if kd.stages:
        parts.append(f"{len(kd.stages)} progressive stage(s)")
    if recipe.prune.method == "channel":
        parts.append(f"channels pruned {recipe.prune.amount:.0%}")
    elif recipe.prune.method == "l1_unstructured":
        parts.append(f"L1 sparsity {recipe.prune.amount:.0%}")
    q = recipe.quantize
    parts.append(
        {
            "static": "static int8",
            "dynamic": "dynamic int8",
            "qat": "QAT + KD int8",
            "mixed": f"mixed int8/fp32 (budget {q.accuracy_budget:g})",
            "none": "fp32",
        }[q.mode]
    )
    return ", ".join(parts)


def pareto_front(rows: Sequence[dict], cost: str, accuracy: str = "test_accuracy") -> set[int]:
    """Indices of the rows no other row beats: as accurate or more at a cost as low or lower,
    strictly better in one of the two."""
    front = set()
    for i, row in enumerate(rows):
        dominated = any(
            other[accuracy] >= row[accuracy]
            and other[cost] <= row[cost]
            and (other[accuracy] > row[accuracy] or other[cost] < row[cost])
            for j, other in enumerate(rows)
            if j != i
        )
        if not dominated:
            front.add(i)
    return front


def measure_latencies(paths: Sequence[Path], example: torch.Tensor, count: int) -> list[float]:
    """Batch-1 latency of each model file (any format ``handlers.runtimes`` loads) in ms, with
    ``count`` threads: the best median over interleaved rounds."""
    models = [load_exported(path, threads=count) for path in paths]
    best = [float("inf")] * len(models)
    with threads(count):
        for _ in range(ROUNDS):
            for index, model in enumerate(models):
                best[index] = min(best[index], latency_ms(model, example, repeats=200))
    return [round(value, 4) for value in best]


def write_markdown(report: dict, path: Path) -> None:
    """The report as a Markdown table; * marks the Pareto front on latency, † on file size."""
    lines = [
        f"Student variants on `{report['dataset']}`, {report['test_samples']} test images, "
        f"batch-1 latency with {report['threads']} thread(s) "
        f"(torch {report['torch']}, {report['created'][:10]}).",
        "",
        "| model | recipe | what | params | size KB | test acc. | b1 latency ms | fp32 layers |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for row in report["rows"]:
        marks = ("*" if row["pareto_latency"] else "") + ("†" if row["pareto_size"] else "")
        fp32 = row.get("fp32_layers")
        fp32 = "none" if fp32 == [] else ", ".join(fp32 or [])
        lines.append(
            f"| {row['model']}{marks} | `{row['recipe_file']}` | {row['what']} | {row['params']:,} "
            f"| {row['size_bytes'] / 1024:.1f} | {row['test_accuracy']:.2%} "
            f"| {row['latency_ms_batch1']:.3f} | {fp32} |"
        )
    lines += [
        "",
        "\\* on the accuracy/latency Pareto front; † on the accuracy/size Pareto front. "
        "Accuracy is on the held-out test split; one image is "
        f"{1 / report['test_samples']:.2%}.",
    ]
    path.write_text("\n".join(lines) + "\n")


def write_plot(report: dict, path: Path) -> None:
    """Accuracy against batch-1 latency and against file size: one colour per recipe, o int8,
    ^ fp32, s teacher; Pareto-optimal models ringed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    rows = report["rows"]
    recipes = list(dict.fromkeys(row["recipe"] for row in rows if row["role"] != "teacher"))
    colours = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(recipes)}
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    panels = (
        ("latency_ms_batch1", "pareto_latency", "batch-1 latency (ms)"),
        ("size_bytes", "pareto_size", "file size (bytes)"),
    )
    for ax, (cost, front, label) in zip(axes, panels):
        for row in rows:
            teacher = row["role"] == "teacher"
            x, y = row[cost], row["test_accuracy"] * 100
            ax.scatter(
                x,
                y,
                marker="s" if teacher else ("o" if row["quantized"] else "^"),
                color="black" if teacher else colours[row["recipe"]],
                s=60,
                alpha=0.85,
            )
            if row[front]:
                ax.scatter(x, y, s=220, facecolors="none", edgecolors="black", linewidths=1)
            if teacher:
                ax.annotate(
                    "teacher", (x, y), fontsize=8, xytext=(-10, -14), textcoords="offset points"
                )
        ax.set_xscale("log")
        ax.set_xlabel(f"{label}, log scale")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(True, which="both", alpha=0.3)
    handles = [Line2D([], [], marker="o", linestyle="", color=colours[n], label=n) for n in recipes]
    handles += [
        Line2D([], [], marker="o", linestyle="", color="grey", label="int8"),
        Line2D([], [], marker="^", linestyle="", color="grey", label="fp32"),
        Line2D(
            [],
            [],
            marker="o",
            linestyle="",
            markerfacecolor="none",
            markeredgecolor="black",
            markersize=12,
            label="Pareto-optimal",
        ),
    ]
    fig.legend(handles=handles, loc="center right", fontsize=8)
    fig.suptitle(
        f"Student variants on {report['dataset']}: test accuracy against cost "
        f"({report['test_samples']} test images, one image = {100 / report['test_samples']:.2f}%)"
    )
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _rows(path: Path, recipe: Recipe, result: BuildResult, with_teacher: bool) -> list[dict]:
    """Report rows for one build: its student, the fp32 student it came from, the teacher."""
    what = describe(recipe)
    labels = {
        "student": (
            f"{recipe.name} {'int8' if result.metrics['student']['quantized'] else 'fp32'}",
            what,
        ),
        "student-fp32": (f"{recipe.name} fp32", what.rsplit(", ", 1)[0] + ", fp32"),
    }
    if with_teacher:
        labels = {"teacher": ("teacher", f"teacher ({recipe.teacher.arch})"), **labels}
    rows = []
    for role, (model, description) in labels.items():
        if role not in result.artifacts:
            continue
        metrics = result.metrics[role]
        mixed = result.metrics[role].get("mixed_precision") if role == "student" else None
        rows.append(
            {
                "model": model,
                "recipe": recipe.name,
                "recipe_file": path.as_posix(),
                "role": role,
                "what": description,
                "quantized": metrics["quantized"],
                "params": metrics["params"],
                "size_bytes": metrics["size_bytes"],
                "test_accuracy": metrics["test_accuracy"],
                "fp32_layers": mixed["fp32_layers"] if mixed else None,
                "path": str(result.artifacts[role] / "model.pt"),
            }
        )
    return rows


def run_compare(
    recipe_paths: Sequence[str | Path],
    out: str | Path = "build/compare",
    teacher_cache_dir: str | Path | None = "build/teacher-cache",
    log: Callable[[str], None] = _log,
) -> dict:
    """Build every recipe, measure its models side by side, write the report, table and plot."""
    recipes = [(Path(p), load_recipe(p)) for p in recipe_paths]
    if not recipes:
        raise RecipeError(None, "compare needs at least one recipe")
    names = [recipe.name for _, recipe in recipes]
    if len(set(names)) != len(names):
        raise RecipeError("name", f"compared recipes need distinct names, got {names}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    candidates: list[dict] = []
    test_samples = 0
    for path, recipe in recipes:
        log(f"building {recipe.name} from {path}: {describe(recipe)}")
        clock = time.perf_counter()
        result = build(recipe, out / "builds", log=log, teacher_cache_dir=teacher_cache_dir)
        seconds[recipe.name] = round(time.perf_counter() - clock, 1)
        candidates += _rows(path, recipe, result, with_teacher=not candidates)
        test_samples = result.metrics["student"]["test_samples"]
    first = recipes[0][1]
    count = serving_policy.build_threads(first.archive.threads)
    example = torch.zeros(1, first.data.channels, *first.data.image_size)
    log(f"measuring batch-1 latency of {len(candidates)} models, {ROUNDS} interleaved rounds")
    for row, value in zip(
        candidates, measure_latencies([Path(r["path"]) for r in candidates], example, count)
    ):
        row["latency_ms_batch1"] = value
    for cost, key in (("latency_ms_batch1", "pareto_latency"), ("size_bytes", "pareto_size")):
        front = pareto_front(candidates, cost)
        for index, row in enumerate(candidates):
            row[key] = index in front
    report = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "dataset": first.data.source,
        "test_samples": test_samples,
        "threads": count,
        "torch": torch.__version__,
        "build_seconds": seconds,
        "total_seconds": round(time.perf_counter() - started, 1),
        "rows": candidates,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, out / "report.md")
    write_plot(report, out / "pareto.png")
    log(f"wrote {out / 'report.json'}, {out / 'report.md'} and {out / 'pareto.png'}")
    return report

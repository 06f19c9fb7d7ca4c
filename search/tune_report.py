"""What ``distillserve tune`` writes from a study: every trial with its parameters, accuracy,
latency, size and status (``report.json``, ``report.md``), the Pareto front beside the teacher
and the hand-written recipe (``pareto.png``), and ``best.yaml``: a complete recipe (``base:``
the input) for the chosen student, which ``distillserve build`` reproduces.

Latencies and sizes are those of the recipe's primary export format (``export.formats[0]``),
re-measured here, every finished student side by side in one process over interleaved rounds,
so they compare fairly. How the student is chosen: ``search.tune_choice``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch
import yaml

from distillserve.handlers import serving_policy
from distillserve.handlers.runtimes import MODEL_FILES
from distillserve.search import tune_choice
from distillserve.search.compare import measure_latencies, pareto_front
from distillserve.students.measure import weight_bytes
from distillserve.students.recipe import Recipe

__all__ = ["SUMMARY", "best_so_far", "write"]

SUMMARY = (
    "params",
    "size_bytes",
    "latency_ms_batch1",
    "val_accuracy",
    "test_accuracy",
    "quantized",
)


def _within(study, budget: float) -> float | None:
    teacher = study.user_attrs.get("teacher_val_accuracy")
    return None if teacher is None else teacher - budget - 1e-9


def best_so_far(study, budget: float, cost_key: str):
    """The cheapest finished trial within the budget (``None`` before there is one)."""
    import optuna

    floor = _within(study, budget)
    if floor is None:
        return None
    good = [
        t
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if t.values[0] >= floor
    ]
    return min(good, key=lambda t: (t.values[1], -t.values[0]), default=None)


def _rows(study) -> list[dict]:
    rows = []
    for t in study.trials:
        metrics = t.user_attrs.get("metrics", {})
        status = t.state.name.lower()
        reason = t.user_attrs.get("error")
        rows.append(
            {
                "trial": t.number,
                "reference": bool(t.user_attrs.get("reference")),
                "status": status,
                "reason": reason,
                "space": dict(t.params),
                "overrides": t.user_attrs.get("overrides", {}),
                "artifact": t.user_attrs.get("artifact"),
                **{k: metrics.get(k) for k in SUMMARY},
            }
        )
    return rows


def _remeasure(rows: list[dict], recipe: Recipe, log: Callable[[str], None]) -> None:
    """Batch-1 latency of every finished student's primary-format file, side by side over
    interleaved rounds, and the bytes of that file that are weights."""
    done = [r for r in rows if r["status"] == "complete" and r["artifact"]]
    if not done:
        return
    fmt = recipe.export.formats[0]
    count = serving_policy.build_threads(recipe.archive.threads)
    example = torch.zeros(1, recipe.data.channels, *recipe.data.image_size)
    log(f"re-measuring the batch-1 latency of {len(done)} students ({fmt}) side by side")
    paths = [Path(r["artifact"]) / MODEL_FILES[fmt] for r in done]
    for row, path, value in zip(done, paths, measure_latencies(paths, example, count)):
        row["latency_ms_batch1"], row["format"] = value, fmt
        row["weight_bytes"] = weight_bytes(path)


def _best_yaml(recipe_path: Path, out: Path, recipe: Recipe, row: dict) -> Path:
    """A recipe over the input one that builds the chosen student."""
    base = os.path.relpath(recipe_path.resolve(), out.resolve())
    name = f"{recipe.name}-tuned"
    document = {"base": base, "name": name, **row["overrides"], "archive": {"model_name": name}}
    cv = row.get("cv_accuracy")
    header = (
        f"# Found by `distillserve tune {recipe_path}` (trial {row['trial']}): validation "
        f"accuracy {row['val_accuracy']:.4f},\n# batch-1 latency {row['latency_ms_batch1']:.4f} "
        f"ms and {row['size_bytes']} bytes ({row.get('format', 'model')} file)"
        + (f", cross-validated {cv:.4f}" if cv is not None else "")
        + ".\n# `distillserve build` this file to reproduce it.\n"
    )
    path = out / "best.yaml"
    path.write_text(header + yaml.safe_dump(document, sort_keys=False))
    return path


def _markdown(report: dict) -> str:
    teacher = report["teacher"]
    lines = [
        f"`distillserve tune` on `{report['recipe']}`: objective {report['objective']}, budget "
        f"{report['budget']:g} of the teacher's validation accuracy "
        f"({teacher.get('val_accuracy', 0):.2%}; test {teacher.get('test_accuracy', 0):.2%}), "
        f"{len(report['rows'])} trials, {report['seconds']:.0f} s, {report['created'][:10]}; "
        f"size and batch-1 latency of the {report['format']} file.",
        "",
        "| trial | parameters | status | val acc. | CV acc. | test acc. | params | size KB "
        "| weights KB | b1 ms | served req/s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    order = sorted(report["rows"], key=lambda r: (r["latency_ms_batch1"] is None, r["trial"]))
    for r in order:
        marks = ("★" if r["trial"] == report.get("best_trial") else "") + (
            "*" if r.get("pareto") else ""
        )
        label = f"{r['trial']}{marks}" + (" (recipe)" if r["reference"] else "")
        params = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["space"].items()
        )
        status = r["status"] + (f": {r['reason']}" if r["reason"] else "")

        def number(value, fmt: str) -> str:
            return "" if value is None else format(value, fmt)

        lines.append(
            f"| {label} | {params} | {status} | {number(r['val_accuracy'], '.2%')} "
            f"| {number(r.get('cv_accuracy'), '.2%')} "
            f"| {number(r['test_accuracy'], '.2%')} | {number(r['params'], ',')} "
            f"| {number(r['size_bytes'] and r['size_bytes'] / 1024, '.1f')} "
            f"| {number(r.get('weight_bytes') and r['weight_bytes'] / 1024, '.1f')} "
            f"| {number(r['latency_ms_batch1'], '.4f')} | {number(r.get('served_rps'), '.0f')} |"
        )
    lines += [
        "",
        "★ chosen; * on the Pareto front (validation accuracy against the cost); CV: "
        "cross-validated on the training split, for the finalists checked.",
        "",
    ]
    lines.append(report["verdict"])
    return "\n".join(lines) + "\n"


def _plot(report: dict, path: Path, cost: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if r["val_accuracy"] is not None]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for row in rows:
        style = {"marker": "o", "color": "tab:blue", "s": 40, "alpha": 0.7}
        if row.get("pareto"):
            style.update(color="tab:orange", s=70)
        if row["reference"]:
            style.update(marker="^", color="tab:green", s=90)
        ax.scatter(row[cost], row["val_accuracy"] * 100, **style)
        if row["trial"] == report.get("best_trial"):
            ax.scatter(
                row[cost], row["val_accuracy"] * 100, s=260, facecolors="none", edgecolors="k"
            )
        if row.get("cv_accuracy") is not None:
            ax.scatter(row[cost], row["cv_accuracy"] * 100, marker="x", color="tab:red", s=60)
            ax.plot(
                [row[cost]] * 2,
                [row["cv_accuracy"] * 100, row["val_accuracy"] * 100],
                color="tab:red",
                linewidth=0.8,
                alpha=0.6,
            )
    reference = next((r for r in rows if r["reference"]), None)
    if reference is not None:
        ax.axvline(
            reference[cost] / 2,
            color="tab:green",
            linestyle=":",
            linewidth=1,
            label="half the recipe's cost",
        )
    teacher = report["teacher"].get("val_accuracy")
    if teacher is not None:
        ax.axhline(teacher * 100, color="black", linestyle="--", linewidth=1, label="teacher")
        ax.axhline(
            (teacher - report["budget"]) * 100,
            color="grey",
            linestyle=":",
            linewidth=1,
            label=f"budget ({report['budget']:g})",
        )
    ax.scatter([], [], marker="^", color="tab:green", label="the recipe as written")
    ax.scatter([], [], marker="o", color="tab:orange", label="Pareto front")
    ax.scatter([], [], marker="o", color="tab:blue", label="other trials")
    ax.scatter([], [], marker="x", color="tab:red", label="cross-validated (finalists)")
    ax.set_xscale("log")
    ax.set_xlabel({"latency_ms_batch1": "int8 batch-1 latency (ms)", "size_bytes": "bytes"}[cost])
    ax.set_ylabel("validation (and cross-validated) accuracy (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"distillserve tune: {report['recipe']} ({len(rows)} students)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(
    study,
    recipe: Recipe,
    recipe_path: Path,
    out: Path,
    *,
    budget: float,
    objective: str,
    started: float,
    log: Callable[[str], None],
    confirm: Callable[[dict, float], dict] | None = None,
    unconfirmed: str = "chosen on validation accuracy alone",
) -> dict:
    """Write the report, table, plot and (when a student meets the budget) ``best.yaml``.
    ``started`` is the run's ``time.perf_counter()`` at its start. ``confirm(row, floor)``
    cross-validates a candidate (``search.tune_cv``); without it the choice is made on validation
    accuracy alone, for the reason ``unconfirmed``."""
    rows = _rows(study)
    _remeasure(rows, recipe, log)
    cost = "size_bytes" if objective == "size" else "latency_ms_batch1"
    done = [r for r in rows if r["val_accuracy"] is not None and r["status"] == "complete"]
    front = pareto_front(done, cost, accuracy="val_accuracy")
    for index, row in enumerate(done):
        row["pareto"] = index in front
    floor = _within(study, budget)
    good = [r for r in done if floor is not None and r["val_accuracy"] >= floor]
    if objective == "served" and front:
        from distillserve.search.tune_served import served_throughput

        served_throughput([done[i] for i in sorted(front)], out, log)
    best, how = tune_choice.choose(
        tune_choice.ranked(good, cost), floor or 0.0, recipe.tune.finalists, confirm, log
    )
    if confirm is None and best is not None:
        how = unconfirmed
    report = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "recipe": recipe_path.as_posix(),
        "objective": objective,
        "format": recipe.export.formats[0],
        "budget": budget,
        "seconds": round(time.perf_counter() - started, 1),
        "teacher": study.user_attrs.get("teacher", {}),
        "rows": rows,
        "best_trial": best["trial"] if best else None,
        "best_recipe": None,
        "choice": how,
    }
    reference = next((r for r in done if r["reference"]), None)
    if best is not None:
        report["best_recipe"] = str(_best_yaml(recipe_path, out, recipe, best))
        report["verdict"] = tune_choice.verdict(best, reference, how)
    elif good:
        report["verdict"] = (
            f"No student is chosen: {len(good)} kept validation accuracy within {budget:g} of "
            f"the teacher's, but {how}. Widen the space, train longer (tune.epochs), raise "
            "--budget or tune.finalists."
        )
    elif done:
        top = max(done, key=lambda r: r["val_accuracy"])
        report["verdict"] = (
            f"No trial kept validation accuracy within {budget:g} of the teacher's "
            f"{study.user_attrs.get('teacher_val_accuracy', 0):.4f}: the best reached "
            f"{top['val_accuracy']:.4f} (trial {top['trial']}, {top['space']}). Widen the "
            "space, train longer (tune.epochs) or raise --budget."
        )
    else:
        report["verdict"] = "No trial finished: nothing to choose from."
    report["verdict"] += tune_choice.limits(done, reference, best, floor or 0.0)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(_markdown(report))
    _plot(report, out / "pareto.png", cost)
    log(f"wrote {out / 'report.json'}, report.md, pareto.png" + (", best.yaml" if best else ""))
    log(report["verdict"])
    return report

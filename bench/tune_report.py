"""What ``distillserve tune`` writes from a study: every trial with its parameters, accuracy,
latency, size and status (``report.json``, ``report.md``), the Pareto front beside the teacher
and the hand-written recipe (``pareto.png``), and ``best.yaml``: a complete recipe (``base:``
the input) for the chosen student, which ``distillserve build`` reproduces.

Latencies are re-measured here, every finished student side by side in one process over
interleaved rounds, so they compare fairly; the chosen student is the cheapest whose validation
accuracy is within the budget of the teacher's (costs within 3% of each other count as a tie,
won by the student with fewer parameters).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch
import yaml

from distillserve.bench.compare import measure_latencies, pareto_front
from distillserve.handlers.classification import thread_count
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
    """Batch-1 latency of every finished student, side by side over interleaved rounds."""
    done = [r for r in rows if r["status"] == "complete" and r["artifact"]]
    if not done:
        return
    count = thread_count(recipe.archive.threads, recipe.archive.max_workers)
    example = torch.zeros(1, recipe.data.channels, *recipe.data.image_size)
    log(f"re-measuring the batch-1 latency of {len(done)} students side by side")
    paths = [Path(r["artifact"]) / "model.pt" for r in done]
    for row, value in zip(done, measure_latencies(paths, example, count)):
        row["latency_ms_batch1"] = value


def _best_yaml(recipe_path: Path, out: Path, recipe: Recipe, row: dict) -> Path:
    """A recipe over the input one that builds the chosen student."""
    base = os.path.relpath(recipe_path.resolve(), out.resolve())
    name = f"{recipe.name}-tuned"
    document = {"base": base, "name": name, **row["overrides"], "archive": {"model_name": name}}
    header = (
        f"# Found by `distillserve tune {recipe_path}` (trial {row['trial']}): validation "
        f"accuracy {row['val_accuracy']:.4f},\n# batch-1 latency {row['latency_ms_batch1']:.4f} "
        f"ms, {row['size_bytes']} bytes. `distillserve build` this file to reproduce it.\n"
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
        f"{len(report['rows'])} trials, {report['seconds']:.0f} s, {report['created'][:10]}.",
        "",
        "| trial | parameters | status | val acc. | test acc. | params | size KB | b1 ms "
        "| served req/s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
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
            f"| {number(r['test_accuracy'], '.2%')} | {number(r['params'], ',')} "
            f"| {number(r['size_bytes'] and r['size_bytes'] / 1024, '.1f')} "
            f"| {number(r['latency_ms_batch1'], '.4f')} | {number(r.get('served_rps'), '.0f')} |"
        )
    lines += ["", "★ chosen; * on the Pareto front (validation accuracy against the cost).", ""]
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
    ax.set_xscale("log")
    ax.set_xlabel({"latency_ms_batch1": "int8 batch-1 latency (ms)", "size_bytes": "bytes"}[cost])
    ax.set_ylabel("validation accuracy (%)")
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
    seconds: float,
    log: Callable[[str], None],
) -> dict:
    """Write the report, table, plot and (when a student meets the budget) ``best.yaml``."""
    rows = _rows(study)
    _remeasure(rows, recipe, log)
    cost = "size_bytes" if objective == "size" else "latency_ms_batch1"
    done = [r for r in rows if r["val_accuracy"] is not None and r["status"] == "complete"]
    front = pareto_front(done, cost, accuracy="val_accuracy")
    for index, row in enumerate(done):
        row["pareto"] = index in front
    floor = _within(study, budget)
    good = [r for r in done if floor is not None and r["val_accuracy"] >= floor]
    best = _choose(good, cost)
    if objective == "served" and front:
        from distillserve.bench.tune_served import served_throughput

        served_throughput([done[i] for i in sorted(front)], out, log)
        measured = [r for r in good if r.get("served_rps")]
        best = max(measured, key=lambda r: r["served_rps"], default=best)
    report = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "recipe": recipe_path.as_posix(),
        "objective": objective,
        "budget": budget,
        "seconds": round(seconds, 1),
        "teacher": study.user_attrs.get("teacher", {}),
        "rows": rows,
        "best_trial": best["trial"] if best else None,
        "best_recipe": None,
    }
    reference = next((r for r in done if r["reference"]), None)
    if best is not None:
        report["best_recipe"] = str(_best_yaml(recipe_path, out, recipe, best))
        report["verdict"] = _verdict(best, reference) + _limits(done, reference)
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
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(_markdown(report))
    _plot(report, out / "pareto.png", cost)
    log(f"wrote {out / 'report.json'}, report.md, pareto.png" + (", best.yaml" if best else ""))
    log(report["verdict"])
    return report


TIE = 0.03  # costs within 3% of the cheapest are measurement noise apart


def _choose(good: list[dict], cost: str) -> dict | None:
    """The cheapest eligible student; costs within ``TIE`` of the cheapest count as equal, and
    among those the one with the fewest parameters, then the most accurate, wins."""
    if not good:
        return None
    cheapest = min(r[cost] for r in good)
    tied = [r for r in good if r[cost] <= cheapest * (1 + TIE)]
    return min(tied, key=lambda r: (r["params"], -r["val_accuracy"], r[cost]))


def _verdict(best: dict, reference: dict | None) -> str:
    what = f"trial {best['trial']}: {best['space']}"
    text = (
        f"Chosen: {what}; validation {best['val_accuracy']:.2%}, test "
        f"{best['test_accuracy']:.2%}, {best['latency_ms_batch1']:.4f} ms at batch 1, "
        f"{best['size_bytes']} bytes."
    )
    if reference is not None and reference is not best:
        speed = reference["latency_ms_batch1"] / best["latency_ms_batch1"]
        size = reference["size_bytes"] / best["size_bytes"]
        fewer = reference["params"] / best["params"]
        text += (
            f" Against the recipe as written (trial {reference['trial']}): {speed:.2f}x faster "
            f"at batch 1, {size:.2f}x smaller on disk, {fewer:.1f}x fewer parameters; its "
            f"validation {reference['val_accuracy']:.2%}, test {reference['test_accuracy']:.2%}."
        )
    return text


def _limits(done: list[dict], reference: dict | None) -> str:
    """What the whole space allows at best: the fastest and the smallest student of all trials,
    whatever their accuracy, against the recipe as written."""
    if reference is None or not done:
        return ""
    fastest = min(done, key=lambda r: r["latency_ms_batch1"])
    smallest = min(done, key=lambda r: r["size_bytes"])
    speed = reference["latency_ms_batch1"] / fastest["latency_ms_batch1"]
    size = reference["size_bytes"] / smallest["size_bytes"]
    text = (
        f" The limits of this space, whatever the accuracy: the fastest student (trial "
        f"{fastest['trial']}, {fastest['params']:,} params) is {speed:.2f}x faster than the "
        f"recipe's at batch 1 and the smallest file (trial {smallest['trial']}, "
        f"{smallest['params']:,} params) {size:.2f}x smaller."
    )
    if speed < 2:
        text += (
            f" No student here can be 2x faster: {reference['params'] / fastest['params']:.0f}x "
            f"fewer parameters buy {speed:.2f}x, so batch-1 latency at this input size is the "
            "fixed cost of one TorchScript call (quantize, dispatch, dequantize), not the model's "
            "arithmetic."
        )
    if size < 2:
        text += (
            f" No file here can be 2x smaller: the smallest is {smallest['size_bytes'] / 1024:.1f}"
            " KB, nearly all of it the TorchScript archive's code and metadata that every model "
            "carries, not weights."
        )
    return text

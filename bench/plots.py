"""The bench's plots: served throughput against concurrency per batch setting with the handler
and model ceilings and TorchServe's floor; the teacher-against-students bars."""

from __future__ import annotations

from pathlib import Path

from distillserve.bench.report import FLOOR_OF, HANDLER_CEILING_OF, served_ceiling
from distillserve.bench.report_util import ceiling_at

__all__ = ["write_plots"]


def write_plots(results: dict, served_png: Path, models_png: Path) -> None:
    """Served throughput against concurrency per batch setting, with the handler and model
    ceilings; and the teacher-against-students bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    served_models = [
        m for m in dict.fromkeys(p["model"] for p in results["served"]) if m in HANDLER_CEILING_OF
    ]
    fig, axes = plt.subplots(1, len(served_models), figsize=(6.5 * len(served_models), 4.8))
    axes = [axes] if len(served_models) == 1 else axes
    for ax, model in zip(axes, served_models):
        for batch_size, delay in results["meta"]["plan"]["batch_settings"]:
            points = [
                p
                for p in results["served"]
                if p["model"] == model
                and p["batch_size"] == batch_size
                and p["max_batch_delay"] == delay
            ]
            label = "batching off" if batch_size == 1 else f"batch {batch_size}, {delay} ms"
            ax.plot(
                [p["concurrency"] for p in points],
                [p["throughput_rps"] for p in points],
                marker="o",
                label=label,
            )
        floor = [
            p
            for p in results["served"]
            if p["model"] == FLOOR_OF[model] and (p["batch_size"], p["max_batch_delay"]) == (8, 10)
        ]
        if floor:
            ax.plot(
                [p["concurrency"] for p in floor],
                [p["throughput_rps"] for p in floor],
                color="black",
                linestyle="-.",
                linewidth=1,
                label="TorchServe floor (no-op .mar), batch 8, 10 ms",
            )
        handler = results["handler_ceiling"][HANDLER_CEILING_OF[model]]
        model_ceiling = served_ceiling(results, model)
        ax.axhline(
            ceiling_at(handler, 8),
            color="black",
            linestyle="--",
            linewidth=1,
            label="handler ceiling, batch 8",
        )
        ax.axhline(
            ceiling_at(model_ceiling, 8),
            color="grey",
            linestyle=":",
            linewidth=1,
            label="model ceiling, batch 8",
        )
        ax.set_yscale("log")
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel("requests / s (log)")
        ax.set_title(model)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(served_png, dpi=110)
    plt.close(fig)

    rows = results["teacher_vs_students"]
    names = list(rows)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    axes[0].bar(names, [rows[n]["served_throughput_rps_c16"] for n in names], label="served, c16")
    axes[0].scatter(
        names,
        [rows[n]["model_images_per_s_batch8"] for n in names],
        color="black",
        marker="_",
        s=400,
        label="model alone, batch 8",
        zorder=3,
    )
    axes[0].set_yscale("log")
    axes[0].set_ylabel("images / s (log)")
    axes[0].legend(fontsize=8)
    axes[1].bar(names, [rows[n]["model_pt_bytes"] / 2**20 for n in names])
    axes[1].set_yscale("log")
    axes[1].set_ylabel("model.pt MB (log)")
    for ax in axes:
        ax.tick_params(axis="x", rotation=30)
        ax.grid(True, axis="y", which="both", alpha=0.3)
    fig.suptitle("Teacher against students: throughput and size")
    fig.tight_layout()
    fig.savefig(models_png, dpi=110)
    plt.close(fig)

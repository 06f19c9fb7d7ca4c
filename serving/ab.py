"""A/B: the same labelled images through two versions of one model on a running server."""

from __future__ import annotations

from pathlib import Path

from distillserve.errors import DistillServeError
from distillserve.serving.rest import InferenceClient, timed_predictions

__all__ = ["format_ab", "labelled_images", "run_ab"]


def labelled_images(data_dir: Path) -> list[tuple[Path, str]]:
    """``DATA_DIR/LABEL/*``: every file with its folder name as the label."""
    if not data_dir.is_dir():
        raise DistillServeError(f"data directory not found: {data_dir}")
    items = [
        (path, folder.name)
        for folder in sorted(p for p in data_dir.iterdir() if p.is_dir())
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    ]
    if not items:
        raise DistillServeError(f"{data_dir} has no LABEL/ folders with images")
    return items


def run_ab(
    client: InferenceClient, model: str, v1: str, v2: str, data_dir: Path, concurrency: int = 8
) -> dict:
    """Accuracy, agreement and latency of versions ``v1`` and ``v2`` on the same images."""
    items = labelled_images(data_dir)
    payloads = [path.read_bytes() for path, _ in items]
    truth = [label for _, label in items]
    runs = {v: timed_predictions(client, model, payloads, concurrency, v) for v in (v1, v2)}
    report = {"model": model, "images": len(items), "versions": {}}
    for version, run in runs.items():
        correct = sum(p == t for p, t in zip(run["labels"], truth))
        report["versions"][version] = {
            "accuracy": correct / len(items),
            "failures": run["failures"],
            "retries": run["retries"],
            "p50_ms": round(run["p50_ms"], 3),
            "p99_ms": round(run["p99_ms"], 3),
            "throughput_rps": round(run["throughput_rps"], 2),
        }
    same = sum(a == b for a, b in zip(runs[v1]["labels"], runs[v2]["labels"]))
    report["agreement"] = same / len(items)
    return report


def format_ab(report: dict) -> str:
    header = (
        f"{'version':<12}{'accuracy':>10}{'failures':>10}{'retries':>9}{'p50 ms':>10}"
        f"{'p99 ms':>10}{'req/s':>10}"
    )
    lines = [f"{report['model']}: {report['images']} labelled images", header, "-" * len(header)]
    for version, r in report["versions"].items():
        lines.append(
            f"{version:<12}{r['accuracy']:>10.2%}{r['failures']:>10}{r['retries']:>9}"
            f"{r['p50_ms']:>10.1f}"
            f"{r['p99_ms']:>10.1f}{r['throughput_rps']:>10.1f}"
        )
    lines.append(f"agreement between versions: {report['agreement']:.2%}")
    return "\n".join(lines)

"""Where a live TorchServe worker spends its time under load: ``py-spy record`` samples the
worker process (idle waits included) while ``bench.served.served_point`` loads it, and every
sampled stack is put in one category, from the innermost frame that names one.

Categories: ``waiting for requests`` (the worker blocked on its socket: the frontend or the
clients are the limit), ``TorchServe protocol`` (reading and writing the worker's socket
messages, its request logging), ``metrics`` (TorchServe's metrics cache writing log lines),
``decode``, ``preprocess``, ``forward``, ``answer`` (top-k and JSON), ``other``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import yaml

from distillserve.archiver import build_archive
from distillserve.bench.served import served_point
from distillserve.serving.management import ManagementClient
from distillserve.serving.server import TorchServe

__all__ = ["CATEGORIES", "categorise", "fixed_serving_archive", "profile_worker"]

# (category, a frame's text contains): the innermost matching frame decides
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("metrics", ("ts/metrics/", "_add_metric")),
    ("decode", ("decode_image", "PIL/")),
    ("preprocess", ("imageprep.py", "preprocess (", "collate (")),
    ("forward", ("inference (", "HandlerCore.forward", "Runtime.__call__", "torch/nn/modules")),
    (
        "answer",
        ("postprocess", "HandlerCore.encode", "topk_answers", "v2_response", "v2_outputs", "json/"),
    ),
    ("TorchServe protocol", ("otf_message_handler", "model_service_worker", "ts/service")),
)
WAITING = "waiting for requests"


def categorise(stack: str) -> str:
    """The category of one collapsed stack (``frame;frame;...`` outermost first)."""
    frames = stack.split(";")
    if "recv" in frames[-1] or "_retrieve_buffer" in frames[-1]:
        return WAITING
    for frame in reversed(frames):
        for category, needles in CATEGORIES:
            if any(needle in frame for needle in needles):
                return category
    return "other"


def profile_worker(
    ts: TorchServe,
    model: str,
    payloads: Sequence[bytes],
    concurrency: int,
    seconds: float,
    rate: int = 100,
) -> dict:
    """Load ``model`` for ``seconds`` and sample its first worker for the middle of it:
    ``{"shares": {category: fraction of samples}, "samples", "point"}``; ``{"skipped": why}``
    without py-spy or when it cannot attach."""
    beside = Path(sys.executable).parent / "py-spy"  # the virtual environment's, off PATH
    spy = str(beside) if beside.is_file() else shutil.which("py-spy")
    management = ManagementClient(ts.management_url, ts.keys().get("management"))
    pid = management.describe(model)[0]["workers"][0]["pid"]
    result: dict = {}
    load = threading.Thread(
        target=lambda: result.update(point=served_point(ts, model, payloads, concurrency, seconds))
    )
    load.start()
    if spy is None:
        load.join()
        return {"skipped": "py-spy is not installed (pip install py-spy)", **result}
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "stacks.txt"
        command = [spy, "record", "--pid", str(pid), "--rate", str(rate), "--idle"]
        command += ["--duration", str(max(1, int(seconds / 2))), "--format", "raw"]
        done = subprocess.run(
            [*command, "-o", str(raw), "--nonblocking"],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=False,
        )
        load.join()
        if done.returncode != 0 or not raw.is_file():
            why = f"py-spy could not sample the worker: {done.stderr.strip()[-300:]}"
            return {"skipped": why, **result}
        counts: Counter[str] = Counter()
        for line in raw.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                counts[categorise(stack)] += int(count)
    total = sum(counts.values()) or 1
    return {
        "samples": total,
        "shares": {k: round(v / total, 3) for k, v in counts.most_common()},
        "point": result.get("point", {}),
    }


def fixed_serving_archive(
    artifact: Path, store: Path, name: str, workers: int, threads: int, work: Path
) -> Path:
    """``artifact`` archived as ``name`` with fixed workers and threads instead of its recipe's
    (``auto``): the lever the bench measures against what ``auto`` chose."""
    copy = work / name
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(artifact, copy, ignore=shutil.ignore_patterns("student-fp32", "teacher"))
    recipe = yaml.safe_load((copy / "recipe.yaml").read_text())
    fixed = {"min_workers": workers, "max_workers": workers, "threads": threads}
    recipe["archive"] = {**recipe.get("archive", {}), **fixed, "model_name": name}
    (copy / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    handler = yaml.safe_load((copy / "handler.yaml").read_text())
    (copy / "handler.yaml").write_text(yaml.safe_dump({**handler, "threads": threads}))
    return build_archive(copy, store, model_name=name, force=True).path

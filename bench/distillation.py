"""The "distillation" section of ``make bench``: training images per second, 1 process against
2 (torchrun, gloo), the teacher's outputs cached against recomputed every step.

Two cases, each run in its own process(es) through this module's ``main``:

- ``digits``: the digits recipe's student distilled from the bench build's teacher (its
  TorchScript file), without augmentation so that the cache applies; accuracy on the test split.
- ``resnet``: ResNet-50 (random weights, frozen) into ResNet-18 at 64x64 on random images.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

__all__ = ["distillation_markdown", "main", "measure_distillation"]

CASES = ("digits", "resnet")


def _digits(args: argparse.Namespace) -> dict:
    from distillserve.students.distill import evaluate
    from distillserve.students.recipe import Recipe, merge
    from distillserve.students.stages import distill_student, load_data, make_teacher

    raw = merge(
        yaml.safe_load(Path(args.recipe).read_text()),
        {
            "teacher": {"checkpoint": args.teacher, "members": 1},
            "distill": {
                "augment": False,
                "cache_teacher_outputs": args.cache == "on",
                "epochs": args.epochs,
            },
        },
    )
    recipe = Recipe.from_dict(raw)
    torch.manual_seed(recipe.seed)
    data = load_data(recipe, lambda _m: None)
    teacher = make_teacher(recipe, data, lambda _m: None, None)
    distilled = distill_student(recipe, data, teacher, lambda _m: None)
    return {**distilled.throughput, "test_accuracy": evaluate(distilled.model, data.test)}


def _resnet(args: argparse.Namespace) -> dict:
    from torch.utils.data import DataLoader, TensorDataset

    from distillserve.students.distill_settings import DistillSettings
    from distillserve.students.training import train
    from distillserve.students.zoo import build_model

    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.images, 3, 64, 64, generator=generator)
    labels = torch.randint(0, 10, (args.images,), generator=generator)
    loader = DataLoader(
        TensorDataset(images, labels), batch_size=32, shuffle=True, generator=generator
    )
    val = [(images[:64], labels[:64])]
    torch.manual_seed(0)
    teacher = build_model("resnet50", 10, 3).eval()
    student = build_model("resnet18", 10, 3)
    settings = DistillSettings(
        epochs=args.epochs,
        lr=0.01,
        weight_decay=0.0,
        teachers=[teacher],
        cache_teacher_outputs=args.cache == "on",
    )
    result = train(student, loader, val, settings)
    return {
        "distill_images_per_s": result.images_per_s,
        "distill_teacher_share": result.teacher_share,
        "teacher_outputs": result.teacher_outputs,
    }


def main(argv: list[str] | None = None) -> None:
    """One measurement, in this process or in each of torchrun's; rank 0 prints one JSON line."""
    from distillserve.students import distributed

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("case", choices=CASES)
    parser.add_argument("--cache", choices=("on", "off"), default="on")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--recipe", default="recipes/digits.yaml")
    parser.add_argument("--teacher", help="the digits teacher's TorchScript file")
    parser.add_argument("--images", type=int, default=512)
    args = parser.parse_args(argv)
    distributed.init_from_env()
    started = time.perf_counter()
    out = _digits(args) if args.case == "digits" else _resnet(args)
    if distributed.is_main():
        seconds = round(time.perf_counter() - started, 2)
        print(json.dumps({**out, "processes": distributed.world_size(), "seconds": seconds}))
    distributed.shutdown()


def _run(nproc: int, args: list[str]) -> dict:
    from distillserve.students.distributed import launch_command

    module = "distillserve.bench.distillation"
    command = (
        launch_command(nproc, args, module) if nproc > 1 else [sys.executable, "-m", module, *args]
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc))}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_distillation(
    teacher: Path,
    recipe: str | Path,
    *,
    digits_epochs: int,
    resnet_images: int,
    log: Callable[[str], None],
) -> list[dict]:
    """Every (case, processes, cache) combination; one row each (no resnet case when
    ``resnet_images`` is 0)."""
    rows = []
    for case in CASES if resnet_images else CASES[:1]:
        extra = (
            ["--teacher", str(teacher), "--recipe", str(recipe), "--epochs", str(digits_epochs)]
            if case == "digits"
            else ["--images", str(resnet_images)]
        )
        for nproc in (1, 2):
            for cache in ("off", "on"):
                row = _run(nproc, [case, "--cache", cache, *extra])
                rows.append({"case": case, "cache": cache, **row})
                log(
                    f"distillation {case}, {nproc} process(es), cache {cache}: "
                    f"{row['distill_images_per_s']:,.0f} images/s"
                )
    return rows


def distillation_markdown(rows: list[dict]) -> list[str]:
    """The README table of the distillation section."""
    if not rows:
        return []
    lines = [
        "",
        "**Distillation** (training images/s over all processes; digits: the recipe's student "
        "from the bench build's teacher, no augmentation, test accuracy after its epochs; "
        "resnet: ResNet-50 into ResNet-18 at 64x64 on random images; 2 processes = torchrun "
        "with gloo, the cores split between them):",
        "",
        "| case | processes | teacher outputs | images/s | × uncached, same processes | "
        "time in teacher | test accuracy |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        base = next(
            r
            for r in rows
            if r["case"] == row["case"]
            and r["processes"] == row["processes"]
            and r["cache"] == "off"
        )
        speedup = row["distill_images_per_s"] / max(base["distill_images_per_s"], 1e-9)
        accuracy = f"{row['test_accuracy']:.2%}" if "test_accuracy" in row else "–"
        outputs = "cached" if row["teacher_outputs"].startswith("cached") else "recomputed"
        lines.append(
            f"| {row['case']} | {row['processes']} | {outputs} | "
            f"{row['distill_images_per_s']:,.0f} | {speedup:.2f}× | "
            f"{row['distill_teacher_share']:.0%} | {accuracy} |"
        )
    return lines


if __name__ == "__main__":
    main()

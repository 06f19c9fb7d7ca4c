"""The distillation line of ``bench --text``: the recipe's student distilled from its teacher
against the same student trained on the labels alone for the same epochs, at several student
seeds (``distill.seed``: the students' initialisation, dropout and batch order; the data split
and the teacher stay the recipe's). One seed is not enough: trained from scratch on a few
thousand sentences, the labels-only student's test accuracy moves by several points with its
seed alone."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from statistics import mean

import yaml

__all__ = ["kd_against_labels_only", "kd_lines", "student_accuracy"]

# what a student built only for its accuracy skips: int8, and every format but one
_LIGHT = {
    "quantize": {"mode": "none"},
    "export": {"formats": ["onnx"], "teacher_formats": ["torchscript"]},
}


def student_accuracy(
    recipe_path: str, work: Path, seed: int, labels_only: bool, log: Callable[[str], None]
) -> float:
    """Test accuracy of the recipe's fp32 student at student seed ``seed``: distilled as the
    recipe says, or (``labels_only``) on the labels alone, with no soft targets, no teacher
    losses and no initialisation from the teacher."""
    from distillserve.students.pipeline import build
    from distillserve.students.recipe import Recipe, merge

    kind = "labels-only" if labels_only else "kd"
    overrides: dict = {"name": f"{kind}-seed{seed}", "distill": {"seed": seed}, **_LIGHT}
    if labels_only:
        overrides["distill"].update(alpha=0.0, hidden_weight=0.0, attention_weight=0.0)
        overrides["student"] = {"init": "scratch"}
    raw = merge(yaml.safe_load(Path(recipe_path).read_text()), overrides)
    built = build(
        Recipe.from_dict(raw), work / "build", teacher_cache_dir=Path("build/teacher-cache")
    )
    accuracy = built.metrics["student"]["test_accuracy"]
    log(f"text: the student ({kind}, seed {seed}): test accuracy {accuracy:.4f}")
    return accuracy


def kd_against_labels_only(
    recipe_path: str,
    work: Path,
    built_metrics: dict,
    seed: int,
    extra_seeds: Sequence[int],
    log: Callable[[str], None],
) -> dict:
    """Both students at the recipe's student seed ``seed`` (the distilled one from the build,
    ``built_metrics``) and at each of ``extra_seeds``; the means and the smallest gain."""
    rows = [
        {
            "seed": seed,
            "kd": built_metrics["student-fp32"]["test_accuracy"],
            "labels_only": student_accuracy(recipe_path, work, seed, True, log),
        }
    ]
    for other in extra_seeds:
        rows.append(
            {
                "seed": other,
                "kd": student_accuracy(recipe_path, work, other, False, log),
                "labels_only": student_accuracy(recipe_path, work, other, True, log),
            }
        )
    return {
        "teacher": built_metrics["teacher"]["test_accuracy"],
        "kd_student": mean(r["kd"] for r in rows),
        "labels_only_student": mean(r["labels_only"] for r in rows),
        "seeds": rows,
        "least_gain": min(r["kd"] - r["labels_only"] for r in rows),
    }


def kd_lines(kd: dict) -> list[str]:
    """The distillation line (a run of one seed, as recorded before seeds, reads as such)."""
    gain = (kd["kd_student"] - kd["labels_only_student"]) * 100
    rows = kd.get("seeds")
    if not rows:
        return [
            f"Distillation: the fp32 student distilled from the teacher ({kd['teacher']:.2%}) "
            f"reaches {kd['kd_student']:.2%} on the test split, the same student trained on the "
            f"labels alone for the same epochs {kd['labels_only_student']:.2%} "
            f"({gain:+.1f} points)."
        ]
    each = "; ".join(
        f"seed {r['seed']}: {r['kd']:.2%} against {r['labels_only']:.2%} "
        f"({(r['kd'] - r['labels_only']) * 100:+.1f})"
        for r in rows
    )
    verdict = "meets" if gain >= 1.0 else "misses"
    every = "and at every seed" if kd["least_gain"] >= 0.01 else "but not at every seed"
    return [
        f"Distillation, over {len(rows)} student seeds (each student's initialisation, dropout "
        f"and batch order; the split and the teacher, {kd['teacher']:.2%}, fixed): the fp32 "
        f"student distilled from the teacher reaches {kd['kd_student']:.2%} on the test split "
        f"on average, the same student trained on the labels alone for the same epochs "
        f"{kd['labels_only_student']:.2%} ({gain:+.1f} points); {each}.",
        f"Target, at least 1 point from distillation: {verdict} it on the mean of the seeds "
        f"({gain:+.1f}), {every} (the least {kd['least_gain'] * 100:+.1f}).",
    ]

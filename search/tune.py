"""``distillserve tune``: search the recipe's ``tune:`` space for the fastest (or smallest)
student that keeps the teacher's validation accuracy within a budget.

A multi-objective Optuna study (NSGA-II) maximises validation accuracy and minimises the cost
(int8 batch-1 latency with one worker's threads, file size, or, for ``served``, latency during
the search and served throughput through a real TorchServe for the final candidates). The first
trial is the recipe itself, so the hand-written student is measured beside the others. The
teacher is trained once (teacher cache) and every trial reuses it. Optuna's pruners are
single-objective (``trial.report`` is not available to a multi-objective study), so a trial is
pruned by a threshold instead: from half its epochs on, a student whose best validation accuracy
is more than ``tune.prune_margin`` below the target (teacher's minus the budget) stops. The
cheapest students within the budget are then cross-validated on the training split before one
is chosen (``search.tune_choice``): the small validation split cannot tell them apart, and the
cheapest of many that pass it is the luckiest draw. The check adds up to (``tune.finalists`` + 1)
x ``tune.cv_folds`` trainings (said before the search starts; ``--cv-folds 0`` skips it), and
``--time-limit`` bounds the whole run: a check that would not finish in time is not started.

The study lives in ``OUT/study.db`` (SQLite): the same command after an interruption resumes it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

from distillserve.errors import DistillServeError, RecipeError
from distillserve.log import progress
from distillserve.search.tune_cv import cross_validated_accuracy
from distillserve.students.pipeline import build
from distillserve.students.recipe import Recipe, load_recipe, merge

__all__ = ["OBJECTIVES", "run_tune", "trial_overrides"]

OBJECTIVES = ("latency", "size", "served")
COST_KEYS = {"latency": "latency_ms_batch1", "size": "size_bytes", "served": "latency_ms_batch1"}


_log = progress("tune")


def _scaled_student(recipe: Recipe, width: float, depth: int) -> dict:
    """``tiny_cnn`` kwargs with every stage ``width`` times as wide and ``depth`` stages (the
    last stage repeated at stride 1 to go deeper, trailing stages dropped to go shallower)."""
    kwargs = recipe.student.kwargs
    widths = list(kwargs.get("widths", (16, 32, 32)))
    strides = list(kwargs.get("strides", (1, 2, 2)))
    while len(widths) < depth:
        widths.append(widths[-1])
        strides.append(1)
    widths, strides = widths[:depth], strides[:depth]
    return {**kwargs, "widths": [max(4, round(w * width)) for w in widths], "strides": strides}


def trial_overrides(recipe: Recipe, params: dict) -> dict:
    """The recipe keys one trial's parameters set (merged over the resolved recipe)."""
    tune = recipe.tune
    out: dict = {"distill": {}, "student": {}}
    if tune.epochs:
        out["distill"]["epochs"] = tune.epochs
    if "width" in params or "depth" in params:
        depth = params.get("depth", len(recipe.student.kwargs.get("widths", (16, 32, 32))))
        out["student"]["kwargs"] = _scaled_student(recipe, params.get("width", 1.0), depth)
        out["student"]["max_params"] = 0  # the search decides the size
    for key in ("temperature", "alpha"):
        if key in params:
            out["distill"][key] = params[key]
    if "feature_kd" in params:
        out["distill"]["feature"] = tune.feature.to_dict() if params["feature_kd"] else None
    if "prune_amount" in params:
        amount = params["prune_amount"]
        out["prune"] = {"method": "channel" if amount > 0 else "none", "amount": amount}
    if "quantize" in params:
        out["quantize"] = {"mode": params["quantize"]}
    return {key: value for key, value in out.items() if value}


def _suggest(trial, recipe: Recipe) -> dict:
    """The trial's parameters from the recipe's ``tune:`` space."""
    tune, params = recipe.tune, {}
    if tune.width:
        params["width"] = trial.suggest_float("width", *tune.width, step=0.125)
    if tune.depth:
        params["depth"] = trial.suggest_int("depth", *tune.depth)
    if tune.temperature:
        params["temperature"] = trial.suggest_float("temperature", *tune.temperature)
    if tune.alpha:
        params["alpha"] = trial.suggest_float("alpha", *tune.alpha)
    if tune.feature_kd:
        params["feature_kd"] = trial.suggest_categorical("feature_kd", [False, True])
    if tune.prune_amount:
        params["prune_amount"] = trial.suggest_float("prune_amount", *tune.prune_amount, step=0.05)
    if tune.quantize:
        params["quantize"] = trial.suggest_categorical("quantize", list(tune.quantize))
    return params


def _reference_params(recipe: Recipe) -> dict:
    """The recipe's own values in the space's terms: trial 0, the hand-written student."""
    tune, kd = recipe.tune, recipe.distill
    params: dict = {}
    if tune.width:
        params["width"] = min(max(1.0, tune.width[0]), tune.width[1])
    if tune.depth:
        params["depth"] = len(recipe.student.kwargs.get("widths", (16, 32, 32)))
    if tune.temperature:
        params["temperature"] = kd.temperature
    if tune.alpha:
        params["alpha"] = kd.alpha
    if tune.feature_kd:
        params["feature_kd"] = kd.feature is not None
    if tune.prune_amount:
        params["prune_amount"] = recipe.prune.amount if recipe.prune.method == "channel" else 0.0
    if tune.quantize:
        mode = recipe.quantize.mode
        params["quantize"] = mode if mode in tune.quantize else tune.quantize[0]
    return params


def _study_name(recipe: Recipe, objective: str) -> str:
    space = json.dumps(recipe.tune.to_dict(), sort_keys=True)
    digest = hashlib.sha256(f"{recipe.name}|{objective}|{space}".encode()).hexdigest()[:10]
    return f"{recipe.name}-{objective}-{digest}"


def _finished_twin(study, params: dict):
    """A finished trial with exactly these parameters (``None`` if there is none)."""
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return next((t for t in complete if t.params == params), None)


class _Threshold:
    """Stops a trial from half its epochs on when its best validation accuracy is more than
    ``margin`` below ``target`` (``None``: nothing to compare with yet)."""

    def __init__(self, target: float | None, margin: float) -> None:
        self.target, self.margin, self.best = target, margin, 0.0

    def __call__(self, epoch: int, epochs: int, val_accuracy: float) -> None:
        import optuna

        self.best = max(self.best, val_accuracy)
        if self.target is None or epoch + 1 < max(2, epochs // 2):
            return
        if self.best < self.target - self.margin:
            raise optuna.TrialPruned(
                f"validation accuracy {self.best:.4f} at epoch {epoch + 1}/{epochs} is more "
                f"than {self.margin:g} below the target {self.target:.4f}"
            )


def _median_trial_seconds(study) -> float:
    """The median wall time of the study's finished trials (a training's cost, about)."""
    seconds = sorted(
        t.duration.total_seconds() for t in study.trials if t.state.is_finished() and t.duration
    )
    return seconds[len(seconds) // 2] if seconds else 0.0


def run_tune(
    recipe_path: str | Path,
    *,
    budget: float = 0.01,
    trials: int = 20,
    time_limit: float | None = None,
    cv_folds: int | None = None,
    objective: str = "latency",
    out: str | Path = "build/tune",
    teacher_cache_dir: str | Path | None = "build/teacher-cache",
    log: Callable[[str], None] = _log,
) -> dict:
    """Run (or resume) the study and write ``report.json``, ``report.md``, ``pareto.png`` and
    ``best.yaml`` under ``out``; returns the report.

    ``time_limit`` bounds the whole run, the finalists' cross-validation included: a finalist
    whose check would not finish in time is not started, and the choice says so. ``cv_folds``
    overrides ``tune.cv_folds`` (0: no cross-validation)."""
    import optuna
    from tqdm.auto import tqdm

    from distillserve.search import tune_choice, tune_report

    if objective not in OBJECTIVES:
        raise RecipeError(None, f"--objective must be one of: {', '.join(OBJECTIVES)}")
    if not 0.0 <= budget <= 1.0:
        raise RecipeError(None, f"--budget is a fraction between 0 and 1, got {budget}")
    recipe_path = Path(recipe_path)
    recipe = load_recipe(recipe_path)
    if not recipe.tune.searches():
        raise RecipeError(
            "tune", "the recipe declares no search space (see recipes/digits-tune.yaml)"
        )
    folds = recipe.tune.cv_folds if cv_folds is None else cv_folds
    if folds != 0 and not 2 <= folds <= 20:
        raise RecipeError(None, f"--cv-folds must be 0 (off) or 2 to 20, got {folds}")
    if folds:
        checks = (recipe.tune.finalists + 1) * folds
        log(
            f"after the trials, cross-validation checks up to {recipe.tune.finalists} finalists "
            f"and the recipe: up to {checks} more trainings ({folds} folds each; --cv-folds 0 "
            f"skips it{', --time-limit bounds it too' if time_limit else ''})"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=_study_name(recipe, objective),
        storage=f"sqlite:///{(out / 'study.db').resolve()}",
        directions=["maximize", "minimize"],
        sampler=optuna.samplers.NSGAIISampler(seed=recipe.seed, population_size=8),
        load_if_exists=True,
    )
    done = [t for t in study.trials if t.state.is_finished()]
    if not study.trials:
        study.enqueue_trial(_reference_params(recipe), user_attrs={"reference": True})
    remaining = max(0, trials - len(done))
    if done:
        log(f"resuming {study.study_name}: {len(done)} trial(s) finished, {remaining} to go")
    base = recipe.to_dict()
    cost_key = COST_KEYS[objective]
    bar = tqdm(total=remaining, desc="tune", unit="trial", dynamic_ncols=True, disable=None)

    def objective_fn(trial) -> tuple[float, float]:
        params = _suggest(trial, recipe)
        same = _finished_twin(study, params)
        if same is not None:  # NSGA-II proposes a finished point again: reuse, do not retrain
            for key, value in same.user_attrs.items():
                if key != "reference":
                    trial.set_user_attr(key, value)
            trial.set_user_attr("twin_of", same.number)
            return tuple(same.values)
        overrides = trial_overrides(recipe, params)
        raw = merge(base, overrides)
        raw["name"] = f"{recipe.name}-t{trial.number:04d}"
        trial_recipe = Recipe.from_dict(raw)
        target = study.user_attrs.get("teacher_val_accuracy")
        threshold = _Threshold(
            None if target is None else target - budget, recipe.tune.prune_margin
        )
        try:
            result = build(
                trial_recipe,
                out / "trials",
                log=lambda _: None,
                teacher_cache_dir=teacher_cache_dir,
                on_epoch=threshold,
            )
        except DistillServeError as err:  # an infeasible point of the space, not a crash
            trial.set_user_attr("error", str(err))
            raise optuna.TrialPruned(str(err)) from None
        student, teacher = result.metrics["student"], result.metrics["teacher"]
        if "teacher_val_accuracy" not in study.user_attrs:
            study.set_user_attr("teacher_val_accuracy", teacher["val_accuracy"])
            study.set_user_attr("teacher_test_accuracy", teacher["test_accuracy"])
            study.set_user_attr("teacher", {k: teacher[k] for k in tune_report.SUMMARY})
        trial.set_user_attr("metrics", {k: student[k] for k in tune_report.SUMMARY})
        trial.set_user_attr("artifact", str(result.root))
        trial.set_user_attr("overrides", overrides)
        return student["val_accuracy"], student[cost_key]

    def progress(study, trial) -> None:
        bar.update(1)
        best = tune_report.best_so_far(study, budget, cost_key)
        if best:
            bar.set_postfix(best=f"#{best.number} {best.values[1]:.4g}", refresh=False)

    started = time.perf_counter()
    interrupted = False
    try:
        if remaining:
            study.optimize(
                objective_fn, n_trials=remaining, timeout=time_limit, callbacks=[progress]
            )
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: the finished trials are kept; run the same command to resume")
    finally:
        bar.close()
    per_training = _median_trial_seconds(study)
    deadline = started + time_limit if time_limit else None

    def confirm(row: dict, floor: float) -> dict:
        """The trial's student cross-validated (``search.tune_cv``, stopped once it cannot reach
        ``floor``), kept in the study so that a re-run does not repeat it."""
        nonlocal interrupted
        key = f"{row['trial']}/{folds}"
        before = study.user_attrs.get("cv", {}).get(key)
        if before and (before.get("complete", True) or floor >= before["floor"]):
            return before
        needed = folds * per_training
        if deadline is not None and time.perf_counter() + needed > deadline:
            left = max(0.0, deadline - time.perf_counter())
            raise tune_choice.OutOfTime(
                f"--time-limit leaves {left:.0f} s, and cross-validating trial {row['trial']} "
                f"takes about {needed:.0f} s ({folds} trainings): not checked; run again with a "
                "larger --time-limit (the study and the checks done resume)"
            )
        log(
            f"cross-validating trial {row['trial']} ({folds} folds of the training split, "
            f"about {needed / 60:.1f} min)"
        )
        raw = merge(base, row["overrides"])
        raw["name"] = f"{recipe.name}-cv{row['trial']:04d}"
        try:
            result = cross_validated_accuracy(
                Recipe.from_dict(raw), folds, teacher_cache_dir, log, floor
            )
        except KeyboardInterrupt:
            interrupted = True
            raise
        study.set_user_attr("cv", {**study.user_attrs.get("cv", {}), key: result})
        return result

    report = tune_report.write(
        study,
        recipe,
        recipe_path,
        out,
        budget=budget,
        objective=objective,
        started=started,
        log=log,
        confirm=confirm if folds and not interrupted else None,
        unconfirmed=(
            "interrupted before the cross-validation check: chosen on validation accuracy "
            "alone; run the same command again to check it"
            if interrupted
            else "chosen on validation accuracy alone (tune.cv_folds: 0)"
        ),
    )
    report["interrupted"] = interrupted
    return report

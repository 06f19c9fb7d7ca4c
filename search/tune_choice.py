"""How ``distillserve tune`` chooses its student among the finished trials, and the verdict it
writes about the choice and about what the search space allows at best.

Candidates are the students whose validation accuracy is within the budget of the teacher's,
cheapest first (costs within ``TIE`` of each other count as equal, won by the student with fewer
parameters). The validation split is small, so before one is chosen the cheapest candidates
(up to ``tune.finalists``) are checked by cross-validation on the training split
(``search.tune_cv``): the first whose cross-validated accuracy is also within the budget wins.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["TIE", "OutOfTime", "choose", "limits", "ranked", "verdict"]

TIE = 0.03  # costs within 3% of the cheapest are measurement noise apart


def ranked(good: list[dict], cost: str) -> list[dict]:
    """``good`` cheapest first; costs within ``TIE`` of each other are ranked by parameters,
    then by validation accuracy. Rows measured through TorchServe (``served_rps``) come first,
    the highest throughput first."""
    rest = sorted(good, key=lambda r: r[cost])
    order: list[dict] = []
    while rest:
        tied = [r for r in rest if r[cost] <= rest[0][cost] * (1 + TIE)]
        tied.sort(key=lambda r: (r["params"], -r["val_accuracy"], r[cost]))
        order += tied
        rest = [r for r in rest if all(r is not t for t in tied)]
    served = sorted((r for r in order if r.get("served_rps")), key=lambda r: -r["served_rps"])
    return served + [r for r in order if not r.get("served_rps")]


class OutOfTime(Exception):
    """The run's time limit leaves no time to cross-validate the next finalist."""


def choose(
    candidates: list[dict],
    floor: float,
    finalists: int,
    confirm: Callable[[dict, float], dict] | None,
    log: Callable[[str], None],
) -> tuple[dict | None, str]:
    """The first candidate whose cross-validated accuracy (``confirm(row, floor)``, stored in the
    row as ``cv_accuracy``/``cv``) is at least ``floor``, among the first ``finalists`` and then
    the recipe as written (the ``reference`` row) when it is a candidate too: when no cheaper
    student keeps the budget, the answer is to keep the recipe. Without ``confirm``, the first
    candidate. Returns the choice and a sentence on how it was made."""
    if not candidates:
        return None, ""
    if confirm is None:
        return candidates[0], "chosen on validation accuracy alone"
    checked = []
    try:
        fallback = [r for r in candidates[finalists:] if r.get("reference")]
        for row in candidates[:finalists] + fallback:
            result = confirm(row, floor)
            row["cv"], row["cv_accuracy"] = result, result["accuracy"]
            checked.append(row)
            log(f"trial {row['trial']}: cross-validated accuracy {_cv_text(result)}")
            if result.get("complete", True) and result["accuracy"] >= floor:
                return row, _how(checked, floor)
    except KeyboardInterrupt:
        log("interrupted during cross-validation: no student confirmed")
        return None, "cross-validation was interrupted before a candidate passed it"
    except OutOfTime as stop:
        log(str(stop))
        unchecked = [r for r in candidates if all(r is not c for c in checked)]
        if not unchecked:
            return None, _how(checked, floor)
        return unchecked[0], f"chosen on validation accuracy alone: {stop}"
    return None, _how(checked, floor)


def _cv_text(result: dict) -> str:
    """``99.06% (1156/1167, 5 folds)``, or the folds run when it stopped early."""
    text = f"{result['accuracy']:.2%} ({result['correct']}/{result['images']}"
    if result.get("complete", True):
        return f"{text}, {result['folds']} folds)"
    done = len(result["fold_accuracies"])
    return f"{text} after {done} of {result['folds']} folds: already below the floor)"


def _how(checked: list[dict], floor: float) -> str:
    last = checked[-1]
    passed = last["cv"].get("complete", True) and last["cv_accuracy"] >= floor
    failed = checked[:-1] if passed else checked
    text = (
        f"cross-validation ({last['cv']['folds']} folds over the training split) needed at "
        f"least {floor:.2%}"
    )
    if passed:
        text += f", trial {last['trial']} has {_cv_text(last['cv'])}"
    if failed:
        text += "; rejected, cheaper but below it: " + ", ".join(
            f"trial {r['trial']} ({_cv_text(r['cv'])}; validation {r['val_accuracy']:.2%})"
            for r in failed
        )
    return text


def verdict(best: dict, reference: dict | None, how: str) -> str:
    """The chosen student against the recipe as written (trial 0)."""
    fmt = best.get("format", "model")
    cv = best.get("cv_accuracy")
    text = (
        f"Chosen: trial {best['trial']}: {best['space']}; validation {best['val_accuracy']:.2%}"
        + (f", cross-validated {cv:.2%}" if cv is not None else "")
        + f", test {best['test_accuracy']:.2%}, {best['latency_ms_batch1']:.4f} ms at batch 1 "
        f"({fmt}), {best['size_bytes']:,} bytes ({how})."
    )
    if best is reference:
        text += (
            " It is the recipe as written: no cheaper student of this search kept the budget "
            "under cross-validation."
        )
    elif reference is not None:
        speed = reference["latency_ms_batch1"] / best["latency_ms_batch1"]
        size = reference["size_bytes"] / best["size_bytes"]
        fewer = reference["params"] / best["params"]
        text += (
            f" Against the recipe as written (trial {reference['trial']}): {speed:.2f}x faster "
            f"at batch 1, {size:.2f}x smaller {fmt} file, {fewer:.1f}x fewer parameters; its "
            f"validation {reference['val_accuracy']:.2%}, test {reference['test_accuracy']:.2%}."
        )
    return text


def limits(done: list[dict], reference: dict | None, best: dict | None, floor: float) -> str:
    """What the whole space allows at best: the fastest and the smallest student of all trials,
    whatever their accuracy, against the recipe as written, and why from the numbers; then what
    kept the students that are 2x smaller or faster from being chosen."""
    if reference is None or not done:
        return ""
    return _extremes(done, reference) + _twice_as_cheap(done, reference, best, floor)


def _twice_as_cheap(done: list[dict], reference: dict, best: dict | None, floor: float) -> str:
    half = [
        r
        for r in done
        if 2 * r["size_bytes"] <= reference["size_bytes"]
        or 2 * r["latency_ms_batch1"] <= reference["latency_ms_batch1"]
    ]
    if not half or (best is not None and best in half):
        return ""
    names = ", ".join(str(r["trial"]) for r in half)
    text = f" {len(half)} student(s) are 2x smaller or faster than the recipe's (trials {names})"
    kept = [r for r in half if r["val_accuracy"] >= floor]
    if not kept:
        top = max(half, key=lambda r: r["val_accuracy"])
        return text + (
            f": none keeps the budget on validation (the best, trial {top['trial']}, "
            f"{top['val_accuracy']:.2%} against at least {floor:.2%})."
        )
    checked = [r for r in kept if r.get("cv_accuracy") is not None]
    text += f"; {len(kept)} keep the budget on validation"
    if checked:
        text += ", but not under cross-validation: " + ", ".join(
            f"trial {r['trial']} {_cv_text(r['cv'])}" for r in checked
        )
        text += f" against at least {floor:.2%}"
    unchecked = [str(r["trial"]) for r in kept if r.get("cv_accuracy") is None]
    if unchecked:
        text += f"; not cross-validated (beyond tune.finalists): trials {', '.join(unchecked)}"
    return text + "."


def _extremes(done: list[dict], reference: dict) -> str:
    fmt = reference.get("format", "model")
    fastest = min(done, key=lambda r: r["latency_ms_batch1"])
    smallest = min(done, key=lambda r: r["size_bytes"])
    speed = reference["latency_ms_batch1"] / fastest["latency_ms_batch1"]
    size = reference["size_bytes"] / smallest["size_bytes"]
    fewer = reference["params"] / fastest["params"]
    text = (
        f" The limits of this space, whatever the accuracy: the fastest student (trial "
        f"{fastest['trial']}, {fastest['params']:,} params) is {speed:.2f}x faster than the "
        f"recipe's at batch 1 and the smallest file (trial {smallest['trial']}, "
        f"{smallest['params']:,} params) {size:.2f}x smaller."
    )
    if speed < 2:
        text += (
            f" No student here can be 2x faster: {fewer:.0f}x fewer parameters buy {speed:.2f}x, "
            f"so batch-1 latency at this input size is the fixed cost of one {fmt} call "
            "(input conversion, dispatch, quantize/dequantize), not the model's arithmetic."
        )
    weights = smallest.get("weight_bytes")
    if size < 2 and weights is not None:
        fixed = smallest["size_bytes"] - weights
        ref_weights = reference.get("weight_bytes") or 0
        text += (
            f" No file here can be 2x smaller: the smallest is "
            f"{smallest['size_bytes'] / 1024:.1f} KB, of which {weights / 1024:.1f} KB are "
            f"weights (the recipe's: {ref_weights / 1024:.1f} KB) and {fixed / 1024:.1f} KB the "
            f"{fmt} graph and metadata that every model of this shape carries."
        )
    return text

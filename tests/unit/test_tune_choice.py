"""How ``distillserve tune`` chooses among the students within the budget: cheapest first, ties
by parameters, and only a student whose cross-validated accuracy also keeps the budget."""

from __future__ import annotations

from distillserve.search.tune_choice import choose, limits, ranked, verdict


def row(trial: int, latency: float, params: int, val: float = 1.0, **extra) -> dict:
    return {
        "trial": trial,
        "latency_ms_batch1": latency,
        "size_bytes": 10_000 + params,
        "weight_bytes": params,
        "params": params,
        "val_accuracy": val,
        "test_accuracy": val,
        "space": {"width": trial},
        "reference": trial == 0,
        "format": "onnx",
        **extra,
    }


def cv_result(accuracy: float) -> dict:
    return {"accuracy": accuracy, "correct": round(accuracy * 1000), "images": 1000, "folds": 5}


def test_candidates_are_ranked_cheapest_first_and_near_ties_by_parameters():
    rows = [row(0, 0.040, 14_000), row(1, 0.0200, 3_000), row(2, 0.0205, 1_000), row(3, 0.03, 9)]
    assert [r["trial"] for r in ranked(rows, "latency_ms_batch1")] == [2, 1, 3, 0]
    served = [row(1, 0.02, 3_000, served_rps=500.0), row(2, 0.03, 1_000, served_rps=900.0)]
    assert [r["trial"] for r in ranked(served, "latency_ms_batch1")] == [2, 1]


def test_a_cheaper_student_that_fails_cross_validation_is_passed_over():
    candidates = [row(2, 0.02, 1_000), row(1, 0.03, 3_000), row(0, 0.04, 14_000)]
    scores = {2: 0.97, 1: 0.995, 0: 0.998}
    asked = []

    def confirm(r: dict, floor: float) -> dict:
        assert floor == 0.99
        asked.append(r["trial"])
        return cv_result(scores[r["trial"]])

    best, how = choose(candidates, 0.99, finalists=3, confirm=confirm, log=lambda _: None)
    assert best["trial"] == 1 and asked == [2, 1]  # the third is never trained
    assert best["cv_accuracy"] == 0.995 and candidates[0]["cv_accuracy"] == 0.97
    assert "rejected" in how and "trial 2 (97.00%" in how
    text = verdict(best, candidates[2], how)
    assert "cross-validated 99.50%" in text and "trial 2 (97.00%" in text


def test_no_student_is_chosen_when_no_finalist_keeps_the_budget():
    candidates = [row(2, 0.02, 1_000), row(1, 0.03, 3_000), row(3, 0.04, 14_000)]
    best, how = choose(
        candidates, 0.99, finalists=2, confirm=lambda r, f: cv_result(0.9), log=lambda _: None
    )
    assert best is None and "rejected" in how
    assert "cv_accuracy" not in candidates[2]  # beyond the finalists: not trained

    def interrupted(_row: dict, _floor: float) -> dict:
        raise KeyboardInterrupt

    best, how = choose(candidates, 0.99, 2, interrupted, log=lambda _: None)
    assert best is None and "interrupted" in how
    best, how = choose(candidates, 0.99, 2, None, log=lambda _: None)
    assert best["trial"] == 2 and "validation accuracy alone" in how


def test_the_limits_say_from_the_numbers_why_nothing_is_2x_faster_or_smaller():
    done = [row(0, 0.040, 8_000), row(1, 0.036, 1_000)]
    text = limits(done, done[0], done[0], 0.99)
    assert "1.11x faster" in text and "8x fewer parameters buy 1.11x" in text
    assert "fixed cost of one onnx call" in text
    assert "1.64x smaller" in text and "No file here can be 2x smaller" in text
    assert "1.0 KB are weights (the recipe's: 7.8 KB) and 9.8 KB the onnx graph" in text
    fast = [row(0, 0.040, 14_000), row(1, 0.010, 1_000, size_bytes=2_000)]
    assert "No student here can be 2x faster" not in limits(fast, fast[0], fast[1], 0.99)


def test_the_verdict_says_why_the_students_twice_as_cheap_were_not_chosen():
    ref = row(0, 0.040, 14_000, val=1.0)
    small = row(1, 0.039, 1_000, val=0.995, size_bytes=8_000)
    tiny = row(2, 0.039, 500, val=0.90, size_bytes=7_000)
    small["cv"], small["cv_accuracy"] = cv_result(0.97), 0.97
    text = limits([ref, small, tiny], ref, ref, 0.99)
    assert "2 student(s) are 2x smaller or faster than the recipe's (trials 1, 2)" in text
    assert "1 keep the budget on validation, but not under cross-validation: trial 1 97.00%" in text
    assert "against at least 99.00%" in text
    text = limits([ref, tiny], ref, ref, 0.99)
    assert "none keeps the budget on validation (the best, trial 2, 90.00%" in text


def test_a_cross_validation_stopped_early_is_a_rejection_that_says_so():
    partial = {**cv_result(0.95), "images": 400, "correct": 380, "complete": False}
    partial["fold_accuracies"] = [0.95, 0.95]
    candidates = [row(2, 0.02, 1_000), row(1, 0.03, 3_000)]
    best, how = choose(
        candidates,
        0.94,  # 95% is above the floor, but the student had already made too many errors
        finalists=2,
        confirm=lambda r, f: partial if r["trial"] == 2 else cv_result(0.99),
        log=lambda _: None,
    )
    assert best["trial"] == 1
    assert "trial 2 (95.00% (380/400 after 2 of 5 folds: already below the floor)" in how


def test_when_no_cheaper_finalist_keeps_the_budget_the_recipe_as_written_is_checked_last():
    reference = row(0, 0.04, 14_000)
    candidates = [row(2, 0.02, 1_000), row(1, 0.03, 3_000), row(3, 0.035, 5_000), reference]
    asked = []

    def confirm(r: dict, floor: float) -> dict:
        asked.append(r["trial"])
        return cv_result(0.998 if r["reference"] else 0.98)

    best, how = choose(candidates, 0.99, finalists=2, confirm=confirm, log=lambda _: None)
    assert best is reference and asked == [2, 1, 0]  # trial 3 is beyond the finalists
    assert "It is the recipe as written" in verdict(best, reference, how)


def test_a_time_limit_that_leaves_no_time_for_a_check_is_said_not_overrun():
    from distillserve.search.tune_choice import OutOfTime

    candidates = [row(2, 0.02, 1_000), row(1, 0.03, 3_000), row(0, 0.04, 14_000)]
    asked = []

    def confirm(r: dict, _floor: float) -> dict:
        if asked:  # the first check used the time that was left
            raise OutOfTime("--time-limit leaves 3 s, and cross-validating trial 1 takes 40 s")
        asked.append(r["trial"])
        return cv_result(0.97)

    lines: list[str] = []
    best, how = choose(candidates, 0.99, 3, confirm, log=lines.append)
    assert asked == [2] and best["trial"] == 1 and "cv_accuracy" not in best
    assert how.startswith("chosen on validation accuracy alone: --time-limit leaves 3 s")
    assert any("--time-limit" in line for line in lines)

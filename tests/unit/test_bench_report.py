"""The bench's report arithmetic, summary, README section and plots, on a recorded full run
(``docs/bench/2026-11-23.json``): seconds, and nothing that a busy machine can change."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from distillserve.bench import served
from distillserve.bench.plots import write_plots
from distillserve.bench.report import BEGIN, END, add_derived, summary, update_readme

RECORDED = Path(__file__).resolve().parents[2] / "docs" / "bench" / "2026-11-23.json"
POINT_DERIVED = (
    "floor_rps",
    "efficiency_vs_floor",
    "handler_ceiling_rps",
    "model_ceiling_rps",
    "efficiency_vs_handler",
    "efficiency_vs_model",
)
ROW_DERIVED = (
    "served_speedup_vs_resnet50",
    "model_speedup_vs_resnet50_b8",
    "size_ratio_vs_resnet50",
)


@pytest.fixture
def recorded() -> dict:
    return json.loads(RECORDED.read_text())


def _measured_only(results: dict) -> dict:
    """The run as the measuring code leaves it, before ``add_derived``."""
    raw = copy.deepcopy(results)
    for point in raw["served"]:
        for key in POINT_DERIVED:
            point.pop(key, None)
    for row in raw["teacher_vs_students"].values():
        for key in ROW_DERIVED:
            row.pop(key, None)
    raw.pop("targets")
    return raw


def test_derived_figures_of_a_recorded_run_are_recomputed_exactly(recorded):
    raw = _measured_only(recorded)
    add_derived(raw)
    assert raw["served"] == recorded["served"]
    assert raw["teacher_vs_students"] == recorded["teacher_vs_students"]
    assert raw["targets"] == recorded["targets"]
    for point in raw["served"]:  # every model point has its floor point beside it
        if "floor_rps" in point:
            assert point["efficiency_vs_floor"] == round(
                point["throughput_rps"] / point["floor_rps"], 3
            )
    floor = raw["targets"]["floor"]
    assert floor["value"] == min(floor["each"].values())
    assert all(t["met"] == (t["value"] >= t["target"]) for t in raw["targets"].values())


def test_a_changed_measurement_changes_what_is_derived_from_it(recorded):
    """The check above cannot pass by copying: halve one floor and its efficiency doubles."""
    raw = _measured_only(recorded)
    floor = next(p for p in raw["served"] if p["model"].startswith("floor"))
    floor["throughput_rps"] /= 2
    add_derived(raw)
    key = ("batch_size", "max_batch_delay", "concurrency")
    changed = [
        (p, q)
        for p, q in zip(raw["served"], recorded["served"])
        if "floor_rps" in p
        and all(p[k] == floor[k] for k in key)
        and p["floor_rps"] != q["floor_rps"]
    ]
    assert changed
    for point, before in changed:
        assert point["efficiency_vs_floor"] == pytest.approx(
            2 * before["efficiency_vs_floor"], 0.01
        )


def test_the_summary_of_a_recorded_run_goes_into_the_readme_section(recorded, tmp_path):
    text = summary(recorded, "2026-11-23")
    assert "of floor" in text and "| floor-png |" in text
    assert "**Targets**" in text and "ours ÷ built-in" in text and "**Reading**" in text
    assert "÷ built-in ResNet-50" in text and "KServe v2, 8 images" in text
    assert "**Runtimes**" in text and "| digits-int8 | pt2 |" in text
    assert "**Distillation**" in text
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n## Performance\n\n{BEGIN}\nPREVIOUS-RUN\n{END}\n\n## Next\n")
    update_readme(readme, text)
    written = readme.read_text()
    assert "PREVIOUS-RUN" not in written and text.strip() in written
    assert written.endswith("## Next\n")


def test_plots_of_a_recorded_run_are_pngs(recorded, tmp_path):
    write_plots(recorded, tmp_path / "served.png", tmp_path / "models.png")
    for plot in ("served.png", "models.png"):
        assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_paired_points_take_the_median_ratio_of_the_rounds(monkeypatch):
    rates = iter([100.0, 50.0, 90.0, 30.0, 120.0, 80.0])  # a/b = 2.0, 3.0, 1.5
    monkeypatch.setattr(
        served, "served_point", lambda *args, **kwargs: {"throughput_rps": next(rates)}
    )
    paired = served.paired_points(None, ("a", "b"), [b""], 8, 1.0, rounds=3)
    assert paired["rounds"] == [[100.0, 50.0], [90.0, 30.0], [120.0, 80.0]]
    assert (paired["ratio"], paired["a_rps"], paired["b_rps"]) == (2.0, 100.0, 50.0)


def test_the_text_sections_kernel_ratios_from_a_recorded_run():
    """The text section's target judged against the kernels' ratio of the same run (the
    published 2026-12-03 run): teacher batch-8 time over the int8 student's, per format."""
    from distillserve.bench.text import kernel_ratios, text_summary

    recorded = Path(__file__).parents[2] / "docs" / "bench" / "2026-12-03-text.json"
    results = json.loads(recorded.read_text())
    ratios = kernel_ratios(results)
    teacher = results["models"]["teacher"]["formats"]["torchscript"]["latency_ms_batch8"]
    for fmt, own in results["models"]["student"]["formats"].items():
        kernels = teacher / own["latency_ms_batch8"]
        served = results["ratios_c16"][f"int8-{fmt}"]["vs_teacher"]
        assert ratios[fmt]["kernels"] == round(kernels, 2)
        assert ratios[fmt]["fraction"] == round(served / kernels, 3)
    assert set(ratios) == {"torchscript", "pt2", "onnx"}
    assert "onnx 1.72x of 3.61x (48%)" in text_summary(results)


def test_the_text_sections_limits_judge_served_against_floor_and_ceiling():
    """Each model's limit is min(TorchServe's no-op floor, its handler ceiling); the int8
    student's served ratio over the teacher is judged against the ratio of their limits."""
    from distillserve.bench.text_limits import limit_lines, limits

    def point(rps: float) -> dict:
        return {"16": {"throughput_rps": rps}}

    results = {
        "served": {"floor": point(1000), "teacher": point(400), "int8-onnx": point(900),
                   "bert-base": point(30)},
        "ceilings_rps": {"teacher": 500.0, "int8-onnx": 2000.0, "bert-base": 40.0},
    }  # fmt: skip
    rows = limits(results)
    assert rows["teacher"] == {"limit_rps": 500.0, "ceiling_rps": 500.0, "served_of_limit": 0.8}
    onnx = rows["int8-onnx"]
    assert (onnx["limit_rps"], onnx["served_of_limit"]) == (1000.0, 0.9)  # the floor limits it
    assert (onnx["limit_ratio"], onnx["served_ratio"], onnx["of_limit_ratio"]) == (2.0, 2.25, 1.125)
    assert rows["bert-base"]["served_of_limit"] == 0.75 and "limit_ratio" not in rows["bert-base"]
    text = "\n".join(limit_lines(results))
    assert "no-op floor 1000 req/s" in text and "teacher 0.80 (ceiling 500)" in text
    assert "int8-onnx 2.25x of 2.00x (112%)" in text
    assert limits({"served": {"teacher": point(1)}}) == {}  # a run without the floor: no lines


def test_the_text_sections_limits_from_the_recorded_run_of_2026_12_04():
    """The published text run's limit lines are recomputed from its JSON: the floor limits the
    int8 students, the teacher its own ceiling, and the ratio of the limits is 1.69x."""
    from distillserve.bench.text import text_summary
    from distillserve.bench.text_limits import limits

    recorded = Path(__file__).parents[2] / "docs" / "bench" / "2026-12-04-text.json"
    results = json.loads(recorded.read_text())
    rows = limits(results)
    floor = results["served"]["floor"]["16"]["throughput_rps"]
    teacher_ceiling = results["ceilings_rps"]["teacher"]
    assert rows["teacher"]["limit_rps"] == round(min(floor, teacher_ceiling), 1)
    for fmt in ("torchscript", "pt2", "onnx"):
        row = rows[f"int8-{fmt}"]
        assert row["limit_rps"] == round(floor, 1)  # the floor, not the model, limits it
        assert row["limit_ratio"] == round(floor / min(floor, teacher_ceiling), 2) == 1.69
    assert "int8-onnx 1.77x of 1.69x (105%)" in text_summary(results)


def test_the_distillation_line_judges_every_student_seed():
    """KD against labels alone over several student seeds: the means, each seed, and the
    1-point target judged on the mean gain, saying whether every seed reached it."""
    from distillserve.bench.text_kd import kd_lines

    rows = [
        {"seed": 0, "kd": 0.76, "labels_only": 0.70},
        {"seed": 1, "kd": 0.75, "labels_only": 0.745},
    ]
    kd = {"teacher": 0.77, "kd_student": 0.755, "labels_only_student": 0.7225, "seeds": rows,
          "least_gain": 0.005}  # fmt: skip
    first, target = kd_lines(kd)
    assert "over 2 student seeds" in first and "(+3.2 points)" in first
    assert "seed 0: 76.00% against 70.00% (+6.0); seed 1: 75.00% against 74.50% (+0.5)" in first
    assert target == (
        "Target, at least 1 point from distillation: meets it on the mean of the seeds (+3.2), "
        "but not at every seed (the least +0.5)."
    )
    kd.update(kd_student=0.7305, least_gain=0.0)  # a mean gain under a point
    assert "misses it on the mean of the seeds (+0.8)" in kd_lines(kd)[1]
    kd.update(kd_student=0.755, least_gain=0.02)
    assert (
        "meets it on the mean of the seeds (+3.2), and at every seed (the least +2.0)"
        in (kd_lines(kd)[1])
    )
    one_seed = {"teacher": 0.77, "kd_student": 0.76, "labels_only_student": 0.74}  # before seeds
    assert kd_lines(one_seed) == [
        "Distillation: the fp32 student distilled from the teacher (77.00%) reaches 76.00% on "
        "the test split, the same student trained on the labels alone for the same epochs "
        "74.00% (+2.0 points)."
    ]

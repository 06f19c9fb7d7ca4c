"""``distillserve bench --quick``: every section measured against a real TorchServe, with plots."""

from __future__ import annotations

import json

import pytest

from distillserve.bench.report import BEGIN, END
from distillserve.scripts.cli import main

pytestmark = pytest.mark.slow

SECTIONS = (
    "pipeline",
    "model_ceiling",
    "handler_ceiling",
    "served",
    "builtin",
    "product",
    "multi_image",
    "teacher_vs_students",
    "cold_start_s",
    "runtimes",
    "distillation",
    "targets",
)


def _numbers(tree, path=""):
    """Every (path, number) leaf of a JSON tree."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _numbers(value, f"{path}.{key}")
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield from _numbers(value, f"{path}[{index}]")
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield path, tree


def test_bench_quick_measures_every_section_and_writes_plots(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n## Performance\n\n{BEGIN}\nPREVIOUS-RUN\n{END}\n\n## Next\n")
    out, work = tmp_path / "results", tmp_path / "work"
    argv = ["bench", "--quick", "--out", str(out), "--work", str(work), "--readme", str(readme)]
    assert main(argv) == 0

    results = json.loads((out / "quick.json").read_text())
    for section in SECTIONS:
        assert results[section], section
    for section in SECTIONS[1:]:
        for path, value in _numbers(results[section], section):
            if path.endswith(".errors"):
                assert value == 0, path
            else:
                assert value > 0, path
    stages = results["pipeline"]
    assert all(value >= 0 for value in stages.values())  # a stage that did nothing takes 0 s
    assert min(stages["build: teacher"], stages["build: distill"], stages["total"]) > 0
    served_models = {p["model"] for p in results["served"]}
    assert served_models == {"digits-int8", "resnet18-int8", "floor-png", "floor-jpeg224"}
    for point in results["served"]:  # every model point has its floor point beside it
        if not point["model"].startswith("floor"):
            assert point["efficiency_vs_floor"] == round(
                point["throughput_rps"] / point["floor_rps"], 3
            )
    [paired] = results["floor_paired"]  # the digits student and the floor in turn, at c8
    assert (paired["model"], paired["concurrency"], len(paired["rounds"])) == ("digits-int8", 8, 3)
    ratios = sorted(a / b for a, b in paired["rounds"])
    assert paired["ratio"] == round(ratios[1], 3)
    floor = results["targets"]["floor"]
    assert set(floor["each"]) == {"digits-int8"} and floor["value"] == floor["each"]["digits-int8"]
    batched = [p for p in results["served"] if p["batch_size"] == 8 and p["concurrency"] == 8]
    assert all(p["mean_batch"] > 1 for p in batched)  # TorchServe really formed batches
    assert all(p["mean_batch"] == 1 for p in results["served"] if p["batch_size"] == 1)
    # ours against the built-in handler, the built-in fp32 ResNet-50, multi-image v2 requests
    [builtin] = results["builtin"]
    assert (builtin["model"], builtin["images"], builtin["concurrency"]) == (
        "resnet18-int8",
        "640x480 JPEG",
        8,
    )
    assert builtin["workers"] == results["meta"]["serving"]["resnet18-int8"]["workers"]
    assert builtin["ratio"] == round(
        builtin["ours"]["throughput_rps"] / builtin["builtin"]["throughput_rps"], 2
    )
    teacher, student = results["product"]
    assert teacher["who"].startswith("built-in") and student["who"] == "ours, resnet18-int8"
    assert student["vs_builtin_resnet50"] == round(
        student["throughput_rps"] / teacher["throughput_rps"], 2
    )
    multi = {(r["images_per_request"], r["concurrency"]): r for r in results["multi_image"]}
    assert set(multi) == {(1, 8), (8, 1), (8, 8)}
    assert all(r["model"] == "digits-int8" and r["requests"] > 0 for r in multi.values())
    assert multi[(8, 1)]["images_per_s"] == round(multi[(8, 1)]["throughput_rps"] * 8, 2)
    targets = results["targets"]
    assert {"efficiency", "floor", "builtin_640", "product"} <= set(targets)
    assert targets["product"]["value"] == student["vs_builtin_resnet50"]
    assert set(targets["efficiency"]["each"]) == {"1", "8"}
    # workers and threads: the archives' `auto`, resolved and recorded
    serving = results["meta"]["serving"]
    assert set(serving) == {"digits-int8", "resnet50-fp32", "resnet18-int8"}
    assert all(s["workers"] >= 1 and s["threads"] >= 1 for s in serving.values())
    assert {"resnet50-fp32", "resnet18-int8", "digits-int8"} <= set(results["teacher_vs_students"])

    formats = {(r["model"], r["format"]) for r in results["runtimes"]}
    assert formats == {("digits-int8", fmt) for fmt in ("torchscript", "pt2", "onnx")}

    rows = {(r["case"], r["processes"], r["cache"]): r for r in results["distillation"]}
    assert set(rows) == {("digits", p, k) for p in (1, 2) for k in ("on", "off")}
    assert all(
        r["teacher_outputs"].startswith("cached") == (r["cache"] == "on") for r in rows.values()
    )

    for plot in ("quick-served.png", "quick-models.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (out / "quick.md").read_text()
    assert "of floor" in summary and "| floor-png |" in summary
    assert "**Targets**" in summary and "ours ÷ built-in" in summary and "**Reading**" in summary
    assert "÷ built-in ResNet-50" in summary and "KServe v2, 8 images" in summary
    assert "**Runtimes**" in summary and "| digits-int8 | pt2 |" in summary
    assert "**Distillation**" in summary
    text = readme.read_text()
    assert "PREVIOUS-RUN" not in text and summary.strip() in text and text.endswith("## Next\n")
    assert capsys.readouterr().out.startswith("Run `quick`")

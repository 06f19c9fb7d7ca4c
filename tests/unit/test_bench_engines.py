"""The engines section's arithmetic on recorded points (no server): medians over rounds, the
served-over-limit and CPU targets, the summary table, and the requests both engines get."""

from __future__ import annotations

import base64
import json
import os

import pytest

from distillserve.bench import engines
from distillserve.bench.engines_run import ONE_WORKER, WITH_TORCH, _targets, engines_summary
from distillserve.serving.load import v2_image_bodies


def _point(rps: float, cpu: float) -> dict:
    return {"rps": rps, "p50_ms": 10.0, "p99_ms": 30.0, "errors": 0, "cpu_ms_per_request": cpu}


def _two_engines() -> dict:
    return {
        "torchserve": {"url": "ts", "pid": 1, "names": {"digits": "d"}},
        "triton": {"url": "tr", "pid": 2, "names": {"digits": "d"}},
    }


def test_rounds_are_rotated_and_reduced_to_medians(monkeypatch):
    calls = []
    values = iter([100, 300, 200, 150, 250, 50])  # in call order

    def fake(url, model, bodies, concurrency, seconds, pid, token=None, model_pids=()):
        calls.append(url)
        pids.append(list(model_pids))
        return _point(next(values), 1.0)

    pids = []

    monkeypatch.setattr(engines, "measure_point", fake)
    monkeypatch.setattr(engines.time, "sleep", lambda s: None)
    setup = _two_engines()
    setup["torchserve"]["model_pids"] = {"digits": [7]}  # its worker's pid
    rows = engines.engines_section(
        setup, {"digits": [b"x"]}, [16], 1.0, 3, lambda _: None, warm_up_s=0
    )
    assert calls == ["ts", "tr", "tr", "ts", "ts", "tr"]  # the first engine changes each round
    assert pids == [[7], [], [], [7], [7], []]
    by_engine = {r["engine"]: r for r in rows}
    assert by_engine["torchserve"]["rps"] == 150  # median of 100, 150, 250
    assert by_engine["triton"]["rps"] == 200  # median of 300, 200, 50
    assert len(by_engine["triton"]["rounds"]) == 3
    assert by_engine["torchserve"]["model_processes"] == 1  # its model_pids counted
    assert "model_processes" not in by_engine["triton"]


def test_an_engine_measures_only_the_models_it_names(monkeypatch):
    calls = []

    def fake(url, model, bodies, concurrency, seconds, pid, token=None, model_pids=()):
        calls.append((url, model))
        return _point(100, 1.0)

    monkeypatch.setattr(engines, "measure_point", fake)
    monkeypatch.setattr(engines.time, "sleep", lambda s: None)
    setup = _two_engines()
    setup["torchserve"]["names"]["floor-digits"] = "floor"  # the variant ("tr") has no floor
    rows = engines.engines_section(
        setup, {"digits": [b"x"], "floor-digits": [b"y"]}, [16], 1.0, 1, lambda _: None,
        warm_up_s=1.0,
    )  # fmt: skip
    assert calls.count(("tr", "d")) == 2 and ("tr", "floor") not in calls  # warm-up + 1 round
    assert {(r["engine"], r["model"]) for r in rows} == {
        ("torchserve", "digits"),
        ("torchserve", "floor-digits"),
        ("triton", "digits"),
    }


def test_every_engine_warms_up_unrecorded_at_the_highest_concurrency(monkeypatch):
    calls = []

    def fake(url, model, bodies, concurrency, seconds, pid, token=None, model_pids=()):
        calls.append((url, concurrency, seconds))
        return _point(100 if seconds == 1.0 else 1, 1.0)

    monkeypatch.setattr(engines, "measure_point", fake)
    monkeypatch.setattr(engines.time, "sleep", lambda s: None)
    setup = _two_engines()
    rows = engines.engines_section(
        setup, {"digits": [b"x"]}, [16, 32], 1.0, 1, lambda _: None, warm_up_s=2.5
    )
    assert calls[:2] == [("ts", 32, 2.5), ("tr", 32, 2.5)]  # before any recorded point
    assert len(calls) == 2 + 4 and all(r["rps"] == 100 for r in rows)  # none of them recorded


def test_the_limits_are_measured_at_the_start_of_every_round(monkeypatch):
    """``before_round`` runs before each round's first point (after the unrecorded warm-up), so
    that the bench's in-process ceiling is measured as often as, and beside, the served points."""
    events = []

    def fake(url, model, bodies, concurrency, seconds, pid, token=None, model_pids=()):
        events.append(("warm-up" if seconds == 2.0 else "point", url))
        return _point(100, 1.0)

    monkeypatch.setattr(engines, "measure_point", fake)
    monkeypatch.setattr(engines.time, "sleep", lambda s: None)
    engines.engines_section(
        _two_engines(), {"digits": [b"x"]}, [16], 1.0, 2, lambda _: None, warm_up_s=2.0,
        before_round=lambda r: events.append(("limits", r)),
    )  # fmt: skip
    assert events == [
        ("warm-up", "ts"), ("warm-up", "tr"),
        ("limits", 0), ("point", "ts"), ("point", "tr"),
        ("limits", 1), ("point", "tr"), ("point", "ts"),
    ]  # fmt: skip


def test_the_ceiling_is_the_median_of_its_rounds_and_the_summary_shows_each(monkeypatch, tmp_path):
    from distillserve.bench import engines_run

    measured = iter([17000.0, 400.0, 18000.0, 380.0, 16000.0, 390.0])  # digits, mobilenet, ...

    def fake_ceiling(archive, bodies, batch_sizes, workdir):
        return {str(batch_sizes[0]): {"images_per_s": next(measured), "workers": 2}}

    monkeypatch.setattr(engines_run, "handler_ceiling", fake_ceiling)
    monkeypatch.setattr(engines_run, "_settings", lambda archive: {"batchSize": 8})
    monkeypatch.setattr(engines_run, "v2_image_bodies", lambda payloads: payloads)
    logged = []
    ceilings = engines_run._Ceilings(
        {"digits": ("d.mar", [b"x"]), "mobilenet": ("m.mar", [b"y"])}, tmp_path, logged.append
    )
    for r in range(3):
        ceilings.measure(r)
    assert ceilings.medians() == {"digits": 17000.0, "mobilenet": 390.0}
    assert ceilings.rounds["mobilenet"] == [400.0, 380.0, 390.0] and ceilings.workers["digits"] == 2
    assert "round 3 mobilenet handler ceiling in process 390 req/s (2 workers)" in logged[-1]
    summary = engines_summary(
        {"cpu": "c", "cores": 2, "batch_size": 8, "max_batch_delay_ms": 20, "rounds": 3,
         "seconds_per_point": 5, "rows": [], "memory": {}, "targets": {},
         "handler_ceiling_rps": ceilings.medians(), "handler_ceiling_rounds": ceilings.rounds}
    )  # fmt: skip
    assert "digits 17,000 (17,000 / 18,000 / 16,000), mobilenet 390 (400 / 380 / 390)" in summary


def _summary(rows: list[dict], targets: dict, ceilings: dict, memory: dict) -> str:
    """``engines_summary`` of ``rows`` (given a p50, p99 and no errors) on a 2-core test CPU."""
    return engines_summary(
        {
            "cpu": "test CPU", "cores": 2, "batch_size": 8, "max_batch_delay_ms": 20, "rounds": 3,
            "seconds_per_point": 5, "rows": [{**r, "p50_ms": 1, "p99_ms": 2, "errors": 0}
                                              for r in rows],
            "memory": memory, "handler_ceiling_rps": ceilings, "targets": targets,
        }
    )  # fmt: skip


def test_targets_divide_by_the_lower_limit_and_compare_cpu():
    rows = []
    for engine, served, floor, cpu in (("torchserve", 800, 1000, 2.0), ("triton", 900, 2000, 1.2)):
        rows.append({"model": "digits", "concurrency": 16, "engine": engine, "rps": served,
                     "cpu_ms_per_request": cpu})  # fmt: skip
        rows.append({"model": "floor-digits", "concurrency": 16, "engine": engine, "rps": floor,
                     "cpu_ms_per_request": 0.5})  # fmt: skip
    targets = _targets(rows, {"digits": 950.0})
    # the limit is the lower of the engine's floor and the handler ceiling: 950 for both here
    assert targets["served_over_limit"]["torchserve digits c16"] == pytest.approx(800 / 950, 1e-3)
    assert targets["served_over_limit"]["triton digits c16"] == pytest.approx(900 / 950, 1e-3)
    # on shared cores the two limits add: 1 / (1/1000 + 1/950) = 487.2 req/s for TorchServe
    shared = targets["served_over_shared_limit"]
    assert shared["torchserve digits c16"] == pytest.approx(800 / (1 / (1 / 1000 + 1 / 950)), 1e-3)
    assert shared["triton digits c16"] == pytest.approx(900 / (1 / (1 / 2000 + 1 / 950)), 1e-3)
    assert targets["triton_cpu_over_torchserve_digits"] == {16: 0.6}
    summary = _summary(
        rows,
        targets,
        {"digits": 950.0},
        {
            "torchserve": {"rss_mib": 500, "uss_mib": 400},
            "triton": {"rss_mib": 250, "uss_mib": 180},
        },
    )
    assert "| triton | digits |  | 16 | 900 | 1.0 / 2.0 | 1.20 | 0 |" in summary
    assert "triton digits c16 0.95" in summary and "c16 0.60" in summary
    assert "1 / (1/floor + 1/ceiling)" in summary and "torchserve digits c16 1.64" in summary


def test_one_model_process_variants_are_compared_with_their_engine_not_judged_by_a_limit():
    """``-1w`` engines serve each archive with one model process and no floor of their own:
    each is reported as the engine's req/s over its own, and never looked up for a floor."""
    rows = [
        {"model": "digits", "concurrency": 16, "engine": "torchserve", "rps": 3000,
         "cpu_ms_per_request": 0.5, "model_processes": 2},
        {"model": "floor-digits", "concurrency": 16, "engine": "torchserve", "rps": 4000,
         "cpu_ms_per_request": 0.2},
        {"model": "digits", "concurrency": 16, "engine": "torchserve" + ONE_WORKER, "rps": 2000,
         "cpu_ms_per_request": 0.5, "model_processes": 1},
        {"model": "digits", "concurrency": 16, "engine": "triton" + ONE_WORKER, "rps": 1000,
         "cpu_ms_per_request": 0.3, "model_processes": 1},
    ]  # fmt: skip
    targets = _targets(rows, {"digits": 1500.0})
    assert targets["archive_workers_over_one"] == {"torchserve digits c16": 1.5}  # no triton row
    assert set(targets["served_over_limit"]) == {"torchserve digits c16"}
    summary = _summary(
        rows, targets, {"digits": 1500.0}, {"torchserve": {"rss_mib": 500, "uss_mib": 400}}
    )
    assert f"| torchserve{ONE_WORKER} | digits | 1 | 16 | 2,000 |" in summary
    assert "| torchserve | digits | 2 | 16 | 3,000 |" in summary
    assert "in the same rounds: torchserve digits c16 1.50" in summary


def test_cores_busy_counts_the_server_and_the_load_generator():
    """At 300 req/s with 6 CPU-ms per request in the server and 0.5 in the load generator, two
    cores are 0.975 busy: the machine had nothing left, whatever the in-process ceiling."""
    rows = [
        {"model": "mobilenet", "concurrency": 16, "engine": "torchserve", "rps": 300,
         "cpu_ms_per_request": 6.0, "client_cpu_ms_per_request": 0.5},
        {"model": "floor-mobilenet", "concurrency": 16, "engine": "torchserve", "rps": 1000,
         "cpu_ms_per_request": 0.3, "client_cpu_ms_per_request": 0.5},
    ]  # fmt: skip
    targets = _targets(rows, {"mobilenet": 380.0}, cores=2)
    assert targets["cores_busy"] == {"torchserve mobilenet c16": 0.975}
    served_over_limit = targets["served_over_limit"]["torchserve mobilenet c16"]
    assert served_over_limit == pytest.approx(300 / 380, 1e-3)
    assert "cores_busy" not in _targets(rows, {"mobilenet": 380.0})  # cores unknown: none
    summary = _summary(
        rows, targets, {"mobilenet": 380.0}, {"torchserve": {"rss_mib": 500, "uss_mib": 400}}
    )
    assert "nothing left to give): torchserve mobilenet c16 0.97" in summary


def test_the_torch_free_triton_has_its_own_cpu_target():
    rows = [
        {"model": model, "concurrency": 16, "engine": engine, "rps": 900,
         "cpu_ms_per_request": cpu if model == "digits" else 0.2}
        for engine, cpu in (("torchserve", 1.0), ("triton", 0.8), (WITH_TORCH, 0.5))
        for model in ("digits", "floor-digits")
    ]  # fmt: skip
    targets = _targets(rows, {"digits": 950.0})
    assert targets["triton_cpu_over_torchserve_digits"] == {16: 0.8}
    assert targets["with_torch_cpu_over_torchserve_digits"] == {16: 0.5}
    summary = engines_summary(
        {"cpu": "c", "cores": 2, "batch_size": 8, "max_batch_delay_ms": 20, "rounds": 1,
         "seconds_per_point": 5, "rows": [{**r, "p50_ms": 1, "p99_ms": 2, "errors": 0}
                                          for r in rows],
         "memory": {}, "handler_ceiling_rps": {"digits": 950.0}, "targets": targets}
    )  # fmt: skip
    assert f"{WITH_TORCH}'s CPU-ms per request / TorchServe's, digits, target <= 0.7: c16 0.50" in (
        summary
    )


def test_both_engines_get_the_same_v2_request():
    (body,) = v2_image_bodies([b"\x89PNG..."])
    tensor = json.loads(body)["inputs"][0]
    assert tensor["name"] == "images" and tensor["shape"] == [1, 1]
    assert base64.b64decode(tensor["data"][0]) == b"\x89PNG..."


def test_cpu_and_memory_of_a_process_tree_are_counted():
    assert engines.cpu_seconds(os.getpid()) > 0
    memory = engines.process_memory(os.getpid())
    assert memory["rss_mib"] >= memory["uss_mib"] > 0


def test_the_model_process_line_sets_each_worker_beside_the_handler_in_process():
    rows = [
        {"model": model, "concurrency": 16, "engine": engine, "rps": 4000, "p50_ms": 1,
         "p99_ms": 2, "errors": 0, "cpu_ms_per_request": 0.3, "model_cpu_ms_per_request": cpu,
         "model_busy": busy}
        for engine, cpu, busy in (("torchserve", 0.25, 0.98), ("triton", 0.16, 0.74))
        for model in ("digits", "floor-digits")
    ]  # fmt: skip
    summary = engines_summary(
        {"cpu": "c", "cores": 2, "batch_size": 8, "max_batch_delay_ms": 20, "rounds": 1,
         "seconds_per_point": 5, "rows": rows, "memory": {},
         "handler_ceiling_rps": {"digits": 16000.0}, "handler_ceiling_workers": {"digits": 2},
         "targets": _targets(rows, {"digits": 16000.0})}
    )  # fmt: skip
    # two workers at 16,000 req/s together: one worker's 0.125 ms per request
    line = next(x for x in summary.splitlines() if x.startswith("Model processes"))
    assert "ms per request: digits 0.125)" in line
    assert "torchserve digits c16 0.250 ms busy 0.98, triton digits c16 0.160 ms busy 0.74" in line
    assert "floor" not in line.split("):")[1]  # the floors' processes are not the model's


class _Process:
    def __init__(self, pid: int, name: str, cmdline: list[str]) -> None:
        self.pid, self._name, self._cmdline = pid, name, cmdline

    def name(self) -> str:
        return self._name

    def cmdline(self) -> list[str]:
        return self._cmdline


def test_a_models_stubs_are_found_by_their_directory(monkeypatch):
    tree = [
        _Process(1, "tritonserver", ["tritonserver", "--model-repository=/r"]),
        _Process(2, "triton_python_backend_stub", ["stub", "/r/digits/1/triton_model.py"]),
        _Process(3, "triton_python_backend_stub", ["stub", "/r/digits/2/triton_model.py"]),
        _Process(4, "triton_python_backend_stub", ["stub", "/r/digits-int8/1/model.py"]),
        _Process(5, "python", ["python", "/r/digits/1/x.py"]),
    ]
    monkeypatch.setattr(engines, "_tree", lambda pid: tree)
    assert engines.model_stubs(1, "digits") == [2, 3]
    assert engines.model_stubs(1, "floor") == []


def test_a_points_model_process_cpu_and_busy_share(monkeypatch):
    """The model's own processes are measured apart from the server's tree: CPU per request
    and CPU seconds per wall second per process."""
    monkeypatch.setattr(engines, "closed_loop", lambda *a, **k: (
        sum(i * i for i in range(300_000)),  # this process works while the load runs
        {"rps": 10.0, "p50_ms": 1.0, "p99_ms": 2.0, "errors": 0, "answered": 10},
    )[1])  # fmt: skip
    point = engines.measure_point("http://127.0.0.1:1", "m", [b"x"], 1, 0.1, os.getpid(),
                                  model_pids=[os.getpid()])  # fmt: skip
    assert point["model_cpu_ms_per_request"] > 0
    assert 0 < point["model_busy"] <= 1.5
    assert "model_busy" not in engines.measure_point("http://127.0.0.1:1", "m", [b"x"], 1, 0.1,
                                                     os.getpid())  # fmt: skip

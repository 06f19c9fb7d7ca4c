"""``archive: min_workers/max_workers/threads: auto``: the rule that turns a model's measured
cost into workers and threads (``handlers.serving_policy``, its one home), the recipe keys that
ask for it, and the counts the build and a worker use."""

import pytest

from distillserve.errors import RecipeError
from distillserve.handlers.serving_policy import (
    AUTO,
    CHEAP_MS_PER_INPUT,
    MIN_THREAD_SPEEDUP,
    Measured,
    build_threads,
    serve_threads,
    usable_cores,
    workers_of,
)
from distillserve.handlers.serving_policy import choose as choose_counts
from distillserve.students.recipe_sections import ArchiveConfig

ALL_AUTO = {"min_workers": AUTO, "max_workers": AUTO, "threads": AUTO}


def choose(config: ArchiveConfig, cost: Measured):
    return choose_counts(config.min_workers, config.max_workers, config.threads, cost)


def measured(forward_ms: float, speedup: float, decode_ms: float = 0.1, cores: int = 4):
    return Measured(cores, 8, forward_ms, forward_ms / speedup, decode_ms)


@pytest.mark.parametrize("forward_ms", [0.8, 40.0])
def test_auto_gives_every_model_one_one_thread_worker_per_core(forward_ms):
    # 0.8 ms per batch of 8 + 0.1 ms decode is as cheap as the digits student; 40 ms is not:
    # either way one process per core serves more than one process with the cores as threads
    choice = choose(ArchiveConfig.parse(ALL_AUTO), measured(forward_ms=forward_ms, speedup=3.5))
    assert (choice.min_workers, choice.max_workers, choice.threads) == (4, 4, 1)
    assert "4 workers, one per core" in choice.why and "no core left over" in choice.why
    assert choice.measured["forward_ms_1_thread"] == forward_ms
    assert choice.per_core and choice.record()["per_core"]  # a serving host may count its own


def test_one_core_gets_one_worker():
    choice = choose(ArchiveConfig.parse(ALL_AUTO), measured(forward_ms=40.0, speedup=1.0, cores=1))
    assert (choice.min_workers, choice.max_workers, choice.threads) == (1, 1, 1)
    assert choice.why.startswith("1 worker, one per core")


def test_given_workers_of_a_cheap_model_keep_one_thread():
    cost = measured(forward_ms=0.8, speedup=3.0)
    assert cost.ms_per_image_1_thread < CHEAP_MS_PER_INPUT
    config = ArchiveConfig.parse({"min_workers": 1, "max_workers": 1, "threads": AUTO})
    choice = choose(config, cost)
    assert (choice.min_workers, choice.max_workers, choice.threads) == (1, 1, 1)
    assert "0.20 ms at one thread" in choice.why and "barriers" in choice.why
    assert not choice.per_core  # given workers stay the count everywhere


@pytest.mark.parametrize(
    ("speedup", "threads"), [(MIN_THREAD_SPEEDUP + 0.5, 2), (MIN_THREAD_SPEEDUP - 0.2, 1)]
)
def test_given_workers_get_the_spare_cores_only_when_threads_pay(speedup, threads):
    config = ArchiveConfig.parse({"min_workers": 1, "max_workers": 2, "threads": AUTO})
    choice = choose(config, measured(forward_ms=40.0, speedup=speedup))
    assert (choice.min_workers, choice.max_workers, choice.threads) == (1, 2, threads)
    assert choice.why.startswith(f"{threads} thread")  # the workers were given, not chosen
    assert f"{speedup:.2f}x" in choice.why


def test_auto_workers_keep_given_threads():
    config = ArchiveConfig.parse({"min_workers": AUTO, "max_workers": AUTO, "threads": 3})
    choice = choose(config, measured(forward_ms=40.0, speedup=2.0))
    assert (choice.max_workers, choice.threads) == (4, 3)
    assert "per worker" not in choice.why and choice.why.startswith("4 workers")


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ({"threads": "many"}, "archive.threads"),
        ({"min_workers": AUTO, "max_workers": 2}, "archive.max_workers"),
        ({"min_workers": 0}, "archive.min_workers"),
        ({"threads": -1}, "archive.threads"),
    ],
)
def test_a_bad_workers_or_threads_value_names_its_key(section, field):
    with pytest.raises(RecipeError, match=field):
        ArchiveConfig.parse(section)


def test_numbers_stay_numbers_and_auto_is_reported():
    assert not ArchiveConfig.parse({"threads": 2}).is_auto
    assert ArchiveConfig.parse({"threads": 2}).threads == 2
    assert ArchiveConfig.parse(ALL_AUTO).is_auto


def test_the_build_measures_at_a_stated_count_and_a_worker_applies_the_serve_rule():
    assert [build_threads(t) for t in (AUTO, 0, 3)] == [1, 1, 3]
    assert serve_threads(3, workers=2, cores=8) == 3
    assert serve_threads(0, workers=2, cores=8) == 4  # cores / workers on the inference host
    assert serve_threads(AUTO, workers=16, cores=8) == 1


@pytest.mark.parametrize(
    ("v2", "v1", "limit"),
    [
        ("100000 100000", None, 1),  # a pod's limits.cpu: 1
        ("50000 100000", None, 1),  # half a core still runs one worker
        ("max 100000", None, None),  # no limit: the cores it may run on
        (None, ("100000", "100000"), 1),  # cgroup v1
        (None, ("-1", "100000"), None),
        (None, None, None),  # no cgroup files at all
        ("garbage", ("x", "y"), None),
    ],
)
def test_usable_cores_honour_a_containers_cpu_limit(tmp_path, v2, v1, limit):
    import os

    def written(name: str, text: str | None) -> str:
        path = tmp_path / name
        if text is not None:
            path.write_text(text + "\n")
        return str(path)

    paths_v1 = (written("quota", v1 and v1[0]), written("period", v1 and v1[1]))
    cores = usable_cores(written("cpu.max", v2), paths_v1)
    assert cores == (limit or len(os.sched_getaffinity(0)))
    assert serve_threads(0, workers=1, cores=None) == usable_cores()


def test_an_archive_runs_its_own_count_or_one_per_core_of_the_serving_host():
    per_core = {"per_core": True, "min_workers": 16, "max_workers": 16}  # built on 16 cores
    assert workers_of({}, per_core, cores=2) == 2  # served on 2: 'auto' counts them again
    assert workers_of({}, per_core) == usable_cores()
    assert workers_of({"minWorkers": 3, "maxWorkers": 3}, {"per_core": False}, cores=2) == 3
    assert workers_of({}, None, cores=2) == 1  # names none and was not 'auto': one

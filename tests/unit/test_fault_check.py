"""The fault check's worker kill (``serving.load._kill_one_worker``): which worker it kills and
when it calls the model recovered, without a server (the management API's answers scripted)."""

from __future__ import annotations

import signal

import pytest

from distillserve.serving import load


@pytest.fixture
def scripted(monkeypatch):
    """``worker_pids`` answers from a list of READY-pid lists, one per call (the last repeats);
    ``os.kill`` is recorded, and sleeping costs no time."""
    answers: list[list[int]] = []
    killed: list[tuple[int, int]] = []

    def pids(url, model, headers):
        return answers.pop(0) if len(answers) > 1 else answers[0]

    monkeypatch.setattr(load, "worker_pids", pids)
    monkeypatch.setattr(load.os, "kill", lambda pid, sig: killed.append((pid, sig)))
    monkeypatch.setattr(load.time, "sleep", lambda s: None)
    return answers, killed


def test_with_two_workers_the_survivor_is_not_the_replacement(scripted):
    answers, killed = scripted
    # before the kill: 11 and 12; then 12 alone (11 restarting), twice; then 12 and the new 13
    answers += [[11, 12], [12], [12], [12, 13]]
    state: dict = {}
    load._kill_one_worker("http://127.0.0.1:1", "m", None, 0.0, 0.0, state)
    assert killed == [(11, signal.SIGKILL)] and state["pid"] == 11
    assert "ready" in state and not answers[1:]  # every scripted answer was read: 13 ended it


def test_with_one_worker_its_replacement_ends_the_wait(scripted):
    answers, killed = scripted
    answers += [[21], [], [22]]
    state: dict = {}
    load._kill_one_worker("http://127.0.0.1:1", "m", "token", 0.0, 0.0, state)
    assert killed == [(21, signal.SIGKILL)] and "ready" in state and answers == [[22]]


def test_a_model_without_ready_workers_is_not_killed(scripted):
    answers, killed = scripted
    answers += [[]]
    state: dict = {}
    load._kill_one_worker("http://127.0.0.1:1", "m", None, 0.0, 0.0, state)
    assert killed == [] and state == {}

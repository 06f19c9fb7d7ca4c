"""The shipped configuration profiles on a real server, and the bounded load and fault tools."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import time

import psutil
import pytest
import requests

from distillserve.archiver.properties import read_properties
from distillserve.serving.load import run_load
from tests.helpers import ROOT, register, shipped_profile


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


@pytest.mark.parametrize("profile", ["config.properties", "config.mlops.properties"])
def test_shipped_profiles_are_safe(profile, model_store, tmp_path):
    shipped = read_properties(ROOT / profile)
    assert shipped["disable_token_authorization"] == "false"
    assert shipped["allowed_urls"] == "^$"
    assert "workflow_store" not in shipped
    assert shipped["enable_model_api"] == ("true" if "mlops" in profile else "false")
    for key in ("inference_address", "management_address", "metrics_address"):
        assert shipped[key].startswith("http://127.0.0.1:")
    for key in ("grpc_inference_address", "grpc_management_address"):
        assert shipped[key] == "127.0.0.1"

    ts = shipped_profile(profile, model_store, tmp_path)
    with ts:
        ts.start(timeout=120, models=[])
        java = psutil.Process(ts.pid())
        deadline = time.monotonic() + 20  # gRPC listeners may open just after HTTP is ready
        while True:
            listening = [c.laddr for c in java.net_connections("inet") if c.status == "LISTEN"]
            if len(listening) >= 5 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert len(listening) >= 5 and all(_is_loopback(a.ip) for a in listening), listening

        for headers in ({}, {"Authorization": "Bearer not-the-key"}):
            ping = requests.get(f"{ts.inference_url}/ping", headers=headers, timeout=10)
            assert ping.status_code in (400, 401, 403)
        assert requests.get(f"{ts.inference_url}/ping", headers=ts.headers(), timeout=10).ok

        management = ts.headers("management")
        outside = requests.post(
            f"{ts.management_url}/models",
            params={"url": "http://127.0.0.1:9/evil.mar"},
            headers=management,
            timeout=30,
        )
        assert outside.status_code in (404, 405)
        if "mlops" in profile:
            assert "does not match any allowed URL" in outside.json()["message"]
            for url in ("file:///etc/passwd", "https://127.0.0.1:9/x.mar"):
                refused = requests.post(
                    f"{ts.management_url}/models",
                    params={"url": url},
                    headers=management,
                    timeout=30,
                )
                assert refused.status_code == 404
            workflow = requests.post(
                f"{ts.management_url}/workflows",
                params={"url": "http://127.0.0.1:9/evil.war"},
                headers=management,
                timeout=30,
            )
            assert workflow.status_code == 404
            local = register(ts, "digits-student.mar")
            assert local.status_code == 200, local.text
        else:
            assert outside.status_code == 405  # no registration API at all


@pytest.fixture(scope="module")
def loaded_server(model_store, tmp_path_factory):
    run = tmp_path_factory.mktemp("load")
    ts = shipped_profile("config.mlops.properties", model_store, run)
    try:
        ts.start(timeout=120, models=[])
        for name in ("digits-student", "fault-student"):
            response = register(
                ts, "digits-student.mar", model_name=name, batch_size=8, max_batch_delay=10
            )
            assert response.status_code == 200, response.text
        yield ts
    finally:
        ts.stop()


def test_load_command_reports_zero_errors(loaded_server):
    ts = loaded_server
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "distillserve.scripts.cli",
            "load",
            "digits-student",
            "--requests",
            "300",
            "--concurrency",
            "16",
            "--config",
            str(ts.config_file),
            "--run-dir",
            str(ts.run_dir),
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["completed"] == 300 and report["errors_by_status"] == {}
    assert report["throughput_rps"] > 0
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p90"]
    assert report["latency_ms"]["p90"] <= report["latency_ms"]["p99"]


def _load_killing_a_worker(ts, digits_splits):
    """1,500 requests to fault-student at concurrency 8, one of its workers killed after 0.5 s."""
    from distillserve.students.data import encode_png

    payloads = [encode_png(digits_splits.test[i][0]) for i in range(50)]
    return run_load(
        ts.inference_url,
        "fault-student",
        payloads,
        total=1500,
        concurrency=8,
        token=ts.keys()["inference"],
        time_limit_s=120,
        kill_worker_after_s=0.5,
        management_url=ts.management_url,
        management_token=ts.keys()["management"],
    )


def test_fault_check_kills_a_worker_and_measures_recovery(loaded_server, digits_splits):
    ts = loaded_server
    report = _load_killing_a_worker(ts, digits_splits)
    fault = report.fault
    assert fault is not None and fault.killed_pid > 0
    assert not psutil.pid_exists(fault.killed_pid) or psutil.Process(fault.killed_pid).status() == (
        psutil.STATUS_ZOMBIE
    )
    assert fault.worker_ready_s is not None and fault.worker_ready_s > 0
    assert fault.recovery_s is not None and fault.recovery_s > 0
    # The requests the dead worker held were answered on a retry: none lost at the client.
    assert fault.failed_requests == report.errors == 0, (report.errors_by_status, report.retries)
    assert report.completed == 1500
    retries = report.retries
    assert retries["recovered_calls"] == retries["retried_calls"]
    assert retries["budget_refusals"] == 0
    assert fault.latency_affected_ms["requests"] > 0
    assert fault.latency_affected_ms["max"] >= fault.latency_before_ms["p99"]
    ping = requests.get(f"{ts.inference_url}/ping", headers=ts.headers(), timeout=10)
    assert ping.json()["status"] == "Healthy"


def test_with_two_workers_the_other_answers_while_the_killed_one_is_replaced(
    loaded_server, digits_splits
):
    """What ``auto`` gives on two cores or more: the fault check waits for the killed worker's
    replacement, not for the survivor (READY throughout), which answers meanwhile."""
    from distillserve.serving.load import worker_pids

    ts = loaded_server
    ts.management_client().scale("fault-student", min_worker=2, max_worker=2)
    before = worker_pids(ts.management_url, "fault-student", ts.headers("management"))
    assert len(before) == 2
    report = _load_killing_a_worker(ts, digits_splits)
    fault = report.fault
    assert fault is not None and fault.killed_pid in before
    assert fault.failed_requests == report.errors == 0 and report.completed == 1500
    # the survivor answered before a new worker could start (a fresh worker imports torch and
    # loads the model: seconds), and the report's ready time is the replacement's
    assert fault.recovery_s is not None and fault.worker_ready_s is not None
    assert fault.recovery_s < fault.worker_ready_s
    after = worker_pids(ts.management_url, "fault-student", ts.headers("management"))
    assert fault.killed_pid not in after and set(before) - {fault.killed_pid} <= set(after)
    assert set(after) - set(before), after  # the replacement is READY


def test_load_refuses_non_loopback_targets():
    from distillserve.errors import ServerError

    with pytest.raises(ServerError, match="loopback"):
        run_load("http://192.0.2.1:8080", "m", [b"x"], total=1, concurrency=1)

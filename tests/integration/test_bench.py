"""The bench's served path against a real TorchServe: a small smoke whose only pass conditions are
our own code's behaviour (every request answered without an error, TorchServe's batch records
read back), bounded by request count, never by time. The report arithmetic, summary, README
section and plots are unit tests on a recorded run (``tests/unit/test_bench_report.py``); the
full bench is ``make bench``, which asserts nothing about speed."""

from __future__ import annotations

import pytest

from distillserve.archiver.properties import ServerConfig
from distillserve.bench.served import archive_serving, batch_sizes, register_timed, served_point
from distillserve.serving.load import format_report, run_load, v2_image_bodies
from distillserve.serving.server import TorchServe
from distillserve.students.data import encode_png

pytestmark = pytest.mark.slow


def test_the_bench_serves_our_archive_and_reads_its_batches(model_store, digits_splits, tmp_path):
    archive = model_store / "digits-student.mar"
    payloads = [encode_png(digits_splits.test[i][0]) for i in range(16)]
    config = ServerConfig.with_free_ports(model_store, enable_model_api=True)
    ts = TorchServe(config.write(tmp_path / "config.properties"), tmp_path / "serve", model_store)
    ts.start(timeout=300, models=[])
    try:
        first_answer_s = register_timed(ts, archive, "smoke", payloads[0], 8, 50)
        assert first_answer_s > 0
        report = run_load(
            ts.inference_url,
            "smoke",
            payloads,
            total=64,
            concurrency=8,
            token=ts.keys().get("inference") if ts.token_auth else None,
            time_limit_s=600,  # a bound for a wedged server, not a pass condition
        )
        sizes = batch_sizes(ts, "smoke")
        # the bench's own load generator, on both routes (timed: only errors are judged)
        points = [
            served_point(ts, "smoke", payloads, 4, 2.0),
            served_point(ts, "smoke", v2_image_bodies(payloads), 4, 2.0, route="v2"),
        ]
    finally:
        ts.stop()
    assert (report.completed, report.errors, report.stopped_by_time_limit) == (64, 0, False)
    assert report.throughput_rps > 0 and report.latency_ms["p50"] > 0
    assert sum(sizes) == 65 and all(1 <= s <= 8 for s in sizes)  # the first answer, then 64
    assert "64" in format_report(report)
    assert archive_serving(archive)["workers"] >= 1
    for point in points:  # (its batch count depends on when TorchServe flushes its log: not judged)
        assert point["errors"] == 0 and point["requests"] >= 1, point

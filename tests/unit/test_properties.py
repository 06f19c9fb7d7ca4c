"""config.properties has one generator: the shipped profiles are its output, checked in."""

import socket

import pytest

from distillserve.archiver import properties
from distillserve.archiver.properties import (
    MAX_REQUEST_SIZE,
    PROFILES,
    ServerConfig,
    free_port,
    read_properties,
    render_profile,
)
from distillserve.handlers.imageprep import ImageLimits
from tests.helpers import ROOT


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_shipped_profiles_are_the_generators_output(name):
    assert (ROOT / name).read_text() == render_profile(name), (
        f"{name} is out of date: run `python -m distillserve.archiver.properties`"
    )


def test_rendered_settings_read_back_and_keep_the_safe_defaults(tmp_path):
    config = ServerConfig.with_free_ports(tmp_path, enable_model_api=True)
    props = read_properties(config.write(tmp_path / "c.properties", "a header"))
    assert props == config.properties()
    assert props["disable_token_authorization"] == "false" and props["allowed_urls"] == "^$"
    assert all(
        props[f"{k}_address"].startswith("http://127.0.0.1:")
        for k in ("inference", "management", "metrics")
    )


def test_the_request_limit_admits_the_largest_image_as_base64_json():
    assert int(read_properties(ROOT / "config.properties")["max_request_size"]) == MAX_REQUEST_SIZE
    assert ImageLimits().max_bytes * 4 / 3 < MAX_REQUEST_SIZE


def _listen(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def test_free_ports_are_distinct_listenable_and_outside_the_ephemeral_range():
    """Outgoing connections take their local ports from the ephemeral range: a port handed to
    a server from there can be taken by a client before the server binds it (TorchServe's
    gRPC listener failed so once, with "Address already in use", while a load test ran)."""
    low, high = properties._ephemeral_range()
    ports = [free_port() for _ in range(40)]
    assert len(set(ports)) == len(ports)
    assert not [p for p in ports if low <= p <= high], (low, high, ports)
    listeners = [_listen(p) for p in ports]  # every one of them, all at once
    for sock in listeners:
        sock.close()


def test_free_ports_skip_taken_ones_and_fall_back_to_the_kernels_choice(monkeypatch):
    taken = _listen(0)
    busy = taken.getsockname()[1]
    try:
        real, calls = properties._CHOOSER.randint, []

        def pick(lo: int, hi: int) -> int:  # the taken port, twice, then the real choice
            calls.append((lo, hi))
            return busy if len(calls) <= 2 else real(lo, hi)

        monkeypatch.setattr(properties._CHOOSER, "randint", pick)
        monkeypatch.setattr(properties, "_ephemeral_range", lambda: (1, 10_000))
        assert free_port() != busy and len(calls) >= 3  # a listener's port is never handed out
        monkeypatch.setattr(properties, "_ephemeral_range", lambda: (1_024, 65_535))
        ports = {free_port() for _ in range(5)}  # no room outside the range: bind(0)'s ports
        assert len(ports) == 5 and busy not in ports
        for port in ports:
            _listen(port).close()
    finally:
        taken.close()


@pytest.mark.parametrize(("given", "expected"), [(None, "host"), (3, "3")])
def test_serve_start_gives_archives_of_auto_workers_one_per_core_of_its_host(
    tmp_path, given, expected
):
    from distillserve.handlers.serving_policy import usable_cores
    from distillserve.serving.server import TorchServe

    config = ServerConfig(model_store=tmp_path, default_workers=given)
    assert ("default_workers_per_model" in config.properties()) == (given is not None)
    ts = TorchServe(config.write(tmp_path / "config.properties"), tmp_path / "run")
    ts.run_dir.mkdir()
    effective = read_properties(ts._effective_config())
    # the server's default decides for archives whose model-config.yaml names no workers
    assert effective["default_workers_per_model"] == (
        str(usable_cores()) if expected == "host" else expected
    )

"""config.properties has one generator: the shipped profiles are its output, checked in."""

import pytest

from distillserve.archiver.properties import (
    MAX_REQUEST_SIZE,
    PROFILES,
    ServerConfig,
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

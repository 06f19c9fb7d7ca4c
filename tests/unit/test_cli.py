"""The command line: --help everywhere, one-line errors and a non-zero exit on bad input."""

import subprocess
import sys

import pytest

from tests.helpers import ROOT, run_cli


def _verbs() -> list[str]:
    """Every verb the parser knows, read from the parser itself."""
    import argparse

    from distillserve.scripts.cli import get_parser

    (subparsers,) = [a for a in get_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return sorted(subparsers.choices)


def _run(*args):
    """The command in its own process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "distillserve.scripts.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_parser_has_every_verb_the_readme_lists():
    readme = (ROOT / "README.md").read_text()
    verbs = _verbs()
    assert len(verbs) >= 18
    for verb in verbs:
        assert f"`distillserve {verb}" in readme, f"{verb} is not in the README's verb table"


@pytest.mark.parametrize("verb", _verbs())
def test_every_verb_has_help(verb):
    from distillserve.scripts.cli import main

    with pytest.raises(SystemExit) as done:
        main([verb, "--help"])
    assert done.value.code == 0


def test_help_runs_as_a_command():
    result = _run("predict", "--help")
    assert result.returncode == 0 and "usage: distillserve predict" in result.stdout


def test_the_parser_imports_no_torch():
    """``distillserve --help`` and the verbs that only talk to a server start in a fraction of a
    second: the parser and its options import no torch (the verbs import what they need)."""
    code = (
        "import sys, distillserve.scripts.cli as c; c.get_parser(); print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


def test_a_bad_input_in_its_own_process_is_one_line_too():
    """As a user sees it: the interpreter's and torch's start-up add no line (no warning) to the
    one-line error of a verb that imports the training code."""
    result = _run("build", "recipes/no-such.yaml")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "file not found" in line and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["build", "recipes/no-such.yaml"], "file not found"),
        (["archive", "build/no-such-artifact"], "artifact directory not found"),
        (["predict", "digits-student", "no-such.png"], "image not found"),
        (
            ["predict", "digits-student", "setup.cfg", "--key-file", "/no/key_file.json"],
            "token file not found",
        ),
        (["serve", "start", "--config", "no-such.properties"], "config file not found"),
        (["serve", "start", "--without-torch", "--run-dir", "build/no-such-run"],
         "--without-torch goes with --engine triton"),
        (["serve", "start", "--with-torch", "--run-dir", "build/no-such-run"],
         "--with-torch goes with --engine triton"),
        (["register", "model_store/x.mar", "--engine", "triton", "--run-dir", "build/no-run"],
         "no Triton engine running from build/no-run"),
        (["set-default", "m", "1.0", "--engine", "triton", "--run-dir", "build/no-run"],
         "set-default works with TorchServe only: Triton answers an unversioned request"),
        (["list", "--engine", "triton", "--run-dir", "build/no-such-run"],
         "no Triton engine running from build/no-such-run"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(args, expected):
    result = run_cli(*args)  # in this process: no interpreter and torch start-up per case
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0]
    assert "Traceback" not in result.stderr


def test_bad_recipe_key_from_the_command_line(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("name: x\nquantize: {engine: fbgemmm}\n")
    result = run_cli("build", str(recipe))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"distillserve build: error: recipe key 'quantize.engine': 'fbgemmm' is not one of: "
        f"x86, fbgemm, qnnpack, onednn (in {recipe})"
    ]


def test_serve_start_refuses_a_startup_archive_the_store_lacks(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    (store / "present.mar").write_bytes(b"")
    config = tmp_path / "c.properties"
    config.write_text(
        f"model_store={store}\nload_models=present.mar,absent.mar\n"
        'models={"m": {"1.0": {"marName": "gone.mar"}}}\n'
    )
    result = run_cli("serve", "start", "--config", str(config), "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "absent.mar, gone.mar" in line and "no such archive" in line
    assert "present.mar" not in line


def test_predict_over_grpc_without_a_config_names_the_flag(tmp_path):
    image = tmp_path / "x.png"
    image.write_bytes(b"x")
    result = _run(
        "predict", "m", str(image), "--grpc", "--no-token", "--config", str(tmp_path / "no.conf")
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "--config" in line and "gRPC" in line

"""Helpers shared by the tests (fixtures live in conftest.py): the CI recipe, the shipped
profiles on free ports, registration, and the handler in process."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.inprocess import handle, handler_context, load_handler

__all__ = [
    "DIGITS_RECIPE",
    "ROOT",
    "handle",
    "handler_context",
    "load_handler",
    "model_log_line",
    "refused_at_load",
    "register",
    "resign",
    "run_cli",
    "shipped_profile",
    "small_recipe_dict",
    "student_labels",
]

ROOT = Path(__file__).resolve().parent.parent
DIGITS_RECIPE = ROOT / "recipes" / "digits.yaml"


# The CI build's student archived in each format (the model_store fixture), by format.
STUDENT_MARS = {
    "torchscript": "digits-student.mar",
    "pt2": "digits-student-pt2.mar",
    "onnx": "digits-student-onnx.mar",
}


def small_recipe_dict() -> dict:
    """The digits recipe shortened for CI: one teacher, few epochs, same everything else (the
    teacher exported as TorchScript only, as the demo's; the CI build adds every format)."""
    raw = yaml.safe_load(DIGITS_RECIPE.read_text())
    raw["teacher"].update(members=1, epochs=8, kwargs={"widths": [16, 32, 64], "blocks": 1})
    raw["distill"]["epochs"] = 20
    raw["export"]["formats"] = list(STUDENT_MARS)
    # one worker per archive (auto gives one per core): the real-server tests judge behaviour,
    # and a lone worker is the strictest case for it (a bad request must not cost it); the
    # threads stay auto, so the archive step still measures the model and says why
    raw["archive"].update(min_workers=1, max_workers=1)
    return raw


def student_labels(build_result, digits_splits, fmt: str) -> list[str]:
    """In-process top-1 labels of the CI build's student in format ``fmt`` on the test split."""
    from distillserve.handlers.runtimes import MODEL_FILES, load_runtime
    from distillserve.students.data import make_loader, preprocess_spec
    from distillserve.students.distill import predict
    from distillserve.students.recipe import DataConfig

    model = load_runtime(build_result.artifacts["student"] / MODEL_FILES[fmt])
    logits, _ = predict(model, make_loader(digits_splits.test, preprocess_spec(DataConfig()), 256))
    return [str(i) for i in logits.argmax(1).tolist()]


def shipped_profile(name: str, model_store: Path, run_dir: Path, keep_models: bool = False):
    """A shipped config profile as it is, but on free loopback ports with the test's model
    store (and, unless ``keep_models``, no models loaded at start)."""
    from distillserve.archiver.properties import free_port, read_properties, write_properties
    from distillserve.serving.server import TorchServe

    props = read_properties(ROOT / name)
    for key in ("inference", "management", "metrics"):
        props[f"{key}_address"] = f"http://127.0.0.1:{free_port()}"
    props["grpc_inference_port"] = str(free_port())
    props["grpc_management_port"] = str(free_port())
    props["model_store"] = str(model_store)
    if "metrics_config" in props:
        props["metrics_config"] = str(ROOT / props["metrics_config"])
    if not keep_models:
        props.pop("load_models", None)
        props.pop("models", None)
    run_dir.mkdir(parents=True, exist_ok=True)
    return TorchServe(write_properties(props, run_dir / name), run_dir / "serve", model_store)


def model_log_line(ts, *needles: str, timeout: float = 30.0) -> str:
    """The first line of the server's ``model_log.log`` holding every one of ``needles``.
    TorchServe copies a worker's output into the log on its own thread, so a line can land
    after the answer that it explains: the log is read again until the line is there (or
    ``timeout`` passes: ``AssertionError`` with the log's end)."""
    import time

    path = ts.log_dir / "model_log.log"
    deadline = time.monotonic() + timeout
    while True:
        log = path.read_text() if path.exists() else ""
        found = next((x for x in log.splitlines() if all(n in x for n in needles)), None)
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"no line with {needles} in model_log.log: {log[-2000:]}")
        time.sleep(0.2)


def refused_at_load(ts, archive: str, model_name: str, *needles: str) -> tuple[str, str]:
    """Register ``archive`` straight through the management API and expect the worker to refuse
    it at load (HTTP >= 500) every time; return the name it was last registered under and the
    worker's ``model_log.log`` line holding every one of ``needles``. The worker logs why, but
    TorchServe 0.12 stops copying a worker's output once its load has failed ("Stopped
    Scanner") and can drop that last line (seen once in a fresh clone's run), so it is
    registered up to three times, under ``model_name``, ``model_name-2``, ``model_name-3``,
    until one refusal's line is there."""
    for attempt in range(1, 4):
        name = model_name if attempt == 1 else f"{model_name}-{attempt}"
        response = register(ts, archive, model_name=name)
        assert response.status_code >= 500, response.text
        try:  # the worker's lines carry its model: "W-9015-NAME_1.0-stdout MODEL_LOG - ..."
            return name, model_log_line(ts, f"-{name}_", *needles, timeout=10.0)
        except AssertionError:
            if attempt == 3:
                raise
    raise AssertionError("unreachable")


def register(ts, url: str, **params):
    """``POST /models`` on a running server with the management token; returns the response."""
    import requests

    params = {"url": url, "initial_workers": 1, "synchronous": "true", **params}
    return requests.post(
        f"{ts.management_url}/models", params=params, headers=ts.headers("management"), timeout=120
    )


@dataclass
class CliResult:
    """What ``run_cli`` saw: the exit status and the two streams."""

    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str) -> CliResult:
    """``distillserve ARGS`` from the repository root, in this process (the command's code and
    output, without a fresh interpreter's seconds of importing torch for every call)."""
    import logging

    from distillserve.scripts.cli import main

    logger = logging.getLogger("distillserve")  # main() sets it up for a terminal: restore it
    state = (list(logger.handlers), logger.level, logger.propagate)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), contextlib.chdir(ROOT):
        try:
            code = main(list(args))
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        finally:
            logger.handlers[:], logger.level, logger.propagate = state
    return CliResult(code, out.getvalue(), err.getvalue())


def resign(model_dir: Path) -> None:
    """Sign an extracted archive again with the session's key (conftest) after a test edited
    it by hand, so that the handler's checks after the signature's are what it meets."""
    from distillserve.archiver.signing import sign_directory, signing_key

    sign_directory(model_dir, signing_key())


def kubernetes_validate_strict(path: Path) -> None:
    """Every document of ``path`` against Kubernetes' own schemas, unknown fields refused."""
    import kubernetes_validate

    for document in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(document, kubernetes_validate.latest_version(), strict=True)

"""One import namespace: every module imports as distillserve.<role>, its __all__ is real, and
the handler inside a .mar needs nothing of distillserve."""

import importlib
import pkgutil
import subprocess
import sys

import pytest

ROLES = ("students", "archiver", "handlers", "serving", "bench", "scripts")
MODULES = sorted(
    ["distillserve", "distillserve.errors"]
    + [
        info.name
        for role in ROLES
        for info in pkgutil.iter_modules(
            importlib.import_module(f"distillserve.{role}").__path__, f"distillserve.{role}."
        )
    ]
)


def test_every_role_is_a_subpackage_with_modules():
    for role in ROLES:
        assert any(name.startswith(f"distillserve.{role}.") for name in MODULES), role


@pytest.mark.parametrize("name", MODULES)
def test_public_names_exist(name):
    module = importlib.import_module(name)
    for public in getattr(module, "__all__", []):
        assert hasattr(module, public), f"{name}.__all__ lists {public}, which it lacks"


def test_the_handler_in_an_archive_imports_no_distillserve(extracted_student):
    """Inside a .mar the helpers sit flat beside the handler; an installed distillserve must not
    be what the worker runs."""
    code = (
        "import sys; sys.modules['distillserve'] = None; "
        f"sys.path.insert(0, {str(extracted_student)!r}); "
        "import distill_classifier, classification; "
        "assert classification.__file__.startswith(sys.path[0]), classification.__file__"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=extracted_student, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]

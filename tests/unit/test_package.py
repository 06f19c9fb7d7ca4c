"""One import namespace: every module imports as distillserve.<role>, its __all__ is real, and
the handler inside a .mar needs nothing of distillserve."""

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROLES = ("students", "archiver", "handlers", "serving", "search", "bench", "scripts")
ROOT_MODULES = {"errors", "log", "__version__"}  # distillserve's own: the error tree, logging
# Who may import whom (README, Layout): each role, the roles it may import besides its own.
MAY_IMPORT = {
    "handlers": set(),  # shipped inside each .mar: nothing of distillserve, not even its root
    "students": {"handlers"} | ROOT_MODULES,
    "archiver": {"students", "handlers"} | ROOT_MODULES,
    "serving": {"archiver", "students", "handlers"} | ROOT_MODULES,
    "search": {"serving", "archiver", "students", "handlers", "bench.served"} | ROOT_MODULES,
    "bench": {"serving", "archiver", "students", "handlers"} | ROOT_MODULES,
    "scripts": {"search", "bench", "serving", "archiver", "students", "handlers"} | ROOT_MODULES,
}
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


def _imports(path: Path) -> set[str]:
    """What a module imports of distillserve (``role`` or ``role.module``), and any ``tests``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "tests":
                found.add("tests")
            elif parts[0] == "distillserve" and len(parts) > 1:
                found.add(".".join(parts[1:3]) if parts[1] == "bench" else parts[1])
    return found


@pytest.mark.parametrize("role", ROLES)
def test_roles_import_only_what_the_layout_allows(role):
    folder = Path(importlib.import_module(f"distillserve.{role}").__path__[0])
    allowed = MAY_IMPORT[role] | {role}
    for path in sorted(folder.glob("*.py")):
        wrong = {
            name
            for name in _imports(path)
            if name not in allowed and name.split(".")[0] not in allowed
        }
        assert not wrong, f"{role}/{path.name} imports {', '.join(sorted(wrong))}"


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


def test_small_modules_and_functions():
    """No module over 450 lines; no function over 80 lines where the product's logic lives."""
    for role in ROLES:
        folder = Path(importlib.import_module(f"distillserve.{role}").__path__[0])
        for path in sorted(folder.glob("*.py")):
            source = path.read_text()
            assert len(source.splitlines()) <= 450, f"{role}/{path.name} is over 450 lines"
            if role not in ("students", "handlers", "archiver"):
                continue
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = node.end_lineno - node.lineno + 1
                    assert length <= 80, f"{role}/{path.name}: {node.name} is {length} lines"

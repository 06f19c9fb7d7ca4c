"""One exception tree: lower layers' errors are translated at the boundary, so the command line
turns them into one line instead of a traceback."""

import pytest

from distillserve.errors import ArchiveError, ExportError, RecipeError, map_exceptions
from distillserve.students.exported import load_exported


def test_map_exceptions_translates_keeps_the_cause_and_lets_our_own_pass():
    mapped = map_exceptions({ValueError: ArchiveError}, "model.pt: ")
    with pytest.raises(ArchiveError, match=r"^model\.pt: bad zip") as raised, mapped:
        raise ValueError("bad zip")
    assert isinstance(raised.value.__cause__, ValueError)
    with pytest.raises(RecipeError), map_exceptions({ValueError: ArchiveError}):
        raise RecipeError("k", "ours, unchanged")
    with pytest.raises(KeyError), map_exceptions({ValueError: ArchiveError}):
        raise KeyError("not mapped")


@pytest.mark.parametrize("name", ["model.pt", "model.onnx", "model.pt2", "model.bin"])
def test_a_model_file_the_handler_cannot_load_is_an_export_error(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"not a model")
    with pytest.raises(ExportError, match=f"^{name}: "):
        load_exported(path)

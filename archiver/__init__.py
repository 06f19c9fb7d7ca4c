"""Student artifact directory -> TorchServe ``.mar`` through torch-model-archiver's Python API."""

from distillserve.archiver.mar import (
    ARTIFACT_FILES,
    ArchiveResult,
    build_archive,
    inspect_archive,
    read_archive_config,
)
from distillserve.archiver.registry import Registry

__all__ = [
    "ARTIFACT_FILES",
    "ArchiveResult",
    "Registry",
    "build_archive",
    "inspect_archive",
    "read_archive_config",
]

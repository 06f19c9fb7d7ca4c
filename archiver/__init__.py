"""Student artifact directory -> TorchServe ``.mar`` through torch-model-archiver's Python API."""

from .mar import ARTIFACT_FILES, ArchiveResult, build_archive, read_archive_config

__all__ = ["ARTIFACT_FILES", "ArchiveResult", "build_archive", "read_archive_config"]

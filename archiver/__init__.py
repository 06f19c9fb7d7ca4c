"""Package: a student artifact -> a TorchServe ``.mar`` (through torch-model-archiver's API),
``.mar`` files -> a KServe / Kubernetes layout, ``config.properties``, and the model store's
index."""

from distillserve.archiver.mar import ArchiveResult, build_archive, inspect_archive
from distillserve.archiver.registry import Registry

__all__ = ["ArchiveResult", "Registry", "build_archive", "inspect_archive"]

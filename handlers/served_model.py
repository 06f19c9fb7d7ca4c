"""An archive's model made ready to serve, whatever the server drives it: TorchServe's handler
(``core_handler``) and Triton's Python-backend model (``triton_model``) both call ``load``.

``load`` verifies every file of the archive against its signature (``integrity``), the model
file against build-info.json and the host's torch against the one that built it, sets the
quantized engine and thread count, loads the model in its format's runtime (``runtimes``),
reads index_to_name.json and makes the task's adapter and the core (``core.HandlerCore``).
``ServedModel.warm_up`` then runs it at batch 1 and at the server's batch size and checks that
every output has a label.

Settings come from the ``handler:`` section of the archive's model-config.yaml. Ships inside
every .mar; imports flat there.
"""

from __future__ import annotations

import importlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:  # inside this repository
    from . import arrays, classification, core, integrity, runtimes, serving_policy
except ImportError:  # inside a .mar, where the helpers sit flat at the archive root
    import arrays
    import classification
    import core
    import integrity
    import runtimes
    import serving_policy

__all__ = ["TASK_OF_HANDLER", "ServedModel", "load", "task_of"]

logger = logging.getLogger(__name__)

# The task of an archive, by the handler module its manifest names.
TASK_OF_HANDLER = {
    "distill_classifier.py": "image-classification",
    "distill_text_classifier.py": "text-classification",
}


def task_of(manifest: dict) -> str:
    """The task of the archive whose MANIFEST.json is ``manifest``."""
    handler = Path(str(manifest.get("model", {}).get("handler", ""))).name
    if handler not in TASK_OF_HANDLER:
        raise RuntimeError(f"not a distillserve archive: its handler is {handler or 'missing'}")
    return TASK_OF_HANDLER[handler]


def _helper(name: str):
    """A helper module shipped beside this one (the task modules are in their archives only)."""
    return importlib.import_module(f"{__package__}.{name}" if __package__ else name)


def make_adapter(task: str, settings, mapping: dict[str, str], model_dir: Path, device):
    """The task adapter (``core.TaskAdapter``) of an archive's files in ``model_dir``."""
    if task == "text-classification":
        classification.verify_checksum(model_dir, settings.spec.tokenizer)
        return _helper("text_task").TextClassification(settings, mapping, model_dir, device)
    return _helper("image_task").ImageClassification(settings, mapping, device)


@dataclass
class ServedModel:
    """What a server holds for one archive once it is loaded."""

    settings: Any  # classification.HandlerSettings
    serialized: str
    model_format: str
    version: str
    threads: int
    device: Any  # torch.device; None on a host without torch
    model: Any  # runtimes' callable
    mapping: dict[str, str]
    adapter: Any  # core.TaskAdapter
    core: core.HandlerCore

    def warm_up(self, batch_size: int) -> int:
        """Run the model at batch 1 and at ``batch_size`` (never past ``MAX_BATCH_SIZE``) and
        return its number of outputs, checked to have a label each: TorchScript's profiling
        executor specialises on the first calls of each input shape, which are slow (and the
        other runtimes allocate their buffers)."""
        outputs = 0
        with arrays.inference():
            for size in sorted({1, min(batch_size, serving_policy.MAX_BATCH_SIZE)}):
                example = self.adapter.example(size)
                for _ in range(max(1, self.settings.warmup_iterations)):
                    logits = self.model(example)
                    outputs = int((logits[0] if isinstance(logits, tuple) else logits).shape[-1])
        classification.checked_labels(self.mapping, outputs)
        return outputs

    def describe(self) -> str:
        return (
            f"{self.serialized} ({self.model_format}, "
            f"{'int8' if self.settings.quantized else 'fp32'}, "
            f"engine={_engine()}, threads={self.threads}, device={self.device or 'cpu'})"
        )


def _engine() -> str:
    torch = arrays.torch
    return torch.backends.quantized.engine if torch is not None else "none (no torch)"


def _torch_settings(model_dir: Path, settings, model_format: str, threads: int, gpu_id):
    """The host's torch checked against the one that built the archive, its quantized engine
    and threads set; the device the model runs on. Without torch (an ONNX model on a host
    with onnxruntime alone) nothing to set: ``None``, the CPU."""
    torch = arrays.torch
    if torch is None:
        return None
    classification.check_torch_version(model_dir, torch.__version__, model_format)
    if settings.quantized:
        supported = torch.backends.quantized.supported_engines
        if settings.engine not in supported:
            raise RuntimeError(
                f"quantized engine {settings.engine!r} is not supported by this torch "
                f"build (supported: {', '.join(supported)}); rebuild with one of them"
            )
        torch.backends.quantized.engine = settings.engine
    torch.set_num_threads(threads)
    use_cuda = (
        model_format == "torchscript"  # the compiled .pt2 and the ONNX session are CPU ones
        and not settings.quantized
        and torch.cuda.is_available()
        and gpu_id is not None
    )
    return torch.device(f"cuda:{gpu_id}" if use_cuda else "cpu")


def load(
    model_dir: Path,
    yaml_config: dict,
    manifest: dict,
    *,
    task: str | None = None,
    workers: int = 1,
    gpu_id: int | str | None = None,
    model_name: str = "",
    metrics: core.MetricSink | None = None,
) -> ServedModel:
    """The archive unpacked in ``model_dir`` (its model-config.yaml as ``yaml_config``, its
    MANIFEST.json as ``manifest``), verified and loaded for ``workers`` worker processes, as
    ``task`` (by default the task of the handler its manifest names)."""
    logger.info("archive files: %s", integrity.check_model_dir(model_dir))
    settings = classification.HandlerSettings.from_dict(yaml_config.get("handler", {}))
    serialized = manifest["model"].get("serializedFile", "model.pt")
    classification.verify_checksum(model_dir, serialized)
    model_format = runtimes.format_of(serialized)
    threads = serving_policy.serve_threads(settings.threads, workers)
    cores = serving_policy.usable_cores()
    if workers * threads > cores:
        logger.warning(
            "the model is configured for %d workers x %d thread(s) and this host has %d usable "
            "cores: they contend; run at most %d workers (TorchServe: PUT "
            "/models/{name}?min_worker=N&max_worker=N; Triton: distillserve scale; or the "
            "recipe's archive.min_workers/max_workers)",
            workers, threads, cores, max(1, cores // threads),
        )  # fmt: skip
    device = _torch_settings(model_dir, settings, model_format, threads, gpu_id)
    model = runtimes.load_runtime(model_dir / serialized, device, threads)
    labels = json.loads((model_dir / "index_to_name.json").read_text())
    mapping = classification.checked_labels(labels)
    adapter = make_adapter(task or task_of(manifest), settings, mapping, model_dir, device)
    version = str(manifest["model"].get("modelVersion", ""))
    bound = adapter.bind(model) if hasattr(adapter, "bind") else model
    handler_core = core.HandlerCore(
        adapter,
        bound,
        model_name=model_name or manifest["model"].get("modelName", ""),
        model_version=version,
        metrics=metrics,
    )
    return ServedModel(
        settings, serialized, model_format, version, threads, device, model, mapping, adapter,
        handler_core,
    )  # fmt: skip

"""Framework-free pieces of the classification handler: settings, checksums, top-k answers.

Ships inside every .mar next to ``imageprep``; imports nothing from TorchServe.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

try:  # inside this repository
    from .arrays import ranked
    from .core import V2Output
    from .imageprep import ImageLimits, PreprocessSpec
    from .serving_policy import AUTO
    from .textprep import TASK as TEXT_TASK
    from .textprep import TextSpec
except ImportError:  # inside a .mar, where the helpers sit flat at the archive root
    from arrays import ranked
    from core import V2Output
    from imageprep import ImageLimits, PreprocessSpec
    from serving_policy import AUTO
    from textprep import TASK as TEXT_TASK
    from textprep import TextSpec

__all__ = [
    "QUANTIZED_ENGINES",
    "HandlerSettings",
    "check_torch_version",
    "checked_labels",
    "labelled",
    "ranked",
    "ranked_v2_outputs",
    "sha256_file",
    "sha256_stream",
    "topk_answers",
    "verify_checksum",
]

# The quantized engines a recipe may name; the torch build decides which of them it supports.
QUANTIZED_ENGINES = ("x86", "fbgemm", "qnnpack", "onednn")


@dataclass(frozen=True)
class HandlerSettings:
    """The ``handler:`` section of ``model-config.yaml``: an artifact's ``handler.yaml``, read
    with ``from_dict`` and written with ``to_dict`` (the one definition of that file)."""

    spec: PreprocessSpec | TextSpec  # the task's input contract
    topk: int = 3
    quantized: bool = False
    engine: str = "x86"
    threads: int | str = 0  # a number, 0 = cores / workers, or serving_policy.AUTO (archived)
    warmup_iterations: int = 2
    limits: ImageLimits = field(default_factory=ImageLimits)

    @classmethod
    def from_dict(cls, settings: dict) -> HandlerSettings:
        """Parse and check the settings; a ``ValueError`` names the bad key. ``task:
        text-classification`` settings hold a ``TextSpec``, any others an image's."""
        text = settings.get("task") == TEXT_TASK
        missing = [k for k in ("image_size", "channels", "mean", "std") if k not in settings]
        if missing and not text:
            raise ValueError(f"handler settings lack {', '.join(missing)}")
        engine = str(settings.get("engine", "x86"))
        if engine not in QUANTIZED_ENGINES:
            raise ValueError(
                f"handler.engine is {engine!r}; allowed: {', '.join(QUANTIZED_ENGINES)}"
            )
        topk = int(settings.get("topk", 3))
        if topk < 1:
            raise ValueError(f"handler.topk must be >= 1, got {topk}")
        defaults = ImageLimits()
        limits = ImageLimits(
            max_bytes=int(settings.get("max_bytes", defaults.max_bytes)),
            max_pixels=int(settings.get("max_pixels", defaults.max_pixels)),
            max_side_ratio=float(settings.get("max_side_ratio", defaults.max_side_ratio)),
        )
        return cls(
            spec=TextSpec.from_dict(settings) if text else PreprocessSpec.from_dict(settings),
            topk=topk,
            quantized=bool(settings.get("quantized", False)),
            engine=engine,
            threads=_threads(settings.get("threads", 0)),
            warmup_iterations=int(settings.get("warmup_iterations", 2)),
            limits=limits,
        )

    def to_dict(self) -> dict:
        """The settings as ``handler.yaml`` / the ``handler:`` section holds them."""
        common = {
            **self.spec.to_dict(),
            "topk": self.topk,
            "quantized": self.quantized,
            "engine": self.engine,
            "threads": self.threads,
            "warmup_iterations": self.warmup_iterations,
        }
        if self.is_text:
            return common
        return {
            **common,
            "max_bytes": self.limits.max_bytes,
            "max_pixels": self.limits.max_pixels,
            "max_side_ratio": self.limits.max_side_ratio,
        }

    @property
    def is_text(self) -> bool:
        """Whether these are a text classifier's settings."""
        return isinstance(self.spec, TextSpec)


def _threads(value) -> int | str:
    """``handler.threads``: a number, or the policy's sentinel for a choice not yet made."""
    return value if value == AUTO else int(value)


def topk_answers(logits, mapping: dict[str, str], k: int) -> list[dict[str, float]]:
    """One ``{label: probability}`` dict per row, the ``k`` most probable labels first."""
    return labelled(*ranked(logits, k), mapping)


def labelled(values, indices, mapping: dict[str, str]) -> list[dict[str, float]]:
    """Ranked rows (``ranked``'s probabilities and class indices) as one ``{label:
    probability}`` dict per row, in rank order."""
    return [
        {mapping.get(str(i), str(i)): round(v, 6) for v, i in zip(row_v, row_i)}
        for row_v, row_i in zip(values.tolist(), indices.tolist())
    ]


def ranked_v2_outputs(values, indices, mapping: dict[str, str]) -> list[V2Output]:
    """Ranked rows as v2 outputs: ``probabilities`` (FP32) and ``labels`` (BYTES), ``[N, k]``."""
    shape = [int(indices.shape[0]), int(indices.shape[1])]
    labels = [mapping.get(str(i), str(i)) for i in indices.flatten().tolist()]
    probabilities = [round(v, 6) for v in values.flatten().tolist()]
    return [
        V2Output("probabilities", "FP32", shape, probabilities),
        V2Output("labels", "BYTES", shape, labels),
    ]


def sha256_stream(stream: BinaryIO) -> str:
    """Hex sha256 of what ``stream`` holds, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    for chunk in iter(lambda: stream.read(1 << 20), b""):
        digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    with open(path, "rb") as fh:
        return sha256_stream(fh)


def verify_checksum(model_dir: Path, model_file: str = "model.pt") -> None:
    """Refuse a model file whose sha256 differs from the one in ``build-info.json``."""
    info_path = model_dir / "build-info.json"
    if not info_path.is_file():
        raise RuntimeError(
            f"{info_path.name} is missing from the archive: cannot verify {model_file}"
        )
    expected = json.loads(info_path.read_text())["sha256"][model_file]
    actual = sha256_file(model_dir / model_file)
    if actual != expected:
        raise RuntimeError(
            f"{model_file} does not match build-info.json (sha256 {actual} != "
            f"{expected}): the archive was altered or corrupted; rebuild it"
        )


def checked_labels(mapping: object, outputs: int | None = None) -> dict[str, str]:
    """``index_to_name.json``'s mapping with every label a string: numbers become their text
    (``3`` -> ``"3"``); a list, an object, null or a boolean is refused (``ValueError``, one
    line), as is a key that is not an output index. With ``outputs`` (the model's logit count)
    every index ``0 .. outputs-1`` must have a label: a model never goes live answering with
    labels it does not have."""
    if not isinstance(mapping, dict) or not mapping:
        raise ValueError('index_to_name.json must be a non-empty JSON object {"0": "label"}')
    labels = {}
    for key, value in mapping.items():
        if not str(key).isdigit():
            raise ValueError(f"index_to_name.json key {key!r} is not an output index (0, 1, ...)")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(
                f"index_to_name.json label of {key} is {type(value).__name__} {value!r}: "
                "labels must be strings (numbers are converted)"
            )
        labels[str(int(key))] = value if isinstance(value, str) else str(value)
    if outputs is not None:
        missing = [i for i in range(outputs) if str(i) not in labels]
        extra = sorted(int(k) for k in labels if int(k) >= outputs)
        if missing or extra:
            raise ValueError(
                f"index_to_name.json does not match the model's {outputs} outputs: "
                + (f"no label for {missing[:5]}" if missing else f"labels past them: {extra[:5]}")
            )
    return labels


def _release(version: str) -> tuple[int, ...]:
    """``2.14.1+cpu`` -> ``(2, 14, 1)``: the release numbers, local labels dropped."""
    numbers = []
    for part in version.split("+")[0].split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        numbers.append(int(digits))
        if len(digits) != len(part):  # "0rc1": stop at the pre-release
            break
    return tuple(numbers)


def check_torch_version(
    model_dir: Path, host_torch: str, model_format: str = "torchscript"
) -> None:
    """Refuse to load on a torch older than the one the archive was built with: a TorchScript
    file saved by a newer torch may not load, or load and compute differently, on an older one.
    An AOTInductor ``.pt2`` package is compiled code for one torch release: it needs the same
    major.minor version."""
    info_path = model_dir / "build-info.json"
    if not info_path.is_file():
        return  # verify_checksum refuses such an archive first
    built = json.loads(info_path.read_text()).get("versions", {}).get("torch", "unknown")
    if built != "unknown" and model_format == "pt2":
        if _release(host_torch)[:2] != _release(built)[:2]:
            raise RuntimeError(
                f"this .pt2 package was compiled by torch {built} but this host has torch "
                f"{host_torch}: AOTInductor packages need the torch release that compiled them; "
                f"install torch=={built.split('+')[0]} on the inference host (or rebuild)"
            )
        return
    if built != "unknown" and _release(host_torch) < _release(built):
        raise RuntimeError(
            f"this archive was built with torch {built} but this host has torch {host_torch}: "
            f"install torch>={built.split('+')[0]} on the inference host (or rebuild the archive "
            "with the host's torch)"
        )

"""The model files a recipe may name (``teacher.checkpoint``, ``student.checkpoint``): what kind
each is, and loading it with an error that gives the cause and the fix.

Accepted kinds:

- a TorchScript file (``torch.jit.script(model).save(path)`` or ``torch.jit.trace``): a teacher
  only; it runs as it is, so it can be distilled from and exported as TorchScript, but neither
  ``torch.export`` nor the ONNX exporter can read it, and it has no layers to hook for feature KD;
- a state dict of the recipe's ``arch`` (``torch.save(model.state_dict(), path)``), or a
  checkpoint dict that holds one under ``state_dict`` or ``model`` (as torchvision's reference
  scripts write), optionally with DistributedDataParallel's ``module.`` prefix.

State dicts are read with ``torch.load(weights_only=True)``: a file can never run code here. A
whole pickled model (``torch.save(model)``) is refused with how to save its weights instead.
"""

from __future__ import annotations

import argparse
import pickle
import re
import zipfile
from pathlib import Path

import torch
from torch import nn

from distillserve.errors import RecipeError

__all__ = ["ACCEPTED", "is_torchscript", "load_state", "read_state_dict"]

ACCEPTED = (
    "accepted: a state dict of the recipe's arch (torch.save(model.state_dict(), PATH)) or a "
    "checkpoint dict holding one under 'state_dict' or 'model'; for a teacher also a "
    "TorchScript file (torch.jit.script(model).save(PATH))"
)
_SHOWN = 3  # keys of each kind of mismatch named in an error
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def is_torchscript(path: str | Path) -> bool:
    """Whether ``path`` is a saved TorchScript module (a zip with a ``code/`` folder), without
    loading it."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(
                "/code/" in name or name.endswith("/constants.pkl") for name in archive.namelist()
            )
    except (OSError, zipfile.BadZipFile):
        return False


def _not_a_torch_file(path: Path) -> str | None:
    """Why ``path`` is not a file ``torch.save`` wrote (``None`` when it may be one)."""
    if zipfile.is_zipfile(path):
        return None
    head = path.read_bytes()[:2]
    if head[:1] == b"\x80":  # a pickle (torch.save's legacy format)
        return None
    return f"{path} is not a PyTorch file (it does not start as torch.save or torch.jit.save write)"


def read_state_dict(path: str | Path, key: str) -> dict[str, torch.Tensor]:
    """The tensors of a state-dict file (``RecipeError`` naming ``key``, the cause and the fix)."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(key, f"file not found: {path}")
    why = _not_a_torch_file(path)
    if why is None and is_torchscript(path):
        why = f"{path} is a TorchScript file, which only a teacher can be; here give a state dict"
    if why is not None:
        raise RecipeError(key, f"{why}; {ACCEPTED}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):  # torchvision's 'args'
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise RecipeError(key, _unpickling_cause(path, str(err))) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        text = _ANSI.sub("", str(err)).strip().splitlines()
        raise RecipeError(
            key, f"{path} cannot be read ({text[0] if text else type(err).__name__}); {ACCEPTED}"
        ) from None
    if isinstance(state, dict):
        for inner in ("state_dict", "model"):
            if isinstance(state.get(inner), dict):
                state = state[inner]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RecipeError(
            key, f"{path} holds a {type(state).__name__}, not a state dict of tensors; {ACCEPTED}"
        )
    if state and all(k.startswith("module.") for k in state):  # saved from a DDP wrapper
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _unpickling_cause(path: Path, message: str) -> str:
    """A weights-only refusal in words: what the file holds and how to save its weights."""
    found = _GLOBAL.search(_ANSI.sub("", message))
    if found is None:
        return f"{path} is not a state dict ({message.splitlines()[0][:120]}); {ACCEPTED}"
    name = found.group(1)
    return (
        f"{path} holds a pickled {name} object: a whole model saved with torch.save(model), or "
        "a checkpoint with objects beside the weights; loading it would run code from the file, "
        "so it is refused: save only the weights with torch.save(model.state_dict(), PATH), or "
        f"a teacher as TorchScript with torch.jit.script(model).save(PATH); {ACCEPTED}"
    )


def load_state(model: nn.Module, path: str | Path, key: str, arch: str) -> None:
    """Load a state-dict file into ``model``; a mismatch names the missing, unexpected and
    mis-shaped keys (as torch reports them) and what to check."""
    state = read_state_dict(path, key)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} in the file, {tuple(expected[k].shape)} in {arch}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        for what, keys in (
            ("size mismatch", shapes),
            ("missing keys", missing),
            ("unexpected keys", unexpected),
        ):
            if keys:
                more = f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
                parts.append(f"{what} ({len(keys)}): {', '.join(keys[:_SHOWN])}{more}")
        head = [
            k for k in list(expected)[-2:] if k in state and state[k].shape != expected[k].shape
        ]
        hint = (
            f"its last layer has {state[head[0]].shape[0]} outputs, the recipe's data "
            f"{expected[head[0]].shape[0]} classes"
            if head
            else f"check that it was saved from {arch} with this recipe's kwargs"
        )
        raise RecipeError(
            key, f"{path} does not fit {arch}: {'; '.join(parts)} ({hint}); {ACCEPTED}"
        )
    model.load_state_dict(state)

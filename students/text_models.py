"""Transformer text classifiers from Hugging Face ``transformers``, offline: a teacher loaded from
a local ``save_pretrained`` directory (``local_files_only``, never the Hub) or built from its
sizes, a student of the same family built smaller and initialised from the teacher where the
shapes allow (DistilBERT's every-other-layer initialisation), and the WordPiece tokenizer
trained here by ``tokenizers`` when the teacher brings none.

``TextClassifier`` wraps a ``*ForSequenceClassification`` so that every model of the toolkit
takes one tensor: token ids ``(batch, length)``, its attention mask ``ids != pad_id``. With
``keep_states`` it also keeps the last pass's hidden states and attention maps (for TinyBERT
losses, ``students.text_kd``). Attention runs "eager" (plain matmul and softmax): it returns the
attention maps, and it exports alike to TorchScript, ``torch.export`` and ONNX.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import nn

from distillserve.errors import RecipeError
from distillserve.handlers.textprep import TextSpec

__all__ = [
    "TextClassifier",
    "build_classifier",
    "init_from_teacher",
    "load_huggingface",
    "student_like",
    "train_wordpiece",
]

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # [PAD] is id 0
# The size names of the common configs, and the aliases some families use instead.
SIZE_KEYS = {
    "layers": ("num_hidden_layers", "n_layers"),
    "hidden": ("hidden_size", "dim"),
    "heads": ("num_attention_heads", "n_heads"),
    "intermediate": ("intermediate_size", "hidden_dim"),
}
_LAYER = re.compile(r"\.layer\.(\d+)\.")


class TextClassifier(nn.Module):
    """A sequence classifier on token ids alone (see the module docstring)."""

    def __init__(self, model: nn.Module, pad_id: int) -> None:
        super().__init__()
        self.hf = model
        self.pad_id = int(pad_id)
        self.keep_states = False
        self.states: tuple | None = None  # (hidden states, attention maps, mask) of the last pass

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != self.pad_id).long()
        if not self.keep_states:
            return self.hf(input_ids=ids, attention_mask=mask).logits
        out = self.hf(
            input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True
        )
        self.states = (out.hidden_states, out.attentions, mask)
        return out.logits

    @property
    def sizes(self) -> dict[str, int]:
        """layers, hidden, heads and intermediate size, read from the model's config."""
        config = self.hf.config
        out = {}
        for name, keys in SIZE_KEYS.items():
            key = next((k for k in keys if hasattr(config, k)), None)
            if key is not None:
                out[name] = int(getattr(config, key))
        return out


def _quiet_transformers() -> None:
    """No Hub, no telemetry, no progress bars: the toolkit runs offline."""
    os.environ["HF_HUB_OFFLINE"] = "1"  # and every load passes local_files_only=True
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _apply_sizes(config, sizes: dict[str, int], where: str) -> None:
    for name, value in sizes.items():
        key = next((k for k in SIZE_KEYS[name] if hasattr(config, k)), None)
        if key is None:
            raise RecipeError(
                f"{where}.{name}", f"{type(config).__name__} has no {' or '.join(SIZE_KEYS[name])}"
            )
        setattr(config, key, value)


def build_classifier(
    sizes: dict[str, int], vocab_size: int, classes: list[str], max_length: int, pad_id: int = 0
) -> TextClassifier:
    """A BERT sequence classifier of ``sizes`` with random weights."""
    _quiet_transformers()
    from transformers import AutoModelForSequenceClassification, BertConfig

    config = BertConfig(
        vocab_size=vocab_size,
        max_position_embeddings=max_length,
        num_labels=len(classes),
        pad_token_id=pad_id,
        id2label=dict(enumerate(classes)),
        label2id={c: i for i, c in enumerate(classes)},
    )
    _apply_sizes(config, sizes, "teacher")
    model = AutoModelForSequenceClassification.from_config(config, attn_implementation="eager")
    return TextClassifier(model, pad_id)


def student_like(
    teacher: TextClassifier, sizes: dict[str, int], classes: list[str]
) -> TextClassifier:
    """A model of the teacher's family (its config class and vocabulary) with ``sizes``."""
    from transformers import AutoModelForSequenceClassification

    config = type(teacher.hf.config).from_dict(teacher.hf.config.to_dict())
    _apply_sizes(config, sizes, "student")
    config.num_labels = len(classes)
    config.id2label = dict(enumerate(classes))
    config.label2id = {c: i for i, c in enumerate(classes)}
    model = AutoModelForSequenceClassification.from_config(config, attn_implementation="eager")
    return TextClassifier(model, teacher.pad_id)


def init_from_teacher(student: TextClassifier, teacher: TextClassifier) -> tuple[int, int, list]:
    """Copy the teacher's weights into the student wherever the shapes match: embeddings, and
    student layer ``j`` from teacher layer ``j * teacher_layers // student_layers`` (every
    other layer for half the depth). Returns (tensors copied, tensors in all, teacher layers)."""
    t_layers, s_layers = teacher.sizes["layers"], student.sizes["layers"]
    mapping = {j: j * t_layers // s_layers for j in range(s_layers)}
    source = teacher.hf.state_dict()
    target = student.hf.state_dict()
    copied = 0
    for key, value in target.items():
        match = _LAYER.search(key)
        origin = key
        if match:
            layer = mapping[int(match.group(1))]
            origin = f"{key[: match.start()]}.layer.{layer}.{key[match.end() :]}"
        if origin in source and source[origin].shape == value.shape:
            target[key] = source[origin].clone()
            copied += 1
    student.hf.load_state_dict(target)
    return copied, len(target), [mapping[j] for j in range(s_layers)]


def load_huggingface(path: str | Path, classes: list[str]) -> tuple[TextClassifier, object]:
    """A local ``save_pretrained`` directory's sequence classifier and its fast tokenizer (as a
    ``tokenizers.Tokenizer``), offline; one-line errors name what is missing."""
    _quiet_transformers()
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise RecipeError(
            "teacher.path", f"{path} is not a save_pretrained directory (no config.json)"
        )
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, local_files_only=True, attn_implementation="eager"
        )
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RecipeError("teacher.path", f"{path} does not load offline: {first}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise RecipeError(
            "teacher.path",
            f"{path} has no fast tokenizer (tokenizer.json): the handler tokenizes with the "
            "tokenizers package; save the model with its fast tokenizer",
        )
    if model.config.num_labels != len(classes):
        raise RecipeError(
            "teacher.path",
            f"{path} classifies {model.config.num_labels} labels, the recipe's data "
            f"{len(classes)} ({', '.join(classes[:5])})",
        )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return TextClassifier(model.eval(), pad_id), tokenizer.backend_tokenizer


def train_wordpiece(texts: list[str], vocab_size: int, lowercase: bool):
    """A BERT-style WordPiece tokenizer (``[CLS] text [SEP]``, ``[PAD]`` = 0) trained on
    ``texts`` by the ``tokenizers`` package (about a second for 7,000 sentences)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import WordPieceTrainer

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return tokenizer


def spec_checked(spec: TextSpec, model: TextClassifier) -> None:
    """Refuse a ``max_length`` longer than the model's position embeddings."""
    longest = getattr(model.hf.config, "max_position_embeddings", None)
    if longest is not None and spec.max_length > longest:
        raise RecipeError(
            "data.max_length",
            f"{spec.max_length} tokens is longer than the teacher's {longest} positions",
        )

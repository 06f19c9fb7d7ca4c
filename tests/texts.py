"""Text-task helpers for the tests: a user's own Hugging Face teacher directory (a small random
``BertForSequenceClassification`` and its fast tokenizer, written by ``save_pretrained``), a
short text recipe, and texts a client may send, good and hostile."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ODD_BUT_VALID", "hostile_requests", "save_hf_teacher", "text_recipe_dict"]

# Valid text that must be answered (200): emoji, right-to-left, zero-width, mixed scripts.
ODD_BUT_VALID = {
    "emoji": "this film 😀🎬 was a joy 👍🏽",
    "right-to-left": "فيلم رائع جدا and שחקנים מצוינים",
    "zero-width": "great\u200b movie\u200d with\ufeff zero\u200c width",
    "mixed-script": "Это кино 映画 was ελληνικά great",
}


def hostile_requests(max_bytes: int) -> dict[str, tuple[bytes, str, int]]:
    """Bad requests: name -> (body, content type, the status it must get)."""
    return {
        "empty": (b"", "application/octet-stream", 400),
        "whitespace": (b"  \n\t  ", "text/plain", 400),
        "invalid-utf8": (b"caf\xe9 \xff\xfe good", "application/octet-stream", 400),
        "too-large": (b"word " * (max_bytes // 5 + 10), "application/octet-stream", 413),
        "json-not-text": (b'{"text": 5}', "application/json", 400),
        "json-list": (b'["a", "b"]', "application/json", 400),
        "json-no-field": (b'{"review": "fine"}', "application/json", 400),
        # deeper than json's recursion limit, yet under the byte limit
        "json-too-deep": (b"[" * 1010 + b"]" * 1010, "application/json", 400),
        "lone-surrogate": (b'{"text": "bad \\ud800 half"}', "application/json", 400),
    }


def save_hf_teacher(directory: Path, texts: list[str], classes: list[str]) -> Path:
    """A user's own fine-tuned BERT as ``save_pretrained`` leaves it (random weights here: no
    weights can be downloaded), with its fast tokenizer; written offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    from distillserve.students.text_models import train_wordpiece

    tokenizer = train_wordpiece(texts, 2000, lowercase=True)
    fast = BertTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    config = BertConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=128,
        num_labels=len(classes),
        id2label=dict(enumerate(classes)),
        label2id={c: i for i, c in enumerate(classes)},
    )
    BertForSequenceClassification(config).save_pretrained(directory)
    fast.save_pretrained(directory)
    return directory


def text_recipe_dict(teacher_dir: Path | None = None, formats: list[str] | None = None) -> dict:
    """A text recipe small enough for CI: 600 Rotten Tomatoes sentences, a one-layer student;
    the teacher from ``teacher_dir`` (Hugging Face) or trained here, tiny."""
    teacher = (
        {"source": "huggingface", "path": str(teacher_dir)}
        if teacher_dir is not None
        else {"layers": 1, "hidden": 64, "heads": 2, "intermediate": 128, "epochs": 1}
    )
    return {
        "name": "reviews-ci",
        "task": "text-classification",
        "data": {"limit": 600, "max_length": 48, "max_bytes": 2048, "vocab_size": 2000},
        "teacher": teacher,
        "student": {"layers": 1, "hidden": 64, "heads": 2, "intermediate": 128},
        "distill": {"epochs": 1, "lr": 1.0e-3, "hidden_weight": 1.0, "attention_weight": 1.0},
        "export": {
            "formats": formats or ["torchscript", "pt2", "onnx"],
            "teacher_formats": ["onnx"],
            # a student of one epoch has nearly flat logits, so int8 flips some of its top-1
            # labels (a fresh-clone run measured 0.9167 for ONNX); the served tests compare
            # each file with itself in process, and int8 parity is judged on the real recipe
            "min_int8_agreement": 0.8,
        },
        "archive": {
            "model_name": "reviews-ci",
            "min_workers": 1,
            "max_workers": 1,
            "threads": 1,
            "batch_size": 8,
            "max_batch_delay": 100,
        },
    }

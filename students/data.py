"""Datasets as ``uint8`` images plus labels, split train/val/test, and loaders that preprocess them.

Every split yields ``(uint8 tensor (C, H, W), label)``: exactly what the serving handler has after
decoding a request. ``make_loader`` applies ``handlers.imageprep.preprocess`` to each batch, so
training, evaluation and serving share one preprocessing definition.

Sources: scikit-learn's bundled ``load_digits`` (1,797 8x8 images, 10 classes, no download) and a
user's ``ImageFolder`` directory (``root/CLASS/*.png``, or ``root/{train,val,test}/CLASS/*``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from distillserve.errors import DataError
from distillserve.handlers.imageprep import InputError, PreprocessSpec, decode_image, preprocess
from distillserve.students.recipe import DataConfig

__all__ = [
    "ImageFiles",
    "ImageList",
    "Splits",
    "augment_affine",
    "digits_test_pngs",
    "encode_png",
    "labelled_fraction",
    "load_splits",
    "make_loader",
    "preprocess_spec",
    "stratified_split",
]


class ImageList(Dataset):
    """Images in memory: a ``uint8`` tensor ``(N, C, H, W)`` and ``long`` labels ``(N,)``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise DataError(f"images must be uint8 (N, C, H, W), got {images.dtype} {images.shape}")
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, int]:
        return self.images[idx], int(self.labels[idx])

    def subset(self, indices: torch.Tensor) -> ImageList:
        return ImageList(self.images[indices], self.labels[indices])


class ImageFiles(Dataset):
    """Image files decoded on access with the handler's own ``decode_image``."""

    def __init__(
        self,
        files: Sequence[Path],
        labels: Sequence[int],
        channels: int,
        target_size: tuple[int, int] | None = None,
    ) -> None:
        self.files, self.labels, self.channels = list(files), torch.tensor(list(labels)), channels
        self.target_size = target_size  # decode JPEGs at reduced scale, as the handler does

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, int]:
        path = self.files[idx]
        try:
            image = decode_image(path.read_bytes(), self.channels, target_size=self.target_size)
            return image, int(self.labels[idx])
        except InputError as err:
            raise DataError(f"{path}: {err}") from None

    def subset(self, indices: torch.Tensor) -> ImageFiles:
        idx = indices.tolist()
        return ImageFiles(
            [self.files[i] for i in idx], self.labels[idx].tolist(), self.channels, self.target_size
        )


@dataclass
class Splits:
    """Train, validation and test splits with the class names (index -> label)."""

    train: ImageList | ImageFiles
    val: ImageList | ImageFiles
    test: ImageList | ImageFiles
    classes: list[str]


def preprocess_spec(config: DataConfig) -> PreprocessSpec:
    """The preprocessing the recipe asks for, as the handler will see it."""
    return PreprocessSpec(
        image_size=(config.image_size[0], config.image_size[1]),
        channels=config.channels,
        mean=tuple(config.mean),
        std=tuple(config.std),
    )


def encode_png(image: torch.Tensor) -> bytes:
    """A ``uint8`` (C, H, W) image as lossless PNG bytes, as a client would send it."""
    import io

    from PIL import Image

    array = image.permute(1, 2, 0).squeeze(-1).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def digits_test_pngs(seed: int = 0) -> list[bytes]:
    """The bundled digits test split (the demo recipe's split) as PNG files."""
    test = load_splits(DataConfig(), seed=seed).test
    return [encode_png(test[i][0]) for i in range(len(test))]


def stratified_split(
    labels: torch.Tensor, val_fraction: float, test_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Index tensors for train/val/test with each class in the same proportions (fixed seed)."""
    from sklearn.model_selection import train_test_split

    indices = torch.arange(len(labels)).numpy()
    y = labels.numpy()
    rest, test = train_test_split(indices, test_size=test_fraction, stratify=y, random_state=seed)
    val_share = val_fraction / (1.0 - test_fraction)
    train, val = train_test_split(rest, test_size=val_share, stratify=y[rest], random_state=seed)
    return torch.as_tensor(train), torch.as_tensor(val), torch.as_tensor(test)


def labelled_fraction(dataset: ImageList | ImageFiles, fraction: float, seed: int = 0):
    """A stratified ``fraction`` of ``dataset`` (the whole dataset when ``fraction`` is 1)."""
    if fraction >= 1.0:
        return dataset
    from sklearn.model_selection import train_test_split

    indices = torch.arange(len(dataset.labels)).numpy()
    keep, _ = train_test_split(
        indices, train_size=fraction, stratify=dataset.labels.numpy(), random_state=seed
    )
    return dataset.subset(torch.as_tensor(sorted(keep)))


def load_digits_images() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled digits as ``uint8`` images (N, 1, 8, 8) scaled 0..16 -> 0..255."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = torch.as_tensor(bunch.images, dtype=torch.float32) * (255.0 / 16.0)
    images = pixels.round().clamp(0, 255).to(torch.uint8).unsqueeze(1)
    return images, torch.as_tensor(bunch.target, dtype=torch.long)


def _image_files(root: Path) -> tuple[list[Path], list[int], list[str]]:
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    try:
        classes, class_to_idx = find_classes(str(root))
        samples = make_dataset(str(root), class_to_idx, extensions=IMG_EXTENSIONS)
    except (FileNotFoundError, OSError) as err:
        raise DataError(f"{root}: {err}") from None
    return [Path(p) for p, _ in samples], [c for _, c in samples], classes


def load_splits(config: DataConfig, seed: int = 0) -> Splits:
    """Load the recipe's dataset as train/val/test splits."""
    if config.source == "digits":
        if config.channels != 1:
            raise DataError("the digits dataset is grayscale: set data.channels to 1")
        images, labels = load_digits_images()
        data = ImageList(images, labels)
        train, val, test = stratified_split(labels, config.val_fraction, config.test_fraction, seed)
        return Splits(
            data.subset(train), data.subset(val), data.subset(test), [str(i) for i in range(10)]
        )

    root = Path(config.root or "")
    if (root / "train").is_dir():
        parts = {}
        for name in ("train", "val", "test"):
            if not (root / name).is_dir():
                raise DataError(f"{root} has train/ but no {name}/ folder")
            files, labels, classes = _image_files(root / name)
            parts[name] = ImageFiles(files, labels, config.channels, tuple(config.image_size))
        return Splits(parts["train"], parts["val"], parts["test"], classes)
    files, labels, classes = _image_files(root)
    if len(classes) < 2:
        raise DataError(f"{root} needs at least two class folders, found {classes}")
    data = ImageFiles(files, labels, config.channels, tuple(config.image_size))
    train, val, test = stratified_split(
        data.labels, config.val_fraction, config.test_fraction, seed
    )
    return Splits(data.subset(train), data.subset(val), data.subset(test), classes)


def augment_affine(
    batch: torch.Tensor,
    degrees: float = 0.0,
    translate: float = 0.0,
    scale: float = 0.0,
    generator: torch.Generator | None = None,
    positions: torch.Tensor | None = None,
    draws: int = 0,
) -> torch.Tensor:
    """Random per-image rotation (+-degrees), shift (+-translate of the size) and zoom (1 +- scale)
    of a preprocessed batch, resampled bilinearly with border padding.

    With ``positions`` the batch is one process's share of a global batch: every process draws
    ``draws`` values per parameter from an identically seeded ``generator`` and image ``i`` takes
    those at ``positions[i]``, so an image is transformed alike whatever the number of processes.
    """
    if degrees <= 0 and translate <= 0 and scale <= 0:
        return batch
    n = batch.shape[0]
    take = positions if positions is not None else torch.arange(n)
    count = max(draws, int(take.max()) + 1 if len(take) else 0)

    def uniform(bound: float) -> torch.Tensor:
        return ((torch.rand(count, generator=generator) * 2 - 1) * bound)[take]

    angle = uniform(degrees) * math.pi / 180
    zoom = 1 + uniform(scale)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [
            torch.stack([cos, -sin, uniform(translate) * 2], 1),
            torch.stack([sin, cos, uniform(translate) * 2], 1),
        ],
        1,
    )
    grid = torch.nn.functional.affine_grid(theta, list(batch.shape), align_corners=False)
    return torch.nn.functional.grid_sample(
        batch, grid, mode="bilinear", padding_mode="border", align_corners=False
    )


def make_loader(
    dataset: Dataset, spec: PreprocessSpec, batch_size: int, shuffle: bool = False, seed: int = 0
) -> DataLoader:
    """Batches of ``(float input (N, C, H, W), labels)`` preprocessed like the handler does."""

    def collate(items: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = zip(*items)
        return preprocess(images, spec), torch.tensor(labels, dtype=torch.long)

    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=generator
    )

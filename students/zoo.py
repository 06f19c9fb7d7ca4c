"""Teachers and students by name.

Small models for the bundled digits (a CIFAR-style ResNet teacher, a tiny quantization-ready
student) and torchvision architectures for 224x224 work, always built with random weights:
nothing here downloads anything.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.ao.quantization import DeQuantStub, QuantStub, fuse_modules

from distillserve.errors import RecipeError

__all__ = ["MODELS", "CifarResNet", "Ensemble", "TinyCNN", "build_model", "count_parameters"]


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """A small ResNet for low-resolution inputs (He et al. 2016, CIFAR variant): three stages of
    basic blocks with strides 1, 2, 2 and global average pooling. The digits teacher."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        widths: tuple[int, ...] = (32, 64, 128),
        blocks: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        layers, c_in = [], widths[0]
        for stage, width in enumerate(widths):
            for b in range(blocks):
                layers.append(_BasicBlock(c_in, width, 2 if stage > 0 and b == 0 else 1))
                c_in = width
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.layers(self.stem(x))).flatten(1)
        return self.fc(self.dropout(x))


class TinyCNN(nn.Module):
    """A tiny quantization-ready student: conv-bn-relu stages (fusable), global average pooling and
    one Linear layer, between ``QuantStub`` and ``DeQuantStub``. Call ``fuse_model()`` in eval
    mode before static quantization."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        widths: tuple[int, ...] = (16, 32, 32),
        strides: tuple[int, ...] = (1, 2, 2),
    ) -> None:
        super().__init__()
        if len(widths) != len(strides):
            raise ValueError(f"widths {widths} and strides {strides} need the same length")
        self.quant = QuantStub()
        blocks, c_in = [], in_channels
        for width, stride in zip(widths, strides):
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(c_in, width, 3, stride, 1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                )
            )
            c_in = width
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        self.dequant = DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.quant(x))
        x = self.pool(x).flatten(1)
        return self.dequant(self.fc(x))

    def fuse_model(self) -> None:
        """Fuse each conv-bn-relu in place (eval mode) for static quantization."""
        for block in self.features:
            fuse_modules(block, ["0", "1", "2"], inplace=True)


class Ensemble(nn.Module):
    """Averages the logits of its members. Distilling an ensemble into one small model is the
    setting of Hinton et al. (2015); an ensemble is also a steadier teacher than any one member."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x) for member in self.members]).mean(0)


def _torchvision(name: str, quantizable: bool = False) -> Callable[..., nn.Module]:
    def build(num_classes: int, in_channels: int = 3, **kwargs) -> nn.Module:
        if in_channels != 3:
            raise RecipeError("data.channels", f"{name} takes 3-channel images, not {in_channels}")
        if quantizable:
            from torchvision.models import quantization as tvq

            return getattr(tvq, name)(
                weights=None, quantize=False, num_classes=num_classes, **kwargs
            )
        import torchvision.models as tvm

        return getattr(tvm, name)(weights=None, num_classes=num_classes, **kwargs)

    return build


MODELS: dict[str, Callable[..., nn.Module]] = {
    "cifar_resnet": CifarResNet,
    "tiny_cnn": TinyCNN,
    # torchvision's quantizable variants: one module per call site (its plain BasicBlock and
    # Bottleneck call one ReLU several times, which PT2E quantizers refuse), same weights.
    "resnet50": _torchvision("resnet50", quantizable=True),
    "resnet18": _torchvision("resnet18", quantizable=True),
    "mobilenet_v3_large": _torchvision("mobilenet_v3_large", quantizable=True),
}


def build_model(
    arch: str, num_classes: int, in_channels: int, kwargs: dict | None = None
) -> nn.Module:
    """Build a zoo model with random weights; bad names or arguments are ``RecipeError``s."""
    if arch not in MODELS:
        raise RecipeError("arch", f"{arch!r} is not one of: {', '.join(sorted(MODELS))}")
    kwargs = dict(kwargs or {})
    for key in ("widths", "strides"):
        if key in kwargs:
            kwargs[key] = tuple(kwargs[key])
    try:
        return MODELS[arch](num_classes=num_classes, in_channels=in_channels, **kwargs)
    except TypeError as err:
        raise RecipeError(f"{arch}.kwargs", str(err)) from None


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (learnable and not, e.g. packed int8 weights count via state)."""
    return sum(p.numel() for p in model.parameters())

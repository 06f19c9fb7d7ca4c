"""A teacher trained in plain PyTorch, as you may already have one: torchvision's ResNet-18 on
an ImageFolder's ``train/`` split, saved both ways ``distillserve`` accepts:

    OUT/teacher-state.pt        torch.save(model.state_dict())  -> teacher.arch: resnet18
    OUT/teacher-torchscript.pt  torch.jit.script(model).save()   -> any architecture

Its input is the recipe's: RGB, resized to the recipe's image_size, ``ToTensor()`` (pixel/255)
then ``Normalize(mean, std)`` with the recipe's mean and std. A teacher trained on other input
gives the student wrong targets.

    python docs/own-data/train_teacher.py build/shapes-data build/shapes-teacher [--epochs 6]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torchvision
from torchvision import transforms as T

MEAN, STD, SIZE = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), (64, 64)  # = the recipe's data section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    torch.manual_seed(0)
    preprocess = T.Compose([T.Resize(SIZE), T.ToTensor(), T.Normalize(MEAN, STD)])
    train = torchvision.datasets.ImageFolder(args.data / "train", transform=preprocess)
    loader = torch.utils.data.DataLoader(train, batch_size=32, shuffle=True)
    model = torchvision.models.resnet18(weights=None, num_classes=len(train.classes))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for epoch in range(args.epochs):
        model.train()
        correct = 0
        for images, labels in loader:
            optimizer.zero_grad()
            logits = model(images)
            torch.nn.functional.cross_entropy(logits, labels).backward()
            optimizer.step()
            correct += int((logits.argmax(1) == labels).sum())
        print(f"epoch {epoch + 1}/{args.epochs}: train accuracy {correct / len(train):.3f}")
    model.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out / "teacher-state.pt")
    torch.jit.script(model).save(str(args.out / "teacher-torchscript.pt"))
    print(f"saved {args.out / 'teacher-state.pt'} and {args.out / 'teacher-torchscript.pt'}")


if __name__ == "__main__":
    main()

"""A small 5-class RGB ImageFolder to walk through "Your own data and teacher" with:
``OUT/{train,val,test}/{circle,cross,ring,square,triangle}/*.png``, 64x64 shapes of random
colour, size and position on a noisy background. Stands in for your own photos.

    python docs/own-data/make_shapes.py build/shapes-data [--per-class 120] [--size 64]
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from PIL import Image, ImageDraw

SHAPES = ("circle", "cross", "ring", "square", "triangle")
SPLITS = {"train": 0.7, "val": 0.15, "test": 0.15}


def draw(shape: str, size: int, rng: random.Random) -> Image.Image:
    """One image of ``shape``: a random colour, size and place on a noisy background."""
    background = tuple(rng.randrange(0, 90) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    pixels = image.load()
    for _ in range(size * size // 8):
        x, y = rng.randrange(size), rng.randrange(size)
        pixels[x, y] = tuple(min(255, c + rng.randrange(60)) for c in background)
    pen = ImageDraw.Draw(image)
    colour = tuple(rng.randrange(120, 256) for _ in range(3))
    half = rng.uniform(0.2, 0.35) * size
    cx, cy = (rng.uniform(half + 2, size - half - 2) for _ in range(2))
    box = (cx - half, cy - half, cx + half, cy + half)
    width = max(2, int(half / 3))
    if shape == "circle":
        pen.ellipse(box, fill=colour)
    elif shape == "ring":
        pen.ellipse(box, outline=colour, width=width)
    elif shape == "square":
        pen.rectangle(box, fill=colour)
    elif shape == "triangle":
        pen.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=colour)
    else:
        pen.line((cx - half, cy, cx + half, cy), fill=colour, width=width)
        pen.line((cx, cy - half, cx, cy + half), fill=colour, width=width)
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-class", type=int, default=120)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    for shape in SHAPES:
        start = 0
        for split, share in SPLITS.items():
            count = round(args.per_class * share)
            folder = args.out / split / shape
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(start, start + count):
                draw(shape, args.size, rng).save(folder / f"{index:04d}.png")
            start += count
    print(f"{args.out}: {len(SHAPES)} classes, {args.per_class} images each")


if __name__ == "__main__":
    main()

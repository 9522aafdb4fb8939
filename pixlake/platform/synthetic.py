"""A small seeded generator of synthetic images (coloured shapes on plain backgrounds).

Good enough to exercise the pipeline end to end; the captioned corpus for training and
evaluation builds on it. Run as ``python -m pixlake.platform.synthetic --out DIR --n N``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 70), "blue": (40, 80, 220), "yellow": (235, 210, 40),
           "purple": (140, 60, 190), "orange": (245, 140, 30), "white": (245, 245, 245), "black": (20, 20, 20)}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.25, "large": 0.6}


def make_image(rng: np.random.Generator, size: int = 96):
    """Draw one image; returns ``(PIL image, labels dict, caption)``."""
    from PIL import Image, ImageDraw

    names = list(COLOURS)
    colour, background = rng.choice(names, 2, replace=False)
    shape = str(rng.choice(SHAPES))
    size_name = str(rng.choice(list(SIZES)))
    img = Image.new("RGB", (size, size), COLOURS[background])
    draw = ImageDraw.Draw(img)
    r = SIZES[size_name] * size / 2
    cx, cy = rng.uniform(r, size - r, 2)
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "circle":
        draw.ellipse(box, fill=COLOURS[colour])
    elif shape == "square":
        draw.rectangle(box, fill=COLOURS[colour])
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=COLOURS[colour])
    labels = {"shape": shape, "colour": str(colour), "size": size_name, "background": str(background)}
    return img, labels, f"a {size_name} {colour} {shape} on a {background} background"


def write_corpus(out: Path, n: int, seed: int = 0) -> list[Path]:
    """Write ``n`` PNG images and ``captions.jsonl`` into ``out``; returns the image paths."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    with open(out / "captions.jsonl", "w") as f:
        for i in range(n):
            img, labels, caption = make_image(rng)
            path = out / f"{i:05d}.png"
            img.save(path)
            paths.append(path)
            f.write(json.dumps({"file": path.name, "caption": caption, **labels}) + "\n")
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI: write a synthetic image folder."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    write_corpus(args.out, args.n, args.seed)
    print(f"wrote {args.n} images to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

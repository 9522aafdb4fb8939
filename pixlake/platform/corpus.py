"""A seeded generator of captioned synthetic images: the corpus the demo model is trained
on and evaluated with, and the images the tests embed.

Each image shows 1–3 identical objects with several attributes (shape, colour, size,
count, position, background, texture). Captions always name colour and shape, mention the
other attributes at random, and are phrased from :data:`TRAIN_TEMPLATES`; the evaluation
job phrases its queries from :data:`HOLDOUT_TEMPLATES`, which training never sees.

Output (``write_corpus`` / ``pixlake corpus --out DIR --n N --seed S``)::

    DIR/images/00000.png ...
    DIR/manifest.parquet   path (relative to DIR), caption, shape, colour, size, count,
                           position, background, texture, label, subject, split

``label`` is ``"<colour> <shape>"``, the class the evaluation scores against; ``split`` is
``train`` or ``holdout``. The manifest is a source the embed job reads directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

COLOURS = {
    "red": (215, 35, 35), "green": (40, 170, 60), "blue": (35, 75, 215), "yellow": (240, 215, 30),
    "purple": (135, 50, 185), "orange": (250, 135, 20), "pink": (245, 130, 190), "brown": (125, 75, 35),
}
BACKGROUNDS = {"white": (250, 250, 250), "grey": (150, 150, 150), "black": (15, 15, 15), "cream": (240, 230, 200)}
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
PLURALS = {"cross": "crosses"}
SIZES = {"small": 0.14, "medium": 0.19, "large": 0.26}  # object radius as a fraction of the side
COUNTS = {1: "one", 2: "two", 3: "three"}
POSITIONS = {"left": (0.28, 0.5), "right": (0.72, 0.5), "top": (0.5, 0.28), "bottom": (0.5, 0.72), "centre": (0.5, 0.5)}
TEXTURES = ("solid", "striped", "dotted")

# Phrasings used to caption training images ...
TRAIN_TEMPLATES = (
    "a photo of {}", "{}", "an image of {}", "a picture showing {}", "here we see {}", "a drawing of {}",
    "a rendering of {}", "this image contains {}", "a simple graphic with {}", "{} in the picture",
)
# ... and phrasings only the evaluation's text queries use.
HOLDOUT_TEMPLATES = ("show me {}", "i am looking for {}", "find {}", "search for {}")

SPLITS = ("train", "holdout")
MANIFEST = "manifest.parquet"


@dataclass(frozen=True)
class Item:
    """The attributes of one generated image."""

    shape: str
    colour: str
    size: str
    count: int
    position: str  # "scattered" when count > 1
    background: str
    texture: str

    @property
    def label(self) -> str:
        """The evaluation class: colour and shape."""
        return f"{self.colour} {self.shape}"


def noun_phrase(colour: str, shape: str, count: int = 1, extras: tuple[str, ...] = ()) -> str:
    """``"a red star"``, ``"two small striped red stars"``: what captions and queries name."""
    noun = shape if count == 1 else PLURALS.get(shape, shape + "s")
    article = ("an" if (extras or (colour,))[0][0] in "aeiou" else "a") if count == 1 else COUNTS[count]
    return " ".join([article, *extras, colour, noun])


def caption(item: Item, rng: np.random.Generator) -> str:
    """A training caption of ``item``: always colour and shape; other attributes at random."""
    # Colour and shape always; the rest now and then, so the embedding is led by what the
    # evaluation labels on (colour + shape) yet still has to read the other attributes.
    extras = tuple(w for w, on in ((item.size, rng.random() < 0.25), (item.texture, rng.random() < 0.2)) if on)
    phrase = noun_phrase(item.colour, item.shape, item.count, extras)
    if item.count == 1 and rng.random() < 0.2:
        phrase += " in the centre" if item.position == "centre" else f" on the {item.position}"
    if rng.random() < 0.25:
        phrase += f" on a {item.background} background"
    return str(rng.choice(TRAIN_TEMPLATES)).format(phrase)


def query_text(label: str, template: str) -> str:
    """A text query for a label: ``("red star", "find {}")`` → ``"find a red star"``."""
    return template.format(("an " if label[:1] in "aeiou" else "a ") + label)


def random_item(rng: np.random.Generator) -> Item:
    """Draw the attributes of one image."""
    count = int(rng.choice(list(COUNTS)))
    return Item(
        shape=str(rng.choice(SHAPES)), colour=str(rng.choice(list(COLOURS))), size=str(rng.choice(list(SIZES))),
        count=count, position=str(rng.choice(list(POSITIONS))) if count == 1 else "scattered",
        background=str(rng.choice(list(BACKGROUNDS))), texture=str(rng.choice(TEXTURES)),
    )


def _outline(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Polygon of a shape (circles are many-sided polygons)."""
    def ring(n: int, radii: tuple[float, ...], turn: float) -> list[tuple[float, float]]:
        return [(cx + radii[i % len(radii)] * math.cos(turn + 2 * math.pi * i / n),
                 cy + radii[i % len(radii)] * math.sin(turn + 2 * math.pi * i / n)) for i in range(n)]

    if shape == "circle":
        return ring(48, (r,), 0)
    if shape == "square":
        return ring(4, (r * 1.2,), math.pi / 4 + angle)
    if shape == "diamond":
        return ring(4, (r * 1.25, r * 0.8), angle)
    if shape == "triangle":
        return ring(3, (r * 1.25,), -math.pi / 2 + angle)
    if shape == "star":
        return ring(10, (r * 1.3, r * 0.55), -math.pi / 2 + angle)
    t = r * 0.38  # cross: a plus sign
    pts = [(-t, -r), (t, -r), (t, -t), (r, -t), (r, t), (t, t), (t, r), (-t, r), (-t, t), (-r, t), (-r, -t), (-t, -t)]
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


def _centres(item: Item, r: float, rng: np.random.Generator) -> list[tuple[float, float]]:
    if item.count == 1:
        fx, fy = POSITIONS[item.position]
        return [(fx + rng.uniform(-0.05, 0.05), fy + rng.uniform(-0.05, 0.05))]
    centres: list[tuple[float, float]] = []
    for _ in range(200):  # rejection-sample non-overlapping centres
        c = (rng.uniform(r * 1.3, 1 - r * 1.3), rng.uniform(r * 1.3, 1 - r * 1.3))
        if all(math.dist(c, o) > 2.7 * r for o in centres):
            centres.append(c)
            if len(centres) == item.count:
                break
    return centres


def render(item: Item, rng: np.random.Generator, side: int = 64):
    """Draw ``item`` as an RGB PIL image of ``side`` pixels (drawn at 4x, then downsampled)."""
    from PIL import Image, ImageDraw

    big = side * 4
    img = Image.new("RGB", (big, big), BACKGROUNDS[item.background])
    r = SIZES[item.size] * rng.uniform(0.9, 1.1)
    fill = COLOURS[item.colour]
    shade = tuple(int(v * 0.5) for v in fill)
    for fx, fy in _centres(item, r, rng):
        angle = rng.uniform(-0.25, 0.25)
        mask = Image.new("L", (big, big), 0)
        ImageDraw.Draw(mask).polygon(_outline(item.shape, fx * big, fy * big, r * big, angle), fill=255)
        layer = Image.new("RGB", (big, big), fill)
        if item.texture != "solid":
            pattern = ImageDraw.Draw(layer)
            step = big // 16
            for k in range(0, big, step):
                if item.texture == "striped":
                    pattern.rectangle([0, k, big, k + step // 2], fill=shade)
                else:
                    for j in range(0, big, step):
                        pattern.ellipse([j, k, j + step // 2, k + step // 2], fill=shade)
        img.paste(layer, (0, 0), mask)
    return img.resize((side, side), Image.Resampling.LANCZOS)


def generate(n: int, seed: int = 0, holdout: float = 0.2) -> list[tuple[Item, str, str, str]]:
    """The first ``n`` items of the seeded stream: ``(item, caption, subject, split)`` each."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        item = random_item(rng)
        rows.append((item, caption(item, rng), f"person-{int(rng.integers(0, max(1, n // 8))):05d}",
                     "holdout" if rng.random() < holdout else "train"))
    return rows


def write_corpus(out: Path, n: int, seed: int = 0, holdout: float = 0.2, side: int = 64) -> list[Path]:
    """Write ``n`` images under ``out/images`` and ``out/manifest.parquet``.

    Args:
        out: the corpus directory (created).
        n: number of images.
        seed: the same seed always gives the same images, captions, subjects and splits.
        holdout: the fraction of rows marked ``split=holdout``.
        side: image side in pixels.

    Returns:
        The image paths, in manifest order.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = Path(out) / "images"
    images.mkdir(parents=True, exist_ok=True)
    render_rng = np.random.default_rng([seed, 1])  # independent of the attribute stream
    columns: dict[str, list[Any]] = {k: [] for k in ("path", "caption", "shape", "colour", "size", "count", "position",
                                                     "background", "texture", "label", "subject", "split")}
    paths = []
    for i, (item, text, subject, split) in enumerate(generate(n, seed, holdout)):
        path = images / f"{i:05d}.png"
        render(item, render_rng, side).save(path)
        paths.append(path)
        for key, value in (("path", f"images/{path.name}"), ("caption", text), ("label", item.label),
                           ("subject", subject), ("split", split), *vars(item).items()):
            columns[key].append(value)
    pq.write_table(pa.table(columns), Path(out) / MANIFEST)
    return paths

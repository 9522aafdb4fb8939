"""Near-duplicate detection quality: pixlake's embeddings against a perceptual hash (pHash), on one labelled set.

**The set.** Originals are synthetic corpus images (``pixlake.platform.corpus``: ``--classes``
classes of "colour shape", ``--per-class`` distinct items each, rendered at ``--side`` px) and
the photos that installed packages ship (:data:`PHOTO_CANDIDATES`, looked up in this
interpreter's site-packages and in the venvs under ``build/``, such as the one
``bench/peer_setup.sh`` makes; whatever is absent is skipped, and the run prints what it
used). Each original gets one copy per transformation (:data:`TRANSFORMS`, seeded per
original): JPEG re-compression at quality 15-30, resize to half, a crop keeping 80-90% of
each side, a rotation of 3-8 degrees (corners filled with the border's mean colour),
brightness and contrast each changed by 15-30%, a text watermark (white with a dark outline,
2/3 opaque, an eighth of the height or less so that it spans at most 70% of the width, in the
lower half), and a horizontal flip.

**The pairs.** Every pair of the set's images is labelled: a duplicate when both come from
the same original (original-copy and copy-copy pairs), distinct otherwise. Distinct pairs
whose originals are two items of the same synthetic class (same colour and shape, other
size, count, position, background or texture) are the hard "close distinct" group.

**The methods**, each scoring every pair:

* ``demo``: pixlake with the bundled demo model (``pixlake-demo``, ``--pretrained bundled``),
  cosine of the unit embeddings; duplicates at cosine >= the dedup job's default threshold
  (``pixlake.platform.dedup.DEFAULT_THRESHOLD``, 0.95), as ``pixlake dedup`` decides.
* ``vitb32-random``: the same with ViT-B-32 and seeded random weights (``--pretrained none``):
  what the architecture does without training.
* ``phash``: ``imagehash.phash`` (64-bit DCT hash of the 32x32 greyscale image); duplicates at
  Hamming distance <= 10 of 64 bits, the default of imagededup's ``find_duplicates``
  (``max_distance_threshold=10``), a common choice for imagehash pHash.

**Printed**: at each method's operating point, precision, recall and F1 over all pairs, the
recall per transformation (original-copy pairs) and per kind of original, and the
false-positive rate per group of distinct pairs; then a precision-recall sweep per method,
its best-F1 threshold, and the highest recall at precision >= 0.95. The last lines, one per
method, read ``RESULT <method>: precision P recall R ...``. Nothing is asserted.

Run: ``.venv/bin/python bench/dedup_quality.py`` (about 500 images, all three methods,
about a minute on 2 cores), or ``--quick`` (a few originals, demo and pHash only).
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import site
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

TRANSFORMS = {
    "jpeg": "JPEG re-compressed, quality 15-30",
    "half": "resized to half",
    "crop": "cropped to 80-90% of each side",
    "rotate": "rotated 3-8 degrees",
    "tone": "brightness and contrast +-15-30%",
    "text": "text watermark, lower half",
    "flip": "flipped horizontally",
}
# Photos that packages ship, relative to a site-packages folder (or to the environment's
# prefix for data files: "<prefix>:" ones). Missing ones are skipped.
PHOTO_CANDIDATES = (
    "sklearn/datasets/images/china.jpg",
    "sklearn/datasets/images/flower.jpg",
    "skimage/data/astronaut.png",
    "skimage/data/chelsea.png",
    "skimage/data/coffee.png",
    "skimage/data/rocket.jpg",
    "skimage/data/motorcycle_left.png",
    "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
    "<prefix>:images/imagehash.png",  # ImageHash's own data file
)
PHOTO_MAX_SIDE = 512  # photos are scaled down to this long side before anything else
WATERMARKS = ("(c) pixlake 2026", "SAMPLE", "watermark", "@pixlake_photos", "DRAFT - do not use")
COSINE_SWEEP = (0.80, 0.85, 0.90, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 0.995, 0.999)
HAMMING_SWEEP = (0, 2, 4, 6, 8, 10, 12, 14, 16, 20, 24)
PHASH_DISTANCE = 10  # imagededup's find_duplicates(max_distance_threshold=10)
PRECISION_FLOOR = 0.95  # "highest recall at precision >= this" in the sweep summary


@dataclass(frozen=True)
class Method:
    key: str
    label: str
    kind: str  # "cosine" (duplicate when score >= threshold) or "hamming" (distance <= threshold)
    threshold: float
    model: Optional[tuple[str, str]] = None  # (model, pretrained) for load_encoder

    def rule(self, threshold: Optional[float] = None) -> str:
        t = self.threshold if threshold is None else threshold
        return f"cosine >= {t:g}" if self.kind == "cosine" else f"distance <= {t:g}"


@dataclass
class Sample:
    """One image of the set."""

    pixels: Any  # PIL RGB
    original: int  # index of its original
    transform: str  # "original" or a TRANSFORMS key
    kind: str  # "synthetic" or "photo"
    cls: str  # synthetic class ("red star") or the photo's name


# --- the labelled set -------------------------------------------------------------------------


def synthetic_originals(classes: int, per_class: int, seed: int, side: int) -> list[tuple[str, Any]]:
    """``classes`` x ``per_class`` distinct corpus items, as (class, PIL image): the first classes of
    the seeded stream (by first appearance) and the first distinct items of each."""
    from pixlake.platform.corpus import generate, render

    chosen: dict[str, list] = {}
    for item, _, _, _ in generate(20 * classes * per_class + 500, seed=seed, holdout=0):
        items = chosen.setdefault(item.label, [])
        if len(items) < per_class and item not in items:
            items.append(item)
    complete = [label for label, items in chosen.items() if len(items) == per_class][:classes]
    if len(complete) < classes:
        raise SystemExit(f"only {len(complete)} classes with {per_class} distinct items each")
    out = []
    for label in complete:
        for item in chosen[label]:
            out.append((label, render(item, np.random.default_rng([seed, 1, len(out)]), side)))
    return out


def photo_paths(extra: list[Path], limit: int) -> list[Path]:
    """The shipped photos that are present (first found per name), then ``extra`` files/folders."""
    sites = [Path(p) for p in (*site.getsitepackages(), sysconfig.get_paths()["purelib"])]
    sites += [Path(p) for p in sorted(glob.glob(str(ROOT / "build" / "*" / "lib" / "python3*" / "site-packages")))]
    prefixes = [Path(sys.prefix)] + [p.parents[2] for p in sites]  # <venv>/lib/python3.X/site-packages
    found: dict[str, Path] = {}
    for candidate in PHOTO_CANDIDATES:
        if candidate.startswith("<prefix>:"):
            paths = [prefix / candidate.split(":", 1)[1] for prefix in prefixes]
        else:
            paths = [s / candidate for s in sites]
        for path in paths:
            if path.is_file() and path.name not in found:
                found[path.name] = path
                break
    for e in extra:
        for path in sorted(e.iterdir()) if e.is_dir() else [e]:
            if path.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp") and path.name not in found:
                found[path.name] = path
    return list(found.values())[:limit]


def load_photo(path: Path):
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if im.mode in ("RGBA", "LA", "P"):
            im = im.convert("RGBA")
            flat = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(flat, im)
        im = im.convert("RGB")
    scale = PHOTO_MAX_SIDE / max(im.size)
    if scale < 1:
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
    return im


def transform(image, name: str, rng: np.random.Generator):
    """One transformed copy of ``image`` (PIL RGB)."""
    from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

    w, h = image.size
    if name == "jpeg":
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=int(rng.integers(15, 31)))
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if name == "half":
        return image.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.BICUBIC)
    if name == "crop":
        cw, ch = round(w * rng.uniform(0.80, 0.90)), round(h * rng.uniform(0.80, 0.90))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return image.crop((x0, y0, x0 + cw, y0 + ch))
    if name == "rotate":
        a = np.asarray(image)
        border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]]).mean(axis=0)
        angle = float(rng.uniform(3, 8) * rng.choice([-1, 1]))
        return image.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=tuple(int(v) for v in border))
    if name == "tone":
        b, c = (1 + float(rng.choice([-1, 1]) * rng.uniform(0.15, 0.30)) for _ in range(2))
        return ImageEnhance.Contrast(ImageEnhance.Brightness(image).enhance(b)).enhance(c)
    if name == "text":
        text = str(rng.choice(WATERMARKS))
        layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(layer)
        size = max(10, h // 8)  # an eighth of the height, smaller where the text would be wider than 70% of the image
        while True:
            font = ImageFont.load_default(size=size)
            left, top, right, bottom = draw.textbbox((0, 0), text, font=font, stroke_width=max(1, size // 12))
            if right - left <= 0.7 * w or size <= 8:
                break
            size -= 1
        tw, th = right - left, bottom - top
        x = int(rng.integers(0, max(1, w - tw + 1)))
        y = int(rng.integers(h // 2, max(h // 2 + 1, h - th + 1)))  # lower half, as watermarks sit
        draw.text((x - left, y - top), text, font=font, fill=(255, 255, 255, 170),
                  stroke_width=max(1, size // 12), stroke_fill=(0, 0, 0, 170))
        return Image.alpha_composite(image.convert("RGBA"), layer).convert("RGB")
    if name == "flip":
        return ImageOps.mirror(image)
    raise ValueError(name)


def build_set(classes: int, per_class: int, photos: list[Path], seed: int, side: int) -> list[Sample]:
    originals = [("synthetic", label, im) for label, im in synthetic_originals(classes, per_class, seed, side)]
    originals += [("photo", p.name, load_photo(p)) for p in photos]
    images = []
    for index, (kind, cls, im) in enumerate(originals):
        images.append(Sample(im, index, "original", kind, cls))
        rng = np.random.default_rng([seed, 2, index])
        for name in TRANSFORMS:
            images.append(Sample(transform(im, name, rng), index, name, kind, cls))
    return images


# --- scoring ----------------------------------------------------------------------------------


def embed(images: list[Sample], model: tuple[str, str], batch: int = 32) -> np.ndarray:
    from pixlake.platform.encoder import load_encoder

    encoder = load_encoder(*model, device="cpu")
    parts = [encoder.embed_images([im.pixels for im in images[i:i + batch]]) for i in range(0, len(images), batch)]
    return np.concatenate(parts)


def phash_bits(images: list[Sample]) -> np.ndarray:
    import imagehash

    return np.stack([imagehash.phash(im.pixels).hash.reshape(-1) for im in images]).astype(np.int32)


def pair_scores(method: Method, images: list[Sample], iu: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The method's score of every pair, oriented so that higher is "more alike": the cosine,
    or minus the Hamming distance."""
    if method.kind == "cosine":
        x = embed(images, method.model)
        return (x @ x.T)[iu].astype(np.float64)
    bits = phash_bits(images)
    distance = bits @ (1 - bits).T + (1 - bits) @ bits.T
    return -distance[iu].astype(np.float64)


def cut(method: Method, threshold: float) -> float:
    """The score at or above which a pair is called a duplicate."""
    if method.kind == "cosine":
        from pixlake.platform.dedup import SCORE_SLACK

        return threshold - SCORE_SLACK  # as near_pairs decides (float32 rounding)
    return -threshold


def prf(called: np.ndarray, truth: np.ndarray) -> dict:
    tp, fp = int(np.sum(called & truth)), int(np.sum(called & ~truth))
    fn = int(np.sum(~called & truth))
    p = tp / (tp + fp) if tp + fp else 1.0
    r = tp / (tp + fn) if tp + fn else 1.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "tp": tp, "fp": fp, "fn": fn}


def best_points(method: Method, scores: np.ndarray, truth: np.ndarray) -> dict:
    """Best F1 over every threshold, and the highest recall with precision >= PRECISION_FLOOR."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], truth[order]
    tp, fp = np.cumsum(y), np.cumsum(~y)
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # a threshold keeps all tied scores
    p, r = tp[last] / (tp[last] + fp[last]), tp[last] / max(1, int(truth.sum()))
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0)
    best = int(np.argmax(f1))
    as_threshold = (lambda v: float(v)) if method.kind == "cosine" else (lambda v: float(-v))
    out = {"best_f1": float(f1[best]), "best_f1_threshold": as_threshold(s[last[best]]),
           "best_f1_precision": float(p[best]), "best_f1_recall": float(r[best])}
    ok = np.nonzero(p >= PRECISION_FLOOR)[0]
    if len(ok):
        k = ok[np.argmax(r[ok])]
        out.update(recall_at_floor=float(r[k]), recall_at_floor_threshold=as_threshold(s[last[k]]))
    else:
        out.update(recall_at_floor=0.0, recall_at_floor_threshold=None)
    return out


# --- the run ----------------------------------------------------------------------------------


def table(header: list[str], rows: list[list[str]], right_from: int = 1) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "| " + " | ".join("---" if i < right_from else "---:" for i in range(len(header))) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    from pixlake.platform.dedup import DEFAULT_THRESHOLD

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--classes", type=int, default=20, help="synthetic classes (colour + shape), at most 48")
    ap.add_argument("--per-class", type=int, default=3, help="distinct synthetic originals per class")
    ap.add_argument("--side", type=int, default=256, help="side of the synthetic originals in pixels")
    ap.add_argument("--max-photos", type=int, default=20, help="at most this many shipped photos (0: none)")
    ap.add_argument("--photos", type=Path, nargs="*", default=[], help="more photos (files or folders) as originals")
    ap.add_argument("--methods", default="demo,vitb32-random,phash")
    ap.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="pixlake's cosine threshold")
    ap.add_argument("--phash-distance", type=int, default=PHASH_DISTANCE, help="pHash's Hamming distance threshold")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke run: 4 classes x 2, one photo, demo and pHash")
    ap.add_argument("--json", type=Path, help="also write the figures here as JSON")
    args = ap.parse_args(argv)
    if args.quick:
        args.classes, args.per_class, args.max_photos, args.methods = 4, 2, min(args.max_photos, 1), "demo,phash"
    started = time.perf_counter()

    known = {
        "demo": Method("demo", "pixlake demo model", "cosine", args.threshold, ("pixlake-demo", "bundled")),
        "vitb32-random": Method("vitb32-random", "ViT-B-32 random weights", "cosine", args.threshold, ("ViT-B-32", "none")),
        "phash": Method("phash", "pHash (imagehash)", "hamming", args.phash_distance),
    }
    methods = [known[k] for k in args.methods.split(",")]

    photos = photo_paths(args.photos, args.max_photos) if args.max_photos else []
    images = build_set(args.classes, args.per_class, photos, args.seed, args.side)
    n = len(images)
    iu = np.triu_indices(n, 1)
    orig = np.array([im.original for im in images])
    tf = np.array([im.transform for im in images])
    kind = np.array([im.kind for im in images])
    cls = np.array([im.cls for im in images])
    a, b = iu
    truth = orig[a] == orig[b]
    with_original = (tf[a] == "original") | (tf[b] == "original")
    copy_of = np.where(tf[a] == "original", tf[b], tf[a])  # the copy's transform in an original-copy pair
    orig_copy = truth & with_original
    copy_copy = truth & ~with_original
    close = ~truth & (cls[a] == cls[b]) & (kind[a] == "synthetic") & (kind[b] == "synthetic")
    same_edit = ~truth & ~close & (tf[a] == tf[b]) & (tf[a] != "original")
    other = ~truth & ~close & ~same_edit

    n_orig = int(orig.max()) + 1
    n_photos = len(photos)
    print(f"Near-duplicate quality: {n_orig - n_photos} synthetic originals ({args.classes} classes x {args.per_class}, "
          f"{args.side}px) + {n_photos} shipped photos ({', '.join(p.name for p in photos) or 'none found'}), "
          f"{len(TRANSFORMS)} copies each -> {n} images, {len(truth):,} pairs: {int(truth.sum()):,} duplicate "
          f"({int(orig_copy.sum()):,} original-copy, {int(copy_copy.sum()):,} copy-copy), {int((~truth).sum()):,} distinct "
          f"({int(close.sum()):,} close: same class)", flush=True)
    for m in methods:
        print(f"  {m.key}: {m.label}, duplicate at {m.rule()}"
              + (f" ({m.model[0]}, --pretrained {m.model[1]})" if m.model else ""))

    scores: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    for m in methods:
        t0 = time.perf_counter()
        scores[m.key] = pair_scores(m, images, iu)
        seconds[m.key] = time.perf_counter() - t0
        what = f"model load and {n} images" if m.model else f"hashing {n} images and {len(truth):,} distances"
        print(f"  scored {m.key} in {seconds[m.key]:.1f} s ({what})", flush=True)

    called = {m.key: scores[m.key] >= cut(m, m.threshold) for m in methods}
    result: dict[str, Any] = {"images": n, "originals": n_orig, "photos": [p.name for p in photos],
                              "pairs": len(truth), "duplicate_pairs": int(truth.sum()), "methods": {}}

    print(f"\nAt the operating point (all {len(truth):,} pairs; a duplicate pair is two images of one original)")
    rows = []
    for m in methods:
        s = prf(called[m.key], truth)
        fpr = {g: float(np.mean(called[m.key][mask])) if mask.any() else 0.0
               for g, mask in (("close", close), ("same_edit", same_edit), ("other", other))}
        result["methods"][m.key] = {"rule": m.rule(), "seconds": round(seconds[m.key], 2), **s,
                                    "false_positive_rate": fpr}
        rows.append([m.label, m.rule(), f"{s['precision']:.3f}", f"{s['recall']:.3f}", f"{s['f1']:.3f}",
                     f"{s['tp']:,}", f"{s['fp']:,}", f"{s['fn']:,}"])
    print(table(["method", "rule", "precision", "recall", "F1", "TP", "FP", "FN"], rows, right_from=2))

    print("\nRecall per transformation (original-copy pairs) at the operating point")
    groups = [(f"{t}: {desc}", orig_copy & (copy_of == t)) for t, desc in TRANSFORMS.items()]
    groups += [("all original-copy pairs", orig_copy)]
    groups += [(f"  of which {k} originals", orig_copy & (kind[a] == k)) for k in ("synthetic", "photo")]
    groups += [("copy-copy pairs", copy_copy)]
    rows = []
    for name, mask in groups:
        if not mask.any():
            continue
        row = [name, f"{int(mask.sum()):,}"]
        for m in methods:
            r = float(np.mean(called[m.key][mask]))
            row.append(f"{r:.3f}")
            result["methods"][m.key].setdefault("recall_by_group", {})[name.strip()] = r
        rows.append(row)
    print(table(["copies", "pairs", *(m.label for m in methods)], rows))

    print("\nFalse-positive rate per group of distinct pairs at the operating point")
    rows = []
    for name, mask in (("close distinct: two items of one synthetic class", close),
                       ("same edit on two originals, not close distinct", same_edit),
                       ("all other distinct pairs", other), ("all distinct pairs", ~truth)):
        rows.append([name, f"{int(mask.sum()):,}",
                     *(f"{float(np.mean(called[m.key][mask])):.4f} ({int(np.sum(called[m.key][mask])):,})" for m in methods)])
    print(table(["distinct pairs", "pairs", *(m.label for m in methods)], rows))

    print("\nPrecision-recall sweep (all pairs)")
    for m in methods:
        sweep = COSINE_SWEEP if m.kind == "cosine" else HAMMING_SWEEP
        rows = []
        for t in sweep:
            s = prf(scores[m.key] >= cut(m, t), truth)
            mark = " (operating point)" if t == m.threshold else ""
            rows.append([m.rule(t) + mark, f"{s['precision']:.3f}", f"{s['recall']:.3f}", f"{s['f1']:.3f}"])
            result["methods"][m.key].setdefault("sweep", []).append({"threshold": t, **s})
        best = best_points(m, scores[m.key], truth)
        result["methods"][m.key].update(best)
        print(f"\n{m.label}")
        print(table(["threshold", "precision", "recall", "F1"], rows))
        floor = (f"recall {best['recall_at_floor']:.3f} at {m.rule(best['recall_at_floor_threshold'])}"
                 if best["recall_at_floor_threshold"] is not None else "never reached")
        print(f"best F1 {best['best_f1']:.3f} at {m.rule(best['best_f1_threshold'])} (precision {best['best_f1_precision']:.3f}, "
              f"recall {best['best_f1_recall']:.3f}); highest recall at precision >= {PRECISION_FLOOR}: {floor}")

    wall = time.perf_counter() - started
    result["seconds"] = round(wall, 1)
    print(f"\n{n} images, {len(truth):,} pairs in {wall:.1f} s")
    for m in methods:
        r = result["methods"][m.key]
        print(f"RESULT {m.key}: precision {r['precision']:.3f} recall {r['recall']:.3f} at {m.rule()} "
              f"(original-copy recall {r['recall_by_group']['all original-copy pairs']:.3f}; "
              f"close-distinct false positives {r['false_positive_rate']['close']:.4f})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

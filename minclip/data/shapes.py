"""The built-in dataset: captioned pictures of coloured shapes, drawn with Pillow.

Each image shows one object, a (colour, shape) pair such as "red triangle",
small or large, at one of nine places on a pale, noisy gradient::

    a small red triangle at the top left.
    there is a blue circle in the middle.
    the star near the bottom is yellow.

Everything is drawn from a seed, so a split is the same on every machine.
Five (colour, shape) pairs, ``HELD_OUT``, never appear in training: every
colour and every shape is still seen with other partners, so a model that
learned "purple" and "circle" as separate ideas can recognise a purple circle
it never saw. Zero-shot accuracy on the "unseen" split measures exactly that.

Splits (each from its own seed): "train" (10,000 images, seen pairs),
"val" and "test" (1,000 each, seen pairs), "unseen" (1,000, held-out pairs).
``load_split`` caches them as .npz files under ``data/``.

    python -m minclip.data.shapes --out DIR      # export as CSV + PNG and image folders
"""
import argparse
import csv
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from minclip.data.loader import ImageTextDataset

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle", "star", "cross")
SIZES = ("small", "large")
POSITIONS = ("top left", "top", "top right", "left", "middle", "right",
             "bottom left", "bottom", "bottom right")          # a 3 x 3 grid, row by row

# One pair per shape and one per colour (orange keeps all five), spread so
# that every colour and every shape is still seen in training.
HELD_OUT = frozenset({("red", "star"), ("green", "cross"), ("blue", "triangle"),
                      ("yellow", "square"), ("purple", "circle")})

TEMPLATES = ["a photo of a {}.", "a {}.", "there is a {} in the picture."]

GENERATOR_VERSION = 1      # bump when a change to the drawing would make old caches wrong
DATA_DIR = Path(__file__).resolve().parents[2] / "data"

# Saturated, well-separated hues; the backgrounds are pale greys, never one of these.
RGB = {"red": (215, 35, 35), "green": (35, 155, 55), "blue": (35, 75, 215),
       "yellow": (240, 200, 25), "purple": (135, 50, 185), "orange": (250, 125, 15)}
RADIUS = {"small": 0.18, "large": 0.28}     # half the object's extent, in image widths
GRID = (0.25, 0.5, 0.75)                    # centres of the 3 x 3 cells, in image widths
JITTER = 0.04                               # random shift of the centre, in image widths
MAX_ROTATION = 15                           # degrees, small enough to keep a square a square

PHRASINGS = (
    "a {size} {colour} {shape} {where}.",
    "there is a {colour} {shape} {where}.",
    "a photo of a {size} {colour} {shape}.",
    "a {colour} {shape} {vertical}.",
    "a photo of a {colour} {shape}.",
    "a {colour} {shape}.",
    "there is a {colour} {shape} in the picture.",
    "a drawing of a {size} {colour} {shape} {where}.",
    "a {colour} {shape} on a pale background.",
    "the {shape} {vertical} is {colour}.",
)
SPLITS = {  # name: (held-out pairs?, default size, seed)
    "train": (False, 10_000, 1),
    "val": (False, 1_000, 2),
    "test": (False, 1_000, 3),
    "unseen": (True, 1_000, 4),
}


def class_names(include_held_out=True):
    """Every zero-shot class, "red circle", "red square", ...; labels index the full list."""
    return [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES
            if include_held_out or (colour, shape) not in HELD_OUT]


@dataclass
class ShapesSample:
    """Generated images with their captions and the attributes they were drawn from."""
    images: np.ndarray       # uint8 (N, H, W, 3)
    captions: list           # N strings
    labels: np.ndarray       # (N,) index into class_names()
    colours: np.ndarray      # (N,) index into COLOURS
    shapes: np.ndarray       # (N,) index into SHAPES
    sizes: np.ndarray        # (N,) index into SIZES
    positions: np.ndarray    # (N,) index into POSITIONS

    def __len__(self):
        return len(self.images)


# ---------------------------------------------------------------- drawing

def _star(points=5, inner=0.45):
    angles = -np.pi / 2 + np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.1, 1.1 * inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _regular(corners, radius, start):
    angles = np.deg2rad(start) + np.arange(corners) * 2 * np.pi / corners
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


_ARM, _HALF = 1.0, 0.32   # the cross: arm length and half width
# Outlines in units of the radius, y pointing down, centred on (0, 0).
OUTLINES = {
    "square": _regular(4, 1.1, 45),
    "triangle": _regular(3, 1.2, -90) + np.array([0, 0.2]),   # pointing up, centred on its box
    "star": _star(),
    "cross": np.array([(-_HALF, -_ARM), (_HALF, -_ARM), (_HALF, -_HALF), (_ARM, -_HALF),
                       (_ARM, _HALF), (_HALF, _HALF), (_HALF, _ARM), (-_HALF, _ARM),
                       (-_HALF, _HALF), (-_ARM, _HALF), (-_ARM, -_HALF), (-_HALF, -_HALF)]),
}


def _masks(shapes, centres, radii, angles, size):
    """Each object's coverage of each pixel, float32 (B, size, size) in [0, 1].

    Drawn in white at twice the size, then averaged 2 x 2 down: edge pixels get
    partial coverage, i.e. antialiasing. The B pictures are drawn side by side
    on one strip, so Pillow is called once per batch, not once per image
    (that per-call overhead was a third of the generation time).
    """
    scale = 2 * size
    canvas = Image.new("L", (scale * len(shapes), scale), 0)
    draw = ImageDraw.Draw(canvas)
    for i, (shape, (x, y), r, angle) in enumerate(zip(shapes, centres * scale, radii * scale, angles)):
        x += i * scale                                   # the i-th tile of the strip
        if shape == "circle":
            draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
        else:
            cos, sin = np.cos(np.deg2rad(angle)), np.sin(np.deg2rad(angle))
            points = OUTLINES[shape] @ np.array([[cos, sin], [-sin, cos]]) * r + (x, y)
            draw.polygon([tuple(p) for p in points], fill=255)
    strip = np.asarray(canvas.reduce(2), dtype=np.float32) / 255       # (S, B * S)
    return strip.reshape(size, len(shapes), size).transpose(1, 0, 2)    # (B, S, S)


def _backgrounds(levels, tints, angles, size):
    """Pale gradients, float32 (B, size, size, 3): grey ``levels`` tinted a little, in direction ``angles``."""
    ends = (levels[:, :, None] + tints).astype(np.float32)              # (B, 2, 3) two end colours
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5     # (S,)
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    ramp = (cos[:, None, None] * coords[None, None, :]                  # along x (last axis)
            + sin[:, None, None] * coords[None, :, None]) + 0.5         # and y: (B, S, S)
    return ends[:, None, None, 0] + ramp[..., None] * (ends[:, None, None, 1] - ends[:, None, None, 0])


def _fix_articles(text):
    """ "a orange" -> "an orange": the article before a vowel."""
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


def _caption(phrasing, colour, shape, size, position):
    row = position // 3
    where = POSITIONS[position]
    return _fix_articles(phrasing.format(
        colour=colour, shape=shape, size=size,
        where={"left": "on the left", "right": "on the right", "middle": "in the middle"}.get(
            where, f"at the {where}"),
        vertical=("near the top", "halfway down", "near the bottom")[row]))


def generate(n, seed, image_size=64, combinations=None):
    """Draw ``n`` captioned images from ``seed``; returns a ``ShapesSample``.

    ``combinations``: the (colour, shape) pairs to draw from, uniformly
    (default: all of them). The scene attributes are drawn before anything
    that depends on ``image_size``, so one seed gives the same scenes at 32 and
    at 64 pixels.
    """
    pairs = sorted(combinations or [(c, s) for c in COLOURS for s in SHAPES])
    for colour, shape in pairs:
        if colour not in COLOURS or shape not in SHAPES:
            raise ValueError(f"unknown combination ({colour!r}, {shape!r}): "
                             f"colours are {COLOURS}, shapes {SHAPES}")
    classes = np.array([COLOURS.index(c) * len(SHAPES) + SHAPES.index(s) for c, s in pairs])
    rng = np.random.default_rng(seed)
    labels = classes[rng.integers(len(classes), size=n)]
    colours, shapes = np.divmod(labels, len(SHAPES))
    sizes = rng.integers(len(SIZES), size=n)
    positions = rng.integers(len(POSITIONS), size=n)
    jitter = rng.uniform(-JITTER, JITTER, size=(n, 2))
    angles = rng.uniform(-MAX_ROTATION, MAX_ROTATION, size=n)
    colour_jitter = rng.uniform(-15, 15, size=(n, 3))
    bg_levels = rng.uniform(195, 245, size=(n, 2))
    bg_tints = rng.uniform(-8, 8, size=(n, 2, 3))
    bg_angles = rng.uniform(0, 2 * np.pi, size=n)
    phrasings = rng.integers(len(PHRASINGS), size=n)

    radii = np.array([RADIUS[SIZES[k]] for k in sizes])
    grid = np.array(GRID)
    centres = np.stack([grid[positions % 3], grid[positions // 3]], axis=1) + jitter   # (N, 2) x, y
    centres = np.clip(centres, 1.15 * radii[:, None], 1 - 1.15 * radii[:, None])       # keep it inside
    fills = np.clip(np.array([RGB[COLOURS[k]] for k in colours]) + colour_jitter, 0, 255)
    fills = fills.astype(np.float32)                                                      # (N, 3)

    images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    for start in range(0, n, 256):   # chunks keep the float32 working arrays small (and in cache)
        part = slice(start, min(start + 256, n))
        masks = _masks([SHAPES[k] for k in shapes[part]], centres[part], radii[part], angles[part],
                       image_size)[..., None]                                        # (B, S, S, 1)
        background = _backgrounds(bg_levels[part], bg_tints[part], bg_angles[part], image_size)
        picture = background + masks * (fills[part, None, None, :] - background)     # (B, S, S, 3)
        picture += 4 * rng.standard_normal(masks.shape, dtype=np.float32)           # grey sensor-like noise
        images[part] = np.clip(picture, 0, 255)                                      # to uint8, truncating
    captions = [_caption(PHRASINGS[p], COLOURS[c], SHAPES[s], SIZES[z], q)
                for p, c, s, z, q in zip(phrasings, colours, shapes, sizes, positions)]
    return ShapesSample(images, captions, labels, colours, shapes, sizes, positions)


# ---------------------------------------------------------------- splits and cache

def _pairs(held_out):
    return [(c, s) for c in COLOURS for s in SHAPES if ((c, s) in HELD_OUT) == held_out]


def load_split(split, image_size=64, n=None, cache_dir=DATA_DIR):
    """One split as an ``ImageTextDataset`` (labels index ``class_names()``, with ``TEMPLATES``).

    Generated once, then read from ``cache_dir/shapes_v<version>_<split>_n<n>_<size>px.npz``
    (``cache_dir=None``: no cache). The file is written to a temporary name
    and renamed, so a run that stops half-way never leaves a broken cache.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: choose one of {list(SPLITS)}")
    held_out, default_n, seed = SPLITS[split]
    n = default_n if n is None else n
    path = None if cache_dir is None else (
        Path(cache_dir) / f"shapes_v{GENERATOR_VERSION}_{split}_n{n}_{image_size}px.npz")
    if path is not None and path.is_file():
        with np.load(path) as cached:
            images, captions, labels = cached["images"], cached["captions"].tolist(), cached["labels"]
    else:
        sample = generate(n, seed, image_size, combinations=_pairs(held_out))
        images, captions, labels = sample.images, sample.captions, sample.labels
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
            with open(temporary, "wb") as f:
                np.savez(f, images=images, captions=np.array(captions), labels=labels)
            os.replace(temporary, path)
    return ImageTextDataset(images, captions, labels, classnames=class_names(), templates=list(TEMPLATES))


# ---------------------------------------------------------------- export

def _write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def export(out, image_size=64, n=10_000, n_eval=1_000, cache_dir=DATA_DIR):
    """Write the splits in the standard formats under ``out``.

    ``out/<split>.csv`` (tab-separated ``filepath``/``title``, paths relative
    to the CSV) with PNG files in ``out/<split>/``, for every split; and
    ``out/zeroshot_test/`` and ``out/zeroshot_unseen/``, one folder per class
    present (``red_triangle/``) with ``classnames.txt`` and ``templates.txt``.
    """
    out = Path(out)
    names = class_names()
    for split in SPLITS:
        ds = load_split(split, image_size, n if split == "train" else n_eval, cache_dir)
        (out / split).mkdir(parents=True, exist_ok=True)
        with open(out / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter="\t", lineterminator="\n")
            writer.writerow(["filepath", "title"])
            for i, (image, caption) in enumerate(zip(ds.images, ds.captions)):
                # compress_level=1: twice as fast as the default, and no larger on noisy images
                Image.fromarray(image).save(out / split / f"{i:06d}.png", compress_level=1)
                writer.writerow([f"{split}/{i:06d}.png", caption])
        if split in ("test", "unseen"):
            root = out / f"zeroshot_{split}"
            present = sorted({names[k].replace(" ", "_") for k in ds.labels})
            for i, label in enumerate(ds.labels):
                folder = root / names[label].replace(" ", "_")
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(out / split / f"{i:06d}.png", folder / f"{i:06d}.png")
            _write_lines(root / "classnames.txt", [name.replace("_", " ") for name in present])
            _write_lines(root / "templates.txt", TEMPLATES)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m minclip.data.shapes",
        description="Export the built-in shapes dataset as CSV + PNG files and zero-shot image folders.")
    parser.add_argument("--out", required=True, help="folder to write into")
    parser.add_argument("--image-size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--n", type=int, default=SPLITS["train"][1], help="training images (default 10000)")
    parser.add_argument("--n-eval", type=int, default=1_000,
                        help="images in each of val, test and unseen (default 1000)")
    parser.add_argument("--cache-dir", default=str(DATA_DIR), help=f"where splits are cached (default {DATA_DIR})")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    export(args.out, args.image_size, args.n, args.n_eval, args.cache_dir)
    print(f"wrote {', '.join(f'{s}.csv' for s in SPLITS)}, zeroshot_test/ and zeroshot_unseen/ "
          f"under {args.out} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()

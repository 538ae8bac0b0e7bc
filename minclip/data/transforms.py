"""Image transforms: from a PIL image to the float array a CLIP model sees.

OpenAI's CLIP preprocesses every image the same way (``clip.load`` returns it
as ``preprocess``)::

    RGB  ->  resize the shorter side to S (bicubic)  ->  centre crop S x S
    ->  scale to [0, 1]  ->  subtract CLIP's mean, divide by CLIP's std

RGB comes first: PIL resizes a palette ("P") image with nearest neighbour,
whatever filter is asked for. In this order the result is exactly that of
Hugging Face's ``CLIPImageProcessor`` (its PIL backend): 0.0 difference per
pixel, with or without a resize, for RGB, L, P, RGBA and CMYK images
(tests/test_08_using_clip.py).

The mean and std are those of OpenAI's training images, per channel (R, G, B).
A model trained on normalized inputs must be fed normalized inputs: the same
weights given raw [0, 1] pixels see a different, shifted picture.

For training, open_clip replaces resize + crop by a random resized crop that
keeps 90-100% of the area, a light augmentation; ``clip_transform(S, train=True)``
does the same with a seeded NumPy generator, so runs repeat exactly.

Everything here returns NumPy arrays on the host; the training loop moves
whole batches to the backend.
"""
import math

import numpy as np
from PIL import Image

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

_MEAN = np.array(OPENAI_MEAN, dtype=np.float32)
_STD = np.array(OPENAI_STD, dtype=np.float32)


def normalize(images):
    """uint8 images (..., H, W, 3) -> float32 (..., 3, H, W), normalized for CLIP.

    ``x = (pixel / 255 - mean) / std`` per channel, then the channel axis
    moves in front of height and width (the layout of a convolution's input).
    Works for one image (H, W, 3) or a batch (N, H, W, 3) in one array op.

    Hint: divide by 255 in float32, broadcast ``_MEAN`` and ``_STD`` (shape (3,))
    over the last axis, then ``np.moveaxis``; return a contiguous array.
    """
    # BEGIN EXERCISE 6.1: normalize images with CLIP's mean and std
    images = np.asarray(images)
    if images.shape[-1] != 3:
        raise ValueError(f"normalize: expected uint8 images (..., H, W, 3), got shape {images.shape}")
    x = images.astype(np.float32) / np.float32(255)                 # (..., H, W, 3) in [0, 1]
    x = (x - _MEAN) / _STD                                           # (..., H, W, 3)
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))              # (..., 3, H, W)
    # END EXERCISE


def denormalize(images):
    """The inverse of ``normalize``, for showing images: float (..., 3, H, W) -> uint8 (..., H, W, 3)."""
    x = np.moveaxis(np.asarray(images, dtype=np.float32), -3, -1)   # (..., H, W, 3)
    x = x * _STD + _MEAN
    return np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)


def resize_shorter_side(image, size):
    """Resize (bicubic) so that the shorter side is ``size``, keeping the aspect ratio.

    The longer side is ``int(size * long / short)``, truncated as torchvision does.
    """
    width, height = image.size
    if width <= height:
        new_size = (size, int(size * height / width))
    else:
        new_size = (int(size * width / height), size)
    return image.resize(new_size, Image.BICUBIC)


def center_crop(image, size):
    """The central ``size`` x ``size`` square of an image at least that large.

    The offset ``round((W - size) / 2)`` uses Python's round, as torchvision does,
    so odd margins split the same way as in the reference.
    """
    # BEGIN EXERCISE 6.4: the centre crop
    width, height = image.size
    left, top = round((width - size) / 2), round((height - size) / 2)
    return image.crop((left, top, left + size, top + size))
    # END EXERCISE


def random_resized_crop(image, size, rng, scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3)):
    """Crop a random box holding ``scale`` of the area with aspect in ``ratio``, resize to ``size``.

    torchvision's ``RandomResizedCrop`` algorithm (open_clip trains with
    ``scale=(0.9, 1.0)``): up to 10 tries to draw a box that fits, else the
    central crop. ``rng`` is a ``numpy.random.Generator``.
    """
    width, height = image.size
    area = width * height
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            box = image.crop((left, top, left + w, top + h))
            return box.resize((size, size), Image.BICUBIC)
    return center_crop(resize_shorter_side(image, size), size)


def clip_transform(image_size, train=False, seed=0):
    """CLIP's preprocessing as a function: PIL image -> float32 (3, image_size, image_size).

    ``train=False``: OpenAI's evaluation transform (resize shorter side, centre crop).
    ``train=True``: a random resized crop of 90-100% of the area (open_clip's
    training default), drawn from ``numpy.random.default_rng(seed)``. No flips:
    captions such as "on the left" would stop being true.
    """
    rng = np.random.default_rng(seed)

    def transform(image):
        image = image.convert("RGB")
        if train:
            image = random_resized_crop(image, image_size, rng)
        else:
            image = center_crop(resize_shorter_side(image, image_size), image_size)
        return normalize(np.asarray(image))

    return transform

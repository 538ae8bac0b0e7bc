"""CIFAR-10 read straight from its Python pickle batches.

The "CIFAR-10 python version" (cifar-10-python.tar.gz from
https://www.cs.toronto.edu/~kriz/cifar.html) unpacks to ``cifar-10-batches-py/``
with ``data_batch_1`` .. ``data_batch_5`` (50,000 training images),
``test_batch`` (10,000) and ``batches.meta`` (the class names). Each batch is a
pickled dict: ``b"data"`` is uint8 (N, 3072), each row the red, then green,
then blue 32 x 32 plane; ``b"labels"`` a list of class indices.
"""
import pickle
from pathlib import Path

import numpy as np

from minclip.data.loader import ImageTextDataset
from minclip.data.transforms import clip_transform

# The 18 prompt templates OpenAI used for CIFAR-10 (CLIP's data/prompts.md).
CIFAR_TEMPLATES = [
    "a photo of a {}.", "a blurry photo of a {}.", "a black and white photo of a {}.",
    "a low contrast photo of a {}.", "a high contrast photo of a {}.", "a bad photo of a {}.",
    "a good photo of a {}.", "a photo of a small {}.", "a photo of a big {}.",
    "a photo of the {}.", "a blurry photo of the {}.", "a black and white photo of the {}.",
    "a low contrast photo of the {}.", "a high contrast photo of the {}.", "a bad photo of the {}.",
    "a good photo of the {}.", "a photo of the small {}.", "a photo of the big {}.",
]


def _unpickle(path):
    if not path.is_file():
        raise FileNotFoundError(
            f"CIFAR-10 file not found: {path} (download cifar-10-python.tar.gz from "
            "https://www.cs.toronto.edu/~kriz/cifar.html and extract it)")
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


class Cifar10(ImageTextDataset):
    """The CIFAR-10 training (50,000) or test (10,000) images, captioned by class name.

    ``root`` is the ``cifar-10-batches-py`` folder or the folder that holds it.
    At ``image_size=32`` the images are used as they are (the fast path);
    otherwise each goes through ``clip_transform(image_size)``.
    """

    def __init__(self, root, train=False, image_size=32):
        root = Path(root)
        if (root / "cifar-10-batches-py").is_dir():
            root = root / "cifar-10-batches-py"
        names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
        batches = [_unpickle(root / name) for name in names]
        data = np.concatenate([b[b"data"] for b in batches])                 # (N, 3072)
        images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)           # (N, 32, 32, 3)
        labels = np.concatenate([b[b"labels"] for b in batches])
        classnames = [name.decode() for name in _unpickle(root / "batches.meta")[b"label_names"]]
        super().__init__(np.ascontiguousarray(images, dtype=np.uint8),
                         [classnames[k] for k in labels], labels, classnames, CIFAR_TEMPLATES,
                         transform=None if image_size == 32 else clip_transform(image_size))

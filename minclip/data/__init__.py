"""Data: the built-in shapes dataset, standard formats, CLIP's transforms and the loader.

Every source follows one protocol (see ``loader.py``): ``len(ds)``,
``ds[i] -> (image float32 (3, H, W), caption)``, ``ds.batch(indices)``, and
``ds.labels`` / ``ds.classnames`` / ``ds.templates`` where they mean something.
"""
from minclip.data.cifar import Cifar10
from minclip.data.csv import CsvDataset
from minclip.data.folder import ImageFolder
from minclip.data.loader import BadImageError, DataLoader, Dataset, ImageTextDataset, read_image
from minclip.data.transforms import OPENAI_MEAN, OPENAI_STD, clip_transform, denormalize, normalize

__all__ = [
    "Cifar10", "CsvDataset", "ImageFolder", "BadImageError", "DataLoader", "Dataset",
    "ImageTextDataset", "read_image", "COLOURS", "HELD_OUT", "SHAPES", "TEMPLATES",
    "class_names", "generate", "load_split", "OPENAI_MEAN", "OPENAI_STD", "clip_transform",
    "denormalize", "normalize",
]

_FROM_SHAPES = {"COLOURS", "HELD_OUT", "SHAPES", "TEMPLATES", "class_names", "generate", "load_split"}


def __getattr__(name):
    """The shapes names, imported on first use (PEP 562).

    Importing ``minclip.data.shapes`` here eagerly would make
    ``python -m minclip.data.shapes`` load that module twice (runpy warns).
    """
    if name in _FROM_SHAPES:
        from minclip.data import shapes
        return getattr(shapes, name)
    raise AttributeError(f"module 'minclip.data' has no attribute {name!r}")

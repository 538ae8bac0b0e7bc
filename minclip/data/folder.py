"""A classification set as a folder of class folders, for zero-shot evaluation.

::

    root/
      classnames.txt      optional: one display name per class folder, in sorted folder order
      templates.txt       optional: one prompt template per line, with "{}" for the class name
      golden_retriever/   0001.jpg  0002.png ...
      tabby_cat/          ...

Class ``k`` is the ``k``-th folder in sorted order (torchvision's ImageFolder
convention). Its name is the line ``k`` of ``classnames.txt`` if there is one,
else the folder name with ``_`` read as a space ("golden retriever").
The caption of an image is its class name.
"""
from pathlib import Path

import numpy as np

from minclip.data.loader import Dataset, read_image

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def _read_lines(path):
    """The non-empty lines of a text file, stripped."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class ImageFolder(Dataset):
    """Images in ``root/<class>/``, with ``.labels``, ``.classnames`` and ``.templates``."""

    def __init__(self, root, transform):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        self.transform = transform
        folders = sorted(p for p in self.root.iterdir() if p.is_dir())
        if not folders:
            raise FileNotFoundError(f"{self.root} has no class sub-folders (expected root/<class>/<image>)")
        self.classnames = self._classnames(folders)
        self.templates = self._templates()
        self.paths, labels = [], []
        for label, folder in enumerate(folders):
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            self.paths += files
            labels += [label] * len(files)
        if not self.paths:
            raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in the "
                                    f"class folders of {self.root}")
        self.labels = np.array(labels, dtype=np.int64)

    def _classnames(self, folders):
        names_file = self.root / "classnames.txt"
        if not names_file.is_file():
            return [folder.name.replace("_", " ") for folder in folders]
        names = _read_lines(names_file)
        if len(names) != len(folders):
            raise ValueError(f"{names_file} has {len(names)} names but {self.root} has "
                             f"{len(folders)} class folders: one name per folder, in sorted order")
        return names

    def _templates(self):
        templates_file = self.root / "templates.txt"
        if not templates_file.is_file():
            return None
        templates = _read_lines(templates_file)
        for template in templates:
            if "{}" not in template:
                raise ValueError(f"{templates_file}: template {template!r} has no '{{}}' for the class name")
        return templates

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        image = read_image(self.paths[index])
        return self.transform(image), self.classnames[self.labels[index]]

"""Image-caption pairs listed in a CSV/TSV file, with open_clip's conventions.

One row per pair, a header naming the columns::

    filepath	title
    images/0001.jpg	a dog running on the beach
    images/0002.jpg	two red apples on a table

open_clip's defaults: image column ``filepath`` (``--csv-img-key``), caption
column ``title`` (``--csv-caption-key``), separator a tab (``--csv-separator``).
Relative image paths are taken relative to the CSV file's folder, so a folder
with its CSV can be moved as a whole.

Images are decoded when a batch asks for them. A missing or unreadable one
raises an error naming the file and its CSV line; with ``skip_bad_images`` it
is left out of its batch instead, and ``ds.skipped`` counts such images.
"""
import csv
from pathlib import Path

import numpy as np

from minclip.data.loader import BadImageError, Dataset, read_image


class CsvDataset(Dataset):
    """Image-caption pairs from the CSV file at ``path``; ``transform`` turns a PIL image into an array."""

    def __init__(self, path, transform, img_key="filepath", caption_key="title", sep="\t",
                 skip_bad_images=False):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"CSV file not found: {self.path}")
        self.transform = transform
        self.skip_bad_images = skip_bad_images
        self.paths, self.captions, self.lines = [], [], []
        with open(self.path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter=sep)
            columns = reader.fieldnames or []
            for key, flag in ((img_key, "--csv-img-key"), (caption_key, "--csv-caption-key")):
                if key not in columns:
                    raise ValueError(
                        f"{self.path}: no column {key!r} ({flag}); the columns are "
                        f"{', '.join(map(repr, columns)) or 'none'} when split at {sep!r} "
                        "(--csv-separator; open_clip's default is a tab)")
            for row in reader:
                if row[img_key] is None or row[caption_key] is None:
                    raise ValueError(f"{self.path}, line {reader.line_num}: "
                                     f"fewer fields than the {len(columns)} columns of the header")
                self.paths.append(self.path.parent / row[img_key])   # absolute paths stay absolute
                self.captions.append(str(row[caption_key]))
                self.lines.append(reader.line_num)
        self._bad = set()

    @property
    def skipped(self):
        """How many distinct bad images were skipped so far."""
        return len(self._bad)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        where = f" (CSV {self.path}, line {self.lines[index]})"
        image = read_image(self.paths[index], where)
        return self.transform(image), self.captions[index]

    def batch(self, indices):
        """Like ``Dataset.batch``; with ``skip_bad_images`` bad images drop out of the batch."""
        if not self.skip_bad_images:
            return super().batch(indices)
        images, captions = [], []
        for i in map(int, indices):
            if i in self._bad:
                continue
            try:
                image, caption = self[i]
            except BadImageError:
                self._bad.add(i)
                continue
            images.append(image)
            captions.append(caption)
        if not images:
            raise BadImageError(f"no readable image in a batch of {len(indices)} from {self.path} "
                                f"({self.skipped} bad images skipped so far)")
        return np.stack(images), captions                              # (B', 3, H, W)

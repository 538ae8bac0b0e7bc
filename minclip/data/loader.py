"""Datasets and batches: the protocol every data source follows, and the DataLoader.

A dataset is anything with

    len(ds)                  the number of examples
    ds[i]                    (image float32 (3, H, W) normalized, caption str)
    ds.batch(indices)        (images float32 (B, 3, H, W), captions list[str])
    ds.labels                int array of class indices, or None
    ds.classnames            list of class names (labels index it), or None
    ds.templates             prompt templates with "{}" for zero-shot, or None

``Dataset`` gives the generic ``batch`` (a loop over ``ds[i]``);
``ImageTextDataset`` holds uint8 images in memory and batches them with one
array operation. ``DataLoader`` turns a dataset into shuffled batches, the next
one decoded in a background thread while the model works on the current one.
"""
import queue
import threading
from abc import ABC, abstractmethod

import numpy as np
from PIL import Image

from minclip.data.transforms import normalize


class BadImageError(OSError):
    """An image file that is missing or cannot be decoded."""


def read_image(path, where=""):
    """Open and fully decode the image at ``path``, or raise BadImageError naming it.

    PIL opens files lazily, so ``load()`` forces the decoding here: a truncated
    file fails now, with its name, not later inside a transform. ``where`` adds
    context to the message, such as the CSV line.
    """
    try:
        image = Image.open(path)
        image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise BadImageError(f"cannot read image {path}{where}: {error}") from None
    return image


class Dataset(ABC):
    """The base of every data source: ``len``, ``ds[i]`` and a generic ``batch``."""

    labels = None
    classnames = None
    templates = None

    @abstractmethod
    def __len__(self):
        """The number of examples."""

    @abstractmethod
    def __getitem__(self, index):
        """Example ``index``: (image float32 (3, H, W), caption)."""

    def batch(self, indices):
        """(images float32 (B, 3, H, W), captions) for ``indices``, one example at a time."""
        examples = [self[int(i)] for i in indices]
        images = np.stack([image for image, _ in examples])           # (B, 3, H, W)
        return images, [caption for _, caption in examples]


class ImageTextDataset(Dataset):
    """Images held in memory as uint8 (N, H, W, 3), with one caption each.

    Without a ``transform`` the images are used at their stored size and a
    batch is normalized in one array operation (the fast path of the built-in
    shapes data). With one (e.g. ``clip_transform(S, train=True)``) each image
    goes through it as a PIL image.
    """

    def __init__(self, images, captions, labels=None, classnames=None, templates=None, transform=None):
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError("ImageTextDataset: expected uint8 images (N, H, W, 3), "
                             f"got {images.dtype} {images.shape}")
        if len(captions) != len(images):
            raise ValueError(f"ImageTextDataset: {len(images)} images but {len(captions)} captions")
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"ImageTextDataset: {len(images)} images but {len(labels)} labels")
        self.images = images
        self.captions = list(captions)
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.classnames = classnames
        self.templates = templates
        self.transform = transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        if self.transform is None:
            return normalize(self.images[index]), self.captions[index]
        return self.transform(Image.fromarray(self.images[index])), self.captions[index]

    def batch(self, indices):
        """The fast path: with no transform, one ``normalize`` over the whole batch."""
        if self.transform is not None:
            return super().batch(indices)
        indices = np.asarray(indices, dtype=np.int64)
        return normalize(self.images[indices]), [self.captions[i] for i in indices]


class DataLoader:
    """Shuffled batches of a dataset, reproducible from (seed, epoch, step) alone.

    The order of epoch ``e`` is a permutation drawn from
    ``numpy.random.default_rng((seed, e))``: it depends on nothing but the seed
    and the epoch, so a resumed run that knows (epoch, step) continues with
    exactly the batches it would have seen. Data-parallel ranks share that
    order: with ``world_size`` N each global batch of ``batch_size`` is cut in
    N blocks and rank r yields block r, so all ranks take the same number of
    steps. With ``prefetch`` one background
    thread prepares the next batch while the caller trains on this one
    (decoding and normalizing release the GIL, so the two overlap).
    """

    def __init__(self, dataset, batch_size, shuffle=True, seed=0, drop_last=True, prefetch=True,
                 rank=0, world_size=1):
        if batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be at least 1, got {batch_size}")
        if batch_size % world_size or (world_size > 1 and not drop_last):
            raise ValueError(f"DataLoader: {world_size} ranks need drop_last and a batch_size divisible by "
                             f"{world_size}, got batch_size {batch_size}, drop_last={drop_last}")
        if drop_last and len(dataset) < batch_size:
            raise ValueError(f"DataLoader: {len(dataset)} examples cannot fill one batch of "
                             f"{batch_size} with drop_last=True: use a smaller batch_size")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.prefetch = prefetch
        self.rank, self.world_size = rank, world_size

    def __len__(self):
        """Steps per epoch."""
        full, rest = divmod(len(self.dataset), self.batch_size)
        return full if self.drop_last or rest == 0 else full + 1

    def order(self, epoch):
        """The example indices of ``epoch`` in the order they are visited.

        With shuffling: ``numpy.random.default_rng((seed, epoch)).permutation(N)``,
        a fresh generator per epoch (so no state to save). Without: 0, 1, ..., N-1.
        """
        # BEGIN EXERCISE 6.2: the shuffled batch order of an epoch
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng((self.seed, epoch)).permutation(n)
        # END EXERCISE

    def epoch_batches(self, epoch, start_step=0):
        """Yield (images float32 (B, 3, H, W), captions) for steps ``start_step``.. of ``epoch``.

        B is this rank's share of the batch: ``batch_size // world_size``.
        """
        order = self.order(epoch)
        b = self.batch_size // self.world_size
        steps = [order[s * self.batch_size + self.rank * b:s * self.batch_size + (self.rank + 1) * b]
                 for s in range(start_step, len(self))]
        batches = (self.dataset.batch(indices) for indices in steps)
        yield from (_prefetched(batches) if self.prefetch else batches)


class _Failure:
    """An exception raised in the prefetch thread, carried to the consumer."""

    def __init__(self, error):
        self.error = error


_DONE = object()


def _prefetched(batches, depth=2):
    """Iterate ``batches`` computed in a background thread, at most ``depth`` ahead.

    The thread puts each batch into a bounded queue; the consumer takes them
    out. An exception in the thread is passed through the queue and re-raised
    here, unchanged. If the consumer stops early (``break``, an error), the
    ``finally`` below tells the thread to stop and waits for it.
    """
    ready = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item):
        while not stop.is_set():              # a full queue must not block a stopped thread forever
            try:
                ready.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def produce():
        try:
            for batch in batches:
                if stop.is_set():
                    return
                put(batch)
        except BaseException as error:       # anything: the consumer re-raises it (and never waits forever)
            put(_Failure(error))
            return
        put(_DONE)

    thread = threading.Thread(target=produce, name="minclip-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()

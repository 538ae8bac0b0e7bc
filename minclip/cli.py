"""What the command-line tools share: the backend flag, the CSV flags, one-line errors.

``python -m minclip.train`` and ``python -m minclip.evaluate`` both import
these, so neither imports the other. A command-line tool never shows a
traceback for a mistake of its user (a missing file, a bad value, an
unreadable image): it prints one line naming what was expected and what it
got, and exits non-zero.
"""
import sys

from minclip import backend
from minclip.data import BadImageError, CsvDataset

# The errors that mean "the input is wrong", not "minclip is wrong".
USER_ERRORS = (FileNotFoundError, ValueError, BadImageError)


def add_backend_argument(parser):
    """``--backend``, whose default is the active backend: numpy, or what MINCLIP_BACKEND set
    (even one that cannot be used here: the tool then says why and stops)."""
    default = backend.get_backend()
    parser.add_argument("--backend", default=default, choices=["numpy", "cupy"],
                        help=f"array backend (default: MINCLIP_BACKEND if set, else numpy; now {default})")


def add_csv_arguments(parser):
    """The CSV flags, with open_clip's names and defaults."""
    parser.add_argument("--csv-img-key", default="filepath", help="CSV column of image paths (default: filepath)")
    parser.add_argument("--csv-caption-key", default="title", help="CSV column of captions (default: title)")
    parser.add_argument("--csv-separator", default="\t", help="CSV separator (default: tab)")


def csv_dataset(path, transform, args, skip_bad_images=False):
    """The CsvDataset at ``path``, read with the CSV flags of ``args``."""
    return CsvDataset(path, transform, img_key=args.csv_img_key, caption_key=args.csv_caption_key,
                      sep=args.csv_separator, skip_bad_images=skip_bad_images)


def use_backend_or_exit(name):
    """Switch backend, or print the one-line reason and exit with status 2 (no traceback)."""
    try:
        backend.set_backend(name)
    except (backend.BackendError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def fail(error):
    """Print ``error`` as one line on stderr; returns the exit status 1 for ``main`` to return."""
    print(f"error: {error}", file=sys.stderr)
    return 1

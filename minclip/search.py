"""Search your images by text or by image: ``python -m minclip.search``.

    python -m minclip.search index --checkpoint CKPT --images photos/ --out photos.index
    python -m minclip.search query --index photos.index --text "a red car" -k 8 --show grid.png
    python -m minclip.search query --index photos.index --image photos/cat.jpg --json

``index`` embeds every image under a folder, a batch at a time (a folder of
100,000 images never holds more than one batch of pixels in memory), and
writes one safetensors file: the normalized float32 embeddings (N, E), the
images' paths, and the checkpoint that made them with a fingerprint of its
weights. Run it again after adding images and only the new ones are
embedded (images that are gone are dropped). Unreadable images are listed
and skipped.

``query`` embeds the text or image with the index's checkpoint and ranks the
images by cosine similarity: the embeddings are unit vectors, so that is one
matrix product, done in chunks of rows so that a million embeddings need no
million-by-anything temporary. Equal scores keep the index's order.
"""
import argparse
import hashlib
import json
import math
import os
import sys

from PIL import Image, ImageDraw, ImageOps

from minclip import functional as F
from minclip.backend import to_numpy, xp
from minclip.checkpoint import load_checkpoint_model, read_tensors, write_tensors
from minclip.cli import USER_ERRORS, add_backend_argument, fail, use_backend_or_exit
from minclip.data import read_image
from minclip.predict import embed_image_files
from minclip.tensor import Tensor, no_grad
from minclip.tokenizer import tokenize

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
CHUNK_ROWS = 1 << 18          # rows of the index per matrix product in a query (262,144 × E floats)


class SearchIndexError(ValueError):
    """An index file that is missing, corrupt, or was made by another checkpoint."""


# ------------------------------------------------------------ the index file

def fingerprint(model):
    """A SHA-256 of the model's weights, in float32: the same weights give the same fingerprint
    whichever file format held them."""
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        digest.update(key.encode())
        digest.update(value.astype("float32").tobytes())
    return digest.hexdigest()[:16]


def read_index(path):
    """(embeddings (N, E) float32 host array, paths, metadata) of an index file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such index: {path} (make one with: python -m minclip.search index ...)")
    tensors, metadata = read_tensors(path)
    if set(tensors) != {"embeddings"} or not {"paths", "fingerprint", "checkpoint"} <= set(metadata):
        raise SearchIndexError(f"{path} is not a minclip.search index (expected its embeddings, paths "
                               f"and checkpoint)")
    return tensors["embeddings"], json.loads(metadata["paths"]), metadata


def write_index(path, embeddings, paths, checkpoint, model_fingerprint):
    """Write the index atomically: the embeddings as an array, the rest as metadata."""
    write_tensors(path, {"embeddings": to_numpy(embeddings).astype("float32")},
                  {"checkpoint": checkpoint, "fingerprint": model_fingerprint, "paths": json.dumps(paths)})


def check_same_checkpoint(index_path, metadata, checkpoint, model_fingerprint):
    if metadata["fingerprint"] != model_fingerprint:
        raise SearchIndexError(f"{index_path} was made with {metadata['checkpoint']} (weights "
                               f"{metadata['fingerprint']}), not with {checkpoint} (weights {model_fingerprint}): "
                               f"their embeddings do not compare; index again with --out NEW_INDEX")


# ---------------------------------------------------------------- index

def find_images(root):
    """Every image file under ``root``, sorted, as absolute paths."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"no such folder of images: {root}")
    found = [os.path.join(folder, name) for folder, _, names in os.walk(os.path.abspath(root))
             for name in names if name.lower().endswith(IMAGE_SUFFIXES)]
    if not found:
        raise FileNotFoundError(f"no images under {root} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return sorted(found)


def build_index(checkpoint, images, out, batch_size=32, report=print):
    """Embed the images under ``images`` that ``out`` does not hold yet; returns (added, total, skipped)."""
    model, _ = load_checkpoint_model(checkpoint)
    model.eval()
    checkpoint, model_fingerprint = os.path.abspath(checkpoint), fingerprint(model)
    old_embeddings, old_paths = None, []
    if os.path.exists(out):
        old_embeddings, old_paths, metadata = read_index(out)
        check_same_checkpoint(out, metadata, checkpoint, model_fingerprint)
    known = set(old_paths)
    new_paths = [path for path in find_images(images) if path not in known]
    skipped = []
    new_embeddings, new_paths = embed_image_files(model, new_paths, batch_size,
                                                  on_bad_image=lambda path, error: skipped.append(str(error)))
    still_there = [i for i, path in enumerate(old_paths) if os.path.isfile(path)]
    embeddings = xp.concatenate([xp.asarray(old_embeddings[still_there]), new_embeddings]) \
        if old_paths else new_embeddings                                                 # (N, E)
    paths = [old_paths[i] for i in still_there] + new_paths
    write_index(out, embeddings, paths, checkpoint, model_fingerprint)
    for line in skipped:
        report(f"skipped: {line}")
    return len(new_paths), len(paths), len(skipped)


# ---------------------------------------------------------------- query

def top_k(embeddings, query, k, chunk_rows=CHUNK_ROWS):
    """(indices, scores) of the ``k`` rows with the largest dot product with ``query`` (E,).

    One matrix-vector product per chunk of rows. Each chunk keeps its rows
    scoring at least its own k-th best (ties included), then one stable sort
    merges them with the best so far: the result is exactly the descending
    order of the scores, equal scores in the order of the rows. Either array
    may be on the host or on the active backend: the query moves there once,
    each chunk of rows as it is scored.
    """
    query = xp.asarray(query)                                                              # (E,)
    best_index = xp.zeros(0, dtype="int64")
    best_score = xp.zeros(0, dtype=embeddings.dtype)
    for start in range(0, len(embeddings), chunk_rows):
        scores = xp.asarray(embeddings[start:start + chunk_rows]) @ query                 # (C,)
        keep = xp.arange(len(scores))
        if len(scores) > k:
            kth = xp.partition(scores, len(scores) - k)[len(scores) - k]
            keep = xp.nonzero(scores >= kth)[0]
        candidates_index = xp.concatenate([best_index, keep + start])
        candidates_score = xp.concatenate([best_score, scores[keep]])
        order = xp.argsort(-candidates_score, kind="stable")[:k]
        best_index, best_score = candidates_index[order], candidates_score[order]
    return to_numpy(best_index).tolist(), to_numpy(best_score).tolist()


def embed_query(model, tokenizer, text=None, image=None):
    """The normalized embedding (E,) of a text or of an image file."""
    if image is not None:
        embeddings, _ = embed_image_files(model, [image])
        return embeddings[0]
    if not text.strip():
        raise ValueError("the --text query is empty")
    with no_grad():
        ids = tokenize([text], model.config.context_length, tokenizer=tokenizer)
        return F.normalize(model.encode_text(Tensor(ids)), axis=-1).data[0]


def query_index(index, text=None, image=None, k=8, checkpoint=None):
    """``[{"path", "score"}]``, best first, for a text or an image query."""
    embeddings, paths, metadata = read_index(index)
    checkpoint = checkpoint or metadata["checkpoint"]
    model, tokenizer = load_checkpoint_model(checkpoint)
    model.eval()
    check_same_checkpoint(index, metadata, os.path.abspath(checkpoint), fingerprint(model))
    query = embed_query(model, tokenizer, text, image).astype(embeddings.dtype)          # (E,)
    indices, scores = top_k(embeddings, query, k)
    return [{"path": paths[i], "score": score} for i, score in zip(indices, scores)]


def draw_grid(results, path, tile=160, columns=4):
    """A PNG of thumbnails, each captioned with its rank, score and file name."""
    rows = math.ceil(len(results) / columns)
    caption = 30
    grid = Image.new("RGB", (min(columns, len(results)) * tile, rows * (tile + caption)), "white")
    draw = ImageDraw.Draw(grid)
    for n, result in enumerate(results):
        x, y = n % columns * tile, n // columns * (tile + caption)
        image = ImageOps.contain(read_image(result["path"]).convert("RGB"), (tile - 8, tile - 8))
        grid.paste(image, (x + (tile - image.width) // 2, y + (tile - image.height) // 2))
        draw.text((x + 4, y + tile), f"{n + 1}. {result['score']:.3f}\n{os.path.basename(result['path'])[:24]}",
                  fill="black")
    temporary = f"{path}.tmp{os.getpid()}.png"
    grid.save(temporary)
    os.replace(temporary, path)


# ------------------------------------------------------------------ CLI

def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m minclip.search", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    index = commands.add_parser("index", help="embed every image under a folder (only new ones if INDEX exists)")
    index.add_argument("--checkpoint", required=True,
                       help="a minclip checkpoint or weights file, or a Hugging Face CLIPModel directory")
    index.add_argument("--images", required=True, help="folder of images (searched recursively)")
    index.add_argument("--out", required=True, help="the index file to write or extend")
    index.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    query = commands.add_parser("query", help="the images closest to a text or an image")
    query.add_argument("--index", required=True, help="an index made by `index`")
    what = query.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", help="a text query")
    what.add_argument("--image", help="an image file as the query")
    query.add_argument("-k", type=int, default=8, help="how many results (default 8)")
    query.add_argument("--checkpoint", help="must be the index's own (default: the one it records)")
    query.add_argument("--json", action="store_true", help='print a JSON list of {"path", "score"}')
    query.add_argument("--show", metavar="GRID_PNG", help="also draw the results as a thumbnail grid")
    for command in (index, query):
        add_backend_argument(command)
    args = parser.parse_args(argv)
    if args.command == "query" and args.k < 1:
        parser.error(f"-k must be at least 1, got {args.k}")

    use_backend_or_exit(args.backend)
    try:
        if args.command == "index":
            added, total, skipped = build_index(args.checkpoint, args.images, args.out, args.batch_size,
                                                report=lambda line: print(line, file=sys.stderr))
            print(f"{args.out}: {total} images ({added} new, {skipped} unreadable skipped)")
            return 0
        results = query_index(args.index, args.text, args.image, args.k, args.checkpoint)
        if args.show:
            draw_grid(results, args.show)
    except USER_ERRORS as error:
        return fail(error)
    if args.json:
        print(json.dumps(results))
    else:
        print("\n".join(f"{r['score']:7.4f}  {r['path']}" for r in results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Zero-shot prediction on your own images: ``python -m minclip.predict``.

    python -m minclip.predict --checkpoint hf_clip_dir/ --labels "a dog,a cat,a car" photos/*.jpg
    python -m minclip.predict --checkpoint CKPT --labels-file labels.txt \\
        --template "a photo of a {}." --template "a blurry photo of a {}." --top-k 3 --json img.png

Each label becomes a class vector (the prompt ensemble of ``minclip.zeroshot``:
every template filled with the label, embedded, averaged); each image is
embedded once, in batches; the probabilities are the softmax of the cosine
similarities times the model's learned ``logit_scale``, as in the CLIP paper
(for a SigLIP model, one sigmoid per label with its ``logit_bias``: they need
not sum to 1).
"""
import argparse
import json
import math
import sys

from tqdm import tqdm

from minclip import functional as F
from minclip.backend import to_numpy, xp
from minclip.checkpoint import load_checkpoint_model
from minclip.cli import USER_ERRORS, add_backend_argument, fail, use_backend_or_exit
from minclip.data import BadImageError, clip_transform, read_image
from minclip.tensor import Tensor, no_grad
from minclip.zeroshot import zero_shot_classifier

DEFAULT_TEMPLATE = "a photo of a {}."


def read_labels(labels=None, labels_file=None):
    """The labels from a comma-separated string and/or a file of one label per line; never empty."""
    found = [label.strip() for label in (labels or "").split(",")]
    if labels_file is not None:
        try:
            with open(labels_file, encoding="utf-8") as f:
                found += [line.strip() for line in f]
        except OSError as error:
            raise FileNotFoundError(f"cannot read the labels file {labels_file}: {error.strerror}") from None
    found = [label for label in found if label]
    if not found:
        raise ValueError("no labels: give --labels \"a dog,a cat\" or a --labels-file with one label per line")
    twice = sorted({label for label in found if found.count(label) > 1})
    if twice:
        raise ValueError(f"label {twice[0]!r} is given twice")
    return found


def check_templates(templates):
    for template in templates:
        if "{}" not in template:
            raise ValueError(f"template {template!r} has no '{{}}' where the label goes")
    return templates


def embed_image_files(model, paths, batch_size=32, on_bad_image=None):
    """Normalized embeddings (N, E) of the images at ``paths``, as a backend array, in batches.

    Only one batch of pixels is in memory at a time. A file that cannot be
    read raises ``BadImageError`` naming it, or, with ``on_bad_image``, is
    passed to it and left out. Returns (embeddings, the paths embedded).
    """
    transform = clip_transform(model.config.image_resolution)
    out, kept = [], []
    bar = tqdm(total=len(paths), unit="image", disable=len(paths) <= batch_size, file=sys.stderr)
    with no_grad(), bar:
        for start in range(0, len(paths), batch_size):
            pixels = []
            for path in paths[start:start + batch_size]:
                try:
                    pixels.append(transform(read_image(path)))                  # (3, R, R)
                except BadImageError as error:
                    if on_bad_image is None:
                        raise
                    on_bad_image(path, error)
                    continue
                kept.append(path)
            if pixels:
                images = Tensor(xp.stack([xp.asarray(p) for p in pixels]), dtype=model.dtype)  # (B, 3, R, R)
                out.append(F.normalize(model.encode_image(images), axis=-1).data)            # (B, E)
            bar.update(len(paths[start:start + batch_size]))
    embeddings = xp.concatenate(out) if out else xp.zeros((0, model.config.embed_dim), dtype=model.dtype)
    return embeddings, kept


def predict(model, tokenizer, paths, labels, templates=(DEFAULT_TEMPLATE,), batch_size=32):
    """``[{"image": path, "probs": {label: p}}]``, labels in the order given."""
    model.eval()
    classifier = zero_shot_classifier(model, labels, check_templates(list(templates)), tokenizer)   # (C, E)
    images, _ = embed_image_files(model, paths, batch_size)                                         # (N, E)
    logits = math.exp(float(to_numpy(model.logit_scale.data))) * images @ classifier.T                 # (N, C)
    if model.config.loss == "siglip":        # one independent yes/no per label, as SigLIP was trained
        probs = to_numpy(1 / (1 + xp.exp(-(logits + model.logit_bias.data))))
    else:
        logits = logits - logits.max(axis=1, keepdims=True)
        probs = to_numpy(xp.exp(logits) / xp.exp(logits).sum(axis=1, keepdims=True))
    return [{"image": path, "probs": {label: float(p) for label, p in zip(labels, row)}}
            for path, row in zip(paths, probs)]


def top(probs, k=None):
    """The ``k`` most probable (label, p), most probable first (ties: the order given)."""
    return sorted(probs.items(), key=lambda item: -item[1])[:k]


def format_predictions(predictions, k=None):
    """One block per image: its path, then one line per label."""
    blocks = []
    for prediction in predictions:
        lines = [f"  {100 * p:6.2f}%  {label}" for label, p in top(prediction["probs"], k)]
        blocks.append("\n".join([prediction["image"], *lines]))
    return "\n\n".join(blocks)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m minclip.predict", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--checkpoint", required=True,
                        help="a minclip checkpoint or weights file, or a Hugging Face CLIPModel directory")
    parser.add_argument("--labels", help="comma-separated labels, e.g. \"a dog,a cat,a car\"")
    parser.add_argument("--labels-file", help="a text file of labels, one per line")
    parser.add_argument("--template", action="append",
                        help=f"prompt template with {{}} for the label (repeat for an ensemble; "
                             f"default {DEFAULT_TEMPLATE!r})")
    parser.add_argument("--top-k", type=int, help="show only the K most probable labels (default: all)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    parser.add_argument("--json", action="store_true",
                        help='print a JSON list of {"image": path, "probs": {label: p}}')
    add_backend_argument(parser)
    args = parser.parse_args(argv)
    if args.top_k is not None and args.top_k < 1:
        parser.error(f"--top-k must be at least 1, got {args.top_k}")

    use_backend_or_exit(args.backend)
    try:
        labels = read_labels(args.labels, args.labels_file)
        check_templates(args.template or [])
        model, tokenizer = load_checkpoint_model(args.checkpoint)
        predictions = predict(model, tokenizer, args.images, labels, args.template or [DEFAULT_TEMPLATE],
                              args.batch_size)
    except USER_ERRORS as error:
        return fail(error)
    if args.json:
        print(json.dumps([{"image": p["image"], "probs": dict(top(p["probs"], args.top_k))} for p in predictions]))
    else:
        print(format_predictions(predictions, args.top_k))
    return 0


if __name__ == "__main__":
    sys.exit(main())

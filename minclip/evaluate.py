"""Measure a CLIP the way the paper does: ``python -m minclip.evaluate``.

Three measurements, on frozen features:
* zero-shot classification (``minclip.zeroshot``): top-1 / top-5 from class
  names and prompt templates alone;
* image↔text retrieval (``minclip.retrieval``): Recall@1/5/10 and ranks;
* a linear probe (``minclip.linear_probe``): the supervised baseline.

Examples::

    python -m minclip.evaluate --checkpoint logs/tiny/checkpoints/latest.safetensors
    python -m minclip.evaluate --checkpoint CKPT --zeroshot-data my_folder/ --json
    python -m minclip.evaluate --checkpoint CKPT --val-data pairs.csv --single-prompt

Without data arguments it uses the built-in dataset's test split, its
held-out (colour, shape) combinations and its validation pairs.
"""
import argparse
import json
import sys

from minclip.checkpoint import load_checkpoint_model
from minclip.cli import USER_ERRORS, add_backend_argument, add_csv_arguments, csv_dataset, fail, use_backend_or_exit
from minclip.data import ImageFolder, clip_transform, shapes
from minclip.linear_probe import linear_probe_evaluate
from minclip.retrieval import retrieval_metrics
from minclip.zeroshot import DEFAULT_TEMPLATES, encode_images, encode_texts, zero_shot_evaluate


def evaluate(model, tokenizer, zeroshot=None, retrieval=None, probe=None, single_prompt=False):
    """All requested metrics as one flat dict with open_clip-style keys.

    ``zeroshot``: {name: dataset with labels/classnames}; the set named "test"
    gives ``zeroshot-top1``, any other gives ``NAME-zeroshot-top1``.
    ``retrieval``: a dataset of (image, caption) pairs. ``probe``: a
    (train, test) pair of labelled datasets for the linear probe.
    """
    model.eval()
    metrics = {}
    for name, dataset in (zeroshot or {}).items():
        templates = list(dataset.templates or DEFAULT_TEMPLATES)
        templates = templates[:1] if single_prompt else templates
        result = zero_shot_evaluate(model, dataset, dataset.classnames, templates, tokenizer)
        prefix = "" if name == "test" else f"{name}-"
        metrics[f"{prefix}zeroshot-top1"] = result["top1"]
        metrics[f"{prefix}zeroshot-top5"] = result["top5"]
    if retrieval is not None:
        captions = [retrieval[i][1] for i in range(len(retrieval))] if not hasattr(retrieval, "captions") \
            else list(retrieval.captions)
        ids = {}
        groups = [ids.setdefault(caption, len(ids)) for caption in captions]   # identical captions all match
        metrics.update(retrieval_metrics(encode_images(model, retrieval),
                                         encode_texts(model, captions, tokenizer), groups=groups))
    if probe is not None:
        train, test = probe
        result = linear_probe_evaluate(encode_images(model, train), train.labels,
                                       encode_images(model, test), test.labels, len(train.classnames))
        metrics["linear_probe-top1"] = result["top1"]
        metrics["linear_probe-top5"] = result["top5"]
    return metrics


def format_table(metrics):
    """The metrics as aligned text, percentages for accuracies and recalls."""
    width = max(len(k) for k in metrics)
    lines = []
    for key, value in metrics.items():
        shown = f"{value:8.2f}" if "rank" in key else f"{100 * value:7.2f}%"
        lines.append(f"  {key:<{width}}  {shown}")
    return "\n".join(lines)


def builtin_sets(image_size, probe=True):
    """The built-in dataset's evaluation sets: zero-shot, retrieval, linear probe."""
    test, unseen = shapes.load_split("test", image_size=image_size), shapes.load_split("unseen", image_size=image_size)
    sets = {"zeroshot": {"test": test, "unseen": unseen},
            "retrieval": shapes.load_split("val", image_size=image_size)}
    if probe:
        sets["probe"] = (shapes.load_split("train", image_size=image_size, n=2000), test)
    return sets


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m minclip.evaluate", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a minclip checkpoint or weights file (.safetensors)")
    parser.add_argument("--zeroshot-data", help="image folder with one sub-folder per class (default: built-in test sets)")
    parser.add_argument("--val-data", help="CSV/TSV of image paths and captions for retrieval")
    add_csv_arguments(parser)
    parser.add_argument("--no-linear-probe", action="store_true", help="skip the linear probe (built-in data only)")
    parser.add_argument("--single-prompt", action="store_true", help="use only the first template, not the ensemble")
    add_backend_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    args = parser.parse_args(argv)

    use_backend_or_exit(args.backend)
    try:
        metrics = evaluate_files(args)
    except USER_ERRORS as error:
        return fail(error)
    print(json.dumps(metrics) if args.json else format_table(metrics))
    return 0


def evaluate_files(args):
    """The metrics of the checkpoint and data that the command-line ``args`` name."""
    model, tokenizer = load_checkpoint_model(args.checkpoint)
    size = model.config.image_resolution
    if not (args.zeroshot_data or args.val_data):
        return evaluate(model, tokenizer, single_prompt=args.single_prompt,
                        **builtin_sets(size, probe=not args.no_linear_probe))
    transform = clip_transform(size)
    zeroshot = {"test": ImageFolder(args.zeroshot_data, transform)} if args.zeroshot_data else None
    retrieval = csv_dataset(args.val_data, transform, args) if args.val_data else None
    return evaluate(model, tokenizer, zeroshot, retrieval, single_prompt=args.single_prompt)


if __name__ == "__main__":
    sys.exit(main())

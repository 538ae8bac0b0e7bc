"""Chapter 7: zero-shot classification, retrieval metrics, the linear probe, ``python -m minclip.evaluate``.

The metrics are checked on matrices small enough to rank by hand, ties
included; the classifier on a fake CLIP whose text embeddings are chosen by
the test; the CLI on a micro CLIP saved to a checkpoint.

Run: python -m pytest tests/test_07_zero_shot.py   (exercises: --exercise 7.1, 7.2, 7.3)
"""
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from minclip import backend
from minclip import evaluate as evaluate_cli
from minclip.checkpoint import save_checkpoint
from minclip.data import ImageFolder, ImageTextDataset
from minclip.evaluate import evaluate
from minclip.linear_probe import linear_probe_evaluate
from minclip.model import CLIP, CLIPConfig
from minclip.retrieval import retrieval_metrics
from minclip.tensor import Tensor
from minclip.tokenizer import CLIPTokenizer
from minclip.zeroshot import topk_accuracy, zero_shot_classifier
from support.compare import assert_allclose


class PromptTokenizer:
    """A fake tokenizer: each prompt it knows is one token (the start and end tokens come last)."""

    def __init__(self, prompts):
        self.prompts = list(prompts)
        self.sot_token_id, self.eot_token_id = len(self.prompts), len(self.prompts) + 1
        self.vocab_size = len(self.prompts) + 2

    def encode(self, text):
        if text not in self.prompts:
            raise AssertionError(f"the fake tokenizer was asked for {text!r}; it knows only {self.prompts}")
        return [self.prompts.index(text)]


class FakeCLIP:
    """A CLIP whose answers the test knows: each prompt embeds to the vector the test gives it,
    and an image embeds to its mean pixel (R, G, B)."""

    config = SimpleNamespace(context_length=3)          # start, the prompt's one token, end

    def __init__(self, text_vectors):
        self.tokenizer = PromptTokenizer(text_vectors)
        self.table = np.array(list(text_vectors.values()), dtype=np.float32)     # (prompts, E)

    def eval(self):
        return self

    def encode_text(self, ids):
        return Tensor(ids.xp.asarray(self.table)[ids.data[:, 1]])               # (B, E), on the ids' backend

    def encode_image(self, images):
        return Tensor(images.data.mean(axis=(2, 3)))                            # (B, 3)


def raw_pixels(image):
    """A transform without CLIP's normalization: PIL -> float32 (3, H, W) in [0, 1]."""
    return np.asarray(image.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255


RGB = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


# ---------------------------------------------------------------- the classifier (exercise 7.1)

@pytest.mark.exercise("7.1")
def test_the_classifier_normalizes_each_prompt_then_averages_and_renormalizes():
    model = FakeCLIP({"a cat.": [3, 0, 0], "the cat!": [0, 4, 0],     # lengths 3 and 4: normalize first
                      "a dog.": [0, 0, 2], "the dog!": [0, 0, 5]})
    weights = backend.to_numpy(zero_shot_classifier(model, ["cat", "dog"], ["a {}.", "the {}!"], model.tokenizer))
    # cat: mean of (1, 0, 0) and (0, 1, 0) is (.5, .5, 0), renormalized (1/√2, 1/√2, 0).
    # Averaging before normalizing would give (.6, .8, 0) instead.
    expected = np.array([[1 / math.sqrt(2), 1 / math.sqrt(2), 0], [0, 0, 1]])
    assert weights.shape == (2, 3), f"one row per class, one column per embedding dimension: got {weights.shape}"
    assert_allclose(weights, expected, atol=1e-6, err_msg=(
        "class vector = normalize(mean over templates of normalize(encode_text(template.format(name))))"))


# ---------------------------------------------------------------- top-k accuracy (exercise 7.3)

@pytest.mark.exercise("7.3")
def test_topk_accuracy_by_hand():
    logits = np.array([[0.1, 0.7, 0.2],     # label 1: best         -> rank 1
                       [0.5, 0.3, 0.2],     # label 1: one above it -> rank 2
                       [0.2, 0.3, 0.5],     # label 2: best         -> rank 1
                       [0.6, 0.3, 0.1]])    # label 2: last         -> rank 3
    accuracy = topk_accuracy(logits, np.array([1, 1, 2, 2]), ks=(1, 2, 3))
    assert accuracy == {1: 0.5, 2: 0.75, 3: 1.0}, f"expected {{1: 0.5, 2: 0.75, 3: 1.0}}, got {accuracy}"


@pytest.mark.exercise("7.3")
def test_topk_accuracy_counts_ties_against_the_true_class():
    constant = np.zeros((4, 3))
    assert topk_accuracy(constant, np.array([0, 1, 2, 0]), ks=(1, 2, 3)) == {1: 0.0, 2: 0.0, 3: 1.0}, (
        "a classifier that gives every class the same score must not get credit: each true class ties "
        "with all 3, so its rank is 3")
    tied_for_first = np.array([[0.9, 0.9, 0.1]])
    assert topk_accuracy(tied_for_first, np.array([1]), ks=(1, 2)) == {1: 0.0, 2: 1.0}, (
        "a true class tied with one other for first place has rank 2")


# ---------------------------------------------------------------- retrieval (exercise 7.2)

def metrics_of(similarity, **options):
    """retrieval_metrics of a given (N, N) similarity matrix: image features S, text features the identity."""
    similarity = np.asarray(similarity, dtype=np.float32)
    return retrieval_metrics(similarity, np.eye(len(similarity), dtype=np.float32), **options)


@pytest.mark.exercise("7.2")
def test_recall_and_ranks_by_hand_in_both_directions():
    similarity = [[0.9, 0.5, 0.2],    # image 0: caption 0 is first         -> rank 1
                  [0.8, 0.3, 0.1],    # image 1: caption 0 beats caption 1  -> rank 2
                  [0.1, 0.6, 0.7]]    # image 2: caption 2 is first         -> rank 1
    # Columns, for text -> image: caption 0 ranks image 0 first (1); caption 1 has
    # images 2 (0.6) and 0 (0.5) above image 1 (0.3) -> rank 3; caption 2 -> rank 1.
    got = metrics_of(similarity, ks=(1, 2))
    expected = {"image_to_text_R@1": 2 / 3, "image_to_text_R@2": 1.0, "image_to_text_mean_rank": 4 / 3,
                "image_to_text_median_rank": 1.0, "text_to_image_R@1": 2 / 3, "text_to_image_R@2": 2 / 3,
                "text_to_image_mean_rank": 5 / 3, "text_to_image_median_rank": 1.0}
    assert got.keys() == expected.keys(), f"open_clip's key names: expected {sorted(expected)}, got {sorted(got)}"
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), (f"{key}: expected {value:.4f}, got {got[key]:.4f}; ranks "
                                                  "image->text are [1, 2, 1] (rows), text->image [1, 3, 1] (columns)")


@pytest.mark.exercise("7.2")
def test_ties_count_against_the_query():
    got = metrics_of(np.ones((4, 4)))
    assert got["image_to_text_R@1"] == 0 and got["image_to_text_mean_rank"] == 4, (
        f"a model that scores every caption the same must rank last (4 of 4), not first: got {got}")
    assert got["text_to_image_median_rank"] == 4
    one_tie = metrics_of([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert one_tie["image_to_text_mean_rank"] == pytest.approx(4 / 3), (
        "image 0 ties its caption with caption 1: rank 2, so the ranks are [2, 1, 1]")
    assert one_tie["text_to_image_R@1"] == pytest.approx(2 / 3), (
        "column 1 is [1, 1, 0]: caption 1 scores image 0 as high as its own image 1, so its rank is 2")


@pytest.mark.exercise("7.2")
def test_groups_make_every_caption_of_the_group_a_match():
    similarity = [[0.2, 0.9, 0.1],    # image 0's best caption is caption 1, the same sentence as its own
                  [0.8, 0.3, 0.1],
                  [0.1, 0.2, 0.7]]
    alone, grouped = metrics_of(similarity), metrics_of(similarity, groups=[0, 0, 1])
    assert alone["image_to_text_R@1"] == pytest.approx(1 / 3), "without groups images 0 and 1 rank their caption 2nd"
    assert grouped["image_to_text_R@1"] == 1.0 and grouped["text_to_image_R@1"] == 1.0, (
        f"with groups [0, 0, 1] captions 0 and 1 both match images 0 and 1: every query ranks a match first, "
        f"got {grouped}")


@pytest.mark.exercise("7.2")
def test_retrieval_needs_as_many_texts_as_images():
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(3, 3\)"):
        retrieval_metrics(np.eye(3, 5, dtype=np.float32), np.eye(4, 5, dtype=np.float32))


# ---------------------------------------------------------------- evaluate() on files the test writes

def write_image_folder(root, mislabelled=False):
    """root/<colour>/ with two solid images per colour (and, optionally, a green image filed under red)."""
    for colour, rgb in RGB.items():
        (root / colour).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), rgb).save(root / colour / f"{i}.png")
    if mislabelled:
        Image.new("RGB", (8, 8), RGB["green"]).save(root / "red" / "wrong.png")
    (root / "templates.txt").write_text("a {} picture.\n{}, in colour.\n")


def colour_model(templates):
    """A FakeCLIP whose prompts about a colour point along that colour's axis."""
    axes = {"red": [1, 0, 0], "green": [0, 1, 0], "blue": [0, 0, 1]}
    return FakeCLIP({t.format(c): axis for t in templates for c, axis in axes.items()})


def test_zero_shot_on_an_image_folder(tmp_path):
    write_image_folder(tmp_path, mislabelled=True)
    folder = ImageFolder(tmp_path, raw_pixels)
    model = colour_model(folder.templates)                # knows only the folder's own templates
    metrics = evaluate(model, model.tokenizer, zeroshot={"test": folder, "copy": folder})
    assert metrics == {"zeroshot-top1": pytest.approx(6 / 7), "zeroshot-top5": 1.0,
                       "copy-zeroshot-top1": pytest.approx(6 / 7), "copy-zeroshot-top5": 1.0}, (
        f"7 images, the green one filed under red/ is wrong: top-1 6/7; with 3 classes top-5 is top-3 = 1. "
        f"The set named 'test' gives 'zeroshot-top1', any other 'NAME-zeroshot-top1'. Got {metrics}")


def test_retrieval_counts_identical_captions_as_matches(tmp_path):
    images = np.array([np.full((4, 4, 3), RGB[c], dtype=np.uint8) for c in ("red", "red", "blue")])
    pairs = ImageTextDataset(images, ["red", "red", "blue"], transform=raw_pixels)
    model = FakeCLIP({"red": [1, 0, 0], "blue": [0, 0, 1]})
    metrics = evaluate(model, model.tokenizer, retrieval=pairs)
    assert metrics["image_to_text_R@1"] == 1.0 and metrics["text_to_image_R@1"] == 1.0, (
        f"the two 'red' captions are the same sentence: either one is a right answer for either red image "
        f"(evaluate groups identical captions); got {metrics}")


@pytest.mark.exercise("7.4")
def test_the_linear_probe_separates_separable_features():
    rng = np.random.default_rng(0)
    centres = 3 * np.eye(3, 4)                                               # 3 classes in 4-D
    labels = np.repeat(np.arange(3), 20)
    train, test = [(centres[labels] + 0.3 * rng.standard_normal((60, 4))).astype(np.float32) for _ in range(2)]
    result = linear_probe_evaluate(train, labels, test, labels, num_classes=3, steps=100)
    assert result == {"top1": 1.0, "top5": 1.0}, f"well separated clusters must be classified perfectly: {result}"


# ---------------------------------------------------------------- the CLI

@pytest.fixture(scope="module")
def micro_checkpoint(tmp_path_factory):
    """A randomly initialized micro CLIP (32 px, so the built-in data's cache fits) with its own tokenizer."""
    folder = tmp_path_factory.mktemp("run")
    tokenizer = CLIPTokenizer.train(["a red circle.", "a photo of a blue star."] * 4, vocab_size=530)
    tokenizer.save(str(folder / "tokenizer.txt"))
    config = CLIPConfig(embed_dim=16, image_resolution=32, vision_layers=1, vision_width=32, vision_patch_size=8,
                        vision_heads=2, context_length=16, vocab_size=tokenizer.vocab_size, transformer_width=32,
                        transformer_heads=2, transformer_layers=1, tokenizer="trained")
    save_checkpoint(folder / "latest.safetensors", CLIP(config), meta={"tokenizer": "tokenizer.txt"})
    return folder / "latest.safetensors"


def run_evaluate(capsys, *argv):
    status = evaluate_cli.main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return status, out, err


def test_the_cli_prints_one_json_object_with_open_clip_keys(micro_checkpoint, capsys):
    status, out, err = run_evaluate(capsys, "--checkpoint", micro_checkpoint, "--json")
    assert status == 0, err
    metrics = json.loads(out)                                                # one object, nothing else
    retrieval = {f"{d}_{m}" for d in ("image_to_text", "text_to_image")
                 for m in ("R@1", "R@5", "R@10", "mean_rank", "median_rank")}
    expected = {"zeroshot-top1", "zeroshot-top5", "unseen-zeroshot-top1", "unseen-zeroshot-top5",
                "linear_probe-top1", "linear_probe-top5"} | retrieval
    assert set(metrics) == expected, f"missing {expected - set(metrics)}, unexpected {set(metrics) - expected}"
    for key, value in metrics.items():
        assert (1 <= value <= 1000) if "rank" in key else (0 <= value <= 1), f"{key} = {value} is out of range"


def test_the_cli_on_an_image_folder_and_a_csv(micro_checkpoint, tmp_path, capsys):
    write_image_folder(tmp_path / "classes")
    (tmp_path / "pairs.csv").write_text("image,caption\n" + "".join(
        f"classes/{c}/{i}.png,a {c} square.\n" for c in RGB for i in range(2)))
    status, out, err = run_evaluate(capsys, "--checkpoint", micro_checkpoint, "--zeroshot-data", tmp_path / "classes",
                                    "--val-data", tmp_path / "pairs.csv", "--csv-separator", ",",
                                    "--csv-img-key", "image", "--csv-caption-key", "caption", "--json")
    assert status == 0, err
    metrics = json.loads(out)
    assert {"zeroshot-top1", "zeroshot-top5", "image_to_text_R@1", "text_to_image_R@5"} <= set(metrics), metrics
    assert not any(k.startswith(("unseen", "linear_probe")) for k in metrics), (
        f"with files given, only their metrics are computed: {sorted(metrics)}")


@pytest.mark.parametrize("flag, value", [("--checkpoint", "nowhere.safetensors"),
                                         ("--zeroshot-data", "no_such_folder")])
def test_the_cli_names_what_is_missing_in_one_line(micro_checkpoint, tmp_path, capsys, flag, value):
    argv = {"--checkpoint": micro_checkpoint, flag: tmp_path / value}
    status, out, err = run_evaluate(capsys, *[x for pair in argv.items() for x in pair])
    assert status == 1 and value in err and len(err.strip().splitlines()) == 1, (
        f"expected exit status 1 and one line naming {value}, got {status}: {err!r}")

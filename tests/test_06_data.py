"""Chapter 6, data: the shapes dataset, CLIP's transforms, the file formats, the loader.

Run: python -m pytest tests/test_06_data.py   (exercises: --exercise 6.1, --exercise 6.2)
"""
import pickle
import re
import threading

import numpy as np
import pytest
from PIL import Image

from minclip.data import (COLOURS, HELD_OUT, SHAPES, TEMPLATES, BadImageError, Cifar10, CsvDataset,
                          DataLoader, Dataset, ImageFolder, ImageTextDataset, class_names,
                          clip_transform, denormalize, generate, load_split, normalize)
from minclip.data import shapes
from minclip.data.transforms import OPENAI_MEAN, OPENAI_STD, center_crop
from support.compare import array_equal, assert_allclose, assert_array_equal


def to_array(image):
    """A transform that does not depend on exercise 6.1: PIL -> float32 (3, H, W) of raw pixels."""
    return np.asarray(image.convert("RGB"), dtype=np.float32).transpose(2, 0, 1)


def write_png(path, colour=(255, 0, 0), size=(4, 4)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


# ---------------------------------------------------------------- transforms

@pytest.mark.exercise("6.1")
def test_normalize_matches_hand_computed_values():
    pixel = np.array([[[[255, 0, 128]]]], dtype=np.uint8)                # (1, 1, 1, 3): one RGB pixel
    expected = [(1 - 0.48145466) / 0.26862954, (0 - 0.4578275) / 0.26130258,
                (128 / 255 - 0.40821073) / 0.27577711]
    out = normalize(pixel)
    assert out.shape == (1, 3, 1, 1), f"normalize: expected NCHW (1, 3, 1, 1), got {out.shape}"
    assert out.dtype == np.float32, f"normalize must return float32, got {out.dtype}"
    assert_allclose(out.ravel(), expected, rtol=1e-6,
                               err_msg="(pixel / 255 - mean) / std per channel, with OPENAI_MEAN/STD")


@pytest.mark.exercise("6.1")
def test_normalize_moves_channels_in_front():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2, 5, 7, 3), dtype=np.uint8)    # (N, H, W, 3)
    out = normalize(images)
    assert out.shape == (2, 3, 5, 7), f"expected (N, 3, H, W) = (2, 3, 5, 7), got {out.shape}"
    channel = 2
    expected = (images[1, :, :, channel] / 255 - OPENAI_MEAN[channel]) / OPENAI_STD[channel]
    assert_allclose(out[1, channel], expected, rtol=1e-5, atol=1e-6,
                               err_msg="out[n, c, y, x] must come from images[n, y, x, c]")
    assert normalize(images[0]).shape == (3, 5, 7), "one image (H, W, 3) becomes (3, H, W)"


def test_denormalize_inverts_normalize():
    images = np.random.default_rng(1).integers(0, 256, size=(3, 4, 4, 3), dtype=np.uint8)
    assert_array_equal(denormalize(normalize(images)), images)


@pytest.mark.exercise("6.4")
def test_clip_transform_resizes_shorter_side_then_crops_the_centre():
    rng = np.random.default_rng(2)
    image = Image.fromarray(rng.integers(0, 256, size=(30, 50, 3), dtype=np.uint8))   # 50 wide, 30 high
    # By hand: shorter side 30 -> 16, longer int(16 * 50 / 30) = 26; crop 16 from the middle:
    # left = round((26 - 16) / 2) = 5.
    by_hand = image.resize((26, 16), Image.BICUBIC).crop((5, 0, 21, 16))
    expected = (np.asarray(by_hand, dtype=np.float32) / 255 - OPENAI_MEAN) / OPENAI_STD
    out = clip_transform(16)(image)
    assert out.shape == (3, 16, 16) and out.dtype == np.float32, f"got {out.dtype} {out.shape}"
    assert_allclose(out, expected.transpose(2, 0, 1), rtol=1e-6, atol=1e-6)


@pytest.mark.exercise("6.4")
def test_center_crop_rounds_half_to_even_like_torchvision():
    # 25 - 16 = 9 pixels to remove: round(4.5) == 4 in Python, so 4 go on the left.
    columns = np.tile(np.arange(25, dtype=np.uint8), (16, 1))            # pixel value = its x
    cropped = np.asarray(center_crop(Image.fromarray(columns), 16))
    assert cropped[0, 0] == 4, f"expected the crop to start at x = 4, it starts at x = {cropped[0, 0]}"


def test_clip_transform_makes_grey_images_rgb():
    grey = Image.new("L", (20, 20), 100)
    out = denormalize(clip_transform(8)(grey))                           # (8, 8, 3)
    assert out.shape == (8, 8, 3)
    assert_array_equal(out[..., 0], out[..., 2], err_msg="a grey image has R = G = B")


def test_train_transform_is_seeded_and_light():
    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    a = [clip_transform(32, train=True, seed=5)(image) for _ in range(2)]
    b = clip_transform(32, train=True, seed=5)
    assert a[0].shape == (3, 32, 32)
    assert_array_equal(a[0], b(image), err_msg="same seed, same random crop")
    assert not array_equal(b(image), b(image)), "successive calls draw new crops"


# ---------------------------------------------------------------- the shapes dataset

def test_generate_is_deterministic_by_seed():
    a, b, c = generate(20, seed=1, image_size=32), generate(20, seed=1, image_size=32), generate(20, seed=2, image_size=32)
    assert_array_equal(a.images, b.images, err_msg="the same seed must give the same images")
    assert a.captions == b.captions
    assert not array_equal(a.images, c.images), "another seed must give other images"


def test_one_seed_gives_the_same_scenes_at_every_size():
    small, large = generate(30, seed=4, image_size=32), generate(30, seed=4, image_size=64)
    assert small.images.shape == (30, 32, 32, 3) and large.images.shape == (30, 64, 64, 3)
    assert small.captions == large.captions
    assert_array_equal(small.positions, large.positions)


def test_captions_name_colour_and_shape():
    sample = generate(300, seed=0, image_size=32)
    for caption, colour, shape in zip(sample.captions, sample.colours, sample.shapes):
        named = [c for c in COLOURS if c in re.findall(r"[a-z]+", caption)]
        assert named == [COLOURS[colour]], f"{caption!r} should name exactly its colour {COLOURS[colour]!r}"
        assert SHAPES[shape] in caption, f"{caption!r} should name its shape {SHAPES[shape]!r}"
        assert " a orange" not in f" {caption}", f"{caption!r}: 'an' before a vowel"
    assert len({c.split()[0] + c.split()[-1] for c in sample.captions}) >= 8, "captions need varied phrasings"


def test_labels_index_class_names():
    sample = generate(50, seed=0, image_size=32)
    names = class_names()
    assert len(names) == len(COLOURS) * len(SHAPES)
    for label, colour, shape in zip(sample.labels, sample.colours, sample.shapes):
        assert names[label] == f"{COLOURS[colour]} {SHAPES[shape]}"
    assert len(class_names(include_held_out=False)) == len(names) - len(HELD_OUT)


def test_the_image_shows_the_named_colour():
    sample = generate(60, seed=5, image_size=32)
    for image, colour in zip(sample.images.astype(int), sample.colours):
        saturation = image.max(axis=-1) - image.min(axis=-1)               # 0 for greys
        y, x = np.unravel_index(saturation.argmax(), saturation.shape)     # surely inside the object
        target = shapes.RGB[COLOURS[colour]]
        assert np.abs(image[y, x] - target).max() <= 40, \
            f"the object's pixel {image[y, x]} is far from {COLOURS[colour]} {target}"


def test_held_out_combinations_never_appear_in_training(tmp_path):
    train = load_split("train", image_size=32, n=600, cache_dir=tmp_path)
    names = class_names()
    held_out = {f"{c} {s}" for c, s in HELD_OUT}
    seen = {names[k] for k in train.labels}
    assert not seen & held_out, f"held-out pairs leaked into training: {seen & held_out}"
    assert {n.split()[0] for n in seen} == set(COLOURS), "every colour must still be seen in training"
    assert {n.split()[1] for n in seen} == set(SHAPES), "every shape must still be seen in training"
    unseen = load_split("unseen", image_size=32, n=100, cache_dir=tmp_path)
    assert {names[k] for k in unseen.labels} == held_out


def test_load_split_caches_and_each_split_has_its_own_seed(tmp_path):
    first = load_split("val", image_size=32, n=50, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("shapes_v*_val_n50_32px.npz"))) == 1, "the split should be cached"
    again = load_split("val", image_size=32, n=50, cache_dir=tmp_path)
    assert_array_equal(first.images, again.images)
    assert first.captions == again.captions and first.classnames == class_names()
    test = load_split("test", image_size=32, n=50, cache_dir=None)
    assert not array_equal(first.images, test.images), "val and test must be drawn from different seeds"
    with pytest.raises(ValueError, match="train"):
        load_split("training")


def test_batch_fast_path_equals_one_image_at_a_time():
    sample = generate(6, seed=0, image_size=32)
    ds = ImageTextDataset(sample.images, sample.captions, sample.labels)
    images, captions = ds.batch([4, 1])
    expected = np.stack([ds[4][0], ds[1][0]])
    assert images.shape == (2, 3, 32, 32) and captions == [sample.captions[4], sample.captions[1]]
    assert_array_equal(images, expected)
    with pytest.raises(ValueError, match=r"\(6, 32, 32\)"):
        ImageTextDataset(sample.images[..., 0], sample.captions)


def test_export_round_trips_through_csv_and_image_folder(tmp_path):
    shapes.export(tmp_path / "out", image_size=32, n=12, n_eval=10, cache_dir=None)
    pairs = CsvDataset(tmp_path / "out" / "train.csv", to_array)
    reference = load_split("train", image_size=32, n=12, cache_dir=None)
    assert len(pairs) == 12 and pairs.captions == reference.captions
    assert_array_equal(pairs[3][0], reference.images[3].transpose(2, 0, 1))
    unseen = ImageFolder(tmp_path / "out" / "zeroshot_unseen", to_array)
    assert set(unseen.classnames) <= {f"{c} {s}" for c, s in HELD_OUT} and unseen.templates == TEMPLATES
    assert len(unseen) == 10


# ---------------------------------------------------------------- CSV, image folders, CIFAR-10

def test_csv_reads_tab_separated_pairs_relative_to_the_file(tmp_path):
    write_png(tmp_path / "set" / "imgs" / "a.png", (255, 0, 0))
    write_png(tmp_path / "set" / "imgs" / "b.png", (0, 0, 255))
    (tmp_path / "set" / "pairs.tsv").write_text("filepath\ttitle\nimgs/a.png\ta red square\n"
                                                "imgs/b.png\ta blue square\n")
    ds = CsvDataset(tmp_path / "set" / "pairs.tsv", to_array)
    image, caption = ds[1]
    assert len(ds) == 2 and caption == "a blue square"
    assert tuple(image[:, 0, 0]) == (0, 0, 255), "the path is relative to the CSV's folder"


def test_csv_missing_column_lists_the_columns(tmp_path):
    (tmp_path / "pairs.csv").write_text("filepath,title\nimgs/a.png,a cat\n")
    with pytest.raises(ValueError, match=r"no column 'filepath'.*'filepath,title'"):
        CsvDataset(tmp_path / "pairs.csv", to_array)                     # read with a tab: one column
    ds = CsvDataset(tmp_path / "pairs.csv", to_array, sep=",")
    assert ds.captions == ["a cat"]
    with pytest.raises(ValueError, match=r"no column 'caption'.*'filepath', 'title'"):
        CsvDataset(tmp_path / "pairs.csv", to_array, caption_key="caption", sep=",")
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        CsvDataset(tmp_path / "nowhere.csv", to_array)


def _csv_with_bad_images(tmp_path):
    write_png(tmp_path / "good1.png")
    write_png(tmp_path / "good2.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG this is not an image")
    (tmp_path / "pairs.tsv").write_text("filepath\ttitle\ngood1.png\tone\nmissing.png\ttwo\n"
                                        "broken.png\tthree\ngood2.png\tfour\n")
    return tmp_path / "pairs.tsv"


def test_csv_bad_image_error_names_the_file_and_line(tmp_path):
    ds = CsvDataset(_csv_with_bad_images(tmp_path), to_array)
    with pytest.raises(BadImageError, match=r"missing\.png.*line 3"):
        ds[1]
    with pytest.raises(BadImageError, match=r"broken\.png.*line 4"):
        ds.batch([0, 2])


def test_csv_skip_bad_images_leaves_them_out_and_counts_them(tmp_path):
    ds = CsvDataset(_csv_with_bad_images(tmp_path), to_array, skip_bad_images=True)
    for _ in range(2):                                                   # two epochs
        images, captions = ds.batch([0, 1, 2, 3])
        assert captions == ["one", "four"] and images.shape == (2, 3, 4, 4)
    assert ds.skipped == 2, f"two distinct bad images, counted once each; got {ds.skipped}"


def test_image_folder_classes_are_sorted_folders(tmp_path):
    write_png(tmp_path / "tabby_cat" / "1.png")
    write_png(tmp_path / "golden_retriever" / "2.jpg")
    write_png(tmp_path / "golden_retriever" / "1.png")
    (tmp_path / "golden_retriever" / "notes.txt").write_text("not an image")
    ds = ImageFolder(tmp_path, to_array)
    assert ds.classnames == ["golden retriever", "tabby cat"], "folder names, '_' read as a space"
    assert ds.labels.tolist() == [0, 0, 1] and ds.templates is None
    assert ds[2][1] == "tabby cat", "the caption of an image is its class name"


def test_image_folder_reads_classnames_and_templates(tmp_path):
    write_png(tmp_path / "n01" / "a.png")
    write_png(tmp_path / "n02" / "a.png")
    (tmp_path / "classnames.txt").write_text("goldfish\ngreat white shark\n")
    (tmp_path / "templates.txt").write_text("a photo of a {}.\nart of the {}.\n")
    ds = ImageFolder(tmp_path, to_array)
    assert ds.classnames == ["goldfish", "great white shark"]
    assert ds.templates == ["a photo of a {}.", "art of the {}."]
    (tmp_path / "classnames.txt").write_text("goldfish\n")
    with pytest.raises(ValueError, match="1 names but .* 2 class folders"):
        ImageFolder(tmp_path, to_array)


def _fake_cifar(root):
    """Tiny CIFAR-10 pickles: 2 images per batch; test image 0 is all (10, 20, 30) but pixel (0, 1) is red 200."""
    root.mkdir()
    planes = np.zeros((2, 3, 32, 32), dtype=np.uint8)
    planes[:, 0], planes[:, 1], planes[:, 2] = 10, 20, 30
    planes[0, 0, 0, 1] = 200
    batch = {b"data": planes.reshape(2, 3072), b"labels": [3, 8]}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (root / name).write_bytes(pickle.dumps(batch))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))


def test_cifar10_reads_the_pickled_batches(tmp_path):
    _fake_cifar(tmp_path / "cifar-10-batches-py")
    test = Cifar10(tmp_path)                                             # the folder above works too
    assert len(test) == 2 and len(Cifar10(tmp_path / "cifar-10-batches-py", train=True)) == 10
    assert test.classnames[3] == "cat" and test.labels.tolist() == [3, 8] and test[1][1] == "ship"
    assert tuple(test.images[0, 0, 1]) == (200, 20, 30), "rows are R, G, B planes: (3, 32, 32) -> (32, 32, 3)"
    assert tuple(test.images[0, 0, 0]) == (10, 20, 30)
    assert test.batch([0, 1])[0].shape == (2, 3, 32, 32)
    assert Cifar10(tmp_path, image_size=48)[0][0].shape == (3, 48, 48)


def test_cifar10_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="test_batch"):
        Cifar10(tmp_path)


# ---------------------------------------------------------------- the loader

class Numbers(Dataset):
    """Example i is an image filled with i and the caption str(i); index ``fail_at`` raises."""

    def __init__(self, n, fail_at=None):
        self.n, self.fail_at = n, fail_at

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i == self.fail_at:
            raise ValueError(f"example {i} is broken")
        return np.full((3, 2, 2), i, dtype=np.float32), str(i)


def captions_of(batches):
    return [[int(c) for c in captions] for _, captions in batches]


@pytest.mark.exercise("6.2")
def test_epoch_order_is_a_permutation_from_seed_and_epoch():
    loader = DataLoader(Numbers(10), batch_size=3, seed=7)
    for epoch in range(3):
        expected = np.random.default_rng((7, epoch)).permutation(10)
        assert_array_equal(loader.order(epoch), expected,
                                      err_msg=f"epoch {epoch}: use numpy.random.default_rng((seed, epoch))")
    assert not array_equal(loader.order(0), loader.order(1)), "each epoch has its own order"
    unshuffled = DataLoader(Numbers(10), batch_size=3, shuffle=False)
    assert_array_equal(unshuffled.order(5), np.arange(10))


def test_batches_follow_the_order_and_drop_the_last_partial_one():
    loader = DataLoader(Numbers(10), batch_size=3, seed=1)
    batches = captions_of(loader.epoch_batches(2))
    assert len(loader) == 3 and batches == loader.order(2)[:9].reshape(3, 3).tolist()
    keep_last = DataLoader(Numbers(10), batch_size=3, seed=1, drop_last=False)
    assert len(keep_last) == 4 and captions_of(keep_last.epoch_batches(2))[-1] == [loader.order(2)[9]]
    images, _ = next(loader.epoch_batches(0))
    assert images.shape == (3, 3, 2, 2) and images.dtype == np.float32


def test_resume_from_epoch_and_step_gives_the_remaining_batches():
    full = captions_of(DataLoader(Numbers(20), batch_size=4, seed=3).epoch_batches(5))
    resumed = captions_of(DataLoader(Numbers(20), batch_size=4, seed=3).epoch_batches(5, start_step=2))
    assert resumed == full[2:], "a fresh loader with the same seed must continue exactly where the run stopped"


def test_prefetch_gives_the_same_batches_as_no_prefetch():
    with_thread = captions_of(DataLoader(Numbers(12), 5, seed=2).epoch_batches(1))
    without = captions_of(DataLoader(Numbers(12), 5, seed=2, prefetch=False).epoch_batches(1))
    assert with_thread == without


def test_prefetch_reraises_the_threads_error():
    loader = DataLoader(Numbers(10, fail_at=4), batch_size=2, shuffle=False)
    with pytest.raises(ValueError, match="example 4 is broken"):
        for _ in loader.epoch_batches(0):
            pass


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "minclip-prefetch"]


def test_prefetch_thread_stops_when_the_consumer_stops_early():
    batches = DataLoader(Numbers(100), batch_size=2).epoch_batches(0)
    next(batches)
    assert prefetch_threads(), "a prefetch thread should be running"
    batches.close()                                                      # what `break` does to a generator
    assert not prefetch_threads(), "stopping early must stop the prefetch thread"

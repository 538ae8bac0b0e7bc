"""Chapter 6, training: one step (exercise 6.3) and the ``python -m minclip.train`` CLI.

The step is checked on a micro CLIP (milliseconds); the CLI on a slice of 16
built-in images, batches of 8, a few steps: a run's files, resuming bit for
bit, a loss that turns NaN, a checkpoint write that dies half-way, CSV
training data with bad images or wrong columns, and a backend that is not there.

Run: python -m pytest tests/test_06_training.py   (exercise: --exercise 6.3)
"""
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import minclip.safetensors_io
from minclip import backend, train
from minclip.checkpoint import load_checkpoint, load_checkpoint_model, read_tensors
from minclip.model import CLIP, CLIPConfig
from minclip.optim import AdamW
from minclip.runlog import draw_plots

from conftest import GPU
from support.compare import array_equal

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_NAME = "tiny-vit-clip-seed0"                 # the CLI's default run name for these flags
SMALL_RUN = ["--train-num-samples", "16", "--batch-size", "8", "--no-eval", "--no-progress"]   # 2 steps an epoch


def micro_clip():
    """A CLIP small enough that a training step takes milliseconds."""
    return CLIP(CLIPConfig(embed_dim=16, image_resolution=16, vision_layers=1, vision_width=32,
                           vision_patch_size=8, vision_heads=2, context_length=8, vocab_size=64,
                           transformer_width=32, transformer_heads=2, transformer_layers=1))


def micro_batch(n=8):
    """n random images (n, 3, 16, 16) and n distinct token sequences ending in the end token (63)."""
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 63, size=(n, 8))
    ids[:, -1] = 63
    return rng.standard_normal((n, 3, 16, 16)).astype(np.float32), ids


def run_cli(logs, *flags):
    """``python -m minclip.train`` in this process (no interpreter start-up); returns the exit status."""
    return train.main([*SMALL_RUN, "--logs", str(logs), *flags])


def checkpoints(logs):
    return logs / RUN_NAME / "checkpoints"


# ---------------------------------------------------------------- one step (exercise 6.3)

@pytest.mark.exercise("6.3")
def test_train_step_fits_one_batch():
    model, (images, ids) = micro_clip(), micro_batch()
    optimizer = AdamW(model.parameters(), lr=3e-3)
    losses = [train.train_step(model, optimizer, images, ids) for _ in range(15)]
    assert isinstance(losses[0], float), f"train_step must return the loss as a Python float, got {type(losses[0])}"
    assert losses[-1] < 0.25, (f"15 steps on the same 8 pairs should drive the loss near 0, got {np.round(losses, 3)}: "
                               "does train_step call optimizer.zero_grad(), loss.backward() and optimizer.step()?")


@pytest.mark.exercise("6.3")
def test_train_step_clips_the_gradient_norm():
    model, (images, ids) = micro_clip(), micro_batch()
    optimizer = AdamW(model.parameters(), lr=1e-3)
    train.train_step(model, optimizer, images, ids, clip_norm=0.01)
    norm = math.sqrt(sum(float((p.grad.astype(np.float64) ** 2).sum()) for p in model.parameters()))
    assert norm <= 0.01 * (1 + 1e-4), (f"after the step the gradients should have a global norm of at most "
                                       f"--grad-clip-norm 0.01, got {norm:.4g}: call clip_grad_norm_ between "
                                       "backward() and optimizer.step()")


@pytest.mark.exercise("6.3")
def test_train_step_keeps_the_logit_scale_at_most_ln_100():
    model, (images, ids) = micro_clip(), micro_batch()
    model.logit_scale.data[...] = math.log(500)        # a temperature below 1/100
    optimizer = AdamW(model.parameters(), lr=1e-3)
    train.train_step(model, optimizer, images, ids)
    scale = float(model.logit_scale.data)
    assert scale == np.float32(train.LOGIT_SCALE_MAX), (
        f"logit_scale must be clamped to ln 100 = {train.LOGIT_SCALE_MAX:.4f} after the update (as open_clip does), "
        f"got {scale:.4f}")


# ---------------------------------------------------------------- the CLI

@pytest.fixture(scope="module")
def three_step_run(tmp_path_factory):
    """Logs of a 3-step run (one epoch of 2 steps and 1 more), made once for the tests that read or resume it."""
    logs = tmp_path_factory.mktemp("straight")
    backend.seed(0)
    assert run_cli(logs, "--max-steps", "3") == 0
    return logs


def copy_run(source, tmp_path):
    shutil.copytree(source, tmp_path / "logs")
    return tmp_path / "logs"


def test_a_short_run_leaves_metrics_checkpoints_and_a_loadable_model(three_step_run):
    run = three_step_run / RUN_NAME
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3], "one metrics.jsonl line per step"
    assert [r["epoch"] for r in records] == [0, 0, 1], "16 images in batches of 8: 2 steps an epoch"
    assert all(math.isfinite(r["loss"]) and r["lr"] > 0 for r in records), records
    assert sorted(os.listdir(run / "checkpoints")) == ["epoch_1.safetensors", "latest.safetensors"]
    assert (run / "plots" / "loss.png").is_file() and (run / "tokenizer.txt").is_file()
    assert load_checkpoint(run / "checkpoints" / "latest.safetensors")["step"] == 3
    model, tokenizer = load_checkpoint_model(run / "checkpoints" / "latest.safetensors")
    assert model.config.image_resolution == 32 and tokenizer.vocab_size == model.config.vocab_size, (
        "the checkpoint must rebuild the model and find the tokenizer trained on the captions")


def test_resume_continues_bit_identically(three_step_run, tmp_path):
    logs = tmp_path / "split"
    backend.seed(0)
    assert run_cli(logs, "--max-steps", "1") == 0                        # stops mid-epoch
    backend.seed(123)                                                    # as if in a fresh process
    assert run_cli(logs, "--max-steps", "3", "--resume", "latest") == 0  # finishes epoch 0, then 1 step of epoch 1
    straight, _ = read_tensors(checkpoints(three_step_run) / "latest.safetensors")
    resumed, _ = read_tensors(checkpoints(logs) / "latest.safetensors")
    assert straight.keys() == resumed.keys()
    different = [k for k in straight if not array_equal(straight[k], resumed[k])]
    assert not different, (f"3 steps straight and 1 + resume + 2 must give the same bits; {len(different)} arrays "
                           f"differ, first {different[:3]}. Check what the checkpoint restores: weights, AdamW "
                           "moments and step, the RNG state, and the (epoch, step) the data order restarts from")
    losses = [[json.loads(line)["loss"] for line in (logs / RUN_NAME / "metrics.jsonl").read_text().splitlines()]
              for logs in (three_step_run, logs)]
    assert losses[0] == losses[1], f"the per-step losses differ: straight {losses[0]}, resumed {losses[1]}"


def test_resume_from_a_missing_checkpoint_names_it(tmp_path, capsys):
    assert run_cli(tmp_path, "--resume", str(tmp_path / "nowhere.safetensors")) == 1
    assert "nowhere.safetensors" in capsys.readouterr().err


def test_resume_of_a_checkpoint_with_numpys_old_random_state_is_one_clear_line(tmp_path, monkeypatch, capsys):
    old_state = np.random.default_rng(0).bit_generator.state          # what checkpoints held before
    monkeypatch.setattr(backend, "get_rng_state", lambda: old_state)
    assert run_cli(tmp_path, "--max-steps", "1") == 0
    monkeypatch.undo()
    assert run_cli(tmp_path, "--max-steps", "2", "--resume", "latest") == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and "random state" in err, (
        f"expected one line saying the checkpoint's random state cannot be restored, got: {err!r}")


def feed_nan_images(monkeypatch):
    """Every training step now sees NaN images: the loss becomes NaN for real, and so do the gradients."""
    real_step = train.train_step
    monkeypatch.setattr(train, "train_step", lambda model, optimizer, images, ids, **options:
                        real_step(model, optimizer, images * np.nan, ids, **options))


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(three_step_run, tmp_path, monkeypatch, capsys):
    logs = copy_run(three_step_run, tmp_path)
    latest = checkpoints(logs) / "latest.safetensors"
    before = latest.read_bytes()
    feed_nan_images(monkeypatch)
    assert run_cli(logs, "--max-steps", "5", "--resume", "latest") == 1, "a NaN loss must end the run with status 1"
    message = capsys.readouterr().err
    assert "nan" in message and "step 3" in message and "latest.safetensors" in message, (
        f"expected one line naming the loss, the step and the last good checkpoint, got: {message!r}")
    assert latest.read_bytes() == before, "the weights of the NaN step must never overwrite the last good checkpoint"


def test_a_nan_loss_before_any_checkpoint_says_so(tmp_path, monkeypatch, capsys):
    feed_nan_images(monkeypatch)
    assert run_cli(tmp_path, "--max-steps", "2") == 1
    message = capsys.readouterr().err
    assert "step 0" in message and "no checkpoint" in message, (
        f"a NaN in the first epoch has no good checkpoint to point to; got: {message!r}")


def test_a_checkpoint_write_killed_halfway_keeps_the_old_file(three_step_run, tmp_path, monkeypatch):
    logs = copy_run(three_step_run, tmp_path)
    latest = checkpoints(logs) / "latest.safetensors"
    before = latest.read_bytes()

    def die_halfway(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(before[:len(before) // 2])              # half of a file, then the process is killed
        raise KeyboardInterrupt

    monkeypatch.setattr(minclip.safetensors_io, "save_file", die_halfway)
    with pytest.raises(KeyboardInterrupt):
        run_cli(logs, "--max-steps", "4", "--resume", "latest")           # step 4 ends epoch 2: saves
    assert latest.read_bytes() == before, "an interrupted save must leave the previous checkpoint as it was"
    assert sorted(os.listdir(checkpoints(logs))) == ["epoch_1.safetensors", "latest.safetensors"], (
        f"no half-written temporary file may stay behind: {sorted(os.listdir(checkpoints(logs)))}")


def test_the_plots_leave_matplotlibs_backend_alone(three_step_run, tmp_path):
    import matplotlib
    shutil.copy(three_step_run / RUN_NAME / "metrics.jsonl", tmp_path)
    before = matplotlib.get_backend()
    matplotlib.use("svg")                                  # stands for a notebook's inline backend
    try:
        draw_plots(tmp_path)
        assert matplotlib.get_backend() == "svg", (
            "draw_plots switched matplotlib's backend: after a training run a notebook shows no more plots")
    finally:
        matplotlib.use(before)
    assert (tmp_path / "plots" / "loss.png").is_file()


# ---------------------------------------------------------------- CSV training data

def write_pairs(folder, rows, header=("filepath", "title")):
    """A tab-separated CSV of (image file, caption) rows; names starting 'good' get a 40x40 PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, (name, _) in enumerate(rows):
        if name.startswith("good"):
            Image.new("RGB", (40, 40), ((60 * i) % 256, 120, 200)).save(folder / name)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    lines = ["\t".join(header)] + ["\t".join(row) for row in rows]
    (folder / "pairs.tsv").write_text("\n".join(lines) + "\n")
    return folder / "pairs.tsv"


CSV_RUN = ["--no-eval", "--no-progress", "--batch-size", "4", "--max-steps", "1"]


def test_a_missing_image_in_the_csv_stops_with_its_file_and_line(tmp_path, capsys):
    pairs = write_pairs(tmp_path / "data", [("good0.png", "a red one"), ("good1.png", "a blue one"),
                                            ("missing.png", "a green one"), ("good3.png", "a pink one")])
    status = train.main(["--train-data", str(pairs), "--logs", str(tmp_path / "logs"), *CSV_RUN])
    err = capsys.readouterr().err
    assert status == 1 and "Traceback" not in err, f"expected exit status 1 and one error line, got {status}: {err}"
    assert "missing.png" in err and "line 4" in err, f"the error must name the image and its CSV line: {err!r}"


def test_skip_bad_images_trains_on_the_rest_and_counts_them(tmp_path, capsys):
    rows = [("good0.png", "a red one"), ("missing.png", "a green one"), ("good2.png", "a blue one"),
            ("broken.png", "a grey one"), ("good4.png", "a pink one"), ("good5.png", "a brown one")]
    pairs = write_pairs(tmp_path / "data", rows, header=("image", "text"))
    status = train.main(["--train-data", str(pairs), "--logs", str(tmp_path / "logs"), "--skip-bad-images",
                         "--csv-img-key", "image", "--csv-caption-key", "text", "--no-eval", "--no-progress",
                         "--batch-size", "6", "--max-steps", "2"])
    out = capsys.readouterr().out
    assert status == 0, "with --skip-bad-images the run must go on"
    assert "skipped 2" in out, f"the end of the run must say how many bad images were skipped: {out!r}"


def test_a_missing_csv_column_lists_the_columns(tmp_path, capsys):
    pairs = write_pairs(tmp_path / "data", [("good0.png", "a red one")], header=("image", "caption"))
    status = train.main(["--train-data", str(pairs), "--logs", str(tmp_path / "logs"), *CSV_RUN])
    err = capsys.readouterr().err
    assert status == 1 and "'image'" in err and "'caption'" in err and "--csv-img-key" in err, (
        f"expected one error line naming the columns that exist and the flag to use, got: {err!r}")


def test_a_batch_larger_than_the_data_is_a_clear_error(tmp_path, capsys):
    assert train.main(["--train-num-samples", "16", "--batch-size", "64", "--no-eval", "--no-progress",
                       "--logs", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "16" in err and "64" in err, f"the error must give both numbers: {err!r}"


# ---------------------------------------------------------------- the backend flag

@pytest.mark.skipif(GPU, reason="this machine has a GPU, so --backend cupy works")
@pytest.mark.parametrize("module", ["minclip.train", "minclip.evaluate"])
def test_backend_cupy_without_a_gpu_is_one_clear_line(module, tmp_path):
    required = {"minclip.train": ["--logs", str(tmp_path)], "minclip.evaluate": ["--checkpoint", "unused"]}[module]
    result = subprocess.run([sys.executable, "-m", module, "--backend", "cupy", *required],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0, f"{module} --backend cupy without a GPU must fail"
    assert len(lines) == 1 and "Traceback" not in result.stderr and "cupy" in lines[0].lower(), (
        f"expected one line saying what is missing, got:\n{result.stderr}")

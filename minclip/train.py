"""Train a CLIP: ``python -m minclip.train``.

With no arguments it trains the ``tiny-vit`` preset on the built-in dataset
of coloured shapes, on the CPU, in a few minutes, then prints zero-shot
accuracy on held-out test images and on (colour, shape) combinations never
seen in training, retrieval recall, and a linear-probe baseline.

One training step, the heart of CLIP:

    images, captions -> encode both -> normalize -> logits = scale · I Tᵀ
    loss = (CE(logits, arange N) + CE(logitsᵀ, arange N)) / 2
    backward -> clip gradients -> AdamW step -> clamp the logit scale

Flags follow open_clip's names. Everything a run produces goes to
``LOGS/NAME/``: metrics.jsonl, results.jsonl, plots/, checkpoints/.
"""
import argparse
import dataclasses
import json
import math
import os
import sys
import time
import warnings

from tqdm import tqdm

from minclip import backend
from minclip.backend import xp
from minclip.checkpoint import load_checkpoint, load_checkpoint_tokenizer, save_checkpoint
from minclip.checkpoint import save as save_weights
from minclip.data import BadImageError, CsvDataset, DataLoader, ImageFolder, clip_transform, shapes
from minclip.evaluate import add_csv_arguments, builtin_sets, evaluate, format_table
from minclip.loss import clip_loss, siglip_loss
from minclip.model import CLIP, CLIPConfig
from minclip.optim import AdamW, CosineSchedule, clip_grad_norm_, param_groups_for_weight_decay
from minclip.runlog import append_jsonl, draw_plots
from minclip.tensor import Tensor, no_grad
from minclip.tokenizer import CLIPTokenizer, tokenize

LOGIT_SCALE_MAX = math.log(100)

# Training defaults per preset: (epochs, peak learning rate). The tiny presets
# are tuned so that the default run finishes in minutes on 2 CPU cores.
PRESET_SCHEDULES = {"tiny-vit": (8, 2e-3), "tiny-rn": (8, 2e-3), "ViT-B-32": (32, 5e-4), "RN50": (32, 5e-4)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m minclip.train", description=__doc__.split("\n")[0])
    data = p.add_argument_group("data")
    data.add_argument("--train-data", help="CSV/TSV of image paths and captions (default: the built-in dataset)")
    data.add_argument("--val-data", help="CSV/TSV for retrieval evaluation (default: built-in validation split)")
    data.add_argument("--zeroshot-data", help="image folder, one sub-folder per class, for zero-shot evaluation")
    add_csv_arguments(data)
    data.add_argument("--skip-bad-images", action="store_true", help="skip unreadable images instead of stopping")
    data.add_argument("--augment", action="store_true",
                      help="random resized crops of CSV training images (then --resume is not bit-identical)")
    data.add_argument("--train-num-samples", type=int, help="built-in dataset: number of training images (default 10000)")
    model = p.add_argument_group("model and optimization")
    model.add_argument("--model", default="tiny-vit", help="preset: tiny-vit, tiny-rn, ViT-B-32, RN50 (default tiny-vit)")
    model.add_argument("--backend", default="numpy", choices=["numpy", "cupy"], help="array backend (default numpy)")
    model.add_argument("--batch-size", type=int, default=128, help="images per step (default 128)")
    model.add_argument("--epochs", type=int, default=None, help="passes over the training data (default: the preset's)")
    model.add_argument("--max-steps", type=int, help="stop after this many steps in all (the schedule still spans --epochs)")
    model.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the preset's)")
    model.add_argument("--wd", type=float, default=0.1, help="AdamW weight decay, not applied to gains, biases, embeddings, logit scale (default 0.1)")
    model.add_argument("--warmup", type=int, default=None, help="linear warm-up steps (default: 5%% of the run)")
    model.add_argument("--grad-clip-norm", type=float, default=1.0, help="clip the global gradient norm (default 1.0; 0 = off)")
    model.add_argument("--seed", type=int, default=0, help="seed of weights and data order (default 0)")
    model.add_argument("--loss", default="clip", choices=["clip", "siglip"], help="contrastive loss (default clip)")
    run = p.add_argument_group("logging and checkpoints")
    run.add_argument("--logs", default="logs", help="where runs are written (default logs/)")
    run.add_argument("--name", default=None, help="run name (default: MODEL-LOSS-seedN)")
    run.add_argument("--resume", help="checkpoint to continue from, or 'latest' for this run's latest")
    run.add_argument("--no-eval", action="store_true", help="skip evaluation (for quick experiments)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def use_backend_or_exit(name):
    """Switch backend, or print the one-line reason and exit non-zero (no traceback)."""
    try:
        backend.set_backend(name)
    except backend.BackendError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


# ------------------------------------------------------------------ setup

def build_datasets(args, image_size):
    """(train, retrieval, zero-shot sets, linear-probe pair) from the flags."""
    if args.train_data:
        transform = clip_transform(image_size, train=args.augment, seed=args.seed)
        train = CsvDataset(args.train_data, transform, img_key=args.csv_img_key,
                           caption_key=args.csv_caption_key, sep=args.csv_separator,
                           skip_bad_images=args.skip_bad_images)
    else:
        train = shapes.load_split("train", image_size=image_size, n=args.train_num_samples)
    if args.no_eval:
        return train, None, None, None
    retrieval, zeroshot, probe = None, None, None
    if args.val_data:
        retrieval = CsvDataset(args.val_data, clip_transform(image_size), img_key=args.csv_img_key,
                               caption_key=args.csv_caption_key, sep=args.csv_separator,
                               skip_bad_images=args.skip_bad_images)
    if args.zeroshot_data:
        zeroshot = {"test": ImageFolder(args.zeroshot_data, clip_transform(image_size))}
    if not args.train_data:
        sets = builtin_sets(image_size)
        retrieval = retrieval or sets["retrieval"]
        zeroshot = zeroshot or sets["zeroshot"]
        probe = sets["probe"]
    return train, retrieval, zeroshot, probe


def build_tokenizer(config, captions):
    """The preset's tokenizer: OpenAI's vocabulary, or a small BPE trained on the captions."""
    if config.tokenizer == "openai":
        return CLIPTokenizer()
    with warnings.catch_warnings():  # a small caption set may run out of merges: fine
        warnings.simplefilter("ignore", UserWarning)
        return CLIPTokenizer.train(captions, vocab_size=config.vocab_size)


def build_optimizer(model, args, total_steps):
    optimizer = AdamW(param_groups_for_weight_decay(model.named_parameters(), args.wd),
                      lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    warmup = args.warmup if args.warmup is not None else max(1, total_steps // 20)
    return optimizer, CosineSchedule(optimizer, warmup, total_steps)


# ------------------------------------------------------------------- step

def contrastive_loss(model, images, ids, loss_name):
    """Forward both towers and the chosen contrastive loss."""
    outputs = model(images, ids)
    return clip_loss(*outputs) if loss_name == "clip" else siglip_loss(*outputs)


def train_step(model, optimizer, images, ids, args):
    """One step: forward, backward, clip, update, clamp the temperature. Returns the loss."""
    # BEGIN EXERCISE 6.3: one CLIP training step
    loss = contrastive_loss(model, Tensor(images), Tensor(ids), args.loss)
    optimizer.zero_grad()
    loss.backward()
    if args.grad_clip_norm:
        clip_grad_norm_(model.parameters(), args.grad_clip_norm)
    optimizer.step()
    scale = model.logit_scale.data                          # keep 1/temperature <= 100
    scale[...] = xp.minimum(scale, LOGIT_SCALE_MAX)
    return float(loss.item())
    # END EXERCISE


class NonFiniteLoss(RuntimeError):
    pass


# -------------------------------------------------------------------- run

def train(args):
    """Run training as configured by ``args``; returns the final metrics dict."""

    config = dataclasses.replace(CLIPConfig.preset(args.model), loss=args.loss)
    epochs, lr = PRESET_SCHEDULES.get(args.model.replace("/", "-"), (10, 5e-4))
    args.epochs, args.lr = args.epochs or epochs, args.lr or lr
    name = args.name or f"{args.model}-{args.loss}-seed{args.seed}"
    run_dir = os.path.join(args.logs, name)
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    os.makedirs(ckpt_dir, exist_ok=True)

    backend.seed(args.seed)
    train_set, retrieval, zeroshot, probe = build_datasets(args, config.image_resolution)
    loader = DataLoader(train_set, args.batch_size, shuffle=True, seed=args.seed)
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * args.epochs
    resume_path = os.path.join(ckpt_dir, "latest.safetensors") if args.resume == "latest" else args.resume
    if resume_path and not os.path.isfile(resume_path):
        raise FileNotFoundError(f"--resume: no checkpoint {resume_path}")
    tokenizer_path = os.path.join(run_dir, "tokenizer.txt")
    if resume_path and config.tokenizer == "trained":
        tokenizer = load_checkpoint_tokenizer(resume_path, config)   # the one the checkpoint was trained with
        tokenizer.save(tokenizer_path)
    else:
        tokenizer = build_tokenizer(config, list(train_set.captions))
        if config.tokenizer == "trained":
            tokenizer.save(tokenizer_path)
    config = dataclasses.replace(config, vocab_size=tokenizer.vocab_size)

    model = CLIP(config)
    optimizer, schedule = build_optimizer(model, args, total_steps)
    step = 0
    if resume_path:
        meta = load_checkpoint(resume_path, model, optimizer)
        step = meta["step"]
        backend.set_rng_state(meta["rng"])
        print(f"resumed from {resume_path} at step {step}")

    def save(path, epoch):
        meta = {"step": step, "epoch": epoch, "rng": backend.get_rng_state(), "config": config.to_dict(),
                "args": vars(args), "tokenizer": os.path.relpath(tokenizer_path, os.path.dirname(path))
                if config.tokenizer == "trained" else "openai"}
        save_checkpoint(path, model, optimizer, meta)

    print(f"training {args.model}: {model.num_parameters():,} parameters, {len(train_set)} pairs, "
          f"{args.epochs} epochs of {steps_per_epoch} steps, backend {backend.get_backend()}")
    last_metrics = {}
    stop_at = min(total_steps, args.max_steps or total_steps)
    progress = _progress(total=stop_at, initial=step, disable=args.no_progress)
    while step < stop_at:
        epoch, start = divmod(step, steps_per_epoch)
        model.train()
        tic = time.perf_counter()
        for images, captions in loader.epoch_batches(epoch, start_step=start):
            schedule.step(step)
            ids = tokenize(captions, config.context_length, tokenizer=tokenizer)
            loss = train_step(model, optimizer, backend.asarray(images), backend.asarray(ids), args)
            if not math.isfinite(loss):
                progress.close()
                latest = os.path.join(ckpt_dir, "latest.safetensors")
                kept = f"the last good checkpoint is {latest}" if os.path.isfile(latest) else \
                    "no checkpoint was saved before it"
                raise NonFiniteLoss(f"the loss became {loss} at step {step}; stopped, {kept}. "
                                    f"Try a lower --lr or a smaller --grad-clip-norm.")
            step += 1
            toc = time.perf_counter()
            record = {"step": step, "epoch": epoch, "loss": loss, "lr": optimizer.param_groups[0]["lr"],
                      "logit_scale": float(math.exp(model.logit_scale.item())),
                      "images_per_s": len(captions) / (toc - tic)}
            tic = toc
            append_jsonl(os.path.join(run_dir, "metrics.jsonl"), record)
            progress.update(1)
            progress.set_postfix(loss=f"{loss:.3f}", lr=f"{record['lr']:.1e}",
                                 scale=f"{record['logit_scale']:.1f}", img_s=f"{record['images_per_s']:.0f}")
            if step >= stop_at:
                break
        epoch_done = step % steps_per_epoch == 0
        if epoch_done:
            save(os.path.join(ckpt_dir, f"epoch_{step // steps_per_epoch}.safetensors"), step // steps_per_epoch)
        save(os.path.join(ckpt_dir, "latest.safetensors"), epoch + epoch_done)
        if epoch_done and zeroshot is not None:
            with no_grad():
                last_metrics = evaluate(model, tokenizer, zeroshot=zeroshot)
            append_jsonl(os.path.join(run_dir, "results.jsonl"), {"epoch": step // steps_per_epoch, **last_metrics})
            progress.write(f"epoch {step // steps_per_epoch}: " + ", ".join(
                f"{k} {100 * v:.1f}%" for k, v in last_metrics.items() if k.endswith("top1")))
        draw_plots(run_dir)
    progress.close()
    save_weights(model, os.path.join(run_dir, "model.safetensors"))   # weights only: loads in open_clip
    if getattr(train_set, "skipped", 0):
        print(f"skipped {train_set.skipped} unreadable images of {args.train_data} (--skip-bad-images)")

    if not args.no_eval and (zeroshot or retrieval or probe):
        last_metrics = evaluate(model, tokenizer, zeroshot=zeroshot, retrieval=retrieval, probe=probe)
        append_jsonl(os.path.join(run_dir, "results.jsonl"), {"epoch": "final", **last_metrics})
        print("\nfinal evaluation (zero-shot on held-out test images; 'unseen' = colour-shape pairs never "
              "seen in training):")
        print(format_table(last_metrics))
    print(f"\nrun saved in {run_dir}/ (checkpoints, metrics.jsonl, results.jsonl, plots/)")
    with open(os.path.join(run_dir, "final_metrics.json"), "w") as f:
        json.dump(last_metrics, f, indent=1)
    return last_metrics


def _progress(total, initial, disable):
    return tqdm(total=total, initial=initial, disable=disable, unit="step", dynamic_ncols=True)


def main(argv=None):
    args = parse_args(argv)
    use_backend_or_exit(args.backend)
    try:
        train(args)
    except (NonFiniteLoss, FileNotFoundError, ValueError, BadImageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

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

Data-parallel across N processes: ``mpiexec -n N python -m mpi4py -m
minclip.train ...`` (docs/distributed.md). ``--batch-size`` is then per
process; every rank takes its block of each global batch, the loss is the
global-batch loss through ``AllGatherFunction``, the gradients are averaged between
backward and clipping, and only rank 0 writes files and evaluates.
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
from minclip.cli import USER_ERRORS, add_backend_argument, add_csv_arguments, csv_dataset, fail, use_backend_or_exit
from minclip.data import DataLoader, ImageFolder, clip_transform, shapes
from minclip.distributed import (RankFailed, SingleProcess, allreduce_gradients, allreduce_mean, check_same_weights,
                                 local_clip_loss, local_siglip_loss, together, world)
from minclip.evaluate import builtin_sets, evaluate, format_table
from minclip.loss import clip_loss, siglip_loss
from minclip.model import CLIP, CLIPConfig
from minclip.nn.batchnorm import sync_batchnorm
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
    add_backend_argument(model)
    model.add_argument("--batch-size", type=int, default=128,
                       help="images per step and process (default 128; under mpiexec -n N the global batch is N times it)")
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


# ------------------------------------------------------------------ setup

def build_datasets(args, image_size):
    """(train, retrieval, zero-shot sets, linear-probe pair) from the flags."""
    if args.train_data:
        transform = clip_transform(image_size, train=args.augment, seed=args.seed)
        train = csv_dataset(args.train_data, transform, args, args.skip_bad_images)
    else:
        train = shapes.load_split("train", image_size=image_size, n=args.train_num_samples)
    if args.no_eval:
        return train, None, None, None
    retrieval, zeroshot, probe = None, None, None
    if args.val_data:
        retrieval = csv_dataset(args.val_data, clip_transform(image_size), args, args.skip_bad_images)
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


def build_optimizer(model, lr, weight_decay, warmup, total_steps):
    """AdamW with CLIP's betas and eps, and its cosine schedule (warm-up: 5% of the run unless given)."""
    optimizer = AdamW(param_groups_for_weight_decay(model.named_parameters(), weight_decay),
                      lr=lr, betas=(0.9, 0.98), eps=1e-6)
    warmup = warmup if warmup is not None else max(1, total_steps // 20)
    return optimizer, CosineSchedule(optimizer, warmup, total_steps)


@dataclasses.dataclass
class Run:
    """Everything one training run holds; ``setup`` builds it, the loop advances ``step``."""
    args: argparse.Namespace         # the flags, as given (never rewritten)
    epochs: int                      # --epochs, or the preset's
    config: CLIPConfig
    run_dir: str
    tokenizer: CLIPTokenizer
    model: CLIP
    optimizer: AdamW
    schedule: CosineSchedule
    train_set: object
    loader: DataLoader
    eval_sets: dict                  # zeroshot / retrieval / probe, as ``evaluate`` takes them
    comm: object                     # the ranks of this job (SingleProcess without mpiexec)
    step: int = 0

    @property
    def writes(self):
        """Whether this process writes files and evaluates: rank 0 only."""
        return self.comm.rank == 0

    @property
    def steps_per_epoch(self):
        return len(self.loader)

    def path(self, *parts):
        """A path inside the run's directory."""
        return os.path.join(self.run_dir, *parts)


def setup(args, comm=SingleProcess()):
    """Datasets, tokenizer, model and optimizer for ``args``; restored from ``--resume`` if given.

    Under MPI every rank runs it (it makes no collective call, so that a rank
    failing here cannot leave the others waiting; ``train`` checks the ranks
    agree afterwards). Only rank 0 writes (the run directory, the tokenizer).
    """
    config = dataclasses.replace(CLIPConfig.preset(args.model), loss=args.loss)
    default_epochs, default_lr = PRESET_SCHEDULES.get(args.model.replace("/", "-"), (10, 5e-4))
    epochs, lr = args.epochs or default_epochs, args.lr or default_lr
    run_dir = os.path.join(args.logs, args.name or f"{args.model}-{args.loss}-seed{args.seed}")
    if comm.rank == 0:
        os.makedirs(os.path.join(run_dir, "checkpoints"), exist_ok=True)
    resume = os.path.join(run_dir, "checkpoints", "latest.safetensors") if args.resume == "latest" else args.resume
    if resume and not os.path.isfile(resume):
        raise FileNotFoundError(f"--resume: no checkpoint {resume}")

    backend.seed(args.seed)
    train_set, retrieval, zeroshot, probe = build_datasets(args, config.image_resolution)
    loader = DataLoader(train_set, args.batch_size * comm.size, shuffle=True, seed=args.seed,
                        rank=comm.rank, world_size=comm.size)
    tokenizer = setup_tokenizer(config, train_set, resume, os.path.join(run_dir, "tokenizer.txt"), comm.rank == 0)
    config = dataclasses.replace(config, vocab_size=tokenizer.vocab_size)
    model = sync_batchnorm(CLIP(config), comm) if comm.size > 1 else CLIP(config)
    optimizer, schedule = build_optimizer(model, lr, args.wd, args.warmup, len(loader) * epochs)
    run = Run(args, epochs, config, run_dir, tokenizer, model, optimizer, schedule, train_set, loader,
              {"zeroshot": zeroshot, "retrieval": retrieval, "probe": probe}, comm)
    if resume:
        meta = load_checkpoint(resume, model, optimizer)
        trained_on = meta.get("world_size", 1)
        if trained_on != comm.size:
            raise ValueError(f"--resume: {resume} was trained on {trained_on} process(es), this run has "
                             f"{comm.size}; resume with mpiexec -n {trained_on} (the data order depends on it)")
        run.step = meta["step"]
        try:
            backend.set_rng_state(meta["rng"])
        except ValueError:
            raise ValueError(f"--resume: {resume} was written by an older minclip whose random state this "
                             f"version cannot restore; start a new run (or load its weights alone)") from None
        if comm.rank == 0:
            print(f"resumed from {resume} at step {run.step}")
    return run


def setup_tokenizer(config, train_set, resume, path, write=True):
    """The run's tokenizer, written to ``path`` when it is a trained one.

    On ``--resume`` a trained tokenizer is the one the checkpoint was trained
    with, not a new one: BPE training on the same captions would give the
    same merges, but a checkpoint from another run would not.
    """
    if resume and config.tokenizer == "trained":
        tokenizer = load_checkpoint_tokenizer(resume, config)
    else:
        tokenizer = build_tokenizer(config, list(train_set.captions))
    if config.tokenizer == "trained" and write:
        tokenizer.save(path)
    return tokenizer


# ------------------------------------------------------------------- step

def contrastive_loss(model, images, ids, loss_name, comm=SingleProcess()):
    """Forward both towers and the chosen contrastive loss (across ranks: this rank's share of it)."""
    outputs = model(images, ids)
    if comm.size > 1:
        return (local_clip_loss if loss_name == "clip" else local_siglip_loss)(*outputs, comm)
    return clip_loss(*outputs) if loss_name == "clip" else siglip_loss(*outputs)


def train_step(model, optimizer, images, ids, loss_name="clip", clip_norm=1.0, comm=SingleProcess(),
               with_scale=False):
    """One step: forward, backward, clip, update, clamp the temperature. Returns the loss.

    ``loss_name`` is "clip" or "siglip"; ``clip_norm`` the largest global
    gradient norm (0 or None: no clipping). ``comm``: the ranks of a
    data-parallel job, whose gradients are averaged before clipping (the
    loss returned is then this rank's). With ``with_scale`` it returns
    (loss, logit scale), read from the device in one copy (the training loop:
    each device->host copy waits for the GPU to finish).
    """
    # BEGIN EXERCISE 6.3: one CLIP training step
    loss = contrastive_loss(model, Tensor(images), Tensor(ids), loss_name, comm)
    optimizer.zero_grad()
    loss.backward()
    allreduce_gradients(model.parameters(), comm)          # data parallel: the mean over ranks (else nothing)
    if clip_norm:
        clip_grad_norm_(model.parameters(), clip_norm)
    optimizer.step()
    scale = model.logit_scale.data                          # keep 1/temperature <= 100
    scale[...] = xp.minimum(scale, LOGIT_SCALE_MAX)
    loss_value, scale_value = backend.to_numpy(xp.stack([loss.data.reshape(()), scale.reshape(())]))  # one copy
    return (float(loss_value), float(scale_value)) if with_scale else float(loss_value)
    # END EXERCISE


class NonFiniteLoss(RuntimeError):
    pass


# -------------------------------------------------------------------- run

def train(args, comm=SingleProcess()):
    """Run training as configured by ``args``; returns the final metrics dict (rank 0's).

    Data-parallel training (``comm`` of N ranks) hooks in at four places:
    ``setup`` gives each rank its block of every global batch, ``train_step``
    averages the gradients between backward and clipping, the loss that is
    logged and stopped on is the mean over ranks, and only rank 0 writes and
    evaluates (``log_step``, ``end_of_epoch``, ``finish``) while the others
    wait, so that N processes do not write one file N times.
    """
    run = together(lambda: setup(args, comm), USER_ERRORS, comm)
    together(lambda: check_ranks_agree(run), USER_ERRORS, comm)
    if run.writes:
        print(f"training {args.model}: {run.model.num_parameters():,} parameters, {len(run.train_set)} pairs, "
              f"{run.epochs} epochs of {run.steps_per_epoch} steps, global batch {run.loader.batch_size} "
              f"({comm.size} process(es) x {args.batch_size}), backend {backend.get_backend()}")
    total_steps = run.steps_per_epoch * run.epochs
    stop_at = min(total_steps, args.max_steps or total_steps)
    metrics = {}
    with tqdm(total=stop_at, initial=run.step, disable=args.no_progress or not run.writes, unit="step",
              dynamic_ncols=True) as progress:
        while run.step < stop_at:
            epoch, start = divmod(run.step, run.steps_per_epoch)
            run.model.train()
            tic = time.perf_counter()
            for images, captions in run.loader.epoch_batches(epoch, start_step=start):
                run.schedule.step(run.step)
                ids = tokenize(captions, run.config.context_length, tokenizer=run.tokenizer)
                loss, scale = train_step(run.model, run.optimizer, backend.asarray(images), backend.asarray(ids),
                                         loss_name=args.loss, clip_norm=args.grad_clip_norm, comm=comm,
                                         with_scale=True)
                loss = allreduce_mean(loss, comm)              # the global batch's loss, the same on every rank
                check_finite(loss, run)
                run.step += 1
                toc = time.perf_counter()
                if run.writes:
                    log_step(run, progress, epoch, loss, scale, images_per_s=run.loader.batch_size / (toc - tic))
                tic = toc
                if run.step >= stop_at:
                    break
            metrics = on_rank_zero(run, lambda: end_of_epoch(run, progress, epoch)) or metrics
    return on_rank_zero(run, lambda: finish(run, metrics))


def check_ranks_agree(run):
    """Raise ValueError unless every rank has the same dataset size and the same initial weights."""
    sizes = run.comm.allgather_objects(len(run.train_set))
    if len(set(sizes)) > 1:
        raise ValueError(f"the ranks see training sets of different sizes {sizes}: every rank must read the "
                         f"same --train-data (one global order is cut into per-rank blocks)")
    check_same_weights(run.model, run.comm)


def on_rank_zero(run, fn):
    """``fn()`` on rank 0 (files, evaluation) while the other ranks wait; returns its result on rank 0.

    A failure on rank 0 ends the job (``python -m mpi4py`` aborts all ranks
    when one exits with an error), so the others never wait forever.
    """
    result = fn() if run.writes else None
    run.comm.barrier()
    return result


def check_finite(loss, run):
    """Stop the run with one clear message when the loss is NaN or infinite."""
    if math.isfinite(loss):
        return
    latest = run.path("checkpoints", "latest.safetensors")
    kept = f"the last good checkpoint is {latest}" if os.path.isfile(latest) else "no checkpoint was saved before it"
    raise NonFiniteLoss(f"the loss became {loss} at step {run.step}; stopped, {kept}. "
                        f"Try a lower --lr or a smaller --grad-clip-norm.")


def log_step(run, progress, epoch, loss, log_scale, images_per_s):
    """One line of metrics.jsonl, and the progress bar."""
    record = {"step": run.step, "epoch": epoch, "loss": loss, "lr": run.optimizer.param_groups[0]["lr"],
              "logit_scale": math.exp(log_scale), "images_per_s": images_per_s}
    append_jsonl(run.path("metrics.jsonl"), record)
    progress.update(1)
    progress.set_postfix(loss=f"{loss:.3f}", lr=f"{record['lr']:.1e}", scale=f"{record['logit_scale']:.1f}",
                         img_s=f"{images_per_s:.0f}")


def end_of_epoch(run, progress, epoch):
    """Checkpoints, and at a finished epoch the zero-shot metrics (returned; None if none were measured).

    It also runs when ``--max-steps`` stops the run mid-epoch: then only
    ``latest`` is written, with the epoch it is in.
    """
    epoch_done = run.step % run.steps_per_epoch == 0
    finished = run.step // run.steps_per_epoch
    if epoch_done:
        save_run(run, run.path("checkpoints", f"epoch_{finished}.safetensors"), finished)
    save_run(run, run.path("checkpoints", "latest.safetensors"), epoch + epoch_done)
    metrics = None
    if epoch_done and run.eval_sets["zeroshot"] is not None:
        with no_grad():
            metrics = evaluate(run.model, run.tokenizer, zeroshot=run.eval_sets["zeroshot"])
        append_jsonl(run.path("results.jsonl"), {"epoch": finished, **metrics})
        progress.write(f"epoch {finished}: " + ", ".join(
            f"{k} {100 * v:.1f}%" for k, v in metrics.items() if k.endswith("top1")))
    draw_plots(run.run_dir)
    return metrics


def save_run(run, path, epoch):
    """A checkpoint from which ``--resume`` continues bit for bit: weights, optimizer, step, RNG, config."""
    tokenizer = os.path.relpath(run.path("tokenizer.txt"), os.path.dirname(path)) \
        if run.config.tokenizer == "trained" else "openai"
    meta = {"step": run.step, "epoch": epoch, "rng": backend.get_rng_state(), "config": run.config.to_dict(),
            "world_size": run.comm.size,
            "args": {**vars(run.args), "epochs": run.epochs, "lr": run.optimizer.defaults["lr"]},
            "tokenizer": tokenizer}
    save_checkpoint(path, run.model, run.optimizer, meta)


def finish(run, metrics):
    """Write the weights-only file, run the final evaluation and write final_metrics.json; returns the metrics."""
    args = run.args
    save_weights(run.model, run.path("model.safetensors"))   # weights only: loads in open_clip
    if getattr(run.train_set, "skipped", 0):
        print(f"skipped {run.train_set.skipped} unreadable images of {args.train_data} (--skip-bad-images)")
    if not args.no_eval and any(value is not None for value in run.eval_sets.values()):
        metrics = evaluate(run.model, run.tokenizer, **run.eval_sets)
        append_jsonl(run.path("results.jsonl"), {"epoch": "final", **metrics})
        print("\nfinal evaluation (zero-shot on held-out test images; 'unseen' = colour-shape pairs never "
              "seen in training):")
        print(format_table(metrics))
    print(f"\nrun saved in {run.run_dir}/ (checkpoints, metrics.jsonl, results.jsonl, plots/)")
    with open(run.path("final_metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    return metrics


def main(argv=None):
    args = parse_args(argv)
    use_backend_or_exit(args.backend)
    comm = world()
    try:
        train(args, comm)
    except (RankFailed, NonFiniteLoss) as error:    # every rank raised it together: rank 0 says it once
        return fail(error) if comm.rank == 0 else 1
    except USER_ERRORS as error:                     # one rank alone (mid-run): its exit ends the job
        return fail(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())

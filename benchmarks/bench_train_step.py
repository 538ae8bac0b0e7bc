"""Training-step speed and memory: minclip against PyTorch on the CPU.

    python benchmarks/bench_train_step.py [--reps 3] [--no-memory] [--profile] [CASE ...]

One step is what ``minclip.train.train_step`` does: forward both towers,
the CLIP loss, backward, clip the gradient norm to 1, an AdamW update (two
parameter groups, open_clip's weight-decay rule) and the clamp of the logit
scale. PyTorch does the same on OpenAI's model (``torch_clip.py``) holding the
same weights, with ``torch.optim.AdamW`` and ``clip_grad_norm_``. Before any
timing, one step on each side must give the same loss and the same gradients.

Cases (batch 128, float32): the "tiny-vit" and "tiny-rn" presets, and a
larger ViT ("vit-256x6": both towers 256 wide and 6 deep) to show how the gap
moves with size. Reported: median of ``--reps`` alternating steps after one
warm-up step each, the ratio minclip / PyTorch, and the peak memory of a step
of each (a fresh process per library, see README.md). ``--profile`` adds
minclip's per-op table of one step. Results: benchmarks/results/train_step.json.
"""
import sys

import common  # first: it fixes the thread counts before NumPy loads
import numpy as np
import torch
import torch_clip

from minclip import backend
from minclip.model import CLIP, CLIPConfig
from minclip.optim import AdamW, param_groups_for_weight_decay
from minclip.train import LOGIT_SCALE_MAX, train_step

BATCH = 128
LR, BETAS, EPS, WEIGHT_DECAY, MAX_NORM = 5e-4, (0.9, 0.98), 1e-6, 0.1, 1.0
WIDER = dict(vision_width=256, vision_layers=6, transformer_width=256, transformer_layers=6)
CASES = {"tiny-vit": ("tiny-vit", {}), "tiny-rn": ("tiny-rn", {}), "vit-256x6": ("tiny-vit", WIDER)}
# The loss must agree to 1e-4. Gradients to 5e-2 of each one's largest entry, or of 1e-5 of the
# model's largest gradient for one that is about zero (the attention pool's key bias gets none in
# theory): a wrong computation is off by O(1), while float32 loses digits to cancellation in the
# ResNet's batch norms, where PyTorch's own float32 gradients differ from float64 ones by up to 2.5e-2.
GRAD_TOLERANCE, GRAD_FLOOR = 5e-2, 1e-5


def config_for(case, **overrides):
    preset, changes = CASES[case] if case in CASES else (case, {})
    return CLIPConfig.preset(preset, **{**changes, **overrides})


def make_batch(config, batch, seed=0):
    """Random images (B, 3, R, R) and token ids (B, T) whose end-of-text token is the largest id."""
    rng = np.random.default_rng(seed)
    R, T, V = config.image_resolution, config.context_length, config.vocab_size
    images = rng.standard_normal((batch, 3, R, R), dtype=np.float32)
    ids = rng.integers(1, V - 1, (batch, T))
    lengths = rng.integers(2, T, batch)
    for row, n in enumerate(lengths):
        ids[row, n] = V - 1
        ids[row, n + 1:] = 0
    return images, ids


def minclip_trainer(model, images, ids):
    """A callable doing one minclip training step; returns the loss."""
    optimizer = AdamW(param_groups_for_weight_decay(model.named_parameters(), WEIGHT_DECAY),
                      lr=LR, betas=BETAS, eps=EPS)
    return lambda: train_step(model, optimizer, images, ids, loss_name="clip", clip_norm=MAX_NORM)


def torch_step(module, loss_of, param_groups, logit_scale=None):
    """One PyTorch training step of ``module`` in minclip's order: the loss ``loss_of()``,
    zero_grad, backward, clip, AdamW, and the clamp of ``logit_scale`` if there is one."""
    optimizer = torch.optim.AdamW(param_groups, lr=LR, betas=BETAS, eps=EPS)

    def step():
        loss = loss_of()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), MAX_NORM)
        optimizer.step()
        if logit_scale is not None:
            with torch.no_grad():
                logit_scale.clamp_(max=LOGIT_SCALE_MAX)
        return loss.item()
    return step


def torch_trainer(twin, images, ids, device="cpu"):
    """The same step in PyTorch on OpenAI's model (``torch_clip.py``)."""
    images, ids = torch.from_numpy(images).to(device), torch.from_numpy(ids).to(device)
    groups = param_groups_for_weight_decay(twin.named_parameters(), WEIGHT_DECAY)
    return torch_step(twin, lambda: torch_clip.clip_loss(*twin(images, ids)), groups, twin.logit_scale)


def build(config, batch, library="both"):
    """(minclip step, torch step) over the same weights and batch; a side not asked for is None."""
    backend.seed(0)
    model = CLIP(config)
    images, ids = make_batch(config, batch)
    twin = torch_clip.from_minclip(model) if library in ("both", "torch") else None
    ours = minclip_trainer(model, images, ids) if library in ("both", "minclip") else None
    theirs = torch_trainer(twin, images, ids) if twin is not None else None
    return model, twin, ours, theirs


def verified_first_step(model, twin, ours, theirs, their_gradients=None):
    """Run one step on each side and check that both computed the same loss and gradients.

    ``their_gradients(twin)``: the reference's gradients under minclip's parameter names,
    for a reference that names its parameters differently (default: the same names).
    """
    check = {"loss": common.check_close("loss", ours(), theirs())}
    expected = (their_gradients(twin) if their_gradients else
                {name: p.grad.numpy() for name, p in twin.named_parameters()})
    floor = GRAD_FLOOR * max(np.abs(g).max() for g in expected.values())
    check["gradients"] = max(common.check_close(f"gradient of {name}", p.grad, expected[name], GRAD_TOLERANCE, floor)
                             for name, p in model.named_parameters())
    return {k: float(f"{v:.2e}") for k, v in check.items()}


def run(case, reps, batch=BATCH, memory=True, with_profile=False, **overrides):
    """Time (and measure, verify, profile) one case; returns its result dict."""
    config = config_for(case, **overrides)
    model, twin, ours, theirs = build(config, batch)
    result = {"case": case, "batch": batch, "parameters": model.num_parameters(),
              "config": config.to_dict(), "check": verified_first_step(model, twin, ours, theirs)}
    return common.timed_case(result, ours, theirs, reps, __file__, memory, with_profile)


def memory_child(case, library):
    """In a fresh process: build one side, then measure the peak memory of its first step."""
    _, _, ours, theirs = build(config_for(case), BATCH, library)
    common.measure_step_memory(ours if library == "minclip" else theirs, library)


def main():
    child = common.memory_child_args()
    if child:
        return memory_child(*child)
    reps = common.parse_reps(3)
    cases = [a for a in sys.argv[1:] if a in CASES] or list(CASES)
    results = []
    print(f"training step, batch {BATCH}, float32, median of {reps}; {common.threads_text()}")
    print(common.table_header(memory="--no-memory" not in sys.argv))
    for case in cases:
        result = run(case, reps, memory="--no-memory" not in sys.argv, with_profile="--profile" in sys.argv)
        results.append(result)
        print(common.format_row(f"{case} ({result['parameters'] / 1e6:.1f}M params)", result), flush=True)
        if "profile" in result:
            print(common.format_profile(result["profile"]))
    common.write_results("train_step", {"results": results})


if __name__ == "__main__":
    main()

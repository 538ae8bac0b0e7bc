"""The parts of a training step one by one: minclip against PyTorch on the CPU.

    python benchmarks/bench_components.py [--reps 5]

Each case is one forward and backward (or one update) on the same data on
both sides, float32:

* the layers of bench_layers.py: a ResNet 3×3 convolution, the ViT patch
  embedding, batch norm, multi-head self-attention, layer norm;
* softmax over attention scores, and cross-entropy over a (4096, 1024) batch of logits;
* the backward of the 49,408 × 512 token embedding for 64 captions of 77
  tokens (a scatter-add into a dense gradient, as PyTorch's default);
* the matrix products of the ViT step's Linear layers (8320 tokens: q/k/v,
  output, MLP in and out; forward, dx and dW), the floor under its ratio;
* one AdamW step and one gradient-norm clipping over the 9.9M parameters of
  the 256-wide ViT (bench_train_step.py's "vit-256x6").

The new cases check that both sides give the same result before timing.
Reported: median of ``--reps`` alternating runs after one warm-up each.
Results: benchmarks/results/components.json.
"""
import common  # first: it fixes the thread counts before NumPy loads
import bench_layers
import numpy as np
import torch
from bench_train_step import config_for

from minclip import Tensor, backend
from minclip import functional as F
from minclip.model import CLIP
from minclip.optim import AdamW, clip_grad_norm_


def forward_backward(ours_fn, theirs_fn, *inputs, differentiate=(0,)):
    """(minclip step, torch step): ``fn(*inputs)`` then backward with a fixed random upstream
    gradient, into the inputs listed in ``differentiate``. Checks forward and gradients first."""
    ours_in = [Tensor(x, requires_grad=i in differentiate) for i, x in enumerate(inputs)]
    theirs_in = [torch.from_numpy(x).requires_grad_(i in differentiate) if x.dtype.kind == "f"
                 else torch.from_numpy(x) for i, x in enumerate(inputs)]
    out_shape = ours_fn(*ours_in).shape
    upstream = np.asarray(np.random.default_rng(1).standard_normal(out_shape, dtype=np.float32))

    def ours():
        out = ours_fn(*ours_in)
        out.backward(upstream)
        return out.numpy()

    def theirs():
        out = theirs_fn(*theirs_in)
        out.backward(torch.from_numpy(upstream).reshape(out.shape))
        return out.detach().numpy()

    common.check_close("forward", ours(), theirs())
    for i in differentiate:
        common.check_close(f"gradient of input {i}", ours_in[i].grad, theirs_in[i].grad.numpy())
    return ours, theirs


def softmax_case():
    scores = np.random.default_rng(0).standard_normal((64, 8, 77, 77), dtype=np.float32)
    return forward_backward(lambda x: F.softmax(x, axis=-1), lambda x: torch.softmax(x, dim=-1), scores)


def cross_entropy_case():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((4096, 1024), dtype=np.float32)
    targets = rng.integers(0, 1024, 4096)
    return forward_backward(F.cross_entropy, torch.nn.functional.cross_entropy, logits, targets)


def embedding_case():
    rng = np.random.default_rng(0)
    table = rng.standard_normal((49408, 512), dtype=np.float32)
    ids = rng.integers(0, 49408, (64, 77))
    return forward_backward(F.embedding, lambda w, i: torch.nn.functional.embedding(i, w), table, ids)


def linear_products_case():
    """The Linear layers of the ViT step's vision tower (8320 tokens, width 256): q/k/v, output,
    MLP in and out, forward and backward into x and W: its twelve matrix products, no bias."""
    rng = np.random.default_rng(0)
    steps = [forward_backward(F.linear, torch.nn.functional.linear,
                              rng.standard_normal((8320, n_in), dtype=np.float32),
                              rng.standard_normal((n_out, n_in), dtype=np.float32) * np.float32(n_in ** -0.5),
                              differentiate=(0, 1))
             for n_in, n_out in [(256, 768), (256, 256), (256, 1024), (1024, 256)]]
    return (lambda: [ours() for ours, _ in steps]), (lambda: [theirs() for _, theirs in steps])


def parameter_pairs():
    """The vit-256x6 parameters with fixed random gradients, as minclip Parameters and torch tensors."""
    backend.seed(0)
    ours = CLIP(config_for("vit-256x6")).parameters()
    rng = np.random.default_rng(0)
    theirs = []
    for p in ours:
        p.grad = rng.standard_normal(p.shape, dtype=np.float32) * np.float32(1e-3)
        twin = torch.tensor(p.data).requires_grad_()
        twin.grad = torch.tensor(p.grad)
        theirs.append(twin)
    return ours, theirs


def adamw_case():
    ours_params, theirs_params = parameter_pairs()
    ours_opt = AdamW(ours_params, lr=1e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.1)
    theirs_opt = torch.optim.AdamW(theirs_params, lr=1e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.1)
    ours_opt.step(), theirs_opt.step()
    for a, b in zip(ours_params, theirs_params):
        common.check_close("parameter after one AdamW step", a.data, b.detach().numpy())
    return ours_opt.step, theirs_opt.step


def clipping_case():
    ours_params, theirs_params = parameter_pairs()
    max_norm = 1e9   # measures the norm (the costly part) without shrinking the gradients rep after rep
    norms = clip_grad_norm_(ours_params, max_norm), torch.nn.utils.clip_grad_norm_(theirs_params, max_norm).item()
    common.check_close("global gradient norm", *norms)
    return (lambda: clip_grad_norm_(ours_params, max_norm),
            lambda: torch.nn.utils.clip_grad_norm_(theirs_params, max_norm))


CASES = {
    "softmax": ("softmax over scores (64, 8, 77, 77), forward + backward", softmax_case),
    "cross-entropy": ("cross_entropy, logits (4096, 1024), forward + backward", cross_entropy_case),
    "embedding backward": ("Embedding(49408, 512), ids (64, 77), forward + backward", embedding_case),
    "Linear products": ("linear at the ViT step's 4 shapes, x (8320, 256 or 1024), forward + backward",
                        linear_products_case),
    "AdamW step": ("AdamW over 9.9M parameters (vit-256x6), one step", adamw_case),
    "clip_grad_norm_": ("gradient norm over 9.9M parameters (vit-256x6)", clipping_case),
}


def all_cases():
    """(name, description, minclip step, torch step) for every case, the layers' first."""
    yield from bench_layers.cases()
    for name, (description, make) in CASES.items():
        yield (name, description, *make())


def main():
    reps = common.parse_reps(5)
    print(f"components, float32, median of {reps}; {common.threads_text()}")
    print(common.table_header(width=20) + "   what")
    results = []
    for name, description, ours, theirs in all_cases():
        result = {"case": name, "description": description, **common.compare(ours, theirs, reps)}
        results.append(result)
        print(common.format_row(name, result, width=20) + f"   {description}", flush=True)
    common.write_results("components", {"reps": reps, "results": results})


if __name__ == "__main__":
    main()

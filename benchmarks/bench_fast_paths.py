"""What each NumPy fast path saves: the fast path against the plain formula beside it, and PyTorch.

    python benchmarks/bench_fast_paths.py [--reps 7]

Several ops take a fast path on large NumPy arrays (``minclip.blocked``:
cache-sized row blocks spread over threads) beside their plain formula, the
one the course asks for; ``backend.plain_paths()`` turns the fast paths off.
Each case runs one op, forward and backward, at the size it has in the
"vit-256 step" of bench_reference.py (a 256-wide ViT at batch 128: 8320
tokens) or, for the convolutions, in the ResNet cases, three ways: fast,
plain, and PyTorch's own op. The plain and PyTorch results are checked
against the fast one first. Reported: medians of
``--reps`` alternating calls and their ratios. Results:
benchmarks/results/fast_paths.json.
"""
import common  # first: it fixes the thread counts before NumPy loads
import numpy as np
import torch

from minclip import Tensor, backend
from minclip import functional as F
from minclip.model import CLIP
from minclip.optim import AdamW
from bench_reference import config_of

TOKENS, WIDTH, HEADS = 8320, 256, 4


def op_case(ours_fn, theirs_fn, shapes, seed=0):
    """(fast step, plain step, torch step) of ``fn(*inputs)`` and its backward into every input."""
    rng = np.random.default_rng(seed)
    inputs = [rng.standard_normal(s, dtype=np.float32) for s in shapes]
    upstream = rng.standard_normal(ours_fn(*[Tensor(x) for x in inputs]).shape, dtype=np.float32)

    def ours():
        tensors = [Tensor(x, requires_grad=True) for x in inputs]
        out = ours_fn(*tensors)
        out.backward(upstream)
        return [out.data] + [t.grad for t in tensors]

    def plain():
        with backend.plain_paths():
            return ours()

    def theirs():
        tensors = [torch.from_numpy(x).requires_grad_() for x in inputs]
        out = theirs_fn(*tensors)
        out.backward(torch.from_numpy(upstream))
        return [out.detach().numpy()] + [t.grad.numpy() for t in tensors]

    for what, results in (("plain path", plain()), ("torch", theirs())):
        for i, (a, b) in enumerate(zip(ours(), results)):
            common.check_close(f"{what}, result {i}", a, b)
    return ours, plain, theirs


def attention_case():
    shape = (TOKENS // 65, HEADS, 65, WIDTH // HEADS)                  # (B, H, T, d), T = 64 patches + class token
    return op_case(F.scaled_dot_product_attention, torch.nn.functional.scaled_dot_product_attention, [shape] * 3)


def adamw_case():
    """One AdamW step over the parameters of the vit-256 step's model, with fixed gradients."""
    backend.seed(0)
    params = CLIP(config_of("vit-256 step")).parameters()
    rng = np.random.default_rng(0)
    for p in params:
        p.grad = rng.standard_normal(p.shape, dtype=np.float32) * np.float32(1e-3)
    theirs = [torch.tensor(p.data).requires_grad_() for p in params]
    for t, p in zip(theirs, params):
        t.grad = torch.tensor(p.grad)
    ours_opt = AdamW(params, lr=1e-3, weight_decay=0.1)
    theirs_opt = torch.optim.AdamW(theirs, lr=1e-3, weight_decay=0.1)

    def plain():
        with backend.plain_paths():
            ours_opt.step()
    ours_opt.step(), theirs_opt.step()
    for a, b in zip(params, theirs):
        common.check_close("parameter after one AdamW step", a.data, b.detach().numpy())
    return ours_opt.step, plain, theirs_opt.step


def batch_norm_in_training(fn):
    """fn(x, weight, bias) in training mode, on fresh running statistics at every call."""
    def run(x, weight, bias):
        lib = np if isinstance(x, Tensor) else torch
        running = (lib.zeros(weight.shape[0], dtype=lib.float32), lib.ones(weight.shape[0], dtype=lib.float32))
        return fn(x, *running, weight, bias, training=True)
    return run


CASES = {
    "QuickGELU": ("quick_gelu on (8320, 1024): the MLP's hidden layer",
                  lambda: op_case(F.quick_gelu, lambda x: x * torch.sigmoid(1.702 * x), [(TOKENS, 4 * WIDTH)])),
    "layer norm": ("layer_norm on (8320, 256)",
                   lambda: op_case(F.layer_norm, lambda x, w, b: torch.nn.functional.layer_norm(x, (WIDTH,), w, b),
                                   [(TOKENS, WIDTH), (WIDTH,), (WIDTH,)])),
    "attention": ("scaled_dot_product_attention, q, k, v (128, 4, 65, 64)", attention_case),
    "AdamW step": ("AdamW over the vit-256 step's parameters", adamw_case),
    "conv 3x3": ("conv2d 3×3, x (64, 64, 16, 16): the rn tower step's layer2",
                 lambda: op_case(lambda x, w: F.conv2d(x, w, padding=1),
                                 lambda x, w: torch.nn.functional.conv2d(x, w, padding=1),
                                 [(64, 64, 16, 16), (64, 64, 3, 3)])),
    "batch norm": ("batch_norm in training, x (64, 128, 16, 16): the rn tower step's layer1 output",
                   lambda: op_case(batch_norm_in_training(F.batch_norm), batch_norm_in_training(
                       lambda x, rm, rv, w, b, training: torch.nn.functional.batch_norm(x, rm, rv, w, b, training)),
                       [(64, 128, 16, 16), (128,), (128,)])),
    "conv 1x1": ("conv2d 1×1, x (8, 64, 56, 56) to 256 channels: RN50's layer1",
                 lambda: op_case(F.conv2d, torch.nn.functional.conv2d, [(8, 64, 56, 56), (256, 64, 1, 1)])),
}


def main():
    reps = common.parse_reps(7)
    print(f"fast paths against the plain formulas and PyTorch, float32, median of {reps}; {common.threads_text()}")
    print(f"{'case':<12}{'fast ms':>10}{'plain ms':>10}{'torch ms':>10}{'fast/plain':>12}{'fast/torch':>12}   what")
    results = []
    for name, (description, make) in CASES.items():
        fast, plain, theirs = make()
        against_plain, against_torch = common.compare(fast, plain, reps), common.compare(fast, theirs, reps)
        result = {"case": name, "description": description, "fast_ms": against_plain["minclip_ms"],
                  "plain_ms": against_plain["torch_ms"], "torch_ms": against_torch["torch_ms"],
                  "fast_over_plain": against_plain["ratio"], "fast_over_torch": against_torch["ratio"]}
        results.append(result)
        print(f"{name:<12}{result['fast_ms']:>10.1f}{result['plain_ms']:>10.1f}{result['torch_ms']:>10.1f}"
              f"{result['fast_over_plain']:>12.2f}{result['fast_over_torch']:>12.2f}   {description}", flush=True)
    common.write_results("fast_paths", {"reps": reps, "results": results})


if __name__ == "__main__":
    main()

"""Layer speed: forward + backward of minclip's layers against PyTorch on the CPU.

    python benchmarks/bench_layers.py [--reps 15] [--threads N]

Each case runs one forward and one backward pass (float32) through a minclip
layer and through its ``torch.nn`` twin with the same weights, both libraries
on the same number of threads: every core by default, or ``--threads N``
(which sets NumPy's BLAS threads through OPENBLAS_NUM_THREADS & co. before
NumPy is imported; one thread gives steadier numbers on a busy machine,
where idle BLAS threads spin). Reported: the median of
``--reps`` timed runs after two warm-up runs, the two libraries alternating
run by run so that any background load hits both alike; the ratio is
minclip / PyTorch (below 1: minclip is faster); the fastest run of each is
kept too, as a hint of how much background load there was. The table is
printed and written to benchmarks/results/layers.json (layers_1thread.json
for ``--threads 1``) with the machine description, including the load
average.

Cases: a ResNet-like 3×3 convolution, the ViT's patch embedding (weight
gradient only, as in training: images need no gradient), batch norm, a
ViT-like multi-head self-attention block and layer norm.
"""
import json
import os
import platform
import statistics
import sys
import time

THREADS = int(sys.argv[sys.argv.index("--threads") + 1]) if "--threads" in sys.argv else os.cpu_count()
for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[variable] = str(THREADS)                 # before NumPy loads its BLAS

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from minclip import nn  # noqa: E402
from minclip.tensor import Tensor  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                       "layers.json" if THREADS == os.cpu_count() else f"layers_{THREADS}thread.json")


def twins(layer, torch_layer):
    """The torch layer with the minclip layer's parameters and buffers."""
    torch_layer.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in layer.state_dict().items()})
    return torch_layer


def step_functions(layer, torch_layer, shape, input_grad=True, call=None):
    """(minclip step, torch step): each one forward and backward with a fixed upstream gradient."""
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    ours_x, theirs_x = Tensor(x, requires_grad=input_grad), torch.from_numpy(x).requires_grad_(input_grad)
    call = call or (lambda module, inputs: module(inputs))
    upstream = np.ones(call(layer, ours_x).shape, dtype=np.float32)
    upstream_torch = torch.from_numpy(upstream)

    def ours():
        call(layer, ours_x).backward(upstream)

    def theirs():
        call(torch_layer, theirs_x).backward(upstream_torch)
    return ours, theirs


def attention_call(module, x):
    if isinstance(module, torch.nn.Module):
        return module(x, x, x, need_weights=False)[0]
    return module(x)[0]


def cases():
    """(name, description, minclip step, torch step)."""
    conv = nn.Conv2d(64, 64, 3, padding=1, bias=False)
    yield ("conv 3×3", "Conv2d(64→64, k=3, padding=1), x (32, 64, 32, 32)",
           *step_functions(conv, twins(conv, torch.nn.Conv2d(64, 64, 3, padding=1, bias=False)), (32, 64, 32, 32)))
    patch = nn.Conv2d(3, 768, 32, stride=32, bias=False)
    yield ("conv patch 32", "Conv2d(3→768, k=32, stride=32), x (64, 3, 224, 224), weight grad only",
           *step_functions(patch, twins(patch, torch.nn.Conv2d(3, 768, 32, stride=32, bias=False)),
                           (64, 3, 224, 224), input_grad=False))
    bn = nn.BatchNorm2d(64)
    yield ("batch norm", "BatchNorm2d(64) training, x (32, 64, 32, 32)",
           *step_functions(bn, twins(bn, torch.nn.BatchNorm2d(64)), (32, 64, 32, 32)))
    attention = nn.MultiheadAttention(256, 4)
    yield ("attention", "MultiheadAttention(256, 4 heads) self-attention, x (64, 50, 256)",
           *step_functions(attention, twins(attention, torch.nn.MultiheadAttention(256, 4, batch_first=True)),
                           (64, 50, 256), call=attention_call))
    norm = nn.LayerNorm(256)
    yield ("layer norm", "LayerNorm(256), x (64, 50, 256)",
           *step_functions(norm, twins(norm, torch.nn.LayerNorm(256)), (64, 50, 256)))


# A pause before each timed call. Both libraries' worker threads keep spinning for a while
# after a call returns (PyTorch's OpenMP threads for milliseconds), and a call of the other
# library that starts meanwhile shares the cores with them. Measured on 2 cores, alternating
# a (8320, 256) @ (256, 256) product of each: NumPy's took 10.4 ms right after PyTorch's and
# 7.1 ms after a 20 ms pause (PyTorch's: 5.2 and 6.1 ms). A program that uses one library
# never pays this, so the pause keeps it out of the ratios.
PAUSE_S = 0.02


def measure(ours, theirs, reps, warmup=2):
    """Seconds per step of each, alternating the two: {"minclip": [...], "torch": [...]}."""
    for _ in range(warmup):
        ours(), theirs()
    times = {"minclip": [], "torch": []}
    for _ in range(reps):
        for name, step in (("minclip", ours), ("torch", theirs)):
            time.sleep(PAUSE_S)
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return times


def machine():
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "threads": THREADS, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
            "load_average_1min": os.getloadavg()[0]}


def main():
    reps = int(sys.argv[sys.argv.index("--reps") + 1]) if "--reps" in sys.argv else 15
    torch.set_num_threads(THREADS)
    rows = []
    print(f"forward + backward, float32, median of {reps}; NumPy and torch on {THREADS} thread(s)")
    print(f"{'case':<15}{'minclip ms':>12}{'torch ms':>10}{'ratio':>8}{'fastest':>16}   shape")
    for name, description, ours, theirs in cases():
        times = measure(ours, theirs, reps)
        ours_s, torch_s = statistics.median(times["minclip"]), statistics.median(times["torch"])
        rows.append({"case": name, "description": description, "minclip_ms": round(ours_s * 1e3, 2),
                     "torch_ms": round(torch_s * 1e3, 2), "ratio": round(ours_s / torch_s, 2),
                     "minclip_fastest_ms": round(min(times["minclip"]) * 1e3, 2),
                     "torch_fastest_ms": round(min(times["torch"]) * 1e3, 2)})
        fastest = f"{rows[-1]['minclip_fastest_ms']:.0f} / {rows[-1]['torch_fastest_ms']:.0f}"
        print(f"{name:<15}{ours_s * 1e3:>12.1f}{torch_s * 1e3:>10.1f}{ours_s / torch_s:>8.2f}{fastest:>16}   {description}")
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump({"machine": machine(), "reps": reps, "results": rows}, f, indent=2)
    print(f"written to {os.path.relpath(RESULTS)}")


if __name__ == "__main__":
    main()

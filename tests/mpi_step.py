"""Data-parallel training steps compared with one process on the same global batch.

    mpiexec -n 2 python -m mpi4py tests/mpi_step.py OUT.json

Every rank trains copies of a tiny CLIP from the same weights (rank 0's,
broadcast) for 3 AdamW steps: a *reference* on the whole global batch with
the ordinary loss, as one process would, and a *parallel* copy on its own
slice with the local loss, ``AllGather``, synced batch norm and the averaged
gradient all-reduce; each in float64 and in float32. For the loss, every
gradient at every step, and every parameter and buffer after the steps, it
records the largest relative difference of

* "float64":  parallel vs reference, both float64;
* "float32":  parallel vs reference, both float32;
* "float32_rounding": the float32 reference vs the float64 one, i.e. how far
  float32 rounding alone takes one process (the scale to judge "float32" by).

Rank 0 writes them, the worst over all ranks, as JSON. ``compare`` also runs
on thread-ranks (``minclip.distributed.run_threads``) in the tests.

Relative difference of a kind (every gradient, every parameter, ...): the
largest |a - b| over all its arrays, divided by the largest |b| over all of
them, i.e. the max-norm relative error of the whole model's vector. Measured
array by array instead, a parameter that starts at zero (a bias) and moves a
few AdamW steps is a tiny number whose rounding AdamW magnifies (it divides
the gradient by sqrt(v) + eps), and the key bias of attention pooling has an
exactly zero gradient: neither says anything about the parallel computation.
A real mistake (an unaveraged gradient, a missing reduce-scatter) is off by
O(1) of the model's scale.
"""
import dataclasses
import json
import sys
import threading

import numpy as np

from minclip import backend
from minclip.distributed import allreduce_gradients, allreduce_mean, local_clip_loss, local_siglip_loss, world
from minclip.loss import clip_loss, siglip_loss
from minclip.model import CLIP, CLIPConfig
from minclip.nn.batchnorm import sync_batchnorm
from minclip.optim import AdamW, clip_grad_norm_, param_groups_for_weight_decay
from minclip.tensor import Tensor

CASES = [("tiny-vit", "clip"), ("tiny-rn", "clip"), ("tiny-vit", "siglip")]
STEPS, LOCAL_BATCH = 3, 4
_BUILD = threading.Lock()   # thread-ranks: one model built at a time, from the same seed


class Run:
    """One model, its AdamW, and how it computes its loss: on the global batch or on this rank's slice."""

    def __init__(self, config, start, dtype, comm=None):
        with _BUILD:
            backend.seed(0)
            self.model = CLIP(config).to(dtype=dtype)
        self.model.load_state_dict(start)
        self.dtype, self.comm, self.siglip = dtype, comm, config.loss == "siglip"
        if comm is not None:
            sync_batchnorm(self.model, comm)
        self.optimizer = AdamW(param_groups_for_weight_decay(self.model.named_parameters(), 0.1),
                               lr=1e-3, betas=(0.9, 0.98), eps=1e-6)
        self.losses, self.grads = [], []

    def step(self, images, ids, mine):
        """zero_grad, forward, backward, (all-reduce), clip, AdamW; records the loss and the gradients."""
        self.optimizer.zero_grad()
        if self.comm is None:
            outputs = self.model(Tensor(images.astype(self.dtype)), Tensor(ids))
            loss = siglip_loss(*outputs) if self.siglip else clip_loss(*outputs)
            loss.backward()
            value = loss.item()
        else:
            outputs = self.model(Tensor(images[mine].astype(self.dtype)), Tensor(ids[mine]))
            loss = (local_siglip_loss if self.siglip else local_clip_loss)(*outputs, self.comm)
            loss.backward()
            allreduce_gradients(self.model.parameters(), self.comm)
            value = allreduce_mean(loss.item(), self.comm)
        self.losses.append(value)
        self.grads.append({n: backend.to_numpy(p.grad).copy() for n, p in self.model.named_parameters()})
        clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()


def _worst(pairs):
    """max |a - b| / max |b| over every (a, b) in ``pairs`` [(a, b), ...] of one kind."""
    pairs = [(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)) for a, b in pairs]
    return float(max(np.abs(a - b).max() for a, b in pairs) / max(np.abs(b).max() for _, b in pairs))


def differences(run, ref):
    """{"loss", "grad", "param", "buffer"}: the worst relative differences of ``run`` from ``ref``."""
    state, state_ref = ({k: backend.to_numpy(v) for k, v in r.model.state_dict().items()} for r in (run, ref))
    buffers = {k for k, _ in ref.model.named_buffers()}
    running = [(state[k], state_ref[k]) for k in buffers if state_ref[k].dtype.kind == "f"]
    return {"loss": _worst(list(zip(run.losses, ref.losses))),
            "grad": max(_worst([(g[k], g_ref[k]) for k in g_ref]) for g, g_ref in zip(run.grads, ref.grads)),
            "param": _worst([(state[k], v) for k, v in state_ref.items() if k not in buffers]),
            "buffer": _worst(running) if running else 0.0}


def compare(comm, model_name, loss_name):
    """The three comparisons of the module docstring, on this rank."""
    config = dataclasses.replace(CLIPConfig.preset(model_name), loss=loss_name)
    with _BUILD:
        backend.seed(0)
        initial = CLIP(config).state_dict()
    start = {k: comm.broadcast(v) for k, v in initial.items()}          # rank 0's weights everywhere
    runs = {(dtype, parallel): Run(config, start, dtype, comm if parallel else None)
            for dtype in ("float64", "float32") for parallel in (False, True)}
    rng = np.random.default_rng(0)                                      # the same global batches on every rank
    n = comm.size * LOCAL_BATCH
    mine = slice(comm.rank * LOCAL_BATCH, (comm.rank + 1) * LOCAL_BATCH)
    for _ in range(STEPS):
        images = rng.standard_normal((n, 3, config.image_resolution, config.image_resolution))
        ids = rng.integers(1, config.vocab_size, (n, config.context_length))
        for run in runs.values():
            run.step(images, ids, mine)
    return {"float64": differences(runs["float64", True], runs["float64", False]),
            "float32": differences(runs["float32", True], runs["float32", False]),
            "float32_rounding": differences(runs["float32", False], runs["float64", False])}


def main(out_path):
    comm = world()
    results = {}
    for model_name, loss_name in CASES:
        found = compare(comm, model_name, loss_name)
        keys = [(c, q) for c in found for q in found[c]]
        worst = comm.allgather(np.array([[found[c][q] for c, q in keys]])).max(axis=0)   # over all ranks
        results[f"{model_name}-{loss_name}"] = {c: {q: float(w) for (c2, q), w in zip(keys, worst) if c2 == c}
                                                for c in found}
    if comm.rank == 0:
        with open(out_path, "w") as f:
            json.dump({"size": comm.size, "results": results}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])

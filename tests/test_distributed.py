"""Data parallelism: N ranks train exactly the model one process trains on the global batch.

The proof is ``tests/mpi_step.py`` under ``mpiexec -n 2``: loss, every
gradient and the parameters after 3 AdamW steps, for tiny-vit (CLIP and
SigLIP) and tiny-rn (synced batch norm), against one process on the same
global batch. Tolerances, per array (max |a - b| / max |b|, see mpi_step.py):

* float64: 1e-12, everything.
* float32: the loss within 1e-6. Gradients and parameters cannot all be
  within 1e-6 in float32: summing the batch in two halves rounds
  differently, deep backward passes carry that to ~1e-6 relative, and AdamW
  divides the rounding noise of near-zero gradients by its eps. So float32
  gradients, parameters and buffers must be within 1e-6, or within 3x the
  difference float32 rounding alone makes to one process (its float32 run
  vs its float64 run): data parallelism adds no error beyond float32's own.

The pieces are checked alone too, on thread-ranks in one process (no MPI
needed): AllGatherFunction's backward is the adjoint of its forward; the local losses
of 3 ranks average to the global loss, with its gradients (and without the
reduce-scatter they do not); one rank's local loss is the ordinary loss and
passes a gradient check; synced batch norm is batch norm of the whole batch.
"""
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from minclip.distributed import (AllGatherFunction, SingleProcess, all_gather, allreduce_gradients, local_clip_loss,
                                 local_siglip_loss, run_threads, world)
from minclip.gradcheck import gradcheck
from minclip.loss import clip_loss, siglip_loss
from minclip.nn.batchnorm import batch_norm
from minclip.tensor import Tensor

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import mpi_step  # noqa: E402


def _check(results):
    """Assert the tolerances of the module docstring on mpi_step's results."""
    for case, found in results.items():
        for quantity, error in found["float64"].items():
            assert error <= 1e-12, f"{case} float64 {quantity}: relative difference {error:.2e} > 1e-12"
        assert found["float32"]["loss"] <= 1e-6, f"{case} float32 loss: {found['float32']['loss']:.2e} > 1e-6"
        for quantity in ("grad", "param", "buffer"):
            error, rounding = found["float32"][quantity], found["float32_rounding"][quantity]
            assert error <= max(1e-6, 3 * rounding), \
                f"{case} float32 {quantity}: {error:.2e} > 1e-6 and > 3x float32's own rounding {rounding:.2e}"


def test_two_mpi_ranks_train_as_one_process(tmp_path):
    pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install mpi4py mpich)")
    mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        pytest.skip("no mpiexec on PATH (pip install mpich)")
    out = tmp_path / "results.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1",                        # 2 ranks on 2 cores
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([mpiexec, "-n", "2", sys.executable, "-m", "mpi4py", str(ROOT / "tests" / "mpi_step.py"),
                           str(out)], env=env, capture_output=True, text=True, timeout=600)
    unsolved = re.search(r"NotImplementedError: (Exercise \d+\.\d+[^\n]*)", done.stderr)
    if unsolved:   # the student edition: wait for that exercise, as an in-process test would
        raise NotImplementedError(unsolved.group(1))
    assert done.returncode == 0, f"mpiexec failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    report = json.loads(out.read_text())
    assert report["size"] == 2
    assert set(report["results"]) == {f"{m}-{loss}" for m, loss in mpi_step.CASES}
    _check(report["results"])


def test_world_is_a_single_process_without_mpiexec():
    comm = world()
    assert (comm.rank, comm.size) == (0, 1)
    x = np.arange(6.0).reshape(3, 2)
    for collective in (comm.allgather, comm.reduce_scatter, comm.allreduce, comm.broadcast):
        np.testing.assert_array_equal(collective(x), x)


def test_allgather_backward_is_the_adjoint_of_its_forward():
    """<allgather(x), y> summed over ranks == Σ_r <x_r, reduce_scatter(y)_r>: its backward gives
    rank r the sum over all ranks of their gradient for r's block."""
    size, b, d = 3, 2, 4
    xs = [np.random.default_rng(r).standard_normal((b, d)) for r in range(size)]
    ys = [np.random.default_rng(10 + r).standard_normal((size * b, d)) for r in range(size)]

    def rank(comm):
        x = Tensor(xs[comm.rank], requires_grad=True)
        gathered = all_gather(x, comm)                                      # (3·B, D)
        np.testing.assert_array_equal(gathered.data, np.concatenate(xs))
        (gathered * Tensor(ys[comm.rank])).sum().backward()
        return x.grad

    grads = run_threads(size, rank)
    for r in range(size):
        np.testing.assert_allclose(grads[r], sum(y[r * b:(r + 1) * b] for y in ys), rtol=1e-15)


def _features(n=6, d=5, seed=0):
    rng = np.random.default_rng(seed)
    image, text = rng.standard_normal((2, n, d))
    return image / np.linalg.norm(image, axis=1, keepdims=True), text / np.linalg.norm(text, axis=1, keepdims=True)


def test_local_losses_of_one_rank_are_the_ordinary_losses_and_pass_gradcheck():
    image, text = _features()
    scale, bias = np.array(10.0), np.array(-5.0)
    one = SingleProcess()
    assert local_clip_loss(Tensor(image), Tensor(text), Tensor(scale), one).item() == \
        pytest.approx(clip_loss(Tensor(image), Tensor(text), Tensor(scale)).item(), rel=1e-14)
    assert local_siglip_loss(Tensor(image), Tensor(text), Tensor(scale), Tensor(bias), one).item() == \
        pytest.approx(siglip_loss(Tensor(image), Tensor(text), Tensor(scale), Tensor(bias)).item(), rel=1e-14)
    gradcheck(lambda i, t, s: local_clip_loss(i, t, s, one), image, text, scale)
    gradcheck(lambda i, t, s, c: local_siglip_loss(i, t, s, c, one), image, text, scale, bias)


def _local_and_global(loss):
    """3 thread-ranks of 2 pairs each and one process with the 6 pairs, float64: (mean local
    loss, gradients of image, text, scale[, bias] from the ranks; the same from the one process)."""
    image, text = _features()
    arrays = [image, text, np.array(10.0)] + ([np.array(-5.0)] if loss == "siglip" else [])
    ref = [Tensor(a, requires_grad=True) for a in arrays]
    expected = (clip_loss if loss == "clip" else siglip_loss)(*ref)
    expected.backward()

    def rank(comm):
        mine = slice(2 * comm.rank, 2 * comm.rank + 2)
        params = [Tensor(a[mine] if a.ndim else a, requires_grad=True) for a in arrays]
        local = (local_clip_loss if loss == "clip" else local_siglip_loss)(*params, comm)
        local.backward()
        allreduce_gradients([p for p in params if p.ndim == 0], comm)   # shared parameters: averaged
        return local.item(), [p.grad for p in params]

    results = run_threads(3, rank)
    # feature rows: rank r's gradient is d(Σ_s L_s)/dx_r = 3 · dL/dx_r
    grads = [np.concatenate([g[k] for _, g in results]) / 3 if a.ndim else results[0][1][k]
             for k, a in enumerate(arrays)]
    return (np.mean([value for value, _ in results]), grads), (expected.item(), [t.grad for t in ref])


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_local_losses_average_to_the_global_loss_with_its_gradient(loss):
    (value, grads), (expected, expected_grads) = _local_and_global(loss)
    assert value == pytest.approx(expected, rel=1e-14)
    for name, got, want in zip(["image", "text", "scale", "bias"], grads, expected_grads):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15, err_msg=name)


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_a_gather_without_its_reduce_scatter_gets_the_wrong_gradient(loss, monkeypatch):
    """A plain slice as AllGatherFunction's backward keeps only this rank's loss's gradient for its
    features (the bug the reduce-scatter prevents): the text features' gradients come out wrong."""
    def sliced(self, g):
        b = g.shape[0] // self.comm.size
        return (g[self.comm.rank * b:(self.comm.rank + 1) * b],)

    monkeypatch.setattr(AllGatherFunction, "backward", sliced)
    (_, grads), (_, expected_grads) = _local_and_global(loss)
    assert np.abs(grads[1] - expected_grads[1]).max() > 0.1 * np.abs(expected_grads[1]).max()


def test_synced_batch_norm_is_batch_norm_of_the_whole_batch():
    """2 thread-ranks of 3 images each vs one process with the 6, float64: output, every gradient, running stats."""
    rng = np.random.default_rng(0)
    x, weight, bias = rng.standard_normal((6, 4, 3, 3)) * 2 + 1, rng.standard_normal(4), rng.standard_normal(4)
    upstream = rng.standard_normal(x.shape)

    def run(x_part, up_part, comm=None):
        stats = [np.zeros(4), np.ones(4)]
        xt, wt, bt = (Tensor(a, requires_grad=True) for a in (x_part, weight, bias))
        out = batch_norm(xt, *stats, wt, bt, training=True, comm=comm)
        (out * Tensor(up_part)).sum().backward()
        return out.data, xt.grad, wt.grad, bt.grad, stats

    out, gx, gw, gb, stats = run(x, upstream)
    parts = run_threads(2, lambda comm: run(x[3 * comm.rank:3 * comm.rank + 3],
                                            upstream[3 * comm.rank:3 * comm.rank + 3], comm))
    np.testing.assert_allclose(np.concatenate([p[0] for p in parts]), out, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(np.concatenate([p[1] for p in parts]), gx, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(parts[0][2] + parts[1][2], gw, rtol=1e-12)   # each rank: its own share
    np.testing.assert_allclose(parts[0][3] + parts[1][3], gb, rtol=1e-12)
    for part in parts:
        np.testing.assert_allclose(part[4][0], stats[0], rtol=1e-12)
        np.testing.assert_allclose(part[4][1], stats[1], rtol=1e-12)


def test_reduce_scatter_names_the_shape_it_cannot_split():
    def rank(comm):
        comm.reduce_scatter(np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"divisible by 2 ranks, got shape \(3, 2\)"):
        run_threads(2, rank)


def test_allreduce_gradients_is_one_flat_average():
    def rank(comm):
        params = [Tensor(np.zeros((2, 3)), requires_grad=True), Tensor(np.zeros(4), requires_grad=True),
                  Tensor(np.zeros(1), requires_grad=True)]
        params[0].grad = np.full((2, 3), float(comm.rank))
        params[1].grad = np.full(4, 2.0 * comm.rank)
        allreduce_gradients(params, comm)
        return [p.grad for p in params]

    for grads in run_threads(2, rank):
        np.testing.assert_array_equal(grads[0], np.full((2, 3), 0.5))
        np.testing.assert_array_equal(grads[1], np.full(4, 1.0))
        assert grads[2] is None

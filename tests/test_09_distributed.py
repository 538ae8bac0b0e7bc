"""Data parallelism: N ranks train exactly the model one process trains on the global batch.

The proof is ``tests/mpi_step.py`` under ``mpiexec -n 2``: loss, every
gradient and the parameters after 3 AdamW steps, for tiny-vit (CLIP and
SigLIP) and tiny-rn (synced batch norm), against one process on the same
global batch. Tolerances, per kind (the loss at each step, every gradient,
every parameter, every buffer: max |a - b| / max |b| over all the arrays of
that kind, the max-norm relative error of the model's vector; see mpi_step.py
for why not array by array):

* float64: 1e-12, everything.
* float32: within 1e-6, or within 3x the difference float32 rounding alone
  makes to one process (its float32 run vs its float64 run). Not everything
  can be within 1e-6 in float32: summing the batch in two halves rounds
  differently, deep backward passes carry that to ~1e-6 relative, and AdamW
  divides the rounding noise of small gradients by sqrt(v) + eps. The rule
  says data parallelism adds no error beyond float32's own.

The pieces are checked alone too, on thread-ranks in one process (no MPI
needed): AllGatherFunction's backward is the adjoint of its forward; the local losses
of 3 ranks average to the global loss, with its gradients (and without the
reduce-scatter they do not); one rank's local loss is the ordinary loss and
passes a gradient check; synced batch norm is batch norm of the whole batch.

The training CLI under ``mpiexec -n 2``: 2 ranks equal 1 process with twice
the batch (the same float32 rule, on the saved weights), and bad input on one
rank (an unequal dataset, a missing file, a world-size change on resume) ends
the whole job with one line, under a timeout.
"""
import itertools
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from minclip import backend, train
from minclip.backend import to_numpy
from minclip.distributed import (AllGatherFunction, SingleProcess, all_gather, allreduce_gradients, local_clip_loss,
                                 local_siglip_loss, run_threads, world)
from minclip.gradcheck import gradcheck
from minclip.loss import clip_loss, siglip_loss
from minclip.nn.batchnorm import batch_norm
from minclip.tensor import Tensor
from minclip.tokenizer import tokenize

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import mpi_step  # noqa: E402
from support.exercise_wait import wait_for_unsolved_exercise


def _check(results):
    """Assert the tolerances of the module docstring on mpi_step's results."""
    for case, found in results.items():
        for quantity, error in found["float64"].items():
            assert error <= 1e-12, f"{case} float64 {quantity}: relative difference {error:.2e} > 1e-12"
        for quantity in ("loss", "grad", "param", "buffer"):
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
    wait_for_unsolved_exercise(done.stderr)   # the student edition: wait for that exercise
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
        np.testing.assert_array_equal(to_numpy(gathered.data), np.concatenate(xs))
        (gathered * Tensor(ys[comm.rank])).sum().backward()
        return to_numpy(x.grad)

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
        return local.item(), [to_numpy(p.grad) for p in params]

    results = run_threads(3, rank)
    # feature rows: rank r's gradient is d(Σ_s L_s)/dx_r = 3 · dL/dx_r
    grads = [np.concatenate([g[k] for _, g in results]) / 3 if a.ndim else results[0][1][k]
             for k, a in enumerate(arrays)]
    return (np.mean([value for value, _ in results]), grads), (expected.item(), [to_numpy(t.grad) for t in ref])


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
        stats = [backend.asarray(np.zeros(4)), backend.asarray(np.ones(4))]          # updated in place
        xt, wt, bt = (Tensor(a, requires_grad=True) for a in (x_part, weight, bias))
        out = batch_norm(xt, *stats, wt, bt, training=True, comm=comm)
        (out * Tensor(up_part)).sum().backward()
        return tuple(to_numpy(a) for a in (out.data, xt.grad, wt.grad, bt.grad)) + ([to_numpy(a) for a in stats],)

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


# ---------------------------------------------------------------- the training CLI under mpiexec

def _mpiexec():
    """mpiexec, or a clean skip naming what is missing."""
    pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install mpi4py mpich)")
    mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        pytest.skip("no mpiexec on PATH (pip install mpich)")
    return mpiexec


def _cli(*ranks, timeout=300):
    """``mpiexec`` of the training CLI: one ``-n 1`` block per rank, each with its own flags (MPMD)."""
    command = [_mpiexec()]
    for flags in ranks:
        command += [":"] * (command[-1] != command[0]) + ["-n", "1", sys.executable, "-m", "mpi4py", "-m",
                                                          "minclip.train", "--no-progress", *flags]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    wait_for_unsolved_exercise(done.stderr, "the training CLI under mpiexec")   # the student edition
    return done


def _losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _float32_rounding(flags, steps, logs):
    """How far float32 rounding alone takes one process: mpi_step's measure between its weights
    after the CLI's first ``steps`` steps in float32 and in float64 (the scale of the float32 rule)."""
    weights = {}
    for dtype in ("float32", "float64"):
        run = train.setup(train.parse_args([*flags, "--logs", str(logs / dtype)]))
        run.model.to(dtype=dtype)
        for images, captions in itertools.islice(run.loader.epoch_batches(0), steps):
            run.schedule.step(run.step)
            ids = tokenize(captions, run.config.context_length, tokenizer=run.tokenizer)
            train.train_step(run.model, run.optimizer, backend.asarray(images), backend.asarray(ids),
                             clip_norm=run.args.grad_clip_norm)
            run.step += 1
        weights[dtype] = {k: to_numpy(v) for k, v in run.model.state_dict().items()}
    return mpi_step._worst([(weights["float32"][k], v) for k, v in weights["float64"].items()])


def test_the_cli_on_two_processes_trains_as_one_process_with_twice_the_batch(tmp_path):
    """2 ranks x batch 8 against 1 process x batch 16, 3 AdamW steps, the saved weights compared.

    Tolerances, mpi_step's float32 rule: the logged loss of every step within
    1e-6 relative; the weights within 1e-6, or within 3x the difference
    float32 rounding alone makes to one process over the same steps (its
    float32 run vs its float64 run): AdamW's update lr·m/(√v + eps) turns a
    rounding-level difference of a near-zero gradient into a difference of up
    to lr in that weight, so float32 weights cannot agree to 1e-6. A wrong data
    split or a missing reduce-scatter changes the loss from step 2 on.
    """
    from safetensors.numpy import load_file
    steps, common = 3, ["--train-num-samples", "64", "--max-steps", "3", "--no-eval", "--lr", "2e-3"]
    two = _cli(*[[*common, "--batch-size", "8", "--logs", str(tmp_path / "two")]] * 2)
    assert two.returncode == 0, f"mpiexec -n 2 failed ({two.returncode}):\n{two.stdout}\n{two.stderr}"
    assert "global batch 16 (2 process(es) x 8)" in two.stdout
    one = subprocess.run([sys.executable, "-m", "minclip.train", "--no-progress", *common, "--batch-size", "16",
                          "--logs", str(tmp_path / "one")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert one.returncode == 0, one.stderr
    run_one, run_two = (tmp_path / d / "tiny-vit-clip-seed0" for d in ("one", "two"))
    losses_one, losses_two = _losses(run_one), _losses(run_two)
    assert len(losses_two) == steps
    for step, (a, b) in enumerate(zip(losses_two, losses_one), 1):
        assert abs(a - b) <= 1e-6 * abs(b), f"step {step}: loss {a} on 2 ranks, {b} on 1 process"
    w_one, w_two = load_file(run_one / "model.safetensors"), load_file(run_two / "model.safetensors")
    error = mpi_step._worst([(w_two[k], w_one[k]) for k in w_one])
    rounding = _float32_rounding([*common, "--batch-size", "16"], steps, tmp_path / "rounding")
    print(f"weights after {steps} steps: 2 ranks vs 1 process {error:.2e}; float32 vs float64 {rounding:.2e}")
    assert error <= max(1e-6, 3 * rounding), (
        f"the weights after {steps} steps differ by {error:.2e} relative: > 1e-6 and > 3x float32's own "
        f"rounding {rounding:.2e}")


@pytest.mark.parametrize("case, rank1_flags, expected", [
    ("an unequal dataset split", ["--train-num-samples", "48"], "different sizes [64, 48]"),
    ("a file missing on one rank", ["--train-data", "/nowhere/pairs.csv"], "rank 1: "),
])
def test_bad_input_on_one_rank_ends_the_whole_job_with_one_line(tmp_path, case, rank1_flags, expected):
    common = ["--train-num-samples", "64", "--max-steps", "1", "--no-eval", "--batch-size", "8",
              "--logs", str(tmp_path)]
    done = _cli(common, [*common, *rank1_flags], timeout=120)
    ours = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode != 0 and "Traceback" not in done.stderr, f"{case}: {done.returncode}\n{done.stderr}"
    assert len(ours) == 1 and expected in ours[0], f"{case}: expected one line with {expected!r}:\n{done.stderr}"


def test_resume_on_another_world_size_is_one_clear_line(tmp_path):
    flags = ["--train-num-samples", "64", "--max-steps", "1", "--no-eval", "--batch-size", "16",
             "--logs", str(tmp_path)]
    one = subprocess.run([sys.executable, "-m", "minclip.train", "--no-progress", *flags],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    wait_for_unsolved_exercise(one.stderr, "python -m minclip.train")
    assert one.returncode == 0, one.stderr
    done = _cli(*[[*flags, "--batch-size", "8", "--max-steps", "2", "--resume", "latest"]] * 2, timeout=120)
    ours = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    assert len(ours) == 1 and "trained on 1 process(es), this run has 2" in ours[0], done.stderr


def test_the_ranks_blocks_of_each_global_batch_are_one_process_batch():
    from minclip.data import DataLoader, shapes
    data = shapes.load_split("train", image_size=16, n=40)
    whole = DataLoader(data, 12, seed=3, prefetch=False)
    ranks = [DataLoader(data, 12, seed=3, prefetch=False, rank=r, world_size=3) for r in range(3)]
    assert [len(loader) for loader in ranks] == [len(whole)] * 3 == [3] * 3, "drop_last: the same steps everywhere"
    for step, (images, captions) in enumerate(whole.epoch_batches(1)):
        blocks = [list(loader.epoch_batches(1))[step] for loader in ranks]
        np.testing.assert_array_equal(np.concatenate([b[0] for b in blocks]), images)
        assert sum((b[1] for b in blocks), []) == captions
    with pytest.raises(ValueError, match="divisible by 3"):
        DataLoader(data, 10, world_size=3)


def test_threads_per_rank_share_the_cores_only_under_mpi():
    from minclip.threads import threads_per_rank
    cores = len(os.sched_getaffinity(0))
    assert threads_per_rank({"MPI_LOCALNRANKS": "2", "PMI_SIZE": "2"}) == max(1, cores // 2)
    assert threads_per_rank({"OMPI_COMM_WORLD_LOCAL_SIZE": str(4 * cores)}) == 1
    assert threads_per_rank({"PMI_SIZE": "2", "OMP_NUM_THREADS": "3"}) is None, "the user's choice stays"
    assert threads_per_rank({}) is None and threads_per_rank({"PMI_SIZE": "1"}) is None, "no MPI: left alone"


def test_resume_on_the_same_world_size_continues_bit_for_bit(tmp_path):
    flags = ["--train-num-samples", "64", "--no-eval", "--batch-size", "8"]
    straight = _cli(*[[*flags, "--max-steps", "3", "--logs", str(tmp_path / "straight")]] * 2)
    first = _cli(*[[*flags, "--max-steps", "2", "--logs", str(tmp_path / "resumed")]] * 2)
    resumed = _cli(*[[*flags, "--max-steps", "3", "--logs", str(tmp_path / "resumed"), "--resume", "latest"]] * 2)
    for done in (straight, first, resumed):
        assert done.returncode == 0, done.stderr
    run_straight, run_resumed = (tmp_path / d / "tiny-vit-clip-seed0" for d in ("straight", "resumed"))
    assert _losses(run_resumed) == _losses(run_straight)
    assert (run_resumed / "model.safetensors").read_bytes() == (run_straight / "model.safetensors").read_bytes(), \
        "2 ranks resumed at step 2 must end with the weights of 2 ranks that never stopped"

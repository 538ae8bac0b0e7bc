"""Data-parallel scaling on this machine: one training step, 1 process against 2 MPI ranks.

    python benchmarks/bench_distributed.py [--reps 10] [--model tiny-vit] [--batch 128]

The step of the training loop at a fixed *global* batch: forward of each
rank's slice, the local CLIP loss (features all-gathered), backward (the
gather's reduce-scatter), the flat gradient all-reduce, clipping, AdamW. Three
runs, each in fresh processes, with the same machine:

* 1 process, 1 BLAS thread: the baseline of strong scaling;
* 1 process, 2 BLAS threads: what one process gets from both cores without MPI;
* ``mpiexec -n 2``, 1 BLAS thread per rank (threads = cores ÷ ranks), half the batch each.

Reported: the median step time of each (and the fastest step, the least
disturbed on a shared machine), the speed-up and efficiency of 2 ranks
over 1 process with 1 thread (efficiency = speed-up / 2), the ratio to 1
process with 2 threads, and the share of the 2-rank step spent inside the
collectives (waiting for the other rank included). Results:
benchmarks/results/distributed.json. Needs mpi4py and mpiexec.
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

WORKER_FLAG = "--worker"


def _options():
    """(model, global batch, reps) from ``--model``, ``--batch``, ``--reps``."""
    def argument(name, default, cast):
        return cast(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default
    return argument("--model", "tiny-vit", str), argument("--batch", 128, int), argument("--reps", 10, int)


# ---------------------------------------------------------------- worker

class TimedCommunicator:
    """A communicator that adds up the seconds spent in its collectives."""

    def __init__(self, comm):
        self.comm, self.rank, self.size, self.seconds = comm, comm.rank, comm.size, 0.0

    def __getattr__(self, name):
        collective = getattr(self.comm, name)

        def timed(*args, **kwargs):
            tic = time.perf_counter()
            out = collective(*args, **kwargs)
            self.seconds += time.perf_counter() - tic
            return out
        return timed


def worker(model_name, global_batch, reps):
    """Time ``reps`` steps (after 2 warm-up steps) on this launch's ranks; rank 0 prints one JSON line."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import numpy as np

    from minclip import backend
    from minclip.distributed import allreduce_gradients, local_clip_loss, world
    from minclip.model import CLIP, CLIPConfig
    from minclip.nn.batchnorm import sync_batchnorm
    from minclip.optim import AdamW, clip_grad_norm_, param_groups_for_weight_decay
    from minclip.tensor import Tensor

    comm = TimedCommunicator(world())
    local = global_batch // comm.size
    config = CLIPConfig.preset(model_name)
    backend.seed(0)
    model = sync_batchnorm(CLIP(config), comm)
    optimizer = AdamW(param_groups_for_weight_decay(model.named_parameters(), 0.1), lr=1e-4, eps=1e-6)
    rng = np.random.default_rng(comm.rank)
    images = rng.standard_normal((local, 3, config.image_resolution, config.image_resolution)).astype("float32")
    ids = rng.integers(1, config.vocab_size, (local, config.context_length))
    times, comm_times = [], []
    for step in range(reps + 2):
        comm.barrier()
        comm.seconds, tic = 0.0, time.perf_counter()
        optimizer.zero_grad()
        loss = local_clip_loss(*model(Tensor(images), Tensor(ids)), comm)
        loss.backward()
        allreduce_gradients(model.parameters(), comm)
        clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step >= 2:
            times.append(time.perf_counter() - tic)
            comm_times.append(comm.seconds)
    if comm.rank == 0:
        print(json.dumps({"ranks": comm.size, "local_batch": local, "step_s": times, "comm_s": comm_times}))


# ---------------------------------------------------------------- driver

def launch(ranks, threads, model_name, batch, reps):
    """Run the worker in fresh processes; returns its result dict."""
    env = {**os.environ, **{v: str(threads) for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}}
    command = [sys.executable, os.path.abspath(__file__), WORKER_FLAG, "--model", model_name,
               "--batch", str(batch), "--reps", str(reps)]
    if ranks > 1:
        command = [shutil.which("mpiexec"), "-n", str(ranks), sys.executable, "-m", "mpi4py"] + command[1:]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        sys.exit(f"error: {' '.join(command)} failed:\n{done.stderr.strip()}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result.update(threads_per_rank=threads, median_ms=1000 * statistics.median(result["step_s"]),
                  fastest_ms=1000 * min(result["step_s"]), comm_median_ms=1000 * statistics.median(result["comm_s"]))
    return result


def main():
    model_name, batch, reps = _options()
    if shutil.which("mpiexec") is None:
        sys.exit("error: bench_distributed needs mpiexec on PATH (pip install mpi4py mpich)")
    import common
    runs = {"1 process, 1 thread": launch(1, 1, model_name, batch, reps),
            "1 process, 2 threads": launch(1, 2, model_name, batch, reps),
            "2 ranks, 1 thread each": launch(2, 1, model_name, batch, reps)}
    base, two_threads, two_ranks = (r["median_ms"] for r in runs.values())
    summary = {"speedup_vs_1_thread": base / two_ranks, "efficiency": base / two_ranks / 2,
               "ratio_vs_1_process_2_threads": two_threads / two_ranks,
               "comm_share_2_ranks": runs["2 ranks, 1 thread each"]["comm_median_ms"] / two_ranks}
    print(f"{model_name}, global batch {batch}, training step (median of {reps}):")
    for name, run in runs.items():
        print(f"  {name:<24} {run['median_ms']:8.1f} ms  (fastest {run['fastest_ms']:.1f} ms; local batch "
              f"{run['local_batch']}, collectives {run['comm_median_ms']:.1f} ms)")
    print(f"  2 ranks vs 1 process, 1 thread:  speed-up {summary['speedup_vs_1_thread']:.2f}, "
          f"efficiency {100 * summary['efficiency']:.0f}%")
    print(f"  2 ranks vs 1 process, 2 threads: speed-up {summary['ratio_vs_1_process_2_threads']:.2f}")
    print(f"  time inside collectives (2 ranks): {100 * summary['comm_share_2_ranks']:.0f}% of the step")
    common.write_results("distributed", {"model": model_name, "global_batch": batch, "reps": reps,
                                         "runs": runs, "summary": summary})


if __name__ == "__main__":
    if WORKER_FLAG in sys.argv:
        worker(*_options())
    else:
        main()

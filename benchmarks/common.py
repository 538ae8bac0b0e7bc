"""The shared harness of the benchmarks: threads, timing, checks, memory, results.

Import it before NumPy: it fixes the number of threads of both libraries
(``MINCLIP_BENCH_THREADS``, default 2) through the environment, which
OpenBLAS reads once, when NumPy is first imported, and imports minclip
before NumPy, as a program that uses minclip would (``minclip.threads`` sets
how long NumPy's BLAS threads spin).

* ``compare(ours, theirs, reps)``: the two callables alternate run by run
  (so that background load hits both alike) after ``warmup`` untimed runs;
  the median of each, and their ratio minclip / PyTorch, from the same run.
* ``check_close(what, ours, theirs)``: the two sides must compute the same
  thing before their speed is compared.
* ``peak_memory(argv)``: the peak memory of one step, measured in a fresh
  process (see README.md, "Peak memory", for the method and its caveats).
* ``machine()`` and ``write_results(name, ...)``: every JSON in results/
  carries the machine's description, so runs can be compared.
"""
import json
import os
import platform
import statistics
import subprocess
import sys
import time

THREADS = int(os.environ.get("MINCLIP_BENCH_THREADS", "2"))


def _set_thread_variables():
    """OpenBLAS, OpenMP and MKL thread counts, read when each library loads (here and in child processes)."""
    for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(THREADS)


_set_thread_variables()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(ROOT, "benchmarks", "results")
sys.path.insert(0, ROOT)

import minclip  # noqa: E402,F401  (before NumPy, as a program that uses minclip: it sets NumPy's BLAS up, see threads.py)
import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(THREADS)

from bench_layers import measure  # noqa: E402  (the alternating timing loop)
_set_thread_variables()            # bench_layers sets its own count on import: keep ours for the children

MEMORY_FLAG = "--memory"           # argv of a benchmark's memory child: --memory CASE minclip|torch
OPENBLAS_TUNING = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


# ---------------------------------------------------------------- timing

def compare(ours, theirs, reps, warmup=1):
    """Time ``ours`` (minclip) and ``theirs`` (PyTorch), alternating; returns a result dict.

    The times are wall-clock seconds per call; the summary is the median of
    ``reps`` calls of each, in milliseconds, and the ratio of the medians.
    The fastest call of each is kept too: on a machine shared with other work
    it is the least disturbed one.
    """
    times = measure(ours, theirs, reps, warmup)
    ours_s, theirs_s = statistics.median(times["minclip"]), statistics.median(times["torch"])
    return {"minclip_ms": round(1e3 * ours_s, 2), "torch_ms": round(1e3 * theirs_s, 2),
            "ratio": round(ours_s / theirs_s, 3), "reps": reps,
            "fastest_ratio": round(min(times["minclip"]) / min(times["torch"]), 3),
            "minclip_all_ms": [round(1e3 * t, 1) for t in times["minclip"]],
            "torch_all_ms": [round(1e3 * t, 1) for t in times["torch"]]}


def timed_case(result, ours, theirs, reps, script, memory=True, with_profile=False):
    """Add to ``result`` (which names its "case") the timing of ``compare`` (no warm-up: the
    caller's check ran each side once), minclip's per-op profile and the peak memory of each side."""
    result.update(compare(ours, theirs, reps, warmup=0))
    if with_profile:
        result["profile"] = per_op_profile(ours)
    if memory:
        result["memory"] = memory_pair(script, result["case"])
    return result


# ---------------------------------------------------------------- checks

def relative_error(ours, theirs, floor=1e-30):
    """max |ours - theirs| / max(max |theirs|, floor): one number for two arrays meant to be equal."""
    ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    if ours.shape != theirs.shape:
        raise AssertionError(f"shapes differ: minclip {ours.shape}, torch {theirs.shape}")
    return float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), floor))


def check_close(what, ours, theirs, tolerance=1e-4, floor=1e-30):
    """Raise unless minclip's and PyTorch's arrays agree to ``tolerance``, relative to
    their largest value (or to ``floor``, for an array that should be about zero)."""
    error = relative_error(ours, theirs, floor)
    if not error <= tolerance:
        raise AssertionError(f"{what}: minclip and PyTorch disagree, max relative error {error:.2e} > "
                             f"{tolerance:.0e}; the benchmark would not compare the same computation")
    return error


# ---------------------------------------------------------------- memory
#
# Peak memory is measured in a fresh child process per (case, library), so
# that neither library's allocator caches nor the other's arrays are counted.
# The child builds everything, then measures one call of the step: the rise
# of the resident set size (peak RSS, reset just before through
# /proc/self/clear_refs) and, for minclip, the peak of tracemalloc (NumPy
# reports its array allocations to it).

def memory_env():
    """The child's environment: glibc returns every block >= 64 KiB to the OS on free,
    so that RSS follows the live arrays instead of the allocator's free lists."""
    return {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def peak_memory(script, case, library, timeout=600):
    """Run ``script --memory CASE LIBRARY`` in a fresh process; returns its measurements (MiB)."""
    command = [sys.executable, script, MEMORY_FLAG, case, library]
    done = subprocess.run(command, env=memory_env(), capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"memory child {' '.join(command[1:])} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory_pair(script, case):
    """Peak memory of ``case`` for both libraries, each in its own fresh process, and their ratio (RSS)."""
    ours, theirs = peak_memory(script, case, "minclip"), peak_memory(script, case, "torch")
    return {"minclip": ours, "torch": theirs, "ratio": round(ours["rss_mib"] / max(theirs["rss_mib"], 0.1), 2)}


def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure_step_memory(step, library):
    """Peak memory of one call of ``step`` in this (fresh) process, printed as one JSON line.

    ``rss_mib``: the high-water mark of the resident set during the call
    minus the resident set just before it. ``tracemalloc_mib`` (minclip
    only): the peak of the bytes allocated during the call and not yet freed.
    """
    import gc
    import tracemalloc
    gc.collect()
    if library == "minclip":
        tracemalloc.start()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                                                 # reset VmHWM to the current RSS
    before = _status_kib("VmRSS")
    step()
    result = {"library": library, "rss_mib": round((_status_kib("VmHWM") - before) / 1024, 1)}
    if library == "minclip":
        result["tracemalloc_mib"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
        tracemalloc.stop()
    print(json.dumps(result))


def memory_child_args(argv=None):
    """(case, library) when this process is a memory child, else None."""
    argv = sys.argv if argv is None else argv
    if MEMORY_FLAG not in argv:
        return None
    i = argv.index(MEMORY_FLAG)
    return argv[i + 1], argv[i + 2]


# ------------------------------------------------------------- profiling

def per_op_profile(step, top=12):
    """minclip's per-op times (``minclip.profile``) over one call of ``step``: the ``top``
    (op, pass) pairs by time, each with its calls, milliseconds and share of the op total."""
    from minclip.profile import profile
    start = time.perf_counter()
    with profile() as p:
        step()
    wall, total = time.perf_counter() - start, p.total()
    rows = sorted(p.seconds.items(), key=lambda kv: -kv[1])[:top]
    return {"wall_ms": round(1e3 * wall, 1), "ops_total_ms": round(1e3 * total, 1),
            "ops": [{"op": op, "pass": phase, "calls": p.calls[(op, phase)], "ms": round(1e3 * s, 1),
                     "share": round(s / total, 3)} for (op, phase), s in rows]}


def format_profile(summary):
    """The profile as indented text lines (time outside any op is the Python around them)."""
    lines = [f"    {'op':<24}{'pass':<10}{'calls':>6}{'ms':>9}{'share':>8}"]
    lines += [f"    {r['op']:<24}{r['pass']:<10}{r['calls']:>6}{r['ms']:>9.1f}{100 * r['share']:>7.1f}%"
              for r in summary["ops"]]
    lines.append(f"    ops {summary['ops_total_ms']:.0f} ms of a {summary['wall_ms']:.0f} ms call")
    return "\n".join(lines)


# ------------------------------------------------------------- reporting

def blas_info():
    """Which BLAS NumPy runs on, and with how many threads (threadpoolctl if installed)."""
    try:
        from threadpoolctl import threadpool_info
        return {"threadpoolctl": [{k: v for k, v in pool.items() if k != "filepath"}
                                  for pool in threadpool_info()]}
    except ImportError:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return {"numpy_blas": blas.get("name"), "version": blas.get("version"),
                "configuration": blas.get("openblas configuration"),
                "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS")}


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def git_commit():
    done = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or None


def machine():
    """What a result depends on: processor, cores, threads, library versions, BLAS, load."""
    return {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "threads": THREADS,
            "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
            "blas": blas_info(), "openblas_tuning": {k: os.environ.get(k) for k in OPENBLAS_TUNING},
            "openblas_thread_timeout": os.environ.get("OPENBLAS_THREAD_TIMEOUT"),
            "minclip_pool_threads": minclip.threads.pool_threads(),
            "load_average_1min": round(os.getloadavg()[0], 2), "git_commit": git_commit(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def threads_text():
    return f"{THREADS} thread{'s' if THREADS > 1 else ''} each"


def results_path(name, extension="json"):
    """benchmarks/results/NAME.json for the default 2 threads, NAME_1thread.json etc. otherwise."""
    suffix = "" if THREADS == 2 else f"_{THREADS}thread"
    return os.path.join(RESULTS_DIR, f"{name}{suffix}.{extension}")


def write_results(name, payload):
    """Write ``payload`` plus the machine description to ``results_path(name)``; returns the path."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = results_path(name)
    with open(path, "w") as f:
        json.dump({"machine": machine(), **payload}, f, indent=1)
    print(f"written to {os.path.relpath(path, ROOT)}")
    return path


def format_row(name, result, width=34):
    """One table line: name, minclip ms, torch ms, ratio, and the peak memories when measured."""
    line = f"{name:<{width}}{result['minclip_ms']:>11.1f}{result['torch_ms']:>11.1f}{result['ratio']:>8.2f}"
    memory = result.get("memory")
    if memory:
        line += f"{memory['minclip']['rss_mib']:>10.0f}{memory['torch']['rss_mib']:>10.0f}{memory['ratio']:>8.2f}"
    return line


def table_header(width=34, memory=False):
    head = f"{'case':<{width}}{'minclip ms':>11}{'torch ms':>11}{'ratio':>8}"
    return head + (f"{'mem MiB':>10}{'torch MiB':>10}{'ratio':>8}" if memory else "")


def parse_reps(default):
    """``--reps N`` from the command line, else ``default``."""
    return int(sys.argv[sys.argv.index("--reps") + 1]) if "--reps" in sys.argv else default

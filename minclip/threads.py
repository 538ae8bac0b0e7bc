"""Threads per process under ``mpiexec``: the cores divided among the ranks.

NumPy's BLAS starts one thread per core when it loads. N ranks on one
machine would then run N × cores threads on the cores, and oversubscribed
BLAS threads spin and wait on each other. So before NumPy is imported (this
module is imported first by ``minclip/__init__.py``), a process launched by
MPI gets cores ÷ ranks-on-this-machine threads, unless the user has set
``OMP_NUM_THREADS`` (or a BLAS-specific variable) already. A process not
launched by MPI is left alone.

``cpu_threads()`` reads that choice back, for the threads that minclip's
own CPU passes use (``minclip.blocked``); ``pool_threads()`` says how many
of them those passes may take, given how NumPy's BLAS threads wait (below).
"""
import os
import sys

# Ranks on this machine, as the launchers export it: Open MPI, MPICH/Hydra, then the whole job.
_LOCAL_RANKS = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "PMI_SIZE")
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def threads_per_rank(environ=os.environ):
    """cores ÷ local ranks (at least 1), or None when not under MPI or the user chose already."""
    if any(name in environ for name in _THREAD_VARIABLES):
        return None
    ranks = next((int(environ[name]) for name in _LOCAL_RANKS if environ.get(name, "").isdigit()), 1)
    if ranks <= 1:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, cores // ranks)


# NumPy's BLAS (OpenBLAS) keeps its worker threads spinning for 2^28 cycles
# (about 0.1 s) after each matrix product, so that the next one starts a few
# microseconds sooner. minclip's blocked passes run between the products, on
# threads of their own, and spinning workers take their cores. Measured on 2
# cores, a training step of a 256-wide ViT at batch 128, two runs that each
# alternate the fast and the plain path in one process (medians of 12-15
# steps): 2572 ms with the default spin, 2032 ms with 2^12 cycles; the plain
# path, which starts no threads, 2630 ms either way. So before NumPy
# loads, minclip shortens the spin to 2^12 cycles, unless the user chose a
# value; if NumPy was loaded first, the blocked passes keep to one thread.
BLAS_SPIN = "OPENBLAS_THREAD_TIMEOUT"
_short_blas_spin = "numpy" not in sys.modules or BLAS_SPIN in os.environ
if "numpy" not in sys.modules:
    os.environ.setdefault(BLAS_SPIN, "12")

_threads = threads_per_rank()
if _threads is not None:
    for _name in _THREAD_VARIABLES:
        os.environ[_name] = str(_threads)


def cpu_threads(environ=os.environ):
    """How many threads this process's NumPy work may use: the BLAS thread count the
    user (or MPI, above) chose, else one per core this process may run on."""
    for name in _THREAD_VARIABLES:
        if environ.get(name, "").isdigit() and int(environ[name]) > 0:
            return int(environ[name])
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def pool_threads():
    """Threads for minclip's blocked passes: ``cpu_threads()``, or 1 when NumPy's BLAS was
    loaded before minclip with its default spin (its idle workers would take the cores)."""
    return cpu_threads() if _short_blas_spin else 1

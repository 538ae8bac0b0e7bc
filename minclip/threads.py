"""Threads per process under ``mpiexec``: the cores divided among the ranks.

NumPy's BLAS starts one thread per core when it loads. N ranks on one
machine would then run N × cores threads on the cores, and oversubscribed
BLAS threads spin and wait on each other. So before NumPy is imported (this
module is imported first by ``minclip/__init__.py``), a process launched by
MPI gets cores ÷ ranks-on-this-machine threads, unless the user has set
``OMP_NUM_THREADS`` (or a BLAS-specific variable) already. A process not
launched by MPI is left alone.

``cpu_threads()`` reads that choice back, for the threads that minclip's
own CPU passes use (``minclip.blocked``).
"""
import os

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

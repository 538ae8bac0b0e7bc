"""Data-parallel training: N processes, one global batch, the same model.

Each process (a *rank*) holds a full copy of the model and a slice of the
global batch. Two kinds of communication keep the N copies one model:

* the **features** of every rank are all-gathered, so that each image is
  contrasted with every caption of the *global* batch (CLIP's whole point);
  the backward of that gather is a reduce-scatter (``AllGatherFunction``);
* the **gradients** are all-reduced once per step, through one flat buffer,
  and averaged, so N ranks take exactly the step one process would take on
  the global batch (``allreduce_gradients``).

Each rank computes only its own rows of the logits, (B, N·B), with labels
offset by rank · B: open_clip's ``--gather-with-grad --local-loss``. The mean
of the N local losses is the single-process loss of the global batch.

The communicators, all with one interface (``Communicator``):

* ``SingleProcess``: size 1, no MPI needed; every collective is the identity.
* ``MPICommunicator``: MPI through mpi4py, over host (NumPy) buffers. With
  ``cuda_aware=True`` CuPy arrays are passed to MPI as they are (this needs
  an MPI built with CUDA support).
* ``NCCLCommunicator``: NVIDIA's NCCL through ``cupy.cuda.nccl``, for GPUs.
* ``ThreadCommunicator``: N ranks as threads of one process (teaching, tests).

Launch: ``mpiexec -n N python -m mpi4py SCRIPT`` (``-m mpi4py`` makes a
failure on one rank abort every rank instead of leaving them waiting).
Run here: SingleProcess, MPICommunicator over host buffers, ThreadCommunicator.
Not run (no GPU was available): the CUDA-aware path and NCCLCommunicator.
"""
import threading

from minclip import backend
from minclip import functional as F
from minclip.backend import array_module
from minclip.loss import log_sigmoid
from minclip.tensor import Function


class Communicator:
    """The collectives data parallelism needs. Every rank must call each one,
    in the same order, with arrays of the same shape and dtype.

    ``allgather(x)``: every rank's x (B, ...) stacked along axis 0, rank order: (N·B, ...).
    ``reduce_scatter(x)``: the sum over ranks of x (N·B, ...), cut along axis 0;
        this rank gets its own block (B, ...). It is the adjoint of ``allgather``.
    ``allreduce(x)``: the sum over ranks, the same on every rank.
    ``broadcast(x, root)``: root's x on every rank.
    ``allgather_objects(obj)``: every rank's Python object, a list in rank order
        (small things: a dataset size, an error message).
    """

    rank, size = 0, 1

    def allgather(self, x):
        raise TypeError(f"{type(self).__name__} does not define allgather")

    def reduce_scatter(self, x):
        raise TypeError(f"{type(self).__name__} does not define reduce_scatter")

    def allreduce(self, x):
        raise TypeError(f"{type(self).__name__} does not define allreduce")

    def broadcast(self, x, root=0):
        raise TypeError(f"{type(self).__name__} does not define broadcast")

    def barrier(self):
        raise TypeError(f"{type(self).__name__} does not define barrier")

    def allgather_objects(self, obj):
        raise TypeError(f"{type(self).__name__} does not define allgather_objects")

    def _check_divisible(self, x):
        if x.shape[0] % self.size:
            raise ValueError(f"reduce_scatter: expected a first axis divisible by {self.size} ranks, "
                             f"got shape {x.shape}")


class SingleProcess(Communicator):
    """One process, no MPI: every collective returns (a copy of) its input."""

    def allgather(self, x):
        return x.copy()

    reduce_scatter = allreduce = allgather

    def broadcast(self, x, root=0):
        return x.copy()

    def barrier(self):
        pass

    def allgather_objects(self, obj):
        return [obj]

    def __repr__(self):   # the default of train()'s comm: a stable name in help() and signatures
        return "SingleProcess()"


def _contiguous(x):
    """x itself, or a C-contiguous copy (``ascontiguousarray`` would turn a 0-d array into 1-d)."""
    return x if x.flags.c_contiguous else x.copy()


class MPICommunicator(Communicator):
    """MPI through mpi4py's buffer (upper-case) methods: no pickling, no extra copies.

    Host path (default): arrays are copied to NumPy (a no-op on the CPU
    backend), communicated, and put back on the array's backend.
    ``cuda_aware=True``: CuPy arrays go to MPI as they are (mpi4py reads their
    ``__cuda_array_interface__``), after the current stream has finished
    writing them. Needs an MPI built with CUDA support; NOT RUN here (no GPU).
    """

    def __init__(self, comm=None, cuda_aware=False):
        from mpi4py import MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.cuda_aware = cuda_aware

    def _prepare(self, x):
        """(a buffer MPI can read, its array module, the way back to x's backend)."""
        xp = array_module(x)
        if self.cuda_aware and backend.backend_name(x) == "cupy":
            xp.cuda.get_current_stream().synchronize()    # MPI must see finished values
            return _contiguous(x), xp, lambda result: result
        host = _contiguous(backend.to_numpy(x))
        return host, array_module(host), xp.asarray

    def allgather(self, x):
        send, lib, back = self._prepare(x)
        recv = lib.empty((self.size * x.shape[0],) + x.shape[1:], send.dtype)
        self.comm.Allgather(send, recv)
        return back(recv)

    def reduce_scatter(self, x):
        self._check_divisible(x)
        send, lib, back = self._prepare(x)
        recv = lib.empty((x.shape[0] // self.size,) + x.shape[1:], send.dtype)
        self.comm.Reduce_scatter_block(send, recv)        # op defaults to MPI.SUM
        return back(recv)

    def allreduce(self, x):
        send, lib, back = self._prepare(x)
        recv = lib.empty_like(send)
        self.comm.Allreduce(send, recv)
        return back(recv)

    def broadcast(self, x, root=0):
        send, _, back = self._prepare(x)
        buffer = send.copy()                              # Bcast writes into it on the other ranks
        self.comm.Bcast(buffer, root=root)
        return back(buffer)

    def barrier(self):
        self.comm.Barrier()

    def allgather_objects(self, obj):
        return self.comm.allgather(obj)


class NCCLCommunicator(Communicator):
    """NCCL collectives on CuPy arrays (one GPU per rank), set up over MPI.

    Rank 0 makes NCCL's unique id and MPI broadcasts it; each rank then uses
    GPU ``rank % GPUs per node``. Collectives run on CuPy's current stream.
    Written from CuPy's ``cupy.cuda.nccl`` reference; NOT RUN here (no GPU).
    """

    def __init__(self, comm=None):
        import cupy
        from cupy.cuda import nccl
        from mpi4py import MPI
        mpi = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size, self.mpi = mpi.Get_rank(), mpi.Get_size(), mpi
        cupy.cuda.Device(self.rank % cupy.cuda.runtime.getDeviceCount()).use()
        uid = mpi.bcast(nccl.get_unique_id() if self.rank == 0 else None, root=0)
        self.nccl, self.cupy = nccl, cupy
        self.comm = nccl.NcclCommunicator(self.size, uid, self.rank)
        self.types = {"float32": nccl.NCCL_FLOAT32, "float64": nccl.NCCL_FLOAT64}

    def _call(self, method, x, out_shape):
        x = _contiguous(x)
        out = self.cupy.empty(out_shape, x.dtype)
        stream = self.cupy.cuda.get_current_stream().ptr
        count = out.size if method == "reduceScatter" else x.size
        op = () if method == "allGather" else (self.nccl.NCCL_SUM,)
        getattr(self.comm, method)(x.data.ptr, out.data.ptr, count, self.types[x.dtype.name], *op, stream)
        return out

    def allgather(self, x):
        return self._call("allGather", x, (self.size * x.shape[0],) + x.shape[1:])

    def reduce_scatter(self, x):
        self._check_divisible(x)
        return self._call("reduceScatter", x, (x.shape[0] // self.size,) + x.shape[1:])

    def allreduce(self, x):
        return self._call("allReduce", x, x.shape)

    def broadcast(self, x, root=0):
        x = self.cupy.array(x)
        self.comm.bcast(x.data.ptr, x.size, self.types[x.dtype.name], root,
                        self.cupy.cuda.get_current_stream().ptr)
        return x

    def barrier(self):
        self.cupy.cuda.get_current_stream().synchronize()
        self.mpi.Barrier()

    def allgather_objects(self, obj):
        return self.mpi.allgather(obj)


class ThreadCommunicator(Communicator):
    """Rank ``rank`` of N ranks that are threads of one process (see ``run_threads``).

    Each collective puts this rank's array in a shared slot, waits until all
    N have, reads all N, and waits again before the slots are reused. The
    sums run in rank order, so every rank gets the same bits. For teaching and
    tests: the whole data-parallel step is visible in one Python process. The
    ranks share the process's global state (the backend's random generator,
    ``no_grad``), so per-rank code should not change it.
    """

    def __init__(self, rank, size, shared):
        self.rank, self.size, self.shared = rank, size, shared

    def _exchange(self, x):
        slots, wait = self.shared["slots"], self.shared["barrier"].wait
        slots[self.rank] = x
        wait()
        arrays = list(slots)
        wait()
        return arrays

    def allgather(self, x):
        return array_module(x).concatenate(self._exchange(x), axis=0)

    def allreduce(self, x):
        arrays = self._exchange(x)
        total = arrays[0].copy()
        for a in arrays[1:]:
            total += a
        return total

    def reduce_scatter(self, x):
        self._check_divisible(x)
        block = x.shape[0] // self.size
        return self.allreduce(x)[self.rank * block:(self.rank + 1) * block].copy()

    def broadcast(self, x, root=0):
        return self._exchange(x)[root].copy()

    def barrier(self):
        self.shared["barrier"].wait()

    def allgather_objects(self, obj):
        return self._exchange(obj)


def run_threads(size, fn):
    """Run ``fn(comm)`` on ``size`` thread-ranks at once; returns their results, in rank order.

    An exception on one rank breaks the shared barrier, so the others stop
    too (instead of waiting forever), and the first error is raised here.
    """
    shared = {"slots": [None] * size, "barrier": threading.Barrier(size)}
    results, errors = [None] * size, []

    def target(rank):
        try:
            results[rank] = fn(ThreadCommunicator(rank, size, shared))
        except BaseException as error:   # any error: re-raised below, in the caller's thread
            errors.append(error)
            shared["barrier"].abort()

    threads = [threading.Thread(target=target, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise next((e for e in errors if not isinstance(e, threading.BrokenBarrierError)), errors[0])
    return results


def world(cuda_aware=False):
    """The communicator of this launch: MPI under ``mpiexec -n N`` (N > 1), else SingleProcess.

    Works without mpi4py installed (then always SingleProcess).
    """
    try:
        from mpi4py import MPI
    except ImportError:
        return SingleProcess()
    return MPICommunicator(MPI.COMM_WORLD, cuda_aware) if MPI.COMM_WORLD.Get_size() > 1 else SingleProcess()


# ------------------------------------------------------------- autodiff

class AllGatherFunction(Function):
    """Every rank's x (B, ...) stacked in rank order: (N·B, ...), with a gradient.

    Backward: the output's row block r is rank r's x, and *every* rank's loss
    used it. Rank r's gradient is therefore the sum over all ranks of their
    gradient for block r: a reduce-scatter. Taking only this rank's own
    gradient (a plain slice) would drop the other ranks' terms.
    """

    def forward(self, x, *, comm):
        self.comm = comm
        return comm.allgather(x)

    def backward(self, g):
        return (self.comm.reduce_scatter(g),)


def all_gather(x, comm):
    """``AllGatherFunction`` of a Tensor x (B, ...) -> (N·B, ...)."""
    return AllGatherFunction.apply(x, comm=comm)


def _local_labels(features, comm):
    """Global indices of this rank's pairs: rank·B + arange(B)."""
    b = features.shape[0]
    return features.xp.arange(comm.rank * b, (comm.rank + 1) * b)          # (B,)


def local_clip_loss(image_features, text_features, logit_scale, comm):
    """This rank's share of CLIP's loss over the global batch (open_clip's local loss).

    Rank r holds B pairs; with all N·B features gathered it computes only its
    own rows: its images against all texts, its texts against all images,

        L_r = ½ · [ CE(t · I_r T_allᵀ, r·B + arange B) + CE(t · T_r I_allᵀ, r·B + arange B) ]

    Both logit blocks are (B, N·B): N times less than the full (N·B, N·B).
    The mean over ranks of L_r is ``clip_loss`` of the global batch.
    """
    all_images = all_gather(image_features, comm)                         # (N·B, E)
    all_texts = all_gather(text_features, comm)                           # (N·B, E)
    labels = _local_labels(image_features, comm)                          # (B,)
    logits_per_image = logit_scale * (image_features @ all_texts.T)       # (B, N·B)
    logits_per_text = logit_scale * (text_features @ all_images.T)        # (B, N·B)
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) * 0.5


def local_siglip_loss(image_features, text_features, logit_scale, logit_bias, comm):
    """This rank's share of SigLIP's loss: its B images against all N·B texts.

    L_r = -(1/B) Σ over its (B, N·B) block of log σ(y · z), y = +1 at
    (i, r·B + i), -1 elsewhere. The rows of all ranks cover the N·B × N·B
    pairs once, so the mean over ranks of L_r is ``siglip_loss`` of the global
    batch. Only the texts need gathering (the paper's neighbour exchange
    would pass them around a ring instead, B at a time).
    """
    all_texts = all_gather(text_features, comm)                           # (N·B, E)
    logits = logit_scale * (image_features @ all_texts.T) + logit_bias    # (B, N·B)
    xp, (b, total) = logits.xp, logits.shape
    labels = -xp.ones((b, total), dtype=logits.dtype)
    labels[xp.arange(b), _local_labels(image_features, comm)] = 1         # (B, N·B): +1 / -1
    return -log_sigmoid(logits * labels).sum() * (1.0 / b)


# ------------------------------------------------------------ gradients

def allreduce_gradients(params, comm):
    """Average every gradient over the ranks, in place, with one all-reduce.

    Rank r's gradients are those of its local loss L_r (including, through
    ``AllGatherFunction`` and synced batch norm, the other ranks' use of its
    activations). Their sum over ranks is the gradient of Σ_r L_r = N · L,
    so dividing by N gives the gradient of the global loss L: N ranks take
    the step of one process. All gradients travel in one flat buffer: one
    message of P numbers instead of one per parameter (latency paid once).
    Parameters without a gradient are skipped (the same ones on every rank).
    """
    params = [p for p in params if p.grad is not None]
    if comm.size == 1 or not params:
        return
    dtypes = sorted({p.grad.dtype.name for p in params})
    if len(dtypes) > 1:    # one buffer would silently upcast the others
        raise ValueError(f"allreduce_gradients: expected gradients of one dtype, got {', '.join(dtypes)}")
    xp = array_module(params[0].grad)
    flat = xp.concatenate([p.grad.reshape(-1) for p in params])           # (P,)
    flat = comm.allreduce(flat)
    flat /= flat.dtype.type(comm.size)
    offset = 0
    for p in params:
        p.grad = flat[offset:offset + p.grad.size].reshape(p.grad.shape)
        offset += p.grad.size


def allreduce_mean(value, comm):
    """The mean over ranks of a Python number (a loss to log, or to stop on); one process: the number."""
    if comm.size == 1:
        return value
    return float(comm.allreduce(backend.asarray([value], dtype="float64"))[0]) / comm.size


# --------------------------------------------------------- agreement

class RankFailed(RuntimeError):
    """An error that one rank met and every rank now stops on (raised on all of them, together)."""

    def __init__(self, message, rank):
        super().__init__(message)
        self.rank = rank


def together(fn, errors, comm):
    """``fn()`` on every rank; if it raised one of ``errors`` on any rank, raise it on all.

    A rank that fails alone would leave the others waiting forever in their
    next collective. Instead every rank reports how ``fn`` went, and if any
    failed, all raise ``RankFailed`` with the first failing rank's message
    (prefixed with that rank unless all ranks failed alike), so the job ends as one.
    """
    try:
        result, failure = fn(), None
    except errors as error:
        result, failure = None, str(error)
    failures = comm.allgather_objects(failure)
    for rank, message in enumerate(failures):
        if message is not None:
            alone = comm.size > 1 and failures.count(message) < comm.size
            raise RankFailed(f"rank {rank}: {message}" if alone else message, rank)
    return result


def check_same_weights(model, comm):
    """Raise ValueError unless every rank holds rank 0's parameters, bit for bit (one broadcast).

    Every rank builds its model from the same seed; this checks that it did,
    so that N copies start as one model.
    """
    if comm.size == 1:
        return
    params = list(model.parameters())
    xp = array_module(params[0].data)
    flat = xp.concatenate([p.data.reshape(-1) for p in params])           # (P,)
    same = bool((comm.broadcast(flat) == flat).all())
    if not all(comm.allgather_objects(same)):
        raise ValueError("the ranks built different initial weights from the same --seed "
                         "(check that every rank runs the same minclip and backend)")

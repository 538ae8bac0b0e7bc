"""minclip: CLIP from scratch in NumPy (and CuPy on a GPU)."""
import minclip.threads  # noqa: F401  (first: under mpiexec, threads per rank before NumPy loads BLAS)
from minclip.backend import get_backend, set_backend, to_numpy, xp
from minclip.tensor import Tensor, no_grad
from minclip.gradcheck import gradcheck
# weight files: minclip.save(model, path) / minclip.load(path)
from minclip.checkpoint import load, save

"""Gradient checking: compare backward() with central finite differences.

For a function f and a fixed random "upstream gradient" r, the scalar
L(x) = Σ f(x) · r has the exact derivative that ``backward(r)`` computes. Its
numerical estimate, one input element at a time, is

    dL/dx_i ≈ (L(x + eps·e_i) - L(x - eps·e_i)) / (2 eps)

with an error of order eps² (and rounding of order ε_machine / eps, which is
why the check runs in float64). If the two disagree, backward is wrong.
"""
from minclip import backend
from minclip.backend import array_module
from minclip.tensor import Tensor


class GradcheckError(AssertionError):
    """Analytic and numerical gradients disagree."""


def gradcheck(fn, *inputs, eps=1e-6, atol=1e-6, rtol=1e-4, seed=0):
    """Check ``fn``'s gradients with respect to every floating-point input.

    ``fn(*tensors)`` must return a Tensor. Inputs may be Tensors or arrays;
    they are copied to float64 (integer inputs, such as class ids, are passed
    through unchanged and not differentiated). Returns True, or raises
    GradcheckError naming the input, the worst element, both values and the
    relative error.
    """
    tensors = [_float64_leaf(x) for x in inputs]
    differentiable = [i for i, t in enumerate(tensors) if t.requires_grad]
    if not differentiable:
        raise ValueError("gradcheck: no floating-point input to differentiate")

    out = fn(*tensors)
    lib = array_module(out.data)
    upstream = lib.asarray(lib.random.default_rng(seed).standard_normal(out.shape))   # a fixed random dL/d(out)
    out.backward(upstream)

    def loss():
        return float((fn(*tensors).data * upstream).sum())

    for i in differentiable:
        t = tensors[i]
        analytic = t.grad if t.grad is not None else lib.zeros(t.shape)
        numeric = _numerical_gradient(loss, t, eps)
        error = lib.abs(analytic - numeric)
        bad = error > atol + rtol * lib.abs(numeric)
        if bad.any():
            worst = tuple(int(j) for j in lib.unravel_index(lib.argmax(error - rtol * lib.abs(numeric)), t.shape))
            relative = float(error[worst]) / max(abs(float(numeric[worst])), 1e-12)
            raise GradcheckError(
                f"gradcheck failed for input {i} (shape {t.shape}): at index {worst} "
                f"backward gives {float(analytic[worst]):.8g} but finite differences give {float(numeric[worst]):.8g} "
                f"(relative error {relative:.2e}; {int(bad.sum())} of {bad.size} elements off, "
                f"atol={atol}, rtol={rtol})")
    return True


def _float64_leaf(x):
    data = x.data if isinstance(x, Tensor) else backend.asarray(x)
    if data.dtype.kind != "f":
        return Tensor.from_array(data)
    return Tensor.from_array(data.astype("float64"), requires_grad=True)


def _numerical_gradient(loss, tensor, eps):
    """Central differences of ``loss()`` with respect to every element of ``tensor``.

    Returns a float64 array of the tensor's shape (on its backend); the tensor
    is perturbed in place one element at a time and left exactly as it was.
    """
    # BEGIN EXERCISE 2.1: Central finite differences
    flat = tensor.data.reshape(-1)  # a view: writing it perturbs the tensor
    grad = array_module(flat).zeros(flat.shape[0])
    for j in range(flat.shape[0]):
        original = flat[j].item()
        flat[j] = original + eps
        plus = loss()
        flat[j] = original - eps
        minus = loss()
        flat[j] = original
        grad[j] = (plus - minus) / (2 * eps)
    return grad.reshape(tensor.shape)
    # END EXERCISE

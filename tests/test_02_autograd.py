"""Chapter 2: the autodiff engine (minclip/tensor.py, functional.py, gradcheck.py).

Every op in the table OPS is checked three ways:

1. forward against the textbook NumPy formula (float64);
2. backward against central finite differences (``gradcheck``, float64);
3. forward and backward against PyTorch autograd in float64 and float32, on
   random inputs that broadcast (skipped when torch is not installed).

The rest checks the engine itself: topological order, accumulation, freeing
the graph, ``no_grad``, dtypes, numerical stability, dropout, and gradcheck's
own error report. Check one exercise with ``python -m pytest --exercise 2.3``.
"""
import gc
import math
import weakref
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes

import minclip.functional as F
from minclip import Tensor, backend, no_grad
from minclip.gradcheck import GradcheckError, _numerical_gradient, gradcheck
from minclip.tensor import Function, _topological_order, unbroadcast
from support.compare import array_equal, assert_allclose, assert_array_equal

# Agreement with PyTorch, forward values and every input gradient. Measured on
# 50 random inputs per op: in float64 every difference was below 1e-14; in
# float32 the worst op needed rtol 2e-7 at atol 1e-6 (one float32 rounding per
# step, sums in another order, cancellation near zero). Stated, not tuned: a
# failure here is a bug to look for, not a tolerance to loosen.
TORCH_TOLERANCE = {
    "float64": dict(rtol=1e-12, atol=1e-14),
    "float32": dict(rtol=1e-5, atol=1e-6),
}
# Forward against the textbook NumPy formula, both in float64 (measured: < 1e-14).
NUMPY_TOLERANCE = dict(rtol=1e-12, atol=1e-14)


# ------------------------------------------------------ textbook formulas

def np_softmax(x, axis):
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def np_log_softmax(x, axis):
    return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def np_gelu(x):
    return x * 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def np_layer_norm(x, w, b, eps=1e-5):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def np_cross_entropy(logits, targets):
    return -np_log_softmax(logits, 1)[np.arange(len(targets)), targets].mean()


def np_attention(q, k, v, mask):
    return np_softmax(q @ k.swapaxes(-1, -2) / math.sqrt(q.shape[-1]) + mask, -1) @ v


# ------------------------------------------------------------- the op table

IDX = np.array([0, 2, 0, 0])                 # repeats: their gradients must add up
MASK_ROWS = np.array([True, False, True])
COND = np.array([[True], [False], [True]])   # (3, 1): broadcasts against (3, 4)
FILL_MASK = np.array([[True, False, False, True]])
TARGETS = np.array([2, 0, 4, 2])
IDS = np.array([[1, 4, 1], [0, 1, 5]])       # token 1 three times
CAUSAL = np.triu(np.full((3, 5), -np.inf), k=1)


@dataclass
class Op:
    name: str
    minclip: Callable                 # (*Tensors) -> Tensor
    torch: Callable                   # (torch, *torch tensors) -> torch tensor
    shapes: tuple                     # one per input; unequal shapes broadcast
    code: str                         # where to look when this op fails
    numpy: Optional[Callable] = None  # textbook formula; None: minclip's expression works on arrays
    low: float = -2.0                 # inputs are uniform in [low, high]
    high: float = 2.0
    exercise: Optional[str] = None

    def inputs(self, rng, dtype="float64"):
        return [rng.uniform(self.low, self.high, shape).astype(dtype) for shape in self.shapes]


def _tF(torch):
    return torch.nn.functional


TENSOR = "minclip/tensor.py"
FUNCTIONAL = "minclip/functional/"
OPS = [
    # operators (the binary ones broadcast: their backward is unbroadcast, exercise 2.4)
    Op("add", lambda a, b: a + b, lambda t, a, b: a + b, ((2, 3, 4), (3, 1)), f"{TENSOR}: AddFunction, unbroadcast", exercise="2.4"),
    Op("sub", lambda a, b: a - b, lambda t, a, b: a - b, ((3, 1), (2, 1, 4)), f"{TENSOR}: SubFunction, unbroadcast", exercise="2.4"),
    Op("mul", lambda a, b: a * b, lambda t, a, b: a * b, ((4,), (2, 3, 4)), f"{TENSOR}: MulFunction, unbroadcast", exercise="2.4"),
    Op("div", lambda a, b: a / b, lambda t, a, b: a / b, ((2, 3, 4), (2, 1, 1)), f"{TENSOR}: DivFunction, unbroadcast",
       low=0.5, exercise="2.4"),
    Op("scalar - x", lambda a: 1.5 - a, lambda t, a: 1.5 - a, ((3, 4),), f"{TENSOR}: __rsub__"),
    Op("scalar / x", lambda a: 1.5 / a, lambda t, a: 1.5 / a, ((3, 4),), f"{TENSOR}: __rtruediv__", low=0.5),
    Op("x ** 3", lambda a: a ** 3, lambda t, a: a ** 3, ((3, 4),), f"{TENSOR}: PowFunction"),
    Op("x ** 0.5", lambda a: a ** 0.5, lambda t, a: a ** 0.5, ((3, 4),), f"{TENSOR}: PowFunction", low=0.5),
    Op("x ** -1.5", lambda a: a ** -1.5, lambda t, a: a ** -1.5, ((3, 4),), f"{TENSOR}: PowFunction", low=0.5),
    Op("neg", lambda a: -a, lambda t, a: -a, ((3, 4),), f"{TENSOR}: NegFunction"),
    Op("matmul batched", lambda a, b: a @ b, lambda t, a, b: a @ b, ((2, 3, 4), (4, 5)), f"{TENSOR}: MatMulFunction",
       exercise="2.5"),
    Op("matmul broadcast batch", lambda a, b: a @ b, lambda t, a, b: a @ b, ((2, 1, 3, 4), (5, 4, 2)),
       f"{TENSOR}: MatMulFunction", exercise="2.5"),
    Op("matmul vector @ matrix", lambda a, b: a @ b, lambda t, a, b: a @ b, ((4,), (2, 4, 3)), f"{TENSOR}: MatMulFunction",
       exercise="2.5"),
    Op("matmul matrix @ vector", lambda a, b: a @ b, lambda t, a, b: a @ b, ((2, 3, 4), (4,)), f"{TENSOR}: MatMulFunction",
       exercise="2.5"),
    Op("matmul vector @ vector", lambda a, b: a @ b, lambda t, a, b: a @ b, ((4,), (4,)), f"{TENSOR}: MatMulFunction",
       exercise="2.5"),
    # indexing
    Op("index basic", lambda a: a[1:, ::2, None, -1], lambda t, a: a[1:, ::2, None, -1], ((3, 4, 5),),
       f"{TENSOR}: GetItemFunction"),
    Op("index ellipsis", lambda a: a[..., 1:3], lambda t, a: a[..., 1:3], ((2, 3, 4),), f"{TENSOR}: GetItemFunction"),
    Op("index negative step", lambda a: a[::-2], lambda t, a: a.flip(0)[::2], ((5, 2),), f"{TENSOR}: GetItemFunction"),
    Op("index repeated", lambda a: a[IDX], lambda t, a: a[t.as_tensor(IDX)], ((3, 4),),
       f"{TENSOR}: GetItemFunction (scatter_add)"),
    Op("index two arrays", lambda a: a[[1, 1, 0], :, [2, 2, 3]], lambda t, a: a[[1, 1, 0], :, [2, 2, 3]],
       ((2, 3, 4),), f"{TENSOR}: GetItemFunction (scatter_add)"),
    Op("index array and slice", lambda a: a[IDX, 1:], lambda t, a: a[t.as_tensor(IDX), 1:], ((3, 4),),
       f"{TENSOR}: GetItemFunction (scatter_add)"),
    Op("index boolean mask", lambda a: a[MASK_ROWS], lambda t, a: a[t.as_tensor(MASK_ROWS)], ((3, 4),),
       f"{TENSOR}: GetItemFunction"),
    # reductions
    Op("sum", lambda a: a.sum(), lambda t, a: a.sum(), ((3, 4),), f"{TENSOR}: SumFunction"),
    Op("sum axis", lambda a: a.sum(axis=1), lambda t, a: a.sum(1), ((2, 3, 4),), f"{TENSOR}: SumFunction"),
    Op("sum axes keepdims", lambda a: a.sum(axis=(0, -1), keepdims=True),
       lambda t, a: a.sum((0, -1), keepdim=True), ((2, 3, 4),), f"{TENSOR}: SumFunction"),
    Op("mean", lambda a: a.mean(), lambda t, a: a.mean(), ((3, 4),), f"{TENSOR}: Tensor.mean"),
    Op("mean axes", lambda a: a.mean(axis=(0, 2)), lambda t, a: a.mean((0, 2)), ((2, 3, 4),), f"{TENSOR}: Tensor.mean"),
    Op("max", lambda a: a.max(), lambda t, a: a.amax(), ((3, 4),), f"{TENSOR}: MaxFunction"),
    Op("max axis", lambda a: a.max(axis=1), lambda t, a: a.amax(1), ((2, 3, 4),), f"{TENSOR}: MaxFunction"),
    Op("max keepdims", lambda a: a.max(axis=-1, keepdims=True), lambda t, a: a.amax(-1, keepdim=True),
       ((2, 3, 4),), f"{TENSOR}: MaxFunction"),
    # shapes
    Op("reshape", lambda a: a.reshape(3, 8), lambda t, a: a.reshape(3, 8), ((2, 3, 4),), f"{TENSOR}: ReshapeFunction"),
    Op("reshape -1", lambda a: a.reshape((-1, 2)), lambda t, a: a.reshape(-1, 2), ((2, 3, 4),), f"{TENSOR}: ReshapeFunction"),
    Op("transpose", lambda a: a.transpose(), lambda t, a: a.permute(2, 1, 0), ((2, 3, 4),), f"{TENSOR}: TransposeFunction"),
    Op("transpose axes", lambda a: a.transpose(2, 0, 1), lambda t, a: a.permute(2, 0, 1), ((2, 3, 4),),
       f"{TENSOR}: TransposeFunction"),
    Op("transpose negative axes", lambda a: a.transpose(-1, 0, 1), lambda t, a: a.permute(-1, 0, 1), ((2, 3, 4),),
       f"{TENSOR}: TransposeFunction"),
    Op(".T", lambda a: a.T, lambda t, a: a.T, ((3, 4),), f"{TENSOR}: Tensor.T"),
    Op("swapaxes", lambda a: a.swapaxes(-1, -2), lambda t, a: a.transpose(-1, -2), ((2, 3, 4),),
       f"{TENSOR}: Tensor.swapaxes"),
    # elementwise
    Op("exp", lambda a: a.exp(), lambda t, a: a.exp(), ((3, 4),), f"{TENSOR}: ExpFunction", numpy=np.exp),
    Op("log", lambda a: a.log(), lambda t, a: a.log(), ((3, 4),), f"{TENSOR}: LogFunction", numpy=np.log, low=0.5),
    Op("sqrt", lambda a: a.sqrt(), lambda t, a: a.sqrt(), ((3, 4),), f"{TENSOR}: SqrtFunction", numpy=np.sqrt, low=0.5),
    Op("tanh", lambda a: a.tanh(), lambda t, a: a.tanh(), ((3, 4),), f"{TENSOR}: TanhFunction", numpy=np.tanh),
    Op("sigmoid", lambda a: a.sigmoid(), lambda t, a: a.sigmoid(), ((3, 4),), f"{TENSOR}: SigmoidFunction",
       numpy=lambda a: 1 / (1 + np.exp(-a)), low=-8, high=8),
    Op("relu", lambda a: a.relu(), lambda t, a: a.relu(), ((3, 4),), f"{TENSOR}: ReLUFunction",
       numpy=lambda a: np.maximum(a, 0)),
    # functional: joining and selecting
    Op("concatenate", lambda a, b, c: F.concatenate([a, b, c], axis=1), lambda t, a, b, c: t.cat([a, b, c], 1),
       ((2, 1, 3), (2, 4, 3), (2, 2, 3)), f"{FUNCTIONAL}: ConcatenateFunction",
       numpy=lambda a, b, c: np.concatenate([a, b, c], axis=1)),
    Op("concatenate axis -1", lambda a, b: F.concatenate([a, b], axis=-1), lambda t, a, b: t.cat([a, b], -1),
       ((3, 2), (3, 5)), f"{FUNCTIONAL}: ConcatenateFunction", numpy=lambda a, b: np.concatenate([a, b], axis=-1)),
    Op("stack", lambda a, b, c: F.stack([a, b, c]), lambda t, a, b, c: t.stack([a, b, c]),
       ((3, 4), (3, 4), (3, 4)), f"{FUNCTIONAL}: stack", numpy=lambda a, b, c: np.stack([a, b, c])),
    Op("stack axis -1", lambda a, b: F.stack([a, b], axis=-1), lambda t, a, b: t.stack([a, b], -1),
       ((3, 4), (3, 4)), f"{FUNCTIONAL}: stack", numpy=lambda a, b: np.stack([a, b], axis=-1)),
    Op("where", lambda a, b: F.where(COND, a, b), lambda t, a, b: t.where(t.as_tensor(COND), a, b),
       ((3, 4), (4,)), f"{FUNCTIONAL}: WhereFunction", numpy=lambda a, b: np.where(COND, a, b)),
    Op("masked_fill", lambda a: F.masked_fill(a, FILL_MASK, -3.0),
       lambda t, a: a.masked_fill(t.as_tensor(FILL_MASK), -3.0), ((3, 4),), f"{FUNCTIONAL}: masked_fill",
       numpy=lambda a: np.where(FILL_MASK, -3.0, a)),
    # functional: activations
    Op("gelu", F.gelu, lambda t, a: _tF(t).gelu(a), ((3, 4),), f"{FUNCTIONAL}: GELUFunction, backend.erf",
       numpy=np_gelu, low=-4, high=4),
    Op("quick_gelu", F.quick_gelu, lambda t, a: a * t.sigmoid(1.702 * a), ((3, 4),), f"{FUNCTIONAL}: QuickGELUFunction",
       numpy=lambda a: a / (1 + np.exp(-1.702 * a)), low=-4, high=4),
    # functional: the softmax family
    Op("softmax", F.softmax, lambda t, a: a.softmax(-1), ((3, 5),), f"{FUNCTIONAL}: SoftmaxFunction",
       numpy=lambda a: np_softmax(a, -1), exercise="2.6"),
    Op("softmax axis 0", lambda a: F.softmax(a, axis=0), lambda t, a: a.softmax(0), ((3, 5),),
       f"{FUNCTIONAL}: SoftmaxFunction", numpy=lambda a: np_softmax(a, 0), exercise="2.6"),
    Op("log_softmax", F.log_softmax, lambda t, a: a.log_softmax(-1), ((3, 5),), f"{FUNCTIONAL}: LogSoftmaxFunction",
       numpy=lambda a: np_log_softmax(a, -1)),
    Op("log_softmax axis 1", lambda a: F.log_softmax(a, axis=1), lambda t, a: a.log_softmax(1), ((2, 3, 4),),
       f"{FUNCTIONAL}: LogSoftmaxFunction", numpy=lambda a: np_log_softmax(a, 1)),
    Op("logsumexp", F.logsumexp, lambda t, a: a.logsumexp(-1), ((3, 5),), f"{FUNCTIONAL}: LogSumExpFunction",
       numpy=lambda a: np.log(np.exp(a).sum(-1))),
    Op("logsumexp axes keepdims", lambda a: F.logsumexp(a, axis=(0, 1), keepdims=True),
       lambda t, a: a.logsumexp((0, 1), keepdim=True), ((2, 3, 4),), f"{FUNCTIONAL}: LogSumExpFunction",
       numpy=lambda a: np.log(np.exp(a).sum((0, 1), keepdims=True))),
    Op("cross_entropy", lambda a: F.cross_entropy(a, TARGETS),
       lambda t, a: _tF(t).cross_entropy(a, t.as_tensor(TARGETS)), ((4, 5),), f"{FUNCTIONAL}: CrossEntropyFunction",
       numpy=lambda a: np_cross_entropy(a, TARGETS), exercise="2.8"),
    # functional: normalization, lookup, attention
    Op("layer_norm", F.layer_norm, lambda t, x, w, b: _tF(t).layer_norm(x, (5,), w, b, 1e-5),
       ((2, 3, 5), (5,), (5,)), f"{FUNCTIONAL}: LayerNormFunction", numpy=np_layer_norm, exercise="2.7"),
    Op("normalize", F.normalize, lambda t, a: _tF(t).normalize(a, dim=-1), ((3, 4),), f"{FUNCTIONAL}: NormalizeFunction",
       numpy=lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)),
    Op("normalize axis 0", lambda a: F.normalize(a, axis=0), lambda t, a: _tF(t).normalize(a, dim=0), ((3, 4),),
       f"{FUNCTIONAL}: NormalizeFunction", numpy=lambda a: a / np.linalg.norm(a, axis=0, keepdims=True)),
    Op("embedding", lambda w: F.embedding(w, IDS), lambda t, w: _tF(t).embedding(t.as_tensor(IDS), w), ((6, 3),),
       f"{FUNCTIONAL}: EmbeddingFunction (scatter_add)", numpy=lambda w: w[IDS]),
    Op("attention", lambda q, k, v: F.scaled_dot_product_attention(q, k, v, CAUSAL),
       lambda t, q, k, v: _tF(t).scaled_dot_product_attention(q, k, v, attn_mask=t.as_tensor(CAUSAL, dtype=q.dtype)),
       ((2, 3, 4), (2, 5, 4), (2, 5, 2)), f"{FUNCTIONAL}: scaled_dot_product_attention",
       numpy=lambda q, k, v: np_attention(q, k, v, CAUSAL)),
]


def op_params(mark_exercises=True):
    """The table as pytest params, each marked with its exercise (if any and if asked)."""
    return [pytest.param(op, id=op.name,
                         marks=[pytest.mark.exercise(op.exercise)] if op.exercise and mark_exercises else [])
            for op in OPS]


# ============================================================ every op, 3 ways

@pytest.mark.parametrize("op", op_params(mark_exercises=False))  # the exercises are all backward code
def test_forward_matches_numpy(op, rng):
    arrays = op.inputs(rng)
    received = op.minclip(*[Tensor(a) for a in arrays]).numpy()
    expected = (op.numpy or op.minclip)(*arrays)
    assert_allclose(
        received, expected, **NUMPY_TOLERANCE,
        err_msg=f"{op.name}: the forward value differs from the NumPy formula; look at {op.code}")


@pytest.mark.parametrize("op", op_params())
def test_backward_matches_finite_differences(op, rng):
    # gradcheck raises GradcheckError naming the input and the worst element
    assert gradcheck(op.minclip, *op.inputs(rng))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("op", op_params())
def test_matches_torch_autograd(op, dtype, torch, rng):
    arrays = op.inputs(rng, dtype)
    ours = [Tensor(a, requires_grad=True) for a in arrays]
    theirs = [torch.tensor(a, requires_grad=True) for a in arrays]
    out, expected = op.minclip(*ours), op.torch(torch, *theirs)
    upstream = rng.standard_normal(expected.shape).astype(dtype)
    out.backward(upstream)
    expected.backward(torch.tensor(upstream))

    where = f"{op.name} in {dtype}; look at {op.code}"
    assert out.dtype == dtype, f"{where}: the output is {out.dtype}, the inputs were {dtype}"
    assert_allclose(out.numpy(), expected.detach().numpy(), **TORCH_TOLERANCE[dtype],
                               err_msg=f"{where}: the forward value differs from torch")
    for i, (mine, reference) in enumerate(zip(ours, theirs)):
        assert mine.grad is not None, f"{where}: input {i} received no gradient"
        assert mine.grad.dtype == dtype, f"{where}: the gradient of input {i} is {mine.grad.dtype}"
        assert_allclose(mine.grad, reference.grad.numpy(), **TORCH_TOLERANCE[dtype],
                                   err_msg=f"{where}: the gradient of input {i} differs from torch autograd")


# ================================================================ gradcheck

@pytest.mark.exercise("2.1")
def test_numerical_gradient_of_a_cube():
    x = Tensor(np.array([[1.0, -2.0], [0.5, 3.0]]))
    grad = _numerical_gradient(lambda: float((x.data ** 3).sum()), x, eps=1e-6)
    assert_allclose(grad, 3 * x.data ** 2, rtol=1e-7, err_msg=(
        "d/dx Σx³ = 3x²: central differences (f(x+eps) - f(x-eps)) / 2eps agree with it to ~1e-9 in float64"))


@pytest.mark.exercise("2.1")
def test_numerical_gradient_puts_every_element_back():
    data = np.array([0.1, 0.2, 0.3])
    x = Tensor(data.copy())
    _numerical_gradient(lambda: float(x.data.sum()), x, eps=1e-6)
    assert array_equal(x.data, data), (
        f"the input changed from {data} to {x.data}: restore the original value, not x - eps + eps")


class WrongAtOnePlace(Function):
    """x², with a backward that is right everywhere except at [1, 2]."""

    def forward(self, x):
        self.x = x
        return x * x

    def backward(self, g):
        grad = 2 * self.x * g
        grad[1, 2] *= 3
        return (grad,)


def test_gradcheck_reports_the_worst_element_of_a_wrong_backward(rng):
    with pytest.raises(GradcheckError) as failure:
        gradcheck(WrongAtOnePlace.apply, rng.standard_normal((3, 4)))
    message = str(failure.value)
    for part in ("input 0", "index (1, 2)", "1 of 12 elements"):
        assert part in message, f"gradcheck's report should say {part!r}; it said: {message}"


def test_gradcheck_passes_integer_inputs_through_undifferentiated(rng):
    assert gradcheck(F.cross_entropy, rng.standard_normal((4, 5)), TARGETS)


def test_gradcheck_needs_a_floating_point_input():
    with pytest.raises(ValueError, match="no floating-point input"):
        gradcheck(lambda ids: ids, np.array([1, 2]))


# ========================================================= the graph engine

@pytest.mark.exercise("2.2")
def test_topological_order_lists_each_tensor_once_after_its_parents():
    x = Tensor([1.0, 2.0], requires_grad=True)
    constant = Tensor([3.0, 4.0])              # needs no grad: not part of the order
    a, b = x.exp(), x.tanh()
    c = a + b                                  # forward only: no backward runs here
    d = c * x                                  # x is used twice
    e = d * constant
    # the order holds the root itself, leaves, and the other op outputs as their graph Nodes
    names = {id(entry): name for name, t in dict(x=x, a=a, b=b, c=c, d=d, e=e).items()
             for entry in (t, t._node) if entry is not None}
    listed = [names.get(id(t), "constant") for t in _topological_order(e)]
    assert sorted(listed) == ["a", "b", "c", "d", "e", "x"], (
        f"expected each of x, a, b, c, d, e once (and not the constant), got {listed}")
    for node, parents in {"a": "x", "b": "x", "c": "ab", "d": "cx", "e": "d"}.items():
        for parent in parents:
            assert listed.index(parent) < listed.index(node), (
                f"order {listed}: {parent} must come before {node}, which is made from it")


@pytest.mark.exercise("2.2")
def test_topological_order_of_a_deep_chain_does_not_recurse():
    y = Tensor([1.0], requires_grad=True)
    for _ in range(10_000):
        y = -y
    assert len(_topological_order(y)) == 10_001, "use an explicit stack: recursion stops near 1,000 levels"


# The backward tests (exercise 2.3) use only ops without broadcasting, so
# they do not need exercise 2.4 (unbroadcast) to pass.

def leaf_grad(x):
    """x.grad after a backward, with the usual reason when there is none."""
    assert x.grad is not None, ("x.grad is still None after backward(): did you walk the order in reverse "
                                "(reversed(_topological_order(self)))? Walked forwards, the leaves come first, "
                                "before any gradient has reached them")
    return x.grad


@pytest.mark.exercise("2.3")
def test_backward_applies_the_chain_rule():
    x = Tensor(np.array([0.5, -1.0, 2.0]), requires_grad=True)
    (x ** 2).tanh().sum().backward()
    expected = (1 - np.tanh(x.numpy() ** 2) ** 2) * 2 * x.numpy()
    assert_allclose(leaf_grad(x), expected, rtol=1e-12,
                               err_msg="d tanh(x²)/dx = (1 - tanh²(x²)) · 2x")


@pytest.mark.exercise("2.3")
def test_a_tensor_used_twice_receives_the_sum_of_both_gradients():
    x = Tensor(np.array([0.5, -1.0]), requires_grad=True)
    F.stack([x.exp(), x ** 2]).sum().backward()
    assert_allclose(leaf_grad(x), np.exp(x.numpy()) + 2 * x.numpy(), rtol=1e-12, err_msg=(
        "x feeds two branches; its gradient is exp(x) + 2x. Did the second one overwrite the first?"))


@pytest.mark.exercise("2.3")
def test_gradients_accumulate_across_backward_calls():
    x = Tensor(np.array([1.0, 3.0]), requires_grad=True)
    for _ in range(2):
        (x ** 2).sum().backward()
    assert_allclose(leaf_grad(x), 2 * (2 * x.data), err_msg=(
        "two backward calls should add up (2·2x), as in PyTorch: that is what zero_grad is for"))
    x.zero_grad()
    assert x.grad is None


@pytest.mark.exercise("2.3")
def test_backward_runs_through_a_chain_of_10000_ops():
    x = y = Tensor([2.0], requires_grad=True)
    for _ in range(10_000):
        y = -y
    y.sum().backward()
    assert leaf_grad(x).tolist() == [1.0], f"an even number of negations has gradient 1, got {x.grad}"


@pytest.mark.exercise("2.3")
def test_backward_frees_the_graph():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = x.exp()
    op = weakref.ref(y._ctx)
    loss = y.sum()
    loss.backward()
    assert y._ctx is None and loss._ctx is None, "after backward each tensor should drop its _ctx"
    assert op() is None, "the Exp op (and the arrays it saved) should be freed after backward"


@pytest.mark.exercise("2.3")
def test_retain_graph_allows_a_second_backward():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    loss = (x ** 3).sum()
    loss.backward(retain_graph=True)
    loss.backward()
    assert_allclose(leaf_grad(x), 2 * 3 * x.data ** 2, err_msg="two passes over a kept graph: 2 · 3x²")


@pytest.mark.exercise("2.3")
def test_memory_does_not_grow_over_200_training_steps():
    def live_ops():
        return sum(issubclass(type(o), Function) for o in gc.get_objects())

    w = Tensor(np.linspace(-1, 1, 16), requires_grad=True)
    before = live_ops()
    for _ in range(200):
        loss = (w ** 2).tanh().sum()
        loss.backward()
        with no_grad():
            w.data -= 0.1 * w.grad
        w.zero_grad()
    assert live_ops() <= before, (
        f"{live_ops() - before} Function objects outlived their backward: drop node._ctx after use")


@pytest.mark.exercise("2.3")
def test_retain_grad_keeps_an_intermediate_gradient():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    h = x ** 2
    h.retain_grad()
    (h ** 2).sum().backward()
    assert_allclose(h.grad, 2 * h.data, err_msg="d Σh²/dh = 2h, kept because of retain_grad()")


def error_of(action):
    """The exception ``action()`` raises. Unlike pytest.raises(RuntimeError), this lets
    NotImplementedError (itself a RuntimeError) through: an unsolved exercise says so."""
    try:
        action()
    except NotImplementedError:
        raise
    except Exception as error:
        return error
    pytest.fail("expected an error, but none was raised")


@pytest.mark.exercise("2.3")
def test_backward_of_a_non_scalar_needs_an_explicit_gradient():
    x = Tensor([1.0, 2.0], requires_grad=True)
    error = error_of(lambda: (x ** 2).backward())
    assert isinstance(error, RuntimeError) and "scalar" in str(error) and "(2,)" in str(error), (
        f"backward() of a (2,) tensor has no implicit gradient: raise a RuntimeError naming the shape, got {error!r}")


@pytest.mark.exercise("2.3")
def test_backward_of_a_tensor_without_grad_is_an_error():
    error = error_of(lambda: Tensor([1.0, 2.0]).sum().backward())
    assert isinstance(error, RuntimeError) and "does not require grad" in str(error), (
        f"nothing to differentiate: raise a RuntimeError saying it 'does not require grad', got {error!r}")


def test_no_grad_records_nothing():
    x = Tensor([1.0, 2.0], requires_grad=True)
    with no_grad():
        y = (x * 2).exp()
        with no_grad():
            pass
        z = x * 3                  # still inside the outer block after the inner one closed
    assert not y.requires_grad and y._ctx is None, "under no_grad an op must not record itself"
    assert not z.requires_grad, "leaving a nested no_grad must restore 'off', not 'on'"
    assert (x * 2).requires_grad, "after no_grad, recording resumes"


def test_no_grad_is_restored_after_an_exception():
    x = Tensor([1.0], requires_grad=True)
    with pytest.raises(ZeroDivisionError), no_grad():
        1 / 0
    assert (x * 2).requires_grad


# ================================================================ broadcasting

# Property tests: reproducible (derandomize), and without Hypothesis's
# "explain" phase, which re-runs a failing test for minutes to annotate it.
PROPERTY = settings(deadline=None, derandomize=True, phases=[Phase.generate, Phase.shrink])

@pytest.mark.exercise("2.4")
def test_unbroadcast_sums_new_and_stretched_axes():
    grad = np.ones((5, 3, 4))
    reduced = unbroadcast(grad, (3, 1))
    assert reduced.shape == (3, 1), f"expected shape (3, 1), got {reduced.shape}"
    assert_array_equal(reduced, np.full((3, 1), 20.0), err_msg=(
        "each element of a (3, 1) input was used 5·4 = 20 times"))
    assert unbroadcast(grad, ()) == 60, "a scalar broadcast to (5, 3, 4) collects the sum of all 60"


@pytest.mark.exercise("2.4")
@settings(PROPERTY, max_examples=60)
@given(shapes=mutually_broadcastable_shapes(num_shapes=2, max_dims=4, max_side=3), seed=st.integers(0, 2**16))
def test_unbroadcast_is_the_adjoint_of_broadcasting(shapes, seed):
    # <broadcast(a), r> = <a, unbroadcast(r)> for every a and r: unbroadcast is
    # the transpose of the linear map "broadcast", which is what a backward is.
    rng = np.random.default_rng(seed)
    shape, out_shape = shapes.input_shapes[0], shapes.result_shape
    a, r = rng.standard_normal(shape), rng.standard_normal(out_shape)
    reduced = unbroadcast(r, shape)
    assert reduced.shape == shape, f"unbroadcast to {shape} from {out_shape} gave {reduced.shape}"
    assert_allclose((np.broadcast_to(a, out_shape) * r).sum(), (a * reduced).sum(), rtol=1e-10,
                               atol=1e-10, err_msg=f"shape {shape} broadcast to {out_shape}")


@pytest.mark.exercise("2.4")
@settings(PROPERTY, max_examples=40)
@given(shapes=mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=3),
       op=st.sampled_from(["+", "-", "*", "/"]), seed=st.integers(0, 2**16))
def test_binary_ops_backward_for_any_broadcastable_shapes(shapes, op, seed):
    rng = np.random.default_rng(seed)
    a, b = (rng.uniform(0.5, 2.0, s) for s in shapes.input_shapes)
    fn = {"+": lambda x, y: x + y, "-": lambda x, y: x - y,
          "*": lambda x, y: x * y, "/": lambda x, y: x / y}[op]
    assert gradcheck(fn, a, b)


# ========================================================= op-specific facts

def test_comparisons_give_boolean_tensors_outside_the_graph():
    x = Tensor([1.0, 2.0, 3.0], requires_grad=True)
    for name, result, expected in [("<", x < 2, [1, 0, 0]), ("<=", x <= 2, [1, 1, 0]),
                                   (">", x > 2, [0, 0, 1]), (">=", x >= 2, [0, 1, 1]),
                                   ("eq", x.eq(Tensor([1.0, 0.0, 3.0])), [1, 0, 1])]:
        assert result.dtype == bool and not result.requires_grad and result._ctx is None, (
            f"x {name} ... should be a plain boolean tensor, not part of the graph")
        assert result.numpy().tolist() == [bool(e) for e in expected], f"x {name}: got {result.numpy()}"


def test_repeated_indices_add_their_gradients():
    x = Tensor([1.0, 2.0, 3.0], requires_grad=True)
    x[[0, 0, 0, 2]].sum().backward()
    assert x.grad.tolist() == [3.0, 0.0, 1.0], (
        f"x[0] was picked 3 times, so its gradient is 3; got {x.grad}. "
        "grad[idx] += g keeps only one write per place: use backend.scatter_add")


def test_max_shares_the_gradient_between_ties():
    x = Tensor([1.0, 3.0, 3.0], requires_grad=True)
    x.max().backward()
    assert x.grad.tolist() == [0.0, 0.5, 0.5], f"two tied maxima share the gradient (as torch.amax); got {x.grad}"


def test_pow_of_a_tensor_is_not_supported():
    with pytest.raises(TypeError, match="exponent must be a number"):
        Tensor([2.0]) ** Tensor([3.0])


def test_cross_entropy_accepts_targets_as_array_list_or_tensor(rng):
    logits = Tensor(rng.standard_normal((4, 5)))
    values = {kind: F.cross_entropy(logits, targets).item()
              for kind, targets in [("array", TARGETS), ("list", TARGETS.tolist()), ("Tensor", Tensor(TARGETS))]}
    assert len(set(values.values())) == 1, f"the same targets in three containers gave {values}"


def test_cross_entropy_names_both_shapes_when_they_do_not_fit():
    with pytest.raises(ValueError, match=r"\(4, 5\) and \(3,\)"):
        F.cross_entropy(Tensor(np.zeros((4, 5))), np.array([0, 1, 2]))


def test_layer_norm_names_the_shapes_when_weight_does_not_fit():
    with pytest.raises(ValueError, match=r"\(4,\).*\(2, 5\)"):
        F.layer_norm(Tensor(np.zeros((2, 5))), Tensor(np.ones(4)), Tensor(np.zeros(4)))


def test_embedding_rejects_float_ids():
    with pytest.raises(TypeError, match="integers"):
        F.embedding(Tensor(np.zeros((4, 2))), np.array([0.0, 1.0]))


# ============================================================ numerical safety

HUGE = np.array([[1e4, 0.0, -1e4], [-1e4, 1e4, 1e4]], dtype="float32")


def test_softmax_of_huge_logits_is_exact():
    with np.errstate(over="raise", invalid="raise"):
        probs = F.softmax(Tensor(HUGE)).numpy()
    assert_array_equal(probs, [[1, 0, 0], [0, 0.5, 0.5]], err_msg=(
        "exp(1e4) overflows: subtract the row max before exp"))


def test_log_softmax_and_logsumexp_of_huge_logits_are_exact():
    with np.errstate(over="raise", invalid="raise"):
        log_probs = F.log_softmax(Tensor(HUGE)).numpy()
        lse = F.logsumexp(Tensor(HUGE)).numpy()
    assert_allclose(log_probs, [[0, -1e4, -2e4], [-2e4 - math.log(2), -math.log(2), -math.log(2)]],
                               rtol=1e-6, err_msg="compute (x - max) - log Σ exp(x - max), not x - logsumexp(x)")
    assert_allclose(lse, [1e4, 1e4 + math.log(2)], rtol=1e-6)


def test_cross_entropy_of_huge_logits_is_finite_and_exact():
    logits = Tensor(HUGE, requires_grad=True)
    with np.errstate(over="raise", invalid="raise"):
        loss = F.cross_entropy(logits, np.array([1, 0]))
        loss.backward()
    assert_allclose(loss.item(), (1e4 + 2e4 + math.log(2)) / 2, rtol=1e-6,
                               err_msg="-log p is 1e4 for row 0 and 2e4 + log 2 for row 1")
    assert_allclose(logits.grad, [[0.5, -0.5, 0], [-0.5, 0.25, 0.25]], atol=1e-7,
                               err_msg="(softmax - onehot) / N")


def test_softmax_family_matches_torch_on_huge_float32_logits(torch, rng):
    logits = (rng.standard_normal((4, 6)) * 1e4).astype("float32")
    cases = [("softmax", F.softmax, lambda x: x.softmax(-1)),
             ("log_softmax", F.log_softmax, lambda x: x.log_softmax(-1)),
             ("logsumexp", F.logsumexp, lambda x: x.logsumexp(-1)),
             ("cross_entropy", lambda x: F.cross_entropy(x, TARGETS),
              lambda x: torch.nn.functional.cross_entropy(x, torch.as_tensor(TARGETS)))]
    for name, ours, theirs in cases:
        x, y = Tensor(logits, requires_grad=True), torch.tensor(logits, requires_grad=True)
        out, expected = ours(x), theirs(y)
        out.sum().backward()
        expected.sum().backward()
        # relative to the logits' scale: float32 keeps ~7 digits of 1e4
        assert_allclose(out.numpy(), expected.detach().numpy(), rtol=1e-5, atol=1e-6 * 1e4,
                                   err_msg=f"{name} on logits of size 1e4")
        assert_allclose(x.grad, y.grad.numpy(), rtol=1e-5, atol=1e-6, err_msg=f"{name} gradient")


def test_logsumexp_of_an_all_minus_inf_row_is_minus_inf():
    with np.errstate(divide="ignore"):
        out = F.logsumexp(Tensor(np.array([[-np.inf, -np.inf], [0.0, -np.inf]]))).numpy()
    assert out.tolist() == [-np.inf, 0.0], f"log Σ exp(-inf) = log 0 = -inf (as torch), got {out}"


def test_sigmoid_does_not_overflow():
    x = Tensor(np.array([-1000.0, 0.0, 1000.0], dtype="float32"), requires_grad=True)
    with np.errstate(over="raise"):
        y = x.sigmoid()
        y.sum().backward()
    assert_array_equal(y.numpy(), [0.0, 0.5, 1.0])
    assert_array_equal(x.grad, [0.0, 0.25, 0.0])


# ================================================================== dtypes

SCALAR_EXPRESSIONS = {
    "x + int": lambda x: x + 1,
    "float * x": lambda x: 2.5 * x,
    "x / np.float64": lambda x: x / np.float64(3),
    "np.float64 - x": lambda x: np.float64(2) - x,
    "x ** np.float64": lambda x: x ** np.float64(2),
    "x ** int": lambda x: x ** 3,
    "x * float64 0-d array": lambda x: x * np.array(2.0),
    "mean": lambda x: x.mean(axis=0),
    "where with a float": lambda x: F.where(x > 0, x, 0.5),
    "masked_fill with np.float64": lambda x: F.masked_fill(x, x > 0, np.float64(-1)),
    "dropout": lambda x: F.dropout(x, 0.5),
    "gelu": F.gelu,
    "layer_norm": lambda x: F.layer_norm(x, Tensor(np.ones(3, "float32")), Tensor(np.zeros(3, "float32"))),
}


@pytest.mark.parametrize("name", SCALAR_EXPRESSIONS)
def test_float32_stays_float32_forward_and_backward(name):
    x = Tensor(np.array([[0.5, -1.0, 2.0], [1.5, 0.2, -0.3]], dtype="float32"), requires_grad=True)
    y = SCALAR_EXPRESSIONS[name](x)
    y.sum().backward()
    assert y.dtype == np.float32, f"{name}: the output became {y.dtype}; a scalar must not upcast a tensor"
    assert x.grad.dtype == np.float32, f"{name}: the gradient became {x.grad.dtype}"


def test_astype_casts_the_gradient_back():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = x.astype("float32")
    (y * 2).sum().backward()
    assert y.dtype == np.float32, f"astype('float32') gave {y.dtype}"
    assert x.grad.dtype == np.float64 and x.grad.tolist() == [2.0, 2.0], (
        f"a float64 leaf needs a float64 gradient; got {x.grad!r}")


def test_python_floats_become_float32_but_arrays_keep_their_dtype():
    assert Tensor(1.5).dtype == np.float32 and Tensor([1.0, 2.0]).dtype == np.float32
    assert Tensor(np.zeros(2)).dtype == np.float64, "an explicit float64 array stays float64 (gradcheck needs it)"
    assert Tensor([1, 2]).dtype.kind == "i"


# ================================================================= dropout

def test_dropout_zeroes_a_fraction_p_and_scales_the_rest():
    n, p = 100_000, 0.3
    y = F.dropout(Tensor(np.ones(n, dtype="float32")), p).numpy()
    zeroed = np.mean(y == 0)
    sigma = math.sqrt(p * (1 - p) / n)                      # binomial standard deviation
    assert abs(zeroed - p) < 5 * sigma, f"{zeroed:.4f} of the elements were zeroed, expected {p} ± {5 * sigma:.4f}"
    assert_allclose(np.unique(y[y != 0]), [1 / (1 - p)], rtol=1e-6,
                               err_msg="kept elements are scaled by 1/(1-p), so the expected value is unchanged")
    assert abs(y.mean() - 1) < 5 * math.sqrt(p / (1 - p) / n), f"the mean moved to {y.mean():.4f}"


def test_dropout_backward_uses_the_forward_mask():
    x = Tensor(np.ones((50, 40), dtype="float32"), requires_grad=True)
    y = F.dropout(x, 0.25)
    y.sum().backward()
    assert_array_equal(x.grad, y.numpy(), err_msg=(
        "d(x · mask/(1-p))/dx = mask/(1-p): exactly the forward output for x = 1"))


def test_dropout_in_eval_mode_is_the_identity():
    x = Tensor(np.ones(5))
    assert F.dropout(x, 0.5, training=False) is x
    assert F.dropout(x, 0.0) is x


def test_dropout_rejects_p_outside_0_to_1():
    for p in (1.0, -0.1):
        with pytest.raises(ValueError, match="p must be in"):
            F.dropout(Tensor(np.ones(3)), p)


def test_dropout_is_reproducible_from_the_seed():
    x = Tensor(np.ones(100))
    backend.seed(7)
    first = F.dropout(x, 0.5).numpy()
    backend.seed(7)
    assert array_equal(first, F.dropout(x, 0.5).numpy()), "backend.seed must fix the dropout mask"

"""Chapter 3: Module bookkeeping and the core layers, checked against ``torch.nn``.

Each layer is given the same weights as its PyTorch twin (through
``state_dict``, which also checks that the parameter names match), then
the outputs and the gradients of inputs and parameters are compared for a
fixed upstream gradient. Failure messages name the layer, the tensor and the
worst error; the code to look at is in ``minclip/nn/``.
"""
import numpy as np
import pytest

from minclip import backend
from minclip import functional as F
from minclip.gradcheck import gradcheck
from minclip.nn import (Dropout, Embedding, LayerNorm, Linear, Module, ModuleList, MultiheadAttention,
                        Parameter, QuickGELU, Sequential)
from minclip.tensor import Tensor
from support.compare import host, array_equal, assert_allclose

# Agreement with torch.nn: max |ours - torch| <= RTOL · max |torch|, per tensor.
RTOL = {np.float64: 1e-8, np.float32: 1e-4}
DTYPES = [np.float64, np.float32]


# ================================================================ Module bookkeeping

class Block(Module):
    """A transformer block's skeleton, with OpenAI's names."""

    def __init__(self, width=4, heads=2):
        super().__init__()
        self.ln_1 = LayerNorm(width)
        self.attn = MultiheadAttention(width, heads)
        self.mlp = Sequential({"c_fc": Linear(width, 2 * width), "gelu": QuickGELU(),
                               "c_proj": Linear(2 * width, width)})


class Tower(Module):
    def __init__(self):
        super().__init__()
        self.token_embedding = Embedding(10, 4)
        self.resblocks = ModuleList([Block(), Block()])
        self.head = Sequential(Linear(4, 3), Dropout(0.5))
        self.text_projection = Parameter(np.zeros((4, 3), dtype=np.float32))
        self.register_buffer("attn_mask", np.zeros((5, 5), dtype=np.float32))


BLOCK_KEYS = ["ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
              "attn.out_proj.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias"]
TOWER_KEYS = (["text_projection", "attn_mask", "token_embedding.weight"]
              + [f"resblocks.{i}.{k}" for i in range(2) for k in BLOCK_KEYS] + ["head.0.weight", "head.0.bias"])


def torch_tower(torch):
    """The same structure in PyTorch, to compare names and order."""
    nn = torch.nn

    class TorchBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = nn.LayerNorm(4)
            self.attn = nn.MultiheadAttention(4, 2, batch_first=True)
            self.mlp = nn.Sequential()
            for name, layer in [("c_fc", nn.Linear(4, 8)), ("gelu", nn.GELU()), ("c_proj", nn.Linear(8, 4))]:
                self.mlp.add_module(name, layer)

    class TorchTower(nn.Module):
        def __init__(self):
            super().__init__()
            self.text_projection = nn.Parameter(torch.zeros(4, 3))
            self.register_buffer("attn_mask", torch.zeros(5, 5))
            self.token_embedding = nn.Embedding(10, 4)
            self.resblocks = nn.ModuleList([TorchBlock(), TorchBlock()])
            self.head = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5))
    return TorchTower()


def test_state_dict_keys_and_order_match_pytorch(torch):
    """Dotted names from attributes, Sequential (numbered or named) and ModuleList, in PyTorch's
    order: each module's own parameters, then its buffers, then its children's, depth first."""
    assert list(torch_tower(torch).state_dict()) == TOWER_KEYS
    ours = list(Tower().state_dict())
    assert ours == TOWER_KEYS, f"expected the keys\n{TOWER_KEYS}\ngot\n{ours}"


def test_named_parameters_follow_assignment_order_and_skip_buffers():
    names = [n for n, _ in Block().named_parameters()]
    assert names == BLOCK_KEYS
    tower = Tower()
    assert "attn_mask" not in dict(tower.named_parameters()), "a buffer is state, not a parameter"
    assert [n for n, _ in tower.named_buffers()] == ["attn_mask"]
    assert tower.num_parameters() == sum(p.size for p in tower.parameters()) == 10 * 4 + 4 * 3 + 2 * 164 + 15


def test_setting_none_unregisters_and_shared_parameters_count_once():
    layer = Linear(3, 2)
    layer.bias = None
    assert [n for n, _ in layer.named_parameters()] == ["weight"]

    class Tied(Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = Linear(2, 2), Linear(2, 2)
            self.b.weight = self.a.weight
    tied = Tied()
    assert [n for n, _ in tied.named_parameters()] == ["a.weight", "a.bias", "b.bias"], "each parameter once"
    assert list(tied.state_dict()) == ["a.weight", "a.bias", "b.weight", "b.bias"], "every name, as PyTorch"
    tied.load_state_dict(tied.state_dict())                  # its own state dict must load back


def test_state_dict_round_trip_copies():
    """load_state_dict copies (like torch's copy_): updating one model in place leaves the other alone."""
    a, b = Tower(), Tower()
    b.load_state_dict(a.state_dict())
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert array_equal(p.data, q.data), f"{name} was not loaded"
    before = a.token_embedding.weight.data.copy()
    b.token_embedding.weight.data += 1.0                     # what an optimizer step does
    assert array_equal(a.token_embedding.weight.data, before), "the two models share an array"


def test_load_state_dict_lists_every_problem_and_changes_nothing():
    tower = Tower()
    before = {k: v.copy() for k, v in tower.state_dict().items()}
    bad = dict(before)
    del bad["head.0.bias"]
    bad["head.1.weight"] = np.zeros(3, dtype=np.float32)
    bad["token_embedding.weight"] = np.ones((11, 4), dtype=np.float32)
    bad["text_projection"] = np.ones((4, 3), dtype=np.float32)   # valid: must not be applied either
    with pytest.raises(ValueError) as error:
        tower.load_state_dict(bad)
    message = str(error.value)
    for part in ["missing keys: ['head.0.bias']", "unexpected keys: ['head.1.weight']",
                 "token_embedding.weight: expected (10, 4), got (11, 4)", "nothing was changed"]:
        assert part in message, f"the error should mention {part!r}; it says:\n{message}"
    for key, value in tower.state_dict().items():
        assert array_equal(value, before[key]), f"{key} changed although the load failed"


def test_load_state_dict_non_strict_allows_missing_and_unexpected_keys():
    layer = Linear(3, 2)
    layer.load_state_dict({"weight": np.ones((2, 3)), "extra": np.zeros(1)}, strict=False)
    assert layer.weight.dtype == np.float32 and np.all(layer.weight.data == 1), "values are cast to the parameter's dtype"
    with pytest.raises(ValueError, match=r"weight: expected \(2, 3\), got \(3, 2\)"):
        layer.load_state_dict({"weight": np.ones((3, 2))}, strict=False)


def test_train_and_eval_reach_every_submodule():
    tower = Tower().eval()
    assert not any(m.training for m in tower.modules())
    x = Tensor(np.ones((2, 4), dtype=np.float32))
    assert array_equal(tower.head[1](x).data, x.data), "Dropout must be the identity in eval mode"
    tower.train()
    assert all(m.training for m in tower.modules())
    dropped = tower.head[1](Tensor(np.ones((1000,), dtype=np.float32))).data
    assert set(np.unique(host(dropped))) == {0.0, 2.0}, "Dropout(0.5) keeps elements scaled by 1/(1-p) = 2 while training"


def test_to_dtype_casts_float_parameters_and_buffers():
    tower = Tower()
    tower.register_buffer("positions", np.arange(5))
    tower.token_embedding.weight.grad = backend.asarray(np.ones((10, 4), dtype=np.float32))
    assert tower.to(dtype="float64") is tower
    assert {p.dtype for p in tower.parameters()} == {np.dtype(np.float64)}
    assert tower.attn_mask.dtype == np.float64 and tower.positions.dtype == np.int64, "only floats are cast"
    assert tower.token_embedding.weight.grad is None, "a gradient of the old dtype is dropped"


# ================================================================ layers against torch.nn

def check_against_torch(torch, ours, theirs, inputs, dtype, call, call_torch, what):
    """Same weights, same inputs: compare outputs and every gradient.

    ``call(module, *tensors)`` returns a list of output Tensors (``call_torch``
    the same for PyTorch); the loss is Σ output·R for fixed random R, so its
    backward sends R into each output.
    """
    ours.to(dtype=dtype)
    theirs.to(torch.float64 if dtype == np.float64 else torch.float32)
    theirs.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in ours.state_dict().items()})
    xs = [Tensor(x.astype(dtype), requires_grad=True) if x.dtype.kind == "f" else Tensor(x) for x in inputs]
    ts = [torch.tensor(x.astype(dtype), requires_grad=True) if x.dtype.kind == "f" else torch.from_numpy(x)
          for x in inputs]
    outs, touts = call(ours, *xs), call_torch(theirs, *ts)
    rng = np.random.default_rng(1)
    upstream = [rng.standard_normal(t.shape).astype(dtype) for t in touts]
    sum(((o * r).sum() for o, r in zip(outs, upstream)), Tensor(np.zeros((), dtype))).backward()
    sum((t * torch.from_numpy(r)).sum() for t, r in zip(touts, upstream)).backward()

    rtol = RTOL[dtype]
    pairs = [(f"output {i}", o.data, t.detach().numpy()) for i, (o, t) in enumerate(zip(outs, touts))]
    pairs += [(f"d input {i}", x.grad, t.grad.numpy()) for i, (x, t) in enumerate(zip(xs, ts)) if t.requires_grad]
    torch_params = dict(theirs.named_parameters())
    pairs += [(f"d {name}", p.grad, torch_params[name].grad.numpy()) for name, p in ours.named_parameters()]
    for name, a, b in pairs:
        assert a is not None, f"{what}: {name} got no gradient"
        a = host(a)
        assert a.dtype == dtype, f"{what}: {name} is {a.dtype}, expected {np.dtype(dtype)}"
        error = np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)
        assert error <= rtol, (f"{what} ({np.dtype(dtype).name}): {name} differs from torch.nn by "
                               f"{error:.1e} of its size (tolerance {rtol:.0e})")


@pytest.mark.exercise("3.5")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no bias"])
@pytest.mark.parametrize("shape", [(6, 5), (2, 3, 5)], ids=["(N, in)", "(B, T, in)"])
def test_linear_matches_torch(torch, rng, dtype, bias, shape):
    check_against_torch(torch, Linear(5, 4, bias=bias), torch.nn.Linear(5, 4, bias=bias),
                        [rng.standard_normal(shape)], dtype,
                        lambda m, x: [m(x)], lambda m, x: [m(x)], f"Linear(5→4, bias={bias}) on {shape}")


@pytest.mark.exercise("3.5")
def test_linear_gradcheck(rng):
    """Finite differences, in float64, for x (B, T, in), W and b."""
    gradcheck(F.linear, rng.standard_normal((2, 3, 4)), rng.standard_normal((5, 4)), rng.standard_normal(5))
    gradcheck(F.linear, rng.standard_normal((3, 4)), rng.standard_normal((2, 4)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_matches_torch(torch, dtype):
    ids = np.array([[1, 3, 3], [9, 0, 3]])                    # repeated ids must add their gradients
    check_against_torch(torch, Embedding(10, 4), torch.nn.Embedding(10, 4), [ids], dtype,
                        lambda m, i: [m(i)], lambda m, i: [m(i)], "Embedding(10, 4)")


def test_embedding_gradcheck(rng):
    gradcheck(F.embedding, rng.standard_normal((6, 3)), np.array([[0, 5, 5], [2, 0, 1]]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_matches_torch(torch, rng, dtype):
    ours, theirs = LayerNorm(6), torch.nn.LayerNorm(6)
    ours.weight.data = backend.asarray(rng.standard_normal(6).astype(np.float32))   # not the trivial ones / zeros
    ours.bias.data = backend.asarray(rng.standard_normal(6).astype(np.float32))
    check_against_torch(torch, ours, theirs, [rng.standard_normal((2, 3, 6)) * 3 + 1], dtype,
                        lambda m, x: [m(x)], lambda m, x: [m(x)], "LayerNorm(6)")


def causal_mask(t):
    """0 on and below the diagonal, -inf above: token i sees tokens 0..i."""
    return np.triu(np.full((t, t), -np.inf), k=1)


MHA_CASES = {
    # name: (heads, Tq, Tk, separate key/value, causal mask, need_weights)
    "1 head": (1, 5, 5, False, False, False),
    "2 heads, causal": (2, 5, 5, False, True, False),
    "4 heads, causal, weights": (4, 5, 5, False, True, True),
    "2 heads, weights": (2, 4, 4, False, False, True),
    "cross, 2 heads": (2, 3, 6, True, False, False),
    "cross, 4 heads, weights": (4, 3, 6, True, False, True),
}


@pytest.mark.exercise("3.6")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", MHA_CASES)
def test_multihead_attention_matches_torch(torch, rng, dtype, case):
    heads, tq, tk, cross, causal, need_weights = MHA_CASES[case]
    D = 8
    ours, theirs = MultiheadAttention(D, heads), torch.nn.MultiheadAttention(D, heads, batch_first=True)
    ours.in_proj_bias.data = backend.asarray(rng.standard_normal(3 * D).astype(np.float32) * 0.1)   # not zeros
    ours.out_proj.bias.data = backend.asarray(rng.standard_normal(D).astype(np.float32) * 0.1)
    mask = causal_mask(tq).astype(dtype) if causal else None
    inputs = [rng.standard_normal((2, tq, D))] + ([rng.standard_normal((2, tk, D)) for _ in "kv"] if cross else [])

    def call(m, *x):
        out, weights = m(*x, attn_mask=None if mask is None else backend.asarray(mask), need_weights=need_weights)
        return [out] + ([weights] if need_weights else [])

    def call_torch(m, *x):
        q, k, v = x if cross else x * 3                  # self-attention: query = key = value
        out, weights = m(q, k, v, attn_mask=None if mask is None else torch.from_numpy(mask),
                         need_weights=need_weights)
        return [out] + ([weights] if need_weights else [])
    check_against_torch(torch, ours, theirs, inputs, dtype, call, call_torch, f"MultiheadAttention({case})")


@pytest.mark.exercise("3.6")
def test_split_heads_gives_each_head_its_slice_of_features():
    """With D = 4 and 2 heads, head 0 holds features 0-1 and head 1 features 2-3 of every token."""
    x = Tensor(np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4))   # (B, T, D)
    heads = F.split_heads(x, 2).data
    assert heads.shape == (2, 2, 3, 2), f"expected (B, H, T, d) = (2, 2, 3, 2), got {heads.shape}"
    assert array_equal(heads[1, 0], x.data[1, :, 0:2]) and array_equal(heads[1, 1], x.data[1, :, 2:4])


@pytest.mark.exercise("3.6")
def test_multihead_attention_gradcheck(rng):
    """Finite differences through the whole layer (causal, 2 heads): self-attention, and
    separate query, key and value."""
    mha = MultiheadAttention(4, 2).to(dtype="float64")
    mask = causal_mask(3)
    gradcheck(lambda x: mha(x, attn_mask=mask)[0], rng.standard_normal((2, 3, 4)))
    gradcheck(lambda q, k, v: mha(q, k, v, attn_mask=mask)[0],
              *(rng.standard_normal((2, 3, 4)) for _ in range(3)))


@pytest.mark.exercise("3.6")
def test_causal_mask_hides_the_future():
    """With the causal mask, changing the last token leaves the earlier outputs unchanged."""
    mha = MultiheadAttention(4, 2)
    x = np.random.default_rng(0).standard_normal((1, 4, 4)).astype(np.float32)
    y = x.copy()
    y[0, -1] += 10.0
    mask = backend.asarray(causal_mask(4))
    out_x, weights = mha(Tensor(x), attn_mask=mask, need_weights=True)
    out_y, _ = mha(Tensor(y), attn_mask=mask)
    assert_allclose(out_x.data[0, :3], out_y.data[0, :3], rtol=1e-6,
                               err_msg="tokens 0-2 must not see token 3")
    assert np.all(np.triu(host(weights.data[0]), k=1) == 0), "the weights above the diagonal must be 0"
    assert_allclose(weights.data.sum(axis=-1), 1.0, rtol=1e-6)


# ================================================================ bad input

@pytest.mark.parametrize("layer, x, message", [
    (Linear(4, 3), np.zeros((2, 5)), "Linear(4→3, bias=True): expected input (..., 4), got (2, 5)"),
    (LayerNorm(8), np.zeros((2, 3, 6)), "LayerNorm(8, eps=1e-05): expected input (..., 8), got (2, 3, 6)"),
    (MultiheadAttention(8, 2), np.zeros((3, 8)), "MultiheadAttention(8, num_heads=2): expected input (B, T, 8), got (3, 8)"),
    (MultiheadAttention(8, 2), np.zeros((1, 3, 4)), "MultiheadAttention(8, num_heads=2): expected input (B, T, 8), got (1, 3, 4)"),
], ids=["Linear", "LayerNorm", "MultiheadAttention 2-D", "MultiheadAttention width"])
def test_wrong_input_shape_names_layer_expected_and_received(layer, x, message):
    with pytest.raises(ValueError) as error:
        layer(Tensor(x.astype(np.float32)))
    assert str(error.value) == message


def test_wrong_key_shape_and_bad_head_count():
    mha = MultiheadAttention(8, 2)
    q = Tensor(np.zeros((1, 3, 8), dtype=np.float32))
    with pytest.raises(ValueError, match=r"expected input \(B, T, 8\), got \(1, 3, 6\)"):
        mha(q, Tensor(np.zeros((1, 3, 6), dtype=np.float32)))
    with pytest.raises(ValueError, match="embed_dim 8 is not divisible by num_heads 3"):
        MultiheadAttention(8, 3)


def test_embedding_rejects_ids_out_of_range():
    """Id -1 would silently read the last row in NumPy (and CuPy wraps large ids): an error instead."""
    table = Embedding(10, 4)
    for ids in ([[3, 10]], [[-1, 2]]):
        with pytest.raises(IndexError, match=r"Embedding\(10, 4\): ids must be in \[0, 10\)"):
            table(np.array(ids))
    with pytest.raises(TypeError, match="ids must be integers"):
        table(np.array([1.0]))


# ================================================================ initialization

def test_default_init_follows_pytorch_bounds_and_seed():
    """Linear: U(±1/√in) for weight and bias; Embedding: N(0, 1); the same seed gives the same weights."""
    from minclip import backend
    layer = Linear(400, 300)
    bound = 1 / np.sqrt(400)
    assert np.abs(host(layer.weight.data)).max() <= bound and np.abs(host(layer.weight.data)).max() > 0.99 * bound
    assert np.abs(host(layer.bias.data)).max() <= bound
    assert layer.weight.dtype == np.float32
    assert abs(Embedding(300, 300).weight.data.std() - 1) < 0.01
    backend.seed(7)
    first = Linear(3, 3).weight.data.copy()
    backend.seed(7)
    assert array_equal(Linear(3, 3).weight.data, first), "backend.seed must make initialization reproducible"

"""Chapter 3: optimizers, gradient clipping and the learning-rate schedule.

Trajectories are compared with PyTorch's ``torch.optim`` on the same start,
the same hyper-parameters, weight-decay groups and schedule, and a gradient
that depends on where the parameters are (a quadratic bowl), so an error at
one step changes every later step. If a comparison fails, look at
``minclip/optim.py``: the message names the step, the parameter and the
worst element.
"""
import json
import math

import numpy as np
import pytest

from conftest import requires_gpu
from minclip import backend
from minclip.nn import Parameter
from minclip.optim import (SGD, AdamW, CosineSchedule, clip_grad_norm_, cosine_lr,
                           param_groups_for_weight_decay)
from support.compare import host, array_equal, assert_allclose

STEPS = 20
# Agreement with PyTorch after 20 steps: |ours - torch| <= RTOL·(1 + |torch|), i.e. a few
# roundings of the dtype (machine eps 1.2e-7 in float32, 2.2e-16 in float64). Measured:
# at most 1.4 eps (PyTorch's kernels fuse some multiply-adds, NumPy rounds each op).
RTOL = {np.float32: 4 * np.finfo(np.float32).eps, np.float64: 4 * np.finfo(np.float64).eps}

# Names from a CLIP model, so the weight-decay split is the real one.
SHAPES = {
    "visual.conv1.weight": (4, 3, 2, 2),
    "visual.class_embedding": (4,),
    "positional_embedding": (5, 4),
    "transformer.resblocks.0.ln_1.weight": (4,),
    "transformer.resblocks.0.attn.in_proj_weight": (12, 4),
    "transformer.resblocks.0.attn.in_proj_bias": (12,),
    "token_embedding.weight": (7, 4),
    "text_projection": (4, 3),
    "logit_scale": (),
}


def make_problem(dtype, seed=0):
    """Start values, and the bowl L = Σ ½·c·(p - target)², whose gradient is c·(p - target)."""
    rng = np.random.default_rng(seed)
    start = {n: rng.standard_normal(s).astype(dtype) for n, s in SHAPES.items()}
    curvature = {n: rng.uniform(0.2, 3.0, s).astype(dtype) for n, s in SHAPES.items()}
    target = {n: rng.standard_normal(s).astype(dtype) for n, s in SHAPES.items()}

    def gradient(name, value):                         # on the host, identical for both libraries
        return backend.asarray(curvature[name] * (host(value) - target[name]))
    return start, gradient


def reference_lr(step, base_lr=0.05, warmup=4):
    """The schedule of the trajectory tests as a table (built another way than exercise 3.9, which it checks)."""
    ramp = np.arange(1, warmup + 1) / warmup                                       # linear warm-up to 1
    decay = (1 + np.cos(np.linspace(0, np.pi, STEPS - warmup, endpoint=False))) / 2   # half a cosine period
    return float(base_lr * np.concatenate([ramp, decay])[step])


def descend(params, optimizer, steps, gradient, first_step=0):
    """Run ``steps`` updates of minclip parameters; returns {name: values} after each step."""
    trajectory = []
    for step in range(first_step, first_step + steps):
        for group in optimizer.param_groups:
            group["lr"] = reference_lr(step)
        optimizer.zero_grad()
        for name, p in params.items():
            p.grad = gradient(name, p.data)
        optimizer.step()
        trajectory.append({n: host(p.data).copy() for n, p in params.items()})
    return trajectory


def descend_torch(torch, params, optimizer, steps, gradient):
    trajectory = []
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = reference_lr(step)
        optimizer.zero_grad()
        for name, p in params.items():
            p.grad = torch.from_numpy(host(gradient(name, p.detach().numpy())))
        optimizer.step()
        trajectory.append({n: p.detach().numpy().copy() for n, p in params.items()})
    return trajectory


def minclip_params(start):
    return {n: Parameter(v.copy()) for n, v in start.items()}


def assert_same_trajectory(ours, theirs, rtol, where):
    for step, (a, b) in enumerate(zip(ours, theirs)):
        for name in a:
            error = np.abs(a[name] - b[name]) / (1 + np.abs(b[name]))
            if error.max() > rtol:
                i = np.unravel_index(np.argmax(error), error.shape)
                pytest.fail(f"{where}: after step {step + 1}, parameter {name!r}{list(i)} is "
                            f"{a[name][i]!r} but the reference has {b[name][i]!r} (relative error "
                            f"{error.max():.1e} > {rtol:.1e}); look at the update rule in minclip/optim.py")


ADAMW_SETTINGS = {
    "torch defaults": dict(),
    "CLIP training": dict(betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2),
}


@pytest.mark.exercise("3.7")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("setting", ADAMW_SETTINGS)
def test_adamw_trajectory_matches_pytorch(torch, dtype, setting):
    """20 AdamW steps with weight-decay groups and a warm-up + cosine schedule, as PyTorch."""
    start, gradient = make_problem(dtype)
    kwargs = ADAMW_SETTINGS[setting]
    decay = kwargs.get("weight_decay", 0.01)

    ours = minclip_params(start)
    optimizer = AdamW(param_groups_for_weight_decay(ours.items(), decay), lr=0.05, **kwargs)
    theirs = {n: torch.nn.Parameter(torch.from_numpy(v.copy())) for n, v in start.items()}
    reference = torch.optim.AdamW(param_groups_for_weight_decay(theirs.items(), decay), lr=0.05,
                                  foreach=False, **kwargs)

    assert_same_trajectory(descend(ours, optimizer, STEPS, gradient),
                           descend_torch(torch, theirs, reference, STEPS, gradient),
                           RTOL[dtype], f"AdamW ({setting}, {np.dtype(dtype).name})")


SGD_SETTINGS = {
    "plain": dict(),
    "momentum": dict(momentum=0.9),
    "nesterov + weight decay": dict(momentum=0.9, nesterov=True, weight_decay=0.05),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("setting", SGD_SETTINGS)
def test_sgd_trajectory_matches_pytorch(torch, dtype, setting):
    start, gradient = make_problem(dtype)
    kwargs = SGD_SETTINGS[setting]
    ours = minclip_params(start)
    theirs = {n: torch.nn.Parameter(torch.from_numpy(v.copy())) for n, v in start.items()}
    assert_same_trajectory(descend(ours, SGD(ours.values(), lr=0.05, **kwargs), STEPS, gradient),
                           descend_torch(torch, theirs, torch.optim.SGD(theirs.values(), lr=0.05, foreach=False,
                                                                       **kwargs), STEPS, gradient),
                           RTOL[dtype], f"SGD ({setting}, {np.dtype(dtype).name})")


@pytest.mark.exercise("3.7")
def test_first_adamw_step_moves_each_weight_by_about_lr():
    """After bias correction m̂ = g and v̂ = g², so step 1 is lr·g/(|g| + eps) ≈ lr·sign(g)."""
    p = Parameter(np.array([1.0, 1.0, 1.0], dtype=np.float32))
    p.grad = backend.asarray(np.array([1e-3, -5.0, 200.0], dtype=np.float32))
    AdamW([p], lr=0.1, weight_decay=0.0).step()
    assert_allclose(p.data, [0.9, 1.1, 0.9], rtol=1e-5,
                               err_msg="the first AdamW step should be lr·sign(g), whatever |g|: "
                                       "check the bias corrections 1 - β1ᵗ and √(1 - β2ᵗ)")


@pytest.mark.exercise("3.7")
def test_adamw_weight_decay_is_decoupled():
    """With a zero gradient, AdamW only shrinks the weight: p·(1 - lr·λ), no Adam normalization."""
    p = Parameter(np.array([2.0, -4.0], dtype=np.float32))
    p.grad = backend.asarray(np.zeros(2, dtype=np.float32))
    AdamW([p], lr=0.1, weight_decay=0.5).step()
    assert_allclose(p.data, [2.0 * 0.95, -4.0 * 0.95], rtol=1e-6,
                               err_msg="weight decay should multiply the weight by (1 - lr·weight_decay)")


@pytest.mark.parametrize("make", [
    pytest.param(lambda ps: AdamW(ps, lr=0.1), id="AdamW", marks=pytest.mark.exercise("3.7")),
    pytest.param(lambda ps: SGD(ps, lr=0.1, momentum=0.9), id="SGD"),
])
def test_float32_stays_float32_in_place(make):
    """Updates happen in the parameter's own array and dtype: no float64 from Python scalars."""
    start, gradient = make_problem(np.float32)
    params = minclip_params(start)
    arrays = {n: p.data for n, p in params.items()}
    optimizer = make(params.values())
    descend(params, optimizer, 3, gradient)
    for name, p in params.items():
        assert p.data is arrays[name], f"{name}: the optimizer replaced the array instead of updating it in place"
        assert p.dtype == np.float32, f"{name}: the parameter became {p.dtype}, expected float32"
        for key, value in optimizer.state[p].items():
            if hasattr(value, "dtype"):
                assert value.dtype == np.float32, f"{name}: state {key!r} is {value.dtype}, expected float32"


@pytest.mark.parametrize("make", [lambda ps: AdamW(param_groups_for_weight_decay(ps, 0.1), lr=0.05),
                                  lambda ps: SGD([v for _, v in ps], lr=0.05, momentum=0.9, nesterov=True)],
                         ids=["AdamW", "SGD"])
def test_state_dict_round_trip_resumes_bit_identically(make):
    """Save after 10 steps, load into fresh objects, run 10 more: exactly the uninterrupted run."""
    start, gradient = make_problem(np.float32)
    params = minclip_params(start)
    optimizer = make(params.items())
    descend(params, optimizer, 10, gradient)
    saved_params = {n: p.data.copy() for n, p in params.items()}
    saved = optimizer.state_dict()
    through_json = json.loads(json.dumps(_without_arrays(saved)))    # what a checkpoint's metadata keeps
    assert through_json["param_groups"][0]["params"] == saved["param_groups"][0]["params"]
    uninterrupted = descend(params, optimizer, 10, gradient, first_step=10)

    resumed_params = minclip_params(saved_params)
    resumed = make(resumed_params.items())
    resumed.load_state_dict(saved)
    continued = descend(resumed_params, resumed, 10, gradient, first_step=10)
    for step, (a, b) in enumerate(zip(continued, uninterrupted)):
        for name in a:
            assert array_equal(a[name], b[name]), (
                f"step {11 + step}, {name}: the resumed run differs from the uninterrupted one; "
                f"state_dict/load_state_dict must keep every state array and count exactly")


@pytest.mark.gpu
@requires_gpu
def test_adamw_on_the_gpu_matches_numpy_and_its_state_resumes_on_the_cpu():
    """The same update lines run on CuPy; the state dict is NumPy, and loads onto either backend."""
    import cupy
    start, gradient = make_problem(np.float32)
    on_gpu = lambda name, value: cupy.asarray(gradient(name, cupy.asnumpy(value)))
    cpu = minclip_params(start)
    cpu_optimizer = AdamW(param_groups_for_weight_decay(cpu.items(), 0.1), lr=0.05)
    expected = descend(cpu, cpu_optimizer, 10, gradient)
    previous = backend.get_backend()
    backend.set_backend("cupy")
    try:
        gpu = minclip_params(start)                      # Parameters on the active backend: the GPU
        gpu_optimizer = AdamW(param_groups_for_weight_decay(gpu.items(), 0.1), lr=0.05)
        first_half = descend(gpu, gpu_optimizer, 5, on_gpu)
    finally:
        backend.set_backend(previous)
    saved = gpu_optimizer.state_dict()
    assert all(isinstance(v, np.ndarray) for s in saved["state"].values() for k, v in s.items() if k != "step")
    resumed = {n: Parameter(cupy.asnumpy(p.data)) for n, p in gpu.items()}
    resumed_optimizer = AdamW(param_groups_for_weight_decay(resumed.items(), 0.1), lr=0.05)
    resumed_optimizer.load_state_dict(saved)
    second_half = descend(resumed, resumed_optimizer, 5, gradient, first_step=5)
    ours = [{n: cupy.asnumpy(v) for n, v in step.items()} for step in first_half] + second_half
    assert_same_trajectory(ours, expected, RTOL[np.float32], "AdamW on the GPU, resumed on the CPU, against NumPy")


def _without_arrays(value):
    """The state dict with arrays replaced by their shapes, to check the rest is JSON-able."""
    if isinstance(value, dict):
        return {k: _without_arrays(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_arrays(v) for v in value]
    return list(value.shape) if isinstance(value, np.ndarray) else value


def adamw_after(steps):
    """(start values, gradient, parameters, AdamW) after ``steps`` steps from the start."""
    start, gradient = make_problem(np.float32)
    params = minclip_params(start)
    optimizer = AdamW(params.values(), lr=0.05)
    descend(params, optimizer, steps, gradient)
    return start, gradient, params, optimizer


def test_state_dict_is_plain_data_and_a_snapshot():
    _, gradient, params, optimizer = adamw_after(2)
    saved = optimizer.state_dict()
    first = saved["state"][0]
    assert set(first) == {"step", "exp_avg", "exp_avg_sq"}
    assert type(first["step"]) is int and first["step"] == 2
    assert isinstance(first["exp_avg"], np.ndarray) and first["exp_avg"].dtype == np.float32
    before = first["exp_avg"].copy()
    descend(params, optimizer, 1, gradient, first_step=2)
    assert array_equal(first["exp_avg"], before), "state_dict() must copy: later steps changed the saved arrays"


def test_load_state_dict_checks_before_changing():
    start, _, _, optimizer = adamw_after(1)
    saved = optimizer.state_dict()

    fewer = AdamW(list(minclip_params(start).values())[:-1], lr=0.05)
    with pytest.raises(ValueError, match=r"sizes \[9\].*\[8\]"):
        fewer.load_state_dict(saved)

    saved["state"][0]["exp_avg"] = np.zeros((1, 2), dtype=np.float32)
    saved["param_groups"][0]["lr"] = 123.0
    fresh = AdamW(minclip_params(start).values(), lr=0.05)
    with pytest.raises(ValueError, match=r"parameter 0, exp_avg: expected \(4, 3, 2, 2\), got \(1, 2\)"):
        fresh.load_state_dict(saved)
    assert fresh.param_groups[0]["lr"] == 0.05 and not fresh.state, "a failed load must change nothing"


def test_parameters_without_gradient_are_skipped_and_zero_grad_clears():
    a, b = Parameter(np.ones(2, dtype=np.float32)), Parameter(np.ones(2, dtype=np.float32))
    a.grad = backend.asarray(np.ones(2, dtype=np.float32))
    optimizer = AdamW([a, b], lr=0.1, weight_decay=0.5)
    optimizer.step()
    assert array_equal(b.data, [1, 1]), "a parameter without .grad must not move (not even by weight decay)"
    assert b not in optimizer.state or not optimizer.state[b]
    optimizer.zero_grad()
    assert a.grad is None and b.grad is None


def test_bad_construction_raises_clear_errors():
    p = Parameter(np.ones(2, dtype=np.float32))
    with pytest.raises(ValueError, match="empty parameter list"):
        AdamW([], lr=0.1)
    with pytest.raises(ValueError, match="more than one parameter group"):
        AdamW([{"params": [p]}, {"params": [p]}], lr=0.1)
    with pytest.raises(ValueError, match="invalid lr -1"):
        SGD([p], lr=-1)
    with pytest.raises(ValueError, match="nesterov"):
        SGD([p], lr=0.1, nesterov=True)
    p.grad = backend.asarray(np.ones(2, dtype=np.float64))
    with pytest.raises(ValueError, match="float32 \\(2,\\) has a gradient float64"):
        SGD([p], lr=0.1).step()


def test_groups_take_defaults_and_keep_their_own_settings():
    a, b = Parameter(np.ones(2, dtype=np.float32)), Parameter(np.ones(2, dtype=np.float32))
    optimizer = AdamW([{"params": [a], "weight_decay": 0.0}, {"params": [b], "lr": 0.5}], lr=0.1, weight_decay=0.3)
    first, second = optimizer.param_groups
    assert (first["lr"], first["weight_decay"]) == (0.1, 0.0)
    assert (second["lr"], second["weight_decay"], second["betas"]) == (0.5, 0.3, (0.9, 0.999))


# ---------------------------------------------------------- weight-decay groups

def test_weight_decay_groups_follow_open_clip_plus_embeddings():
    """No decay for gains, biases, 1-D parameters, embeddings and the logit scale."""
    start, _ = make_problem(np.float32)
    params = minclip_params(start)
    frozen = Parameter(np.ones((3, 3), dtype=np.float32))
    frozen.requires_grad = False
    no_decay, decay = param_groups_for_weight_decay([*params.items(), ("frozen.weight", frozen)], 0.1)
    names = {id(p): n for n, p in params.items()}
    assert (no_decay["weight_decay"], decay["weight_decay"]) == (0.0, 0.1)
    assert [names[id(p)] for p in decay["params"]] == [
        "visual.conv1.weight", "transformer.resblocks.0.attn.in_proj_weight", "text_projection"]
    assert [names[id(p)] for p in no_decay["params"]] == [
        "visual.class_embedding", "positional_embedding", "transformer.resblocks.0.ln_1.weight",
        "transformer.resblocks.0.attn.in_proj_bias", "token_embedding.weight", "logit_scale"]


# ------------------------------------------------------------- gradient clipping

def _grads(rng, scale):
    return [np.asarray(rng.standard_normal(s) * scale, dtype=np.float32) for s in [(4, 3), (3,), (), (2, 2, 2)]]


@pytest.mark.exercise("3.8")
@pytest.mark.parametrize("max_norm", [0.5, 1e3], ids=["clipped", "untouched"])
def test_clip_grad_norm_matches_pytorch(torch, rng, max_norm):
    grads = _grads(rng, 2.0)
    ours = [Parameter(np.zeros_like(g)) for g in grads]
    theirs = [torch.nn.Parameter(torch.zeros(g.shape)) for g in grads]
    for p, q, g in zip(ours, theirs, grads):
        p.grad, q.grad = backend.asarray(g.copy()), torch.from_numpy(g.copy())
    total = clip_grad_norm_(ours, max_norm)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm).item()
    assert total.shape == (), "the norm comes back as a 0-d array (on the device: no sync)"
    assert float(total) == pytest.approx(expected, rel=1e-6), "the returned norm is the global L2 norm before clipping"
    for p, q in zip(ours, theirs):
        assert p.grad.dtype == np.float32
        assert_allclose(p.grad, q.grad.numpy(), rtol=1e-6, atol=1e-7,
                                   err_msg="gradients should be scaled by max_norm / (total + 1e-6)")


@pytest.mark.exercise("3.8")
def test_clip_grad_norm_is_global_and_skips_missing_grads():
    """Two gradients (3, 4) and (0, 0, 12) have one norm, 13: both shrink by the same factor."""
    a, b, c = (Parameter(np.zeros(2, dtype=np.float32)) for _ in range(3))
    a.grad = backend.asarray(np.array([3.0, 4.0], dtype=np.float32))
    b.grad = backend.asarray(np.array([0.0, 12.0], dtype=np.float32))
    assert float(clip_grad_norm_([a, b, c], max_norm=1.3)) == pytest.approx(13.0)
    assert_allclose(a.grad, [0.3, 0.4], rtol=1e-6)
    assert_allclose(b.grad, [0.0, 1.2], rtol=1e-6)
    assert c.grad is None
    assert float(clip_grad_norm_([c], max_norm=1.0)) == 0.0


# ------------------------------------------------------------------- schedule

@pytest.mark.exercise("3.9")
@pytest.mark.parametrize("step, expected", [
    (0, 0.1), (4, 0.5), (9, 1.0),                    # warm-up: (step + 1) / 10
    (10, 1.0),                                       # cosine starts at the top
    (35, 0.5 * (1 + math.cos(math.pi / 4))),         # a quarter of the way: 0.8536
    (60, 0.5),                                       # half way
    (110, 0.0),                                      # the end
])
def test_cosine_lr_by_hand(step, expected):
    assert cosine_lr(step, base_lr=1.0, warmup_steps=10, total_steps=110) == pytest.approx(expected, abs=1e-12)


@pytest.mark.exercise("3.9")
@pytest.mark.parametrize("warmup, total", [(10, 100), (0, 50), (1, 1)])
def test_cosine_lr_matches_open_clip(warmup, total):
    scheduler = pytest.importorskip("open_clip_train.scheduler")

    class Holder:
        param_groups = [{}]
    reference = scheduler.cosine_lr(Holder, 3e-4, warmup, total)
    for step in range(total):
        assert cosine_lr(step, 3e-4, warmup, total) == reference(step), f"step {step} of ({warmup}, {total})"


@pytest.mark.exercise("3.9")
def test_cosine_schedule_sets_every_group_and_resumes():
    a, b = Parameter(np.ones(2, dtype=np.float32)), Parameter(np.ones(2, dtype=np.float32))
    optimizer = AdamW([{"params": [a]}, {"params": [b], "lr": 0.2}], lr=1.0)
    schedule = CosineSchedule(optimizer, warmup_steps=4, total_steps=10)
    assert schedule.step(0) == 0.25
    assert [g["lr"] for g in optimizer.param_groups] == [0.25, 0.05], "each group scales its own base lr"
    schedule.step()                                        # no index: the next step, 1
    assert [g["lr"] for g in optimizer.param_groups] == [0.5, 0.1]

    saved_optimizer, saved_schedule = optimizer.state_dict(), schedule.state_dict()
    assert saved_schedule == {"last_step": 1}
    again = AdamW([{"params": [a]}, {"params": [b], "lr": 0.2}], lr=1.0)
    again.load_state_dict(saved_optimizer)                 # brings the lrs of step 1 and the base lrs
    resumed = CosineSchedule(again, warmup_steps=4, total_steps=10)
    resumed.load_state_dict(saved_schedule)
    assert resumed.step() == schedule.step() == 0.75, "the base lr must survive the round trip"
    assert again.param_groups[1]["lr"] == optimizer.param_groups[1]["lr"]


def test_cosine_schedule_rejects_bad_lengths():
    optimizer = SGD([Parameter(np.ones(1, dtype=np.float32))], lr=0.1)
    with pytest.raises(ValueError, match="warmup_steps=20, total_steps=10"):
        CosineSchedule(optimizer, warmup_steps=20, total_steps=10)

"""Optimizers (SGD, AdamW), gradient clipping and the cosine learning-rate schedule.

The interface is PyTorch's, so a training loop reads the same::

    groups = param_groups_for_weight_decay(model.named_parameters(), weight_decay=0.1)
    optimizer = AdamW(groups, lr=5e-4, betas=(0.9, 0.98), eps=1e-6)
    schedule = CosineSchedule(optimizer, warmup_steps=100, total_steps=1000)
    for step in range(1000):
        schedule.step(step)                    # sets every group["lr"]
        optimizer.zero_grad()
        loss = ...; loss.backward()
        clip_grad_norm_(model.parameters(), max_norm=1.0)
        optimizer.step()

An optimizer holds ``param_groups``: a list of dicts, each with its
``"params"`` and its own hyper-parameters (``lr``, ``weight_decay``, ...), so
that gains, biases, embeddings and the logit scale can get no weight decay.
Updates are in place on each parameter's array and stay in its dtype: every
scalar is cast to that dtype first, so float32 never becomes float64.
"""
import math

from minclip import backend, blocked
from minclip.backend import array_module, elementwise, fused, xp
from minclip.tensor import Tensor


class Optimizer:
    """Base class: parameter groups, ``step``, ``zero_grad`` and the state dict.

    A subclass passes its default hyper-parameters and defines
    ``update_parameter(param, grad, state, group)``: the in-place update of one
    parameter array, given its gradient, its own ``state`` dict (momentum,
    moments, step count; empty at the first step) and its group.
    """

    def __init__(self, params, defaults):
        self.defaults = defaults
        self.param_groups = []
        self.state = {}                                    # Parameter -> its state dict
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        for group in params if isinstance(params[0], dict) else [{"params": params}]:
            self.add_param_group(group)

    def add_param_group(self, group):
        """Add ``{"params": [...], **hyper-parameters}``; missing ones take the defaults."""
        params = group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError(f"{type(self).__name__}: can only optimize Tensors, got {type(p).__name__}")
            if id(p) in seen:
                raise ValueError(f"{type(self).__name__}: a parameter of shape {p.shape} "
                                 f"appears in more than one parameter group")
        self.param_groups.append({**self.defaults, **group, "params": params})

    def zero_grad(self):
        """Forget every gradient (``backward`` accumulates into ``.grad``)."""
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def step(self):
        """Update every parameter that has a gradient.

        The updates do not depend on each other, so on NumPy they are spread
        over threads (``blocked.each``: NumPy releases Python's lock inside
        its loops); each is the same ``update_parameter`` call either way.
        """
        updates = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.shape != p.shape or p.grad.dtype != p.dtype:
                    raise ValueError(f"{type(self).__name__}.step: parameter {p.dtype} {p.shape} has a "
                                     f"gradient {p.grad.dtype} {p.grad.shape}; they must match")
                updates.append((p.data, p.grad, self.state.setdefault(p, {}), group))
        if updates:
            blocked.each(lambda update: self.update_parameter(*update), updates, updates[0][0])

    def update_parameter(self, param, grad, state, group):
        raise TypeError(f"{type(self).__name__} does not define update_parameter")

    # ------------------------------------------------------------ state dict
    def state_dict(self):
        """Plain data for a checkpoint: NumPy arrays and Python numbers only.

        Parameters are named by their position across all groups (0, 1, ...),
        as in PyTorch: ``{"state": {index: {"step": 3, "exp_avg": array, ...}},
        "param_groups": [{"lr": ..., "params": [0, 1, ...]}, ...]}``.
        """
        index = {id(p): i for i, p in enumerate(self._all_params())}
        state = {index[id(p)]: {k: _host_copy(v) for k, v in s.items()}
                 for p, s in self.state.items() if s}
        groups = [{**{k: v for k, v in g.items() if k != "params"},
                   "params": [index[id(p)] for p in g["params"]]} for g in self.param_groups]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore hyper-parameters and state saved by ``state_dict`` (onto this backend).

        Everything is checked before anything changes: the groups must have
        the same sizes and each saved array the shape of its parameter.
        """
        saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
        sizes, saved_sizes = [len(g["params"]) for g in self.param_groups], [len(g["params"]) for g in saved_groups]
        if sizes != saved_sizes:
            raise ValueError(f"{type(self).__name__}.load_state_dict: the saved parameter groups have "
                             f"sizes {saved_sizes}, this optimizer's have {sizes}")
        params = self._all_params()
        state = {params[int(i)]: s for i, s in saved_state.items()}
        mismatched = [f"parameter {i}, {k}: expected {params[int(i)].shape}, got {tuple(v.shape)}"
                      for i, s in saved_state.items() for k, v in s.items()
                      if _is_float_array(v) and tuple(v.shape) != params[int(i)].shape]
        if mismatched:
            raise ValueError(f"{type(self).__name__}.load_state_dict: shape mismatches, nothing was "
                             f"changed: " + "; ".join(mismatched))
        for group, saved in zip(self.param_groups, saved_groups):
            group.update({k: v for k, v in saved.items() if k != "params"})
        self.state = {p: {k: _device_copy(v, p.data) for k, v in s.items()} for p, s in state.items()}

    def _all_params(self):
        return [p for g in self.param_groups for p in g["params"]]


def _host_copy(value):
    """A NumPy copy of a state array (so later in-place updates don't change it); numbers as is."""
    return backend.to_numpy(value).copy() if hasattr(value, "shape") else value


def _is_float_array(value):
    return hasattr(value, "dtype") and value.dtype.kind == "f"


def _device_copy(value, like):
    """A saved float array copied onto ``like``'s backend and dtype; a count (the step) as a Python int."""
    if _is_float_array(value):
        return array_module(like).array(value, dtype=like.dtype)
    return value.item() if hasattr(value, "item") else value


def _check(name, value, ok, expected):
    if not ok:
        raise ValueError(f"invalid {name} {value!r}: expected {expected}")


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, PyTorch's rule (dampening 0):

        d = g + λ·p                          (weight decay λ, added to the gradient)
        b = d            at the first step,  b = μ·b + d  after
        d = d + μ·b      with nesterov,      d = b        without
        p = p - lr·d
    """

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
        _check("lr", lr, lr >= 0, ">= 0")
        _check("momentum", momentum, momentum >= 0, ">= 0")
        _check("weight_decay", weight_decay, weight_decay >= 0, ">= 0")
        _check("nesterov", nesterov, not nesterov or momentum > 0, "nesterov=True only with momentum > 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov))

    def update_parameter(self, param, grad, state, group):
        lib, cast = array_module(param), param.dtype.type
        momentum, weight_decay = group["momentum"], group["weight_decay"]
        d = grad + cast(weight_decay) * param if weight_decay else grad
        if momentum:
            buffer = state.get("momentum_buffer")
            if buffer is None:   # lib.array: an array even for a 0-d d (NumPy gives a scalar there)
                buffer = state["momentum_buffer"] = lib.array(d)
            else:
                buffer *= cast(momentum)
                buffer += d
            d = d + cast(momentum) * buffer if group["nesterov"] else buffer
        param += cast(-group["lr"]) * d


class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019), PyTorch's rule.

    Per parameter, at step t = 1, 2, ...:

        p = p · (1 - lr·λ)                       decay the weight itself, not the gradient
        m = β1·m + (1-β1)·g                      running mean of the gradient
        v = β2·v + (1-β2)·g²                     running mean of its square
        p = p - lr/(1-β1ᵗ) · m / (√v / √(1-β2ᵗ) + eps)

    The divisions by 1-βᵗ (bias correction) undo the pull of m and v toward
    their zero start during the first steps.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        _check("lr", lr, lr >= 0, ">= 0")
        _check("betas", betas, len(betas) == 2 and all(0 <= b < 1 for b in betas), "two numbers in [0, 1)")
        _check("eps", eps, eps >= 0, ">= 0")
        _check("weight_decay", weight_decay, weight_decay >= 0, ">= 0")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def update_parameter(self, param, grad, state, group):
        """One AdamW step on ``param`` in place.

        ``state`` keeps "step", "exp_avg" (m) and "exp_avg_sq" (v); every Python
        number is cast to the parameter's dtype, so float32 stays float32.
        """
        if fused(param):
            return self.update_fused(param, grad, state, group)
        # BEGIN EXERCISE 3.7: AdamW step
        lib, cast = array_module(param), param.dtype.type
        if not state:
            state.update(step=0, exp_avg=lib.zeros_like(param), exp_avg_sq=lib.zeros_like(param))
        state["step"] += 1
        t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
        lr, (beta1, beta2) = group["lr"], group["betas"]
        if group["weight_decay"]:
            param *= cast(1 - lr * group["weight_decay"])
        m += cast(1 - beta1) * (grad - m)                            # = β1·m + (1-β1)·g
        v *= cast(beta2)
        v += cast(1 - beta2) * grad * grad
        denom = lib.sqrt(v) / cast(math.sqrt(1 - beta2 ** t)) + cast(group["eps"])
        param += cast(-lr / (1 - beta1 ** t)) * (m / denom)
        # END EXERCISE

    def update_fused(self, param, grad, state, group):
        """The same step as three fused GPU kernels (``backend.elementwise``), not ~12 launches."""
        lib, cast = array_module(param), param.dtype.type
        if not state:
            state.update(step=0, exp_avg=lib.zeros_like(param), exp_avg_sq=lib.zeros_like(param))
        state["step"] += 1
        t, lr, (beta1, beta2) = state["step"], group["lr"], group["betas"]
        m = state["exp_avg"] = first_moment_kernel(state["exp_avg"], grad, cast(1 - beta1))
        v = state["exp_avg_sq"] = second_moment_kernel(state["exp_avg_sq"], grad, cast(1 - beta2))
        param[...] = adamw_kernel(param, m, v, cast(1 - lr * group["weight_decay"]), cast(lr / (1 - beta1 ** t)),
                                  cast(math.sqrt(1 - beta2 ** t)), cast(group["eps"]))


@elementwise
def first_moment_kernel(m, g, rate):
    """m + rate·(g - m) = β1·m + (1-β1)·g, with rate = 1 - β1."""
    return m + rate * (g - m)


@elementwise
def second_moment_kernel(v, g, rate):
    """v + rate·(g² - v) = β2·v + (1-β2)·g², with rate = 1 - β2."""
    return v + rate * (g * g - v)


@elementwise
def adamw_kernel(p, m, v, decay, step_size, bias2, eps):
    """p·(1 - lr·λ) - lr/(1-β1ᵗ) · m / (√v / √(1-β2ᵗ) + eps)."""
    return p * decay - step_size * m / (array_module(v).sqrt(v) / bias2 + eps)


def clip_grad_norm_(parameters, max_norm):
    """Scale all gradients together so that their global L2 norm is at most ``max_norm``.

    total = √(Σ over every parameter of Σ g²); if total > max_norm, every
    gradient is multiplied by max_norm / (total + 1e-6) (in place), which keeps
    the direction of the update and bounds its size. Parameters without a
    gradient are skipped. Returns the norm *before* clipping as a 0-d array
    (``float()`` it to log it: spikes show instability), as
    ``torch.nn.utils.clip_grad_norm_`` returns a tensor.

    Everything stays on the device: instead of asking the host whether
    total > max_norm (a GPU sync), every gradient is multiplied by
    min(1, max_norm / (total + 1e-6)), exactly 1 when no clipping is needed.
    """
    # BEGIN EXERCISE 3.8: gradient clipping
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    params = [p for p in params if p.grad is not None]
    if not params:
        return xp.zeros((), dtype="float32")
    lib = array_module(params[0].grad)
    total = lib.stack([lib.vdot(p.grad, p.grad) for p in params]).sum() ** 0.5   # () on the device
    scale = lib.minimum(max_norm / (total + 1e-6), 1.0)
    scales = {dtype: scale.astype(dtype) for dtype in {p.grad.dtype for p in params}}
    for p in params:
        p.grad *= scales[p.grad.dtype]
    return total
    # END EXERCISE


def cosine_lr(step, base_lr, warmup_steps, total_steps):
    """The learning rate at ``step`` (0-based): linear warm-up, then a cosine to zero.

    As open_clip's ``cosine_lr``:
        step < warmup:  lr = base_lr · (step + 1) / warmup
        after:          lr = ½ · (1 + cos(π · e / es)) · base_lr,
                        e = step - warmup,  es = total_steps - warmup
    Warm-up avoids huge first AdamW steps while its moment estimates are
    poor; the cosine spends most steps at a high rate and ends gently.
    """
    # BEGIN EXERCISE 3.9: cosine schedule
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    e, es = step - warmup_steps, total_steps - warmup_steps
    return 0.5 * (1 + math.cos(math.pi * e / es)) * base_lr
    # END EXERCISE


class CosineSchedule:
    """Sets every group's ``lr`` by ``cosine_lr`` before each optimizer step.

    Each group's base rate is its ``lr`` when the schedule is made, kept in
    ``group["initial_lr"]`` (as PyTorch's schedulers do), so it is saved with
    the optimizer's state. The schedule's own state is just the last step.
    """

    def __init__(self, optimizer, warmup_steps, total_steps):
        if not 0 <= warmup_steps <= total_steps or total_steps < 1:
            raise ValueError(f"CosineSchedule: need 0 <= warmup_steps <= total_steps and total_steps >= 1, "
                             f"got warmup_steps={warmup_steps}, total_steps={total_steps}")
        self.optimizer, self.warmup_steps, self.total_steps = optimizer, warmup_steps, total_steps
        self.last_step = -1
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])

    def step(self, step_index=None):
        """Set the rates for ``step_index`` (default: the step after the last one); returns group 0's."""
        self.last_step = self.last_step + 1 if step_index is None else step_index
        for group in self.optimizer.param_groups:
            group["lr"] = cosine_lr(self.last_step, group["initial_lr"], self.warmup_steps, self.total_steps)
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self):
        return {"last_step": self.last_step}

    def load_state_dict(self, state_dict):
        self.last_step = int(state_dict["last_step"])


def _no_weight_decay(name, param):
    """open_clip's rule (gains, biases, anything not a matrix, the logit scale), plus embeddings."""
    return (param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name
            or "logit_scale" in name or "embedding" in name)


def param_groups_for_weight_decay(named_parameters, weight_decay):
    """Split parameters into two groups: no decay first, then decay (open_clip's order).

    Decaying a gain, a bias, an embedding table or the logit scale toward
    zero only hurts, so those get ``weight_decay=0``: every parameter with
    fewer than 2 axes, and names containing "bn", "ln", "bias", "logit_scale"
    or "embedding" (positional, class and token embeddings). Frozen parameters
    (``requires_grad=False``) are left out.
    """
    named = [(n, p) for n, p in named_parameters if p.requires_grad]
    return [{"params": [p for n, p in named if _no_weight_decay(n, p)], "weight_decay": 0.0},
            {"params": [p for n, p in named if not _no_weight_decay(n, p)], "weight_decay": weight_decay}]

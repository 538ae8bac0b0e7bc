"""``Module`` and ``Parameter``: how layers hold their weights.

A Module is a Python object whose attributes may be Parameters (learned
Tensors), buffers (arrays that are state but not learned, such as batch
norm's running mean) or other Modules. Assigning one registers it, so

    class MLP(Module):
        def __init__(self):
            super().__init__()
            self.c_fc = Linear(4, 16)     # registered as a sub-module
            self.c_proj = Linear(16, 4)

gives ``named_parameters()`` -> ``c_fc.weight, c_fc.bias, c_proj.weight, ...``,
the same dotted names as PyTorch. That is what lets OpenAI's weights load
into minclip one to one (``state_dict`` / ``load_state_dict``).
"""
from collections import OrderedDict

from minclip import backend
from minclip.tensor import Tensor


class Parameter(Tensor):
    """A Tensor that a Module learns: ``requires_grad`` is always True."""

    def __init__(self, data, dtype=None):
        super().__init__(data, requires_grad=True, dtype=dtype)

    def __repr__(self):
        return f"Parameter(shape={self.shape}, dtype={self.dtype})"


class Module:
    """Base class of every layer and model."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # --------------------------------------------------------- registration
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}: call super().__init__() "
                                 f"before assigning {name!r}")
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        elif name in self._buffers:
            self._buffers[name] = value
        else:  # e.g. `self.bias = None` unregisters a parameter
            self._parameters.pop(name, None)
            self._modules.pop(name, None)
        object.__setattr__(self, name, value)

    def register_buffer(self, name, array):
        """State that is saved and moved with the module but not learned."""
        self._buffers[name] = array
        object.__setattr__(self, name, array)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ------------------------------------------------------------ traversal
    def named_modules(self, prefix=""):
        """(dotted name, module) for this module and every module inside it."""
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        return [m for _, m in self.named_modules()]

    def children(self):
        return list(self._modules.values())

    def named_parameters(self):
        """(dotted name, Parameter) pairs, in registration order, each once."""
        seen = set()
        for prefix, module in self.named_modules():
            for name, p in module._parameters.items():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield (f"{prefix}.{name}" if prefix else name), p

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_buffers(self):
        for prefix, module in self.named_modules():
            for name, b in module._buffers.items():
                yield (f"{prefix}.{name}" if prefix else name), b

    def num_parameters(self):
        """The number of learned scalars."""
        return sum(p.size for p in self.parameters())

    # ---------------------------------------------------------------- modes
    def train(self, mode=True):
        """Training mode (dropout on, batch norm uses batch statistics)."""
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    # ------------------------------------------------------------ state dict
    def state_dict(self):
        """Every parameter and buffer as a NumPy array, under PyTorch-style dotted keys.

        As in PyTorch, each module lists its parameters then its buffers, and a
        parameter shared by two modules appears under both names (so that
        ``load_state_dict`` finds every key it expects).
        """
        state = OrderedDict()
        for prefix, module in self.named_modules():
            arrays = {**{n: p.data for n, p in module._parameters.items()}, **module._buffers}
            for name, array in arrays.items():
                state[f"{prefix}.{name}" if prefix else name] = backend.to_numpy(array)
        return state

    def load_state_dict(self, state_dict, strict=True):
        """Copy arrays into this module's parameters and buffers.

        Everything is checked before anything changes: missing keys,
        unexpected keys and shape mismatches are reported together in one
        ValueError, and the module is left untouched. With ``strict=False``
        missing and unexpected keys are allowed (shapes must still match).
        """
        targets = dict(self._state_targets())
        missing = [k for k in targets if k not in state_dict]
        unexpected = [k for k in state_dict if k not in targets]
        mismatched = [f"{k}: expected {tuple(targets[k][0])}, got {tuple(_shape(v))}"
                      for k, v in state_dict.items()
                      if k in targets and tuple(_shape(v)) != tuple(targets[k][0])]
        problems = []
        if strict and missing:
            problems.append(f"missing keys: {missing}")
        if strict and unexpected:
            problems.append(f"unexpected keys: {unexpected}")
        if mismatched:
            problems.append("shape mismatches: " + "; ".join(mismatched))
        if problems:
            raise ValueError(f"load_state_dict into {type(self).__name__} failed, nothing was changed:\n  "
                             + "\n  ".join(problems))
        for key, value in state_dict.items():
            if key in targets:
                targets[key][1](value)
        return self

    def _state_targets(self):
        """(key, (shape, setter)) for each parameter and buffer."""
        for prefix, module in self.named_modules():
            for name, p in module._parameters.items():
                key = f"{prefix}.{name}" if prefix else name
                yield key, (p.shape, _parameter_setter(p))
            for name, b in module._buffers.items():
                key = f"{prefix}.{name}" if prefix else name
                yield key, (_shape(b), _buffer_setter(module, name))

    # ------------------------------------------------------------- movement
    def to(self, backend_name=None, dtype=None):
        """Move every parameter and buffer to a backend and/or cast floats to ``dtype``."""
        def convert(array):
            if backend_name is not None:
                array = backend.move(array, backend_name)
            if dtype is not None and array.dtype.kind == "f":
                array = array.astype(dtype)
            return array

        for module in self.modules():
            for p in module._parameters.values():
                p.data, p.grad = convert(p.data), None
            for name, b in list(module._buffers.items()):
                module.register_buffer(name, convert(b))
        return self

    # ----------------------------------------------------------------- repr
    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"({name}): " + repr(child).replace("\n", "\n  ") for name, child in self._modules.items()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        return head + ")" if not lines else head + "\n  " + "\n  ".join(lines) + "\n)"

    def check_input(self, x, ndim, last_dims, expected):
        """Raise a clear error unless ``x`` has ``ndim`` axes (None: any) ending in ``last_dims``.

        ``expected`` describes the wanted shape for the message, e.g. "(N, 3, H, W)".
        """
        shape = tuple(x.shape)
        bad_ndim = ndim is not None and len(shape) != ndim
        bad_dims = len(shape) < len(last_dims) or any(
            want is not None and got != want for want, got in zip(last_dims, shape[len(shape) - len(last_dims):]))
        if bad_ndim or bad_dims:
            raise ValueError(f"{type(self).__name__}({self.extra_repr()}): expected input {expected}, got {shape}")


def _shape(array):
    return tuple(getattr(array, "shape", ()))


def _parameter_setter(p):
    def set_value(value):  # a copy (as torch's copy_): in-place updates must not reach the caller's array
        p.data = backend.array_module(p.data).array(value, dtype=p.dtype)
    return set_value


def _buffer_setter(module, name):
    def set_value(value):
        old = module._buffers[name]
        module.register_buffer(name, backend.array_module(old).array(value, dtype=old.dtype))
    return set_value

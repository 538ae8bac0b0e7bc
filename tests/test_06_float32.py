"""No float64 anywhere in a float32 training step.

NumPy upcasts silently: ``float32_array * numpy.float64(2)`` or an
intermediate built with ``numpy.zeros(shape)`` (float64 by default) turns a
whole computation into float64, twice as slow and twice as large, and the
result still *looks* right. So these tests watch every op of one real
training step (forward, backward, clipping, AdamW) of both tiny presets.

The watch uses ``minclip.profile.watch_ops``, the wrapper that times ops for
the profiler: inside it every op's forward and backward runs through the
watcher's ``around``, so a checker placed there sees every array an op
produces: its output, the arrays it saves for backward, and the gradients it
returns.
"""
import numpy as np
import pytest

from minclip import backend
from minclip.model import CLIP, CLIPConfig
from minclip.optim import AdamW, param_groups_for_weight_decay
from minclip.profile import watch_ops
from minclip.train import train_step

BATCH = 4


class Float32Checker:
    """A stand-in profiler that runs each op and records every non-float32 float array it makes."""

    def __init__(self):
        self.problems = []
        self.calls = {"forward": 0, "backward": 0}

    def _check(self, fn, phase, what, array):
        dtype = getattr(array, "dtype", None)
        if dtype is not None and dtype.kind == "f" and dtype != np.float32:
            self.problems.append(f"{type(fn).__name__}.{phase}: {what} is {dtype} {np.shape(array)}")

    def around(self, fn, phase, run, array):
        self.calls[phase] += 1
        result = run()
        if phase == "forward":
            self._check(fn, "forward", "the output", result)
            for name, value in vars(fn).items():       # what the op saved for its backward
                self._check(fn, "forward", f"saved self.{name}", value)
        else:
            for i, g in enumerate(result):
                self._check(fn, "backward", f"the gradient of input {i}", g)
        return result


@pytest.fixture
def checker():
    with watch_ops(Float32Checker()) as watcher:
        yield watcher


def one_training_step(preset):
    """Build the preset, run one training step on a random batch; returns (model, optimizer)."""
    backend.seed(0)
    config = CLIPConfig.preset(preset)
    model = CLIP(config)
    optimizer = AdamW(param_groups_for_weight_decay(model.named_parameters(), 0.1), lr=1e-3)
    rng = np.random.default_rng(0)
    R, T, V = config.image_resolution, config.context_length, config.vocab_size
    images = rng.standard_normal((BATCH, 3, R, R), dtype=np.float32)
    ids = rng.integers(1, V - 1, (BATCH, T))
    ids[:, T // 2] = V - 1                                            # end of text
    ids[:, T // 2 + 1:] = 0
    train_step(model, optimizer, images, ids, loss_name="clip", clip_norm=1.0)
    return model, optimizer


@pytest.mark.parametrize("preset", ["tiny-vit", "tiny-rn"])
def test_every_op_of_a_training_step_stays_float32(checker, preset):
    one_training_step(preset)
    assert checker.calls["forward"] > 0 and checker.calls["backward"] > 0, (
        f"the checker saw {checker.calls}: Function.apply must call the op's forward and Tensor.backward "
        f"its backward (minclip/tensor.py), which minclip.profile.watch_ops wraps")
    assert not checker.problems, (
        f"{preset}: {len(checker.problems)} arrays were not float32 in one training step (an upcast: look for a "
        f"NumPy float64 scalar or a default-dtype array such as xp.zeros(shape) in these ops):\n  "
        + "\n  ".join(dict.fromkeys(checker.problems)))


@pytest.mark.parametrize("preset", ["tiny-vit", "tiny-rn"])
def test_parameters_gradients_and_optimizer_state_stay_float32(preset):
    model, optimizer = one_training_step(preset)
    wrong = [f"{name}: parameter {p.dtype}, gradient {None if p.grad is None else p.grad.dtype}"
             for name, p in model.named_parameters()
             if p.dtype != np.float32 or p.grad is None or p.grad.dtype != np.float32]
    names = {id(p): name for name, p in model.named_parameters()}
    wrong += [f"{names[id(p)]}: optimizer state {key} is {value.dtype}"
              for p, state in optimizer.state.items() for key, value in state.items()
              if hasattr(value, "dtype") and value.dtype != np.float32]
    wrong += [f"{name}: buffer {value.dtype}" for name, value in model.named_buffers() if value.dtype.kind == "f"
              and value.dtype != np.float32]
    assert not wrong, (f"{preset}: after one training step these are not float32 (expected every parameter, "
                       f"gradient, AdamW moment and float buffer in float32; see minclip/optim.py and the "
                       f"layer that owns them):\n  " + "\n  ".join(wrong))

"""A GPU-shaped training step, measured on the CuPy stand-in.

Each device->host copy stalls a GPU until its queue drains, so a training
step may make only two: the id range check (once, on the host copy of the
ids when there is one) and one read of the loss with the logit scale (the
loop's ``with_scale=True``); nothing from clipping or the convolutions. The stand-in counts them; these
tests run in CI's second pass (``test_gpu_standin.py``), where
``MINCLIP_BACKEND=cupy`` means the stand-in.
"""
import math

import numpy as np
import pytest

from minclip import backend, train
from minclip.model import CLIP, CLIPConfig
from minclip.optim import AdamW

pytestmark = pytest.mark.skipif(
    backend.get_backend() != "cupy" or not __import__("cupy").__file__.endswith("tests/support/cupy/__init__.py"),
    reason="counts device->host syncs with the CuPy stand-in: runs in the stand-in pass (test_gpu_standin.py)")

MAX_SYNCS_PER_STEP = 2


def loop_step(model, optimizer, images, ids, args):
    """What the training loop does for one batch: copy it to the device, step, read loss and scale."""
    loss, scale = train.train_step(model, optimizer, backend.asarray(images), backend.asarray(ids),
                                   loss_name=args.loss, clip_norm=args.grad_clip_norm, with_scale=True)
    return loss, math.exp(scale)


@pytest.mark.parametrize("preset", ["tiny-vit", "tiny-rn"])
def test_a_training_step_makes_at_most_two_syncs(preset):
    from cupy import _standin
    config = CLIPConfig.preset(preset)
    model = CLIP(config)
    optimizer = AdamW(model.parameters(), lr=1e-4)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((8, 3, config.image_resolution, config.image_resolution), dtype=np.float32)
    ids = rng.integers(1, config.vocab_size - 1, size=(8, config.context_length))
    ids[:, -1] = config.vocab_size - 1
    args = train.parse_args([])
    loop_step(model, optimizer, images, ids, args)             # warm-up: lazily built state
    _standin.reset()
    loop_step(model, optimizer, images, ids, args)
    syncs, calls = dict(_standin.syncs), sum(_standin.calls.values())
    print(f"{preset}: {sum(syncs.values())} syncs, {calls} array-library calls per step; syncs at {syncs}")
    assert sum(syncs.values()) <= MAX_SYNCS_PER_STEP, (
        f"{preset}: a training step made {sum(syncs.values())} device->host syncs, at most "
        f"{MAX_SYNCS_PER_STEP} allowed; by call site: {syncs}")

"""Does a training step on the GPU compute what it computes on the CPU?

    python benchmarks/gpu_parity.py --against cupy --out results/parity.json

Builds the tiny-vit CLIP once on NumPy, copies its weights to the other
backend, runs forward (both towers), the CLIP loss and backward on the same
batch on both, and reports the loss's relative difference and the largest
relative difference of any parameter gradient (relative to that gradient's
largest entry). The reference is always built on NumPy, whatever
``MINCLIP_BACKEND`` says. ``--against numpy`` compares NumPy with itself, a
check of the plumbing that needs no GPU (and must give exactly 0). Exits 1
when the loss differs by more than 1e-5 or a gradient by more than 1e-4.
"""
import argparse
import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from minclip import backend  # noqa: E402
from minclip.loss import clip_loss  # noqa: E402
from minclip.model import CLIP, CLIPConfig  # noqa: E402
from minclip.tensor import Tensor  # noqa: E402

LOSS_RTOL, GRAD_RTOL = 1e-5, 1e-4  # float32 on two devices: summation orders differ


def step(model, images, ids):
    """Loss and every parameter gradient (as NumPy) of one forward/backward."""
    model.zero_grad()
    loss = clip_loss(*model(Tensor(images), Tensor(ids)))
    loss.backward()
    return float(loss.item()), {name: backend.to_numpy(p.grad) for name, p in model.named_parameters()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--against", choices=["numpy", "cupy"], default="cupy")
    parser.add_argument("--model", default="tiny-vit")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    backend.set_backend("numpy")  # the reference, even under MINCLIP_BACKEND=cupy
    backend.seed(0)
    config = CLIPConfig.preset(args.model)
    model = CLIP(config)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((args.batch_size, 3, config.image_resolution, config.image_resolution), dtype=np.float32)
    ids = rng.integers(1, config.vocab_size - 1, size=(args.batch_size, config.context_length))
    ids[:, -1] = config.vocab_size - 1                                # end-of-text: the largest id
    reference_loss, reference_grads = step(model, images, ids)

    backend.set_backend(args.against)
    other = CLIP(config).to(args.against)
    other.load_state_dict(model.state_dict())
    loss, grads = step(other, backend.asarray(images), backend.asarray(ids))

    errors = {name: float(np.abs(grads[name] - g).max() / max(np.abs(g).max(), 1e-12))
              for name, g in reference_grads.items()}
    worst = max(errors, key=errors.get)
    result = {"against": args.against, "model": args.model, "batch": args.batch_size,
              "loss_numpy": reference_loss, f"loss_{args.against}": loss,
              "loss_relative_error": abs(loss - reference_loss) / abs(reference_loss),
              "max_gradient_relative_error": errors[worst], "worst_parameter": worst}
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    if result["loss_relative_error"] > LOSS_RTOL or result["max_gradient_relative_error"] > GRAD_RTOL:
        sys.exit(f"error: {args.against} differs from NumPy beyond loss {LOSS_RTOL:g} / gradients {GRAD_RTOL:g}")


if __name__ == "__main__":
    main()

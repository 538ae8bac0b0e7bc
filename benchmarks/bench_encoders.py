"""Encoder speed: one training step's forward + backward of the tiny presets, minclip against PyTorch.

    python benchmarks/bench_encoders.py [--reps 7] [--batch 128] [--threads N]

Each case runs a forward and a backward pass (float32, a batch of 128 by
default) through a minclip model and through its PyTorch twin holding the
same weights: Hugging Face ``transformers`` CLIP for the ViT and the text
tower, and the test suite's PyTorch ModifiedResNet (written from OpenAI's
``clip/model.py``) for the ResNet. Cases:

* the image tower of "tiny-vit" and of "tiny-rn" (images need no gradient);
* the text tower (shared by both presets), captions of the preset's context length;
* the whole "tiny-vit" CLIP step: both towers, the logits and the symmetric
  cross-entropy, the number that decides how long training takes.

Timing as in bench_layers.py (its ``measure`` and ``machine``): the median of
``--reps`` timed runs after two warm-up runs, the two libraries alternating so
that background load hits both alike, and the fastest run of each; the ratio
is minclip / PyTorch (below 1: minclip is faster). Both libraries use every
core, or ``--threads N``. Results go to benchmarks/results/encoders.json
(encoders_1thread.json for ``--threads 1``) with the machine description and load.
"""
import json
import os
import statistics
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from bench_layers import THREADS, machine, measure  # noqa: E402  (first: sets the BLAS threads before NumPy loads)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from test_04_encoders import hf_clip, hf_to_openai, token_ids, torch_modified_resnet  # noqa: E402

from minclip import Tensor  # noqa: E402
from minclip import functional as F  # noqa: E402
from minclip.model import CLIP, CLIPConfig, ModifiedResNet  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results",
                       "encoders.json" if THREADS == os.cpu_count() else f"encoders_{THREADS}thread.json")


def torch_symmetric_cross_entropy(logits):
    labels = torch.arange(logits.shape[0])
    return (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels)) / 2


def minclip_symmetric_cross_entropy(logits):
    labels = np.arange(logits.shape[0])
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) * 0.5


def vit_cases(batch):
    """(name, minclip step, torch step) for the tiny-vit towers and the full step."""
    config = CLIPConfig.preset("tiny-vit")
    hf = hf_clip(torch, config).float().train()
    ours = CLIP(config).load_state_dict(hf_to_openai({k: v.numpy() for k, v in hf.state_dict().items()}))
    rng = np.random.default_rng(0)
    images = rng.standard_normal((batch, 3, config.image_resolution, config.image_resolution), dtype=np.float32)
    ids = token_ids(rng, batch, config.context_length, config.vocab_size)
    t_images, t_ids = torch.from_numpy(images), torch.from_numpy(ids)
    upstream = np.ones((batch, config.embed_dim), dtype=np.float32)
    t_upstream = torch.from_numpy(upstream)

    def step(loss):
        def run():
            loss().backward()
        return run

    yield ("tiny-vit image tower",
           step(lambda: (ours.encode_image(images) * upstream).sum()),
           step(lambda: (hf.visual_projection(hf.vision_model(pixel_values=t_images).pooler_output) * t_upstream).sum()))
    yield ("text tower (ctx %d)" % config.context_length,
           step(lambda: (ours.encode_text(ids) * upstream).sum()),
           step(lambda: (hf.text_projection(hf.text_model(input_ids=t_ids).pooler_output) * t_upstream).sum()))

    def minclip_loss():
        image_features, text_features, scale = ours(images, ids)
        return minclip_symmetric_cross_entropy(scale * image_features @ text_features.T)

    yield ("tiny-vit CLIP step", step(minclip_loss),
           step(lambda: torch_symmetric_cross_entropy(hf(input_ids=t_ids, pixel_values=t_images).logits_per_image)))


def resnet_case(batch):
    config = CLIPConfig.preset("tiny-rn")
    shape = dict(layers=config.vision_layers, output_dim=config.embed_dim, heads=config.vision_heads,
                 input_resolution=config.image_resolution, width=config.vision_width)
    twin = torch_modified_resnet(torch)(**shape).train()
    ours = ModifiedResNet(**shape).load_state_dict({k: v.numpy() for k, v in twin.state_dict().items()})
    images = np.random.default_rng(0).standard_normal((batch, 3, 32, 32), dtype=np.float32)
    t_images, images = torch.from_numpy(images), Tensor(images)
    upstream = np.ones((batch, config.embed_dim), dtype=np.float32)

    def run_ours():
        (ours(images) * upstream).sum().backward()

    def run_theirs():
        (twin(t_images) * torch.from_numpy(upstream)).sum().backward()
    yield "tiny-rn image tower", run_ours, run_theirs


def main():
    reps = int(sys.argv[sys.argv.index("--reps") + 1]) if "--reps" in sys.argv else 7
    batch = int(sys.argv[sys.argv.index("--batch") + 1]) if "--batch" in sys.argv else 128
    torch.set_num_threads(THREADS)
    print(f"forward + backward, float32, batch {batch}, median of {reps}; NumPy and torch on {THREADS} thread(s)")
    print(f"{'case':<24}{'minclip ms':>12}{'torch ms':>10}{'ratio':>8}{'fastest':>16}")
    rows = []
    for name, ours, theirs in [*vit_cases(batch), *resnet_case(batch)]:
        times = measure(ours, theirs, reps)
        ours_s, torch_s = statistics.median(times["minclip"]), statistics.median(times["torch"])
        rows.append({"case": name, "batch": batch, "minclip_ms": round(ours_s * 1e3, 1),
                     "torch_ms": round(torch_s * 1e3, 1), "ratio": round(ours_s / torch_s, 2),
                     "minclip_fastest_ms": round(min(times["minclip"]) * 1e3, 1),
                     "torch_fastest_ms": round(min(times["torch"]) * 1e3, 1)})
        fastest = f"{rows[-1]['minclip_fastest_ms']:.0f} / {rows[-1]['torch_fastest_ms']:.0f}"
        print(f"{name:<24}{ours_s * 1e3:>12.1f}{torch_s * 1e3:>10.1f}{ours_s / torch_s:>8.2f}{fastest:>16}")
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump({"machine": machine(), "reps": reps, "results": rows}, f, indent=2)
    print(f"written to {os.path.relpath(RESULTS)}")


if __name__ == "__main__":
    main()

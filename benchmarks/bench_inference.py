"""Inference speed and memory of the published shapes: minclip against PyTorch on the CPU.

    python benchmarks/bench_inference.py [--reps 3] [--no-memory] [--profile] [CASE ...]

Cases (float32, evaluation mode, no gradients recorded on either side):

* ``vit-b-32 image``: ViT-B/32 ``encode_image`` on 8 images of 224×224;
* ``rn50 image``: RN50 ``encode_image`` on 8 images of 224×224 (batch norm
  with its running statistics);
* ``text``: ``encode_text`` on 64 captions at context 77 (the 12-layer,
  512-wide text tower that ViT-B/32 and RN50 share).

The weights are minclip's random initialization (no download), copied into
OpenAI's model in PyTorch (``torch_clip.py``); the outputs must agree before
any timing. Reported: median of ``--reps`` alternating calls after one
warm-up call each, the ratio minclip / PyTorch, and the peak memory of one
call of each (a fresh process per library, see README.md).
Results: benchmarks/results/inference.json.
"""
import sys

import common  # first: it fixes the thread counts before NumPy loads
import numpy as np
import torch
import torch_clip

from minclip import backend, no_grad
from minclip.model import CLIP, CLIPConfig

IMAGES, CAPTIONS = 8, 64
CASES = {"vit-b-32 image": ("ViT-B-32", "image"), "rn50 image": ("RN50", "image"), "text": ("ViT-B-32", "text")}


def build(case, library="both"):
    """(minclip call, torch call) of one case on the same weights and inputs; a side not asked for is None."""
    preset, tower = CASES[case]
    config = CLIPConfig.preset(preset)
    backend.seed(0)
    model = CLIP(config).eval()
    rng = np.random.default_rng(0)
    if tower == "image":
        R = config.image_resolution
        inputs = rng.standard_normal((IMAGES, 3, R, R), dtype=np.float32)
    else:
        inputs = rng.integers(1, config.vocab_size - 1, (CAPTIONS, config.context_length))
        inputs[:, -1] = config.vocab_size - 1                        # end-of-text: the highest id
    twin = torch_clip.from_minclip(model).eval() if library in ("both", "torch") else None

    def ours():
        with no_grad():
            return getattr(model, f"encode_{tower}")(inputs).numpy()

    def theirs():
        with torch.no_grad():
            return getattr(twin, f"encode_{tower}")(torch.from_numpy(inputs)).numpy()
    return (ours if library in ("both", "minclip") else None), (theirs if twin is not None else None)


def run(case, reps, memory=True, with_profile=False):
    ours, theirs = build(case)
    result = {"case": case, "check": float(f"{common.check_close(case, ours(), theirs()):.2e}")}
    return common.timed_case(result, ours, theirs, reps, __file__, memory, with_profile)


def main():
    child = common.memory_child_args()
    if child:
        case, library = child
        ours, theirs = build(case, library)
        return common.measure_step_memory(ours if library == "minclip" else theirs, library)
    reps = common.parse_reps(3)
    memory = "--no-memory" not in sys.argv
    cases = [a for a in sys.argv[1:] if a in CASES] or list(CASES)
    print(f"inference, float32, median of {reps}; {common.threads_text()}")
    print(common.table_header(memory=memory))
    results = []
    for case in cases:
        result = run(case, reps, memory, "--profile" in sys.argv)
        results.append(result)
        print(common.format_row(case, result), flush=True)
        if "profile" in result:
            print(common.format_profile(result["profile"]))
    common.write_results("inference", {"images": IMAGES, "captions": CAPTIONS, "results": results})


if __name__ == "__main__":
    main()

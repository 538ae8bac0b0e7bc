"""minclip on CuPy against PyTorch CUDA: training steps and inference on one GPU.

    python benchmarks/bench_gpu.py --out results/gpu.json [--reps 10]

The same models as bench_train_step.py and bench_inference.py, with the
weights copied across, moved to the GPU: minclip with ``.to("cupy")``,
PyTorch's twin with ``.cuda()``. Each timed call ends in a device-to-host
copy of the loss (or of the features), so both sides have really finished.
Targets (minclip time / PyTorch time): at most 1.5 for the tiny-vit training
step at batch 512 and for ViT-B/32 ``encode_image`` at batch 128; the script
exits 1 when a case misses its target.
Run by benchmarks/gpu_check.sh; needs CuPy, a GPU and PyTorch with CUDA.
"""
import argparse
import json
import pathlib
import sys

import common
import torch
import torch_clip
from bench_train_step import config_for, make_batch, minclip_trainer, torch_trainer

from minclip import backend
from minclip.model import CLIP, CLIPConfig
from minclip.tensor import Tensor, no_grad

TRAIN_CASES = {"tiny-vit": 512}  # case -> batch
INFERENCE_BATCH = 128
TARGET_RATIO = 1.5


def train_case(case, batch, reps):
    backend.set_backend("numpy")
    backend.seed(0)
    config = config_for(case)
    model = CLIP(config)
    twin = torch_clip.from_minclip(model).cuda()
    images, ids = make_batch(config, batch)
    backend.set_backend("cupy")
    model.to("cupy")
    ours = minclip_trainer(model, backend.asarray(images), backend.asarray(ids))
    theirs = torch_trainer(twin, images, ids, device="cuda")
    return {"case": f"train step {case}, batch {batch}", **common.compare(ours, theirs, reps, warmup=3)}


def inference_case(reps, batch):
    backend.set_backend("numpy")
    backend.seed(0)
    config = CLIPConfig.preset("ViT-B-32")
    model = CLIP(config).eval()
    twin = torch_clip.from_minclip(model).cuda().eval()
    images, _ = make_batch(config, batch)
    backend.set_backend("cupy")
    model.to("cupy")
    gpu_images = Tensor(backend.asarray(images))
    torch_images = torch.from_numpy(images).cuda()

    def ours():
        with no_grad():
            return backend.to_numpy(model.encode_image(gpu_images).data)

    def theirs():
        with torch.no_grad():
            return twin.encode_image(torch_images).cpu().numpy()

    return {"case": f"ViT-B/32 encode_image, {batch} images", **common.compare(ours, theirs, reps, warmup=3)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    results = ([train_case(case, batch, args.reps) for case, batch in TRAIN_CASES.items()]
               + [inference_case(args.reps, INFERENCE_BATCH)])
    for r in results:
        print(f"{r['case']:<40} minclip {r['minclip_ms']:9.2f} ms   torch {r['torch_ms']:9.2f} ms   "
              f"ratio {r['ratio']:.2f} (target <= {TARGET_RATIO})")
    payload = {"machine": common.machine(), "gpu": torch.cuda.get_device_name(), "target_ratio": TARGET_RATIO,
               "results": results}
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(json.dumps(payload, indent=1))
    missed = [r["case"] for r in results if r["ratio"] > TARGET_RATIO]
    if missed:
        sys.exit(f"error: slower than {TARGET_RATIO}x PyTorch CUDA: {', '.join(missed)}")


if __name__ == "__main__":
    main()

"""Speed of ``minclip.search``: index throughput and query latency, on the CPU.

    python benchmarks/bench_search.py [--images 64] [--rows 1000000] [--reps 5]

* **index throughput** (images/s): ViT-B/32-sized random weights; ``--images``
  JPEG photos of 320×256 written to a temporary folder, then read, decoded,
  preprocessed (resize, crop, normalize) and embedded in batches of 32 by
  ``embed_image_files``, the loop of ``python -m minclip.search index``.
  Loading the checkpoint and fingerprinting its weights are timed apart: they
  happen once per command, not per image.
* **query latency**: ``top_k`` (chunked matrix-vector product and stable
  selection) over ``--rows`` random unit embeddings of 512 floats (1M rows: 2 GB),
  k = 8; and a whole text query: the text tower on one caption, then ``top_k``.

Median of ``--reps`` runs after one warm-up. Results: benchmarks/results/search.json.
"""
import argparse
import os
import statistics
import tempfile
import time

import common  # first: it fixes the thread counts before NumPy loads
import numpy as np
from PIL import Image

from minclip import backend
from minclip.model import CLIP, CLIPConfig
from minclip.predict import embed_image_files
from minclip.search import embed_query, fingerprint, top_k
from minclip.tokenizer import CLIPTokenizer


def median_seconds(call, reps):
    call()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def index_throughput(model, n_images):
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for i in range(n_images):
            path = os.path.join(folder, f"{i:05d}.jpg")
            Image.fromarray(rng.integers(0, 256, (256, 320, 3), dtype=np.uint8)).save(path, quality=90)
            paths.append(path)
        embed_image_files(model, paths[:32])                               # warm-up
        start = time.perf_counter()
        embeddings, _ = embed_image_files(model, paths, batch_size=32)
        seconds = time.perf_counter() - start
    assert embeddings.shape == (n_images, 512)
    return n_images / seconds, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64, help="images to index (default 64)")
    parser.add_argument("--rows", type=int, default=1_000_000, help="embeddings to query (default 1,000,000)")
    parser.add_argument("--reps", type=int, default=5, help="timed queries (default 5)")
    args = parser.parse_args()

    backend.seed(0)
    model = CLIP(CLIPConfig.preset("ViT-B-32")).eval()
    start = time.perf_counter()
    fingerprint(model)
    fingerprint_s = time.perf_counter() - start
    images_per_s, index_s = index_throughput(model, args.images)
    print(f"index: {args.images} images of 320x256 in {index_s:.1f} s: {images_per_s:.1f} images/s "
          f"(ViT-B/32, {common.threads_text()}); fingerprint of the weights {fingerprint_s:.2f} s once")

    rng = np.random.default_rng(0)
    embeddings = rng.standard_normal((args.rows, 512), dtype=np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    query = embeddings[123]
    top_k_s = median_seconds(lambda: top_k(embeddings, query, 8), args.reps)
    assert top_k(embeddings, query, 8)[0][0] == 123
    tokenizer = CLIPTokenizer()
    text_s = median_seconds(lambda: top_k(embeddings, embed_query(model, tokenizer, text="a red car"), 8),
                            args.reps)
    print(f"query: top 8 of {args.rows:,} embeddings in {1e3 * top_k_s:.0f} ms; "
          f"a text query (text tower + top 8) in {1e3 * text_s:.0f} ms")
    common.write_results("search", {
        "index": {"model": "ViT-B-32 (random weights)", "images": args.images, "image_size": [320, 256],
                  "batch_size": 32, "images_per_s": round(images_per_s, 2), "seconds": round(index_s, 2),
                  "fingerprint_s": round(fingerprint_s, 3)},
        "query": {"rows": args.rows, "embed_dim": 512, "k": 8, "top_k_ms": round(1e3 * top_k_s, 1),
                  "text_query_ms": round(1e3 * text_s, 1), "reps": args.reps}})


if __name__ == "__main__":
    main()

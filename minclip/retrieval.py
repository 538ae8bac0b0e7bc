"""Image↔text retrieval metrics: Recall@K and the rank of the true match.

Given N images and N captions (pair i belongs together), score every image
against every caption with the cosine similarity (N, N). For image i, rank
the captions by score: the rank r_i of its true caption (1 = first) tells how
well retrieval worked. Recall@K is the fraction of queries with r_i ≤ K.
The same from the captions' side uses the transposed matrix.

When several captions are equally right (COCO has five per image; the
built-in dataset repeats identical captions), pass ``groups``: entries with
the same group id all count as matches, and the rank is that of the best one.
"""
from minclip.backend import array_module, to_numpy


def ranks(similarity, matches):
    """Rank (1 = best) of the best-scoring match in each row.

    ``similarity`` (N, M) scores; ``matches`` (N, M) bool marks the right
    answers. Ties count against the query: every wrong candidate that scores
    at least as high as the best right one is ranked above it, so a model that
    gives every caption the same score ranks last, not first.
    """
    if similarity.shape != matches.shape:
        raise ValueError(f"ranks: similarity {similarity.shape} and matches {matches.shape} differ in shape: "
                         f"retrieval needs N images and N texts, pair i together, and one group id per pair")
    lib = array_module(similarity)
    best_match = lib.where(matches, similarity, -lib.inf).max(axis=1, keepdims=True)   # (N, 1)
    return 1 + ((similarity >= best_match) & ~matches).sum(axis=1)                    # (N,)


def retrieval_metrics(image_features, text_features, groups=None, ks=(1, 5, 10)):
    """open_clip-style metrics from normalized features (N, E) of matching pairs.

    ``groups`` (optional, length N): pair i's group id; an image matches every
    caption of its group. Default: only caption i matches image i.
    """
    # BEGIN EXERCISE 7.2: Recall@K in both directions
    similarity = image_features @ text_features.T                     # (N images, N texts)
    lib = array_module(similarity)
    groups = lib.arange(len(similarity)) if groups is None else lib.asarray(groups)
    matches = groups[:, None] == groups[None, :]                      # (N, N)
    metrics = {}
    for name, sim in (("image_to_text", similarity), ("text_to_image", similarity.T)):
        r = ranks(sim, matches)                                       # (N,)
        stats = lib.stack([r.mean(), lib.median(r), *[(r <= k).mean() for k in ks]])
        mean, median, *recalls = to_numpy(stats).tolist()             # one copy to the host: Python floats
        metrics[f"{name}_mean_rank"], metrics[f"{name}_median_rank"] = mean, median
        metrics.update({f"{name}_R@{k}": recall for k, recall in zip(ks, recalls)})
    return metrics
    # END EXERCISE

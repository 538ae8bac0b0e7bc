"""The contrastive losses that train CLIP: ``clip_loss`` and ``siglip_loss``.

A batch holds N matching (image, text) pairs. Both encoders map their input
to a unit vector, and every image is compared with every text:

    logits[i, j] = t · ⟨image_i, text_j⟩          (N, N)

where t = exp(log t) is the learned *temperature* (``logit_scale``, 1/0.07 at
initialization). The N diagonal entries are the true pairs; the N² - N others
are negatives that come for free from the rest of the batch.

* CLIP (InfoNCE) reads each row as an N-way classification "which text is
  mine?" and each column as "which image is mine?": a softmax cross-entropy
  in both directions, averaged.
* SigLIP reads every entry as an independent yes/no question "is this a true
  pair?": a sigmoid (logistic) loss per entry, with a learned bias, and no
  softmax over the batch.

The gradients come from autodiff through fused ops (``F.cross_entropy``) and
the stable ``F.log_sigmoid``, which never overflows.
"""
import math

from minclip import functional as F
from minclip.functional import log_sigmoid
from minclip.tensor import Tensor

CLIP_INIT_LOGIT_SCALE = math.log(1 / 0.07)   # log t for CLIP: t = 1/0.07 ≈ 14.3
SIGLIP_INIT_LOGIT_SCALE = math.log(10.0)     # log t for SigLIP: t = 10
SIGLIP_INIT_LOGIT_BIAS = -10.0               # b for SigLIP: every pair starts as "probably not"


def _check_scalar(name, value):
    if isinstance(value, Tensor) and value.size != 1:
        raise ValueError(f"{name} must be a scalar (a Tensor of shape () or (1,)), got shape {value.shape}")


def similarity_logits(image_features, text_features, logit_scale):
    """The (N, N) matrix of scaled cosine similarities, images along rows.

        logits[i, j] = logit_scale · ⟨image_features[i], text_features[j]⟩

    The features are already L2-normalized, so the dot product is the cosine
    similarity, in [-1, 1]; ``logit_scale`` (t, the exp of the learned log
    temperature) stretches that range to [-t, t] so that a softmax can become
    confident. Row i compares image i with every text; column j compares
    text j with every image (so ``logits.T`` is OpenAI's ``logits_per_text``).
    """
    # BEGIN EXERCISE 5.1: the similarity logits
    if image_features.ndim != 2 or image_features.shape != text_features.shape:
        raise ValueError(f"expected image and text features of the same shape (N, D), got "
                         f"image {image_features.shape} and text {text_features.shape}")
    _check_scalar("logit_scale", logit_scale)
    return logit_scale * (image_features @ text_features.T)          # (N, N)
    # END EXERCISE


def clip_loss(image_features, text_features, logit_scale):
    """CLIP's symmetric contrastive (InfoNCE) loss, a scalar Tensor.

    With logits = ``similarity_logits(...)`` and labels = arange(N) (pair i
    sits on the diagonal):

        L = ½ · [ CE(logits, labels) + CE(logitsᵀ, labels) ]

    The first term asks each image to pick its text out of the N texts in
    the batch (a softmax over each row), the second asks each text to pick
    its image (a softmax over each column). It is the formula of OpenAI's
    paper (Figure 3) and of open_clip's ``ClipLoss``.

    Sanity check at initialization: with random features every logit is
    about the same, each softmax is close to uniform over N choices, and the
    loss is close to ln(N): 3.47 for N = 32, 10.4 for N = 32768. (Exactly,
    with logits of spread σ = t/√D it is about ln N + σ²/2.) A first loss far
    from ln N means a bug before training has even started.
    """
    # BEGIN EXERCISE 5.2: the symmetric CLIP loss
    logits = similarity_logits(image_features, text_features, logit_scale)   # (N, N)
    labels = logits.xp.arange(logits.shape[0])                               # (N,)
    image_to_text = F.cross_entropy(logits, labels)
    text_to_image = F.cross_entropy(logits.T, labels)
    return (image_to_text + text_to_image) * 0.5
    # END EXERCISE


def siglip_loss(image_features, text_features, logit_scale, logit_bias):
    """SigLIP's pairwise sigmoid loss (Zhai et al., 2023), a scalar Tensor.

    Every one of the N² entries is its own binary question, with label
    y = +1 on the diagonal (a true pair) and y = -1 elsewhere:

        z_ij = logit_scale · ⟨image_i, text_j⟩ + logit_bias
        L = -(1/N) · Σ_ij log σ(y_ij · z_ij)

    (summed over all N² pairs, divided by N, as open_clip's ``SigLipLoss``).
    No softmax couples the batch, so each pair's loss needs no other row.
    Since N² - N of the labels are negative, the paper starts from
    logit_scale = 10 (log t = ln 10) and logit_bias = -10: every pair begins
    as "probably not a match", close to the true prior, which avoids large
    corrections in the first steps.
    """
    # BEGIN EXERCISE 5.4: the SigLIP loss
    _check_scalar("logit_bias", logit_bias)
    logits = similarity_logits(image_features, text_features, logit_scale) + logit_bias  # (N, N)
    n = logits.shape[0]
    labels = 2 * logits.xp.eye(n, dtype=logits.dtype) - 1                    # (N, N): +1 / -1
    return -log_sigmoid(logits * labels).sum() * (1.0 / n)
    # END EXERCISE

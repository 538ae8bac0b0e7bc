"""Chapter 5: the contrastive losses (minclip/loss.py).

Hand-computed small cases first, then the ln(N) sanity check, gradient
checks in float64, and parity with open_clip's ClipLoss / SigLipLoss
formulas written out in PyTorch.
"""
import math

import numpy as np
import pytest

from minclip import Tensor, gradcheck
from minclip.functional import log_sigmoid
from minclip.loss import (SIGLIP_INIT_LOGIT_BIAS, SIGLIP_INIT_LOGIT_SCALE, clip_loss,
                          siglip_loss, similarity_logits)
from support.compare import assert_allclose

# Two images (the standard basis) and two texts: text 0 leans towards image 1.
IMAGES = [[1.0, 0.0], [0.0, 1.0]]
TEXTS = [[0.6, 0.8], [0.0, 1.0]]


def unit_rows(rng, n, d, dtype="float64"):
    """n random unit vectors of dimension d: what the encoders hand to the loss."""
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(dtype)


def lse(*values):
    return math.log(sum(math.exp(v) for v in values))


# ------------------------------------------------------------ 5.1 logits

@pytest.mark.exercise("5.1")
def test_similarity_logits_are_scaled_dot_products():
    logits = similarity_logits(Tensor(IMAGES), Tensor(TEXTS), Tensor(2.0))
    expected = 2.0 * np.array([[0.6, 0.0], [0.8, 1.0]])   # row i: image i against each text
    assert logits.shape == (2, 2), f"expected an (N, N) = (2, 2) matrix, got {logits.shape}"
    assert_allclose(logits.numpy(), expected, rtol=1e-6, err_msg=(
        "logits[i, j] should be logit_scale * <image_i, text_j>: images along rows, texts along columns"))


@pytest.mark.exercise("5.1")
def test_similarity_logits_name_both_shapes_on_mismatch():
    with pytest.raises(ValueError, match=r"\(4, 8\).*\(4, 6\)"):
        similarity_logits(Tensor(np.zeros((4, 8))), Tensor(np.zeros((4, 6))), 1.0)


@pytest.mark.exercise("5.1")
def test_similarity_logits_reject_a_non_scalar_scale():
    with pytest.raises(ValueError, match="logit_scale"):
        similarity_logits(Tensor(IMAGES), Tensor(TEXTS), Tensor([1.0, 2.0]))


# --------------------------------------------------------- 5.2 CLIP loss

@pytest.mark.exercise("5.2")
def test_clip_loss_by_hand():
    # logits = [[0.6, 0.0], [0.8, 1.0]] with logit_scale 1; the labels are the diagonal.
    rows = (lse(0.6, 0.0) - 0.6) + (lse(0.8, 1.0) - 1.0)      # image -> text: softmax over each row
    columns = (lse(0.6, 0.8) - 0.6) + (lse(0.0, 1.0) - 1.0)   # text -> image: softmax over each column
    expected = 0.5 * (rows / 2 + columns / 2)
    got = clip_loss(Tensor(IMAGES), Tensor(TEXTS), Tensor(1.0)).item()
    assert got == pytest.approx(expected, rel=1e-6), (
        f"expected ½(CE over rows + CE over columns) = {expected:.6f}, got {got:.6f}; "
        f"a value of {rows / 2:.6f} or {columns / 2:.6f} means only one direction is counted")


@pytest.mark.exercise("5.2")
def test_clip_loss_is_near_ln_n_at_initialization(rng):
    n, d = 128, 1024
    images, texts = Tensor(unit_rows(rng, n, d, "float32")), Tensor(unit_rows(rng, n, d, "float32"))
    loss = clip_loss(images, texts, Tensor(np.float32(1 / 0.07))).item()
    assert abs(loss - math.log(n)) < 0.05 * math.log(n), (
        f"with random unit features each softmax is nearly uniform over N = {n} choices, so the loss "
        f"should be close to ln N = {math.log(n):.3f}; got {loss:.3f}")


@pytest.mark.exercise("5.2")
def test_clip_loss_vanishes_for_perfect_pairs():
    features = Tensor(np.eye(4))                 # every image equals its text and is orthogonal to the rest
    loss = clip_loss(features, features, Tensor(100.0)).item()
    assert loss < 1e-10, f"perfectly separated pairs with a large logit_scale should cost ~0, got {loss:.3g}"


@pytest.mark.exercise("5.2")
def test_clip_loss_gradcheck(rng):
    images, texts = unit_rows(rng, 5, 3), unit_rows(rng, 5, 3)
    assert gradcheck(clip_loss, images, texts, np.array(3.0))


@pytest.mark.exercise("5.2")
@pytest.mark.parametrize("dtype, tol", [("float64", 1e-10), ("float32", 1e-5)])
def test_clip_loss_matches_open_clip(torch, rng, dtype, tol):
    images, texts, scale = unit_rows(rng, 8, 16, dtype), unit_rows(rng, 8, 16, dtype), np.array(1 / 0.07, dtype)

    def reference(image_features, text_features, logit_scale):
        """open_clip's ClipLoss (one process): the mean of the two cross-entropies."""
        logits_per_image = logit_scale * image_features @ text_features.T
        logits_per_text = logit_scale * text_features @ image_features.T
        labels = torch.arange(image_features.shape[0])
        return (torch.nn.functional.cross_entropy(logits_per_image, labels)
                + torch.nn.functional.cross_entropy(logits_per_text, labels)) / 2

    assert_matches_torch(torch, clip_loss, reference, [images, texts, scale], tol,
                         ["image_features", "text_features", "logit_scale"])


# ------------------------------------------------------- 5.4 SigLIP loss

@pytest.mark.exercise("5.4")
def test_siglip_loss_by_hand():
    # z = logits + bias with logits = [[0.6, 0.0], [0.8, 1.0]]; labels +1 on the diagonal, -1 off it.
    scale, bias = 1.0, -0.5
    z = [[0.6 + bias, 0.0 + bias], [0.8 + bias, 1.0 + bias]]
    y = [[1, -1], [-1, 1]]
    expected = sum(math.log1p(math.exp(-y[i][j] * z[i][j])) for i in range(2) for j in range(2)) / 2
    got = siglip_loss(Tensor(IMAGES), Tensor(TEXTS), Tensor(scale), Tensor(bias)).item()
    assert got == pytest.approx(expected, rel=1e-6), (
        f"expected -(1/N) Σ_ij log σ(y_ij z_ij) = {expected:.6f}, got {got:.6f} "
        "(summed over all N² pairs, divided by N, not by N²)")


@pytest.mark.exercise("5.4")
def test_siglip_loss_at_its_initialization(rng):
    # log t = ln 10 and b = -10: every z is about -10, so each positive pair costs
    # -log σ(-10) ≈ 10 and each negative costs -log σ(10) ≈ 4.5e-5.
    n = 32
    images, texts = Tensor(unit_rows(rng, n, 256)), Tensor(unit_rows(rng, n, 256))
    loss = siglip_loss(images, texts, Tensor(math.exp(SIGLIP_INIT_LOGIT_SCALE)), Tensor(SIGLIP_INIT_LOGIT_BIAS)).item()
    assert loss == pytest.approx(10.0, abs=0.5), f"expected about 10 (the N positives at z ≈ -10), got {loss:.3f}"


@pytest.mark.exercise("5.4")
def test_siglip_loss_gradcheck(rng):
    images, texts = unit_rows(rng, 5, 3), unit_rows(rng, 5, 3)
    assert gradcheck(siglip_loss, images, texts, np.array(3.0), np.array(-1.5))


@pytest.mark.exercise("5.4")
def test_siglip_loss_rejects_a_non_scalar_bias():
    with pytest.raises(ValueError, match="logit_bias"):
        siglip_loss(Tensor(IMAGES), Tensor(TEXTS), Tensor(1.0), Tensor([0.0, 0.0]))


@pytest.mark.exercise("5.4")
@pytest.mark.parametrize("dtype, tol", [("float64", 1e-10), ("float32", 1e-5)])
def test_siglip_loss_matches_open_clip(torch, rng, dtype, tol):
    images, texts = unit_rows(rng, 8, 16, dtype), unit_rows(rng, 8, 16, dtype)
    scale, bias = np.array(10.0, dtype), np.array(-10.0, dtype)

    def reference(image_features, text_features, logit_scale, logit_bias):
        """open_clip's SigLipLoss (one process)."""
        logits = logit_scale * image_features @ text_features.T + logit_bias
        n = image_features.shape[0]
        labels = 2 * torch.eye(n, dtype=logits.dtype) - torch.ones((n, n), dtype=logits.dtype)
        return -torch.nn.functional.logsigmoid(labels * logits).sum() / n

    assert_matches_torch(torch, siglip_loss, reference, [images, texts, scale, bias], tol,
                         ["image_features", "text_features", "logit_scale", "logit_bias"])


def assert_matches_torch(torch, loss_fn, reference, arrays, tol, names):
    """Same loss value and same gradient for every input, minclip against PyTorch."""
    ours = [Tensor(a, requires_grad=True) for a in arrays]
    theirs = [torch.tensor(a, requires_grad=True) for a in arrays]
    loss, expected = loss_fn(*ours), reference(*theirs)
    loss.backward()
    expected.backward()
    assert loss.dtype == arrays[0].dtype, f"the loss should stay {arrays[0].dtype}, got {loss.dtype}"
    assert abs(loss.item() - expected.item()) <= tol * max(1.0, abs(expected.item())), (
        f"loss {loss.item():.12g} but PyTorch gives {expected.item():.12g} (tolerance {tol})")
    for name, a, b in zip(names, ours, theirs):
        assert_allclose(a.grad, b.grad.numpy(), rtol=tol, atol=tol,
                                   err_msg=f"the gradient with respect to {name} differs from PyTorch's")


# ------------------------------------------------------ the log-sigmoid

@pytest.mark.exercise("5.3")
def test_log_sigmoid_never_overflows():
    z = np.array([-1000.0, -30.0, 0.0, 30.0, 1000.0], dtype="float32")
    x = Tensor(z, requires_grad=True)
    y = log_sigmoid(x)
    y.sum().backward()
    expected = np.array([-1000.0, -30.0, -math.log(2), -math.exp(-30.0), 0.0], dtype="float32")
    assert_allclose(y.numpy(), expected, rtol=1e-6, err_msg=(
        "log σ(z) must be finite for any z: write it as min(z, 0) - log1p(exp(-|z|))"))
    assert_allclose(x.grad, [1.0, 1.0, 0.5, math.exp(-30.0), 0.0], rtol=1e-6,
                               err_msg="d/dz log σ(z) = σ(-z)")
    assert y.dtype == np.float32, f"float32 in, float32 out; got {y.dtype}"


@pytest.mark.exercise("5.3")
def test_log_sigmoid_gradcheck(rng):
    assert gradcheck(log_sigmoid, rng.standard_normal(7) * 5)

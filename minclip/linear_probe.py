"""A linear probe: the supervised baseline that zero-shot is compared with.

Freeze the image encoder, embed the training images, and fit a logistic
regression (one Linear layer + softmax cross-entropy) on those features with
the true labels. The CLIP paper's headline is that zero-shot CLIP, which
never sees a label, rivals such supervised probes. Here the probe is trained
with minclip's own autodiff and AdamW, full batch, for a fixed number of steps.
"""
from minclip import backend
from minclip import functional as F
from minclip.backend import xp
from minclip.nn import Linear
from minclip.optim import AdamW
from minclip.tensor import Tensor, no_grad
from minclip.zeroshot import topk_accuracy


def fit_linear_probe(features, labels, num_classes, steps=300, lr=0.05, weight_decay=1e-3):
    """Fit logistic regression on frozen ``features`` (N, E); returns the Linear layer."""
    # BEGIN EXERCISE 7.4: Zero-shot versus a linear probe
    probe = Linear(features.shape[1], num_classes)
    optimizer = AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    x = Tensor(features)
    targets = xp.asarray(labels)
    for _ in range(steps):
        loss = F.cross_entropy(probe(x), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return probe
    # END EXERCISE


def linear_probe_evaluate(train_features, train_labels, test_features, test_labels, num_classes, **fit_options):
    """Train a probe on one split's features and report top-1/top-5 on another."""
    probe = fit_linear_probe(train_features, train_labels, num_classes, **fit_options)
    with no_grad():
        logits = probe(Tensor(test_features)).data                    # (N, C)
    accuracy = topk_accuracy(logits, backend.to_numpy(test_labels), ks=(1, min(5, num_classes)))
    return {"top1": accuracy[1], "top5": accuracy[min(5, num_classes)]}

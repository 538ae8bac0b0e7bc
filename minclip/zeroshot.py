"""Zero-shot classification: turn class names into a classifier with text alone.

CLIP was never trained to recognise "red triangle" as a class. But its text
encoder can embed the sentence "a photo of a red triangle.", and an image of
one should land close to it. So, as in the CLIP paper (section 3.1.4):

1. for each class, fill every prompt template with its name,
2. embed the prompts, L2-normalize each, average them (a prompt ensemble),
   and normalize the mean again: one unit vector per class, shape (C, E);
3. embed and normalize the images (N, E); the logits are their dot products
   with the class vectors (N, C), and the prediction is the argmax.
"""
from minclip import backend
from minclip import functional as F
from minclip.backend import xp
from minclip.tensor import Tensor, no_grad
from minclip.tokenizer import tokenize

DEFAULT_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a {}.")


def encode_texts(model, texts, tokenizer, batch_size=256):
    """Normalized text embeddings (N, E) as a backend array, in batches."""
    out = []
    with no_grad():
        for i in range(0, len(texts), batch_size):
            ids = tokenize(texts[i:i + batch_size], model.config.context_length, tokenizer=tokenizer)
            out.append(F.normalize(model.encode_text(Tensor(ids))).data)
    return xp.concatenate(out)


def encode_images(model, dataset, batch_size=256):
    """Normalized image embeddings (N, E) of every image in ``dataset``, in order."""
    out = []
    with no_grad():
        for i in range(0, len(dataset), batch_size):
            images, _ = dataset.batch(list(range(i, min(i + batch_size, len(dataset)))))
            out.append(F.normalize(model.encode_image(Tensor(images))).data)
    return xp.concatenate(out)


def zero_shot_classifier(model, classnames, templates, tokenizer):
    """One unit vector per class from a prompt ensemble: shape (C, E)."""
    # BEGIN EXERCISE 7.1: the zero-shot classifier from prompt templates
    weights = []
    for name in classnames:
        prompts = [template.format(name) for template in templates]
        embeddings = encode_texts(model, prompts, tokenizer)          # (T, E), each normalized
        mean = embeddings.mean(axis=0)                                # (E,)
        weights.append(mean / xp.linalg.norm(mean))
    return xp.stack(weights)                                          # (C, E)
    # END EXERCISE


def topk_accuracy(logits, labels, ks=(1, 5)):
    """Fraction of rows whose label is among the k highest logits, for each k.

    A tie with the true class counts against it (the true class must beat
    every class ranked above it), so a constant classifier scores 0, not 1.
    ``logits`` (N, C), ``labels`` (N,) ints; returns ``{k: accuracy}``.
    """
    # BEGIN EXERCISE 7.3: top-k accuracy, ties counted against
    logits, labels = backend.to_numpy(logits), backend.to_numpy(labels)
    true = logits[range(len(labels)), labels][:, None]                # (N, 1)
    rank = (logits >= true).sum(axis=1)                               # (N,) 1 = strictly best
    return {k: float((rank <= k).mean()) for k in ks}
    # END EXERCISE


def zero_shot_evaluate(model, dataset, classnames, templates, tokenizer, classifier=None):
    """Top-1 / top-5 accuracy and predictions of zero-shot classification on ``dataset``.

    ``dataset`` must have integer ``labels`` indexing ``classnames``.
    """
    classifier = zero_shot_classifier(model, classnames, templates, tokenizer) if classifier is None else classifier
    features = encode_images(model, dataset)                          # (N, E)
    logits = backend.to_numpy(features @ classifier.T)                # (N, C), one copy to the host
    accuracy = topk_accuracy(logits, dataset.labels, ks=(1, min(5, len(classnames))))
    predictions = logits.argmax(axis=1)
    return {"top1": accuracy[1], "top5": accuracy[min(5, len(classnames))], "predictions": predictions}

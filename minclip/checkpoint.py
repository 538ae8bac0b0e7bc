"""Weight files and training checkpoints, in the safetensors format.

The format itself (and reading it without PyTorch) is ``safetensors_io.py``;
minclip writes three kinds of file in this one format:

* a **model file** (``save`` / ``load``): the state dict under OpenAI's key
  names, so openai/CLIP and open_clip load it too, and the ``CLIPConfig`` as
  JSON in the metadata. An open_clip ``open_clip_model.safetensors`` has the
  same keys and no metadata: ``load`` then infers the config from the shapes.
* a **training checkpoint** (``save_checkpoint`` / ``load_checkpoint``): a
  model file, plus the optimizer's arrays under ``optimizer.state.<i>.<name>``
  and, in the metadata, its numbers (step counts, hyper-parameters) and a
  ``meta`` dict (epoch, step, RNG state, ...). ``load`` reads it as a model
  file; a strict PyTorch ``load_state_dict`` would object to the optimizer
  keys, so open_clip loads it with ``strict=False`` (or convert it first).

Every file is written **atomically**: to a temporary file in the same
directory, flushed to disk, then renamed over the target with
``os.replace`` (one atomic step on POSIX and Windows). A run killed at any
moment leaves either the previous complete file or the new complete file,
never half of one.
"""
import json
import os

import numpy

from minclip import hf
from minclip.model import CLIP, CLIPConfig
from minclip.model.clip import OPENAI_BOOKKEEPING_KEYS
from minclip.safetensors_io import WeightsFileError, read_header, read_tensors, write_tensors  # noqa: F401
from minclip.tokenizer import CLIPTokenizer

OPTIMIZER_PREFIX = "optimizer.state."
RUN_CHECKPOINT = os.path.join("checkpoints", "latest.safetensors")   # inside a run folder


# ------------------------------------------------------------- model files

def save(model, path, dtype="float32"):
    """Save ``model``'s weights to a safetensors file with OpenAI's key names.

    Floating-point arrays are stored as ``dtype`` (float32 by default;
    "float16" halves the file). The model's ``config``, if it has one, goes
    into the metadata as JSON, so ``load`` can rebuild the model exactly.
    """
    if numpy.dtype(dtype).kind != "f":
        raise ValueError(f"save: dtype must be a floating-point type such as 'float32', got {dtype!r}")
    tensors = {k: v.astype(dtype) if v.dtype.kind == "f" else v for k, v in model.state_dict().items()}
    write_tensors(path, tensors, _config_metadata(model))


def load(path):
    """A CLIP model from a weights file (minclip's ``save``, a checkpoint, open_clip's safetensors)
    or a directory (Hugging Face ``CLIPModel``, or a minclip run folder: see ``minclip.hf``)."""
    if os.path.isdir(path):
        return load_directory(path)[0]
    tensors, metadata = read_tensors(path)
    weights = {k: v for k, v in tensors.items() if not k.startswith(OPTIMIZER_PREFIX)}
    return clip_from_weights(weights, path, metadata.get("config"))


def clip_from_weights(weights, path, config_json=None):
    """Build the CLIP that ``weights`` (read from ``path``) describe, and load them into it.

    With ``config_json`` (minclip's metadata) the model is built from it;
    without (open_clip's and OpenAI's files) the config is inferred from the
    arrays' shapes, as OpenAI's ``build_model`` does. The integers that
    OpenAI's archives carry next to the weights are dropped.
    """
    weights = {k: v for k, v in weights.items() if k not in OPENAI_BOOKKEEPING_KEYS}
    try:
        config = (CLIPConfig.from_dict(json.loads(config_json)) if config_json is not None
                  else CLIPConfig.from_state_dict(weights))
    except (KeyError, ValueError, TypeError) as error:
        raise WeightsFileError(f"{path}: cannot tell which CLIP this file holds: {error}") from None
    model = CLIP(config)
    load_weights(model, weights, path)
    return model


def load_weights(model, weights, path):
    """``model.load_state_dict(weights)``, failing with the file and the first key that does not fit."""
    expected = {k: tuple(p.shape) for k, p in model.named_parameters()}
    expected.update((k, tuple(numpy.shape(b))) for k, b in model.named_buffers())
    problems = [f"key {k!r} is missing (the model expects shape {shape})" if k not in weights else
                f"key {k!r} has shape {tuple(weights[k].shape)}, the model expects {shape}"
                for k, shape in expected.items() if k not in weights or tuple(weights[k].shape) != shape]
    problems += [f"key {k!r} is not in the model" for k in weights if k not in expected]
    if problems:
        more = f" ({len(problems) - 1} more keys differ)" if len(problems) > 1 else ""
        raise WeightsFileError(f"{path} does not fit this {type(model).__name__}: "
                               f"first offending {problems[0]}{more}")
    model.load_state_dict(weights)


def _config_metadata(model):
    config = getattr(model, "config", None)
    return {"config": json.dumps(config.to_dict())} if config is not None else {}


# ----------------------------------------------------- training checkpoints

def save_checkpoint(path, model, optimizer=None, meta=None):
    """Save everything a run needs to resume, in one safetensors file, atomically.

    * the model's state dict, as stored in memory (no cast: resuming is bit-exact);
    * the optimizer's arrays as ``optimizer.state.<param index>.<name>``, and
      its numbers (step counts, ``param_groups``) as JSON in the metadata;
    * ``meta``: any JSON-able dict (epoch, step, ``backend.get_rng_state()``, ...).
    """
    tensors = dict(model.state_dict())
    metadata = {**_config_metadata(model), "meta": _to_json(meta or {}, "meta")}
    if optimizer is not None:
        arrays, numbers = _split_optimizer_state(optimizer.state_dict())
        tensors.update(arrays)
        metadata["optimizer"] = _to_json(numbers, "the optimizer's state_dict")
    write_tensors(path, tensors, metadata)


def load_checkpoint(path, model=None, optimizer=None):
    """Restore ``model`` and ``optimizer`` (either may be None) from ``path``; returns ``meta``."""
    tensors, metadata = read_tensors(path)
    if model is not None:
        load_weights(model, {k: v for k, v in tensors.items() if not k.startswith(OPTIMIZER_PREFIX)}, path)
    if optimizer is not None:
        if "optimizer" not in metadata:
            raise WeightsFileError(f"{path} holds no optimizer state (it is a model file, "
                                   f"not a training checkpoint)")
        optimizer.load_state_dict(_join_optimizer_state(tensors, json.loads(metadata["optimizer"])))
    return json.loads(metadata.get("meta", "{}"))


def _split_optimizer_state(state_dict):
    """Arrays to tensors ``optimizer.state.<i>.<name>``; everything else to one JSON-able dict."""
    arrays, numbers = {}, {}
    for index, state in state_dict["state"].items():
        for name, value in state.items():
            if isinstance(value, numpy.ndarray):
                arrays[f"{OPTIMIZER_PREFIX}{index}.{name}"] = value
            else:
                numbers.setdefault(str(index), {})[name] = value
    return arrays, {"state": numbers, "param_groups": state_dict["param_groups"]}


def _join_optimizer_state(tensors, numbers):
    """The inverse of ``_split_optimizer_state``."""
    state = {int(index): dict(values) for index, values in numbers["state"].items()}
    for key, array in tensors.items():
        if key.startswith(OPTIMIZER_PREFIX):
            index, name = key[len(OPTIMIZER_PREFIX):].split(".", 1)
            state.setdefault(int(index), {})[name] = array
    return {"state": state, "param_groups": numbers["param_groups"]}


def _to_json(value, what):
    try:
        return json.dumps(value)
    except TypeError as error:
        raise TypeError(f"save_checkpoint: {what} must hold only JSON-able values "
                        f"(dicts, lists, str, int, float, bool, None): {error}") from None


def load_directory(path):
    """(model, tokenizer) from a Hugging Face ``CLIPModel`` directory or a minclip run folder (its latest checkpoint)."""
    path = os.fspath(path)
    if hf.is_hf_directory(path):
        config, weights = hf.read_hf(path)
        model = CLIP(config)
        load_weights(model, weights, path)
        tokenizer_file = os.path.join(path, hf.TOKENIZER_FILE)
        return model, (CLIPTokenizer.load(tokenizer_file) if os.path.isfile(tokenizer_file) else CLIPTokenizer())
    if os.path.isfile(os.path.join(path, RUN_CHECKPOINT)):
        return load_checkpoint_model(os.path.join(path, RUN_CHECKPOINT))
    raise WeightsFileError(f"{path} is neither a Hugging Face CLIPModel directory ({hf.CONFIG_FILE} + "
                           f"{hf.WEIGHTS_FILE}) nor a minclip run folder ({RUN_CHECKPOINT})")


def load_checkpoint_model(path):
    """(model, tokenizer) from a checkpoint, a model file or a directory, ready for evaluation."""
    if os.path.isdir(path):
        return load_directory(path)
    model = load(path)
    return model, load_checkpoint_tokenizer(path, model.config)


def load_checkpoint_tokenizer(path, config):
    """The tokenizer a checkpoint was trained with.

    A checkpoint's ``meta["tokenizer"]`` is "openai" or the path of the BPE
    file that training wrote, relative to the checkpoint's own folder (so a
    run folder can be moved); a model without one uses OpenAI's tokenizer
    unless its config says it was trained with its own.
    """
    _, metadata = read_header(path)
    source = json.loads(metadata.get("meta", "{}")).get("tokenizer", "openai")
    if config.tokenizer == "trained" and source == "openai":
        raise WeightsFileError(f"{path}: this model was trained with its own tokenizer, and the file "
                               f"does not say where that tokenizer was saved")
    if source == "openai":
        return CLIPTokenizer()
    source = os.path.join(os.path.dirname(os.path.abspath(path)), source)
    if not os.path.isfile(source):
        raise FileNotFoundError(f"{path} needs its tokenizer file {source}, which does not exist "
                                f"(it is written next to the checkpoints' folder during training)")
    return CLIPTokenizer.load(source)

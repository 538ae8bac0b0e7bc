"""Weight files and training checkpoints, in the safetensors format.

A safetensors file is three parts, and nothing else::

    8 bytes   N, the length of the header (a little-endian unsigned integer)
    N bytes   a JSON header: {"__metadata__": {str: str},
                              key: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, ...}
    the rest  the raw bytes of every array, back to back

There is no pickle in it, so opening a file cannot run code, and NumPy reads
it without PyTorch. minclip writes three kinds of file in this one format:

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
import math
import os

import numpy
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from minclip.model import CLIP, CLIPConfig
from minclip.model.clip import OPENAI_BOOKKEEPING_KEYS
from minclip.tokenizer import CLIPTokenizer

OPTIMIZER_PREFIX = "optimizer.state."
_ITEMSIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
              "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}


class WeightsFileError(ValueError):
    """A weight file that is corrupt, truncated, or does not fit the model."""


# ------------------------------------------------------------------ reading

def read_header(path):
    """The validated header of a safetensors file: ({key: entry}, metadata).

    Each entry's dtype, shape and byte range are checked against each other
    and against the file's size, so a truncated or corrupt file fails here,
    naming the file and the first key that is wrong.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such weights file: {path}")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        if size < 8 or length > size - 8:
            raise WeightsFileError(f"{path}: not a safetensors file (a header of {length} bytes "
                                   f"announced in a file of {size} bytes): corrupt or truncated")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise WeightsFileError(f"{path}: not a safetensors file (its header is not JSON: {error})") from None
    metadata = header.pop("__metadata__", None) or {}
    for key, entry in header.items():
        problem = _entry_problem(entry, data_size=size - 8 - length)
        if problem:
            raise WeightsFileError(f"{path}: corrupt or truncated at key {key!r}: {problem}")
    return header, metadata


def _entry_problem(entry, data_size):
    """What is wrong with one header entry, or None."""
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in _ITEMSIZES or not isinstance(shape, list) or not isinstance(offsets, list) or len(offsets) != 2:
        return f"a malformed entry {entry}"
    begin, end = offsets
    expected = math.prod(shape) * _ITEMSIZES[dtype]
    if end - begin != expected:
        return f"{dtype} {shape} needs {expected} bytes, the header gives it {end - begin}"
    if end > data_size:
        return f"its bytes end at {end} but the file holds only {data_size} bytes of data"
    return None


def read_tensors(path):
    """Every array in a safetensors file, and its metadata: ({key: ndarray}, {str: str}).

    Arrays keep their dtype, except half precision: float16 and bfloat16
    (NumPy has no bfloat16) are widened to float32, exactly.
    """
    header, metadata = read_header(path)
    tensors = {}
    try:
        with safe_open(path, framework="np") as f:
            for key, entry in header.items():
                array = _read_bfloat16(path, entry) if entry["dtype"] == "BF16" else f.get_tensor(key)
                tensors[key] = array.astype(numpy.float32) if array.dtype == numpy.float16 else array
    except SafetensorError as error:
        raise WeightsFileError(f"{path}: corrupt safetensors file: {error}") from None
    return tensors, metadata


def _read_bfloat16(path, entry):
    """bfloat16 is the top half of a float32: shift its 16 bits up and reinterpret."""
    begin, end = entry["data_offsets"]
    with open(path, "rb") as f:
        data_start = 8 + int.from_bytes(f.read(8), "little")
        f.seek(data_start + begin)
        bits = numpy.frombuffer(f.read(end - begin), dtype="<u2")
    return (bits.astype(numpy.uint32) << 16).view(numpy.float32).reshape(entry["shape"])


# ------------------------------------------------------------------ writing

def write_tensors(path, tensors, metadata=None):
    """Write ``{key: ndarray}`` (and ``{str: str}`` metadata) to ``path``, atomically.

    The bytes go to ``path.tmp<pid>`` first, are flushed and fsync'ed to the
    disk, and only then renamed over ``path``. If anything fails on the way,
    the temporary file is removed and ``path`` keeps its old content.
    """
    path = os.fspath(path)
    temporary = f"{path}.tmp{os.getpid()}"
    try:
        save_file({k: numpy.asarray(v, order="C") for k, v in tensors.items()}, temporary, metadata=metadata)
        with open(temporary, "r+b") as f:
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


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
        from minclip.hf import load_directory
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


def load_checkpoint_model(path):
    """(model, tokenizer) from a checkpoint, a model file or a directory, ready for evaluation."""
    if os.path.isdir(path):
        from minclip.hf import load_directory
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

"""The safetensors file format, read and written with NumPy alone.

A safetensors file is three parts, and nothing else::

    8 bytes   N, the length of the header (a little-endian unsigned integer)
    N bytes   a JSON header: {"__metadata__": {str: str},
                              key: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, ...}
    the rest  the raw bytes of every array, back to back

There is no pickle in it, so opening a file cannot run code, and NumPy reads
it without PyTorch. ``read_tensors`` checks the header against the file's
size first, so a truncated or damaged file fails with one line naming it;
``write_tensors`` writes atomically (a temporary file, fsync, ``os.replace``),
so a run killed at any moment leaves the old complete file or the new one.
What minclip keeps in such files (models, checkpoints, Hugging Face
directories) is ``checkpoint.py``'s and ``hf.py``'s business.
"""
import json
import math
import os

import numpy
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

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

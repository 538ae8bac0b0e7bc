"""Convert CLIP weights between PyTorch files and minclip's safetensors files.

    python -m minclip.convert ViT-B-32.pt vit-b-32.safetensors           # OpenAI's TorchScript archive
    python -m minclip.convert open_clip_pytorch_model.bin b32.safetensors  # an open_clip state dict
    python -m minclip.convert model.safetensors model.pt                 # back to a PyTorch state dict
    python -m minclip.convert hf_clip_dir/ model.safetensors             # a Hugging Face CLIPModel directory
    python -m minclip.convert --to hf model.safetensors hf_clip_dir/     # to one (CLIPModel.from_pretrained)

The direction comes from the file names: ``.pt``/``.pth``/``.bin`` are
PyTorch files, ``.safetensors`` is minclip's format (or open_clip's), a
directory is Hugging Face's (see ``minclip.hf``); ``--to hf`` writes one. Every
conversion goes through a minclip ``CLIP``, so the weights are checked on
the way and the output carries the model's config.

Reading or writing a PyTorch file needs PyTorch, and only here: minclip
itself never imports it. The ``.pt`` written back is a plain state dict with
OpenAI's key names, which ``clip.load(path, jit=False)`` and open_clip's
``load_checkpoint`` accept.
"""
import argparse
import os
import sys
import warnings
import zipfile

from minclip.checkpoint import WeightsFileError, clip_from_weights, load, load_checkpoint_tokenizer, load_directory, save
from minclip.hf import save_hf

TORCH_SUFFIXES = (".pt", ".pth", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"


class TorchMissing(ImportError):
    """A .pt/.bin file was asked for, and PyTorch is not installed."""


def convert(source, target, dtype="float32", to=None):
    """Read the weights in ``source``, build the CLIP they describe, write them to ``target``.

    ``to="hf"`` writes a Hugging Face ``CLIPModel`` directory (always float32).
    """
    source, target = os.fspath(source), os.fspath(target)
    model = read_model(source)
    if to == "hf":
        save_hf(model, target, own_tokenizer(source, model.config))
    elif target.endswith(SAFETENSORS_SUFFIX):
        save(model, target, dtype=dtype)
    elif target.endswith(TORCH_SUFFIXES):
        write_torch_state_dict(model.state_dict(), target, dtype)
    else:
        raise ValueError(f"cannot tell which format to write to {target}: give it a name ending in "
                         f"{SAFETENSORS_SUFFIX} or one of {', '.join(TORCH_SUFFIXES)}, or --to hf")
    return model


def read_model(source):
    """The CLIP in any weights minclip reads: a PyTorch file, a safetensors file, a directory."""
    if source.endswith(TORCH_SUFFIXES):
        return clip_from_weights(read_torch_state_dict(source), source)
    if source.endswith(SAFETENSORS_SUFFIX) or os.path.isdir(source):
        return load(source)
    raise ValueError(f"cannot tell the format of {source}: expected a directory or a name ending in "
                     f"{', '.join(TORCH_SUFFIXES + (SAFETENSORS_SUFFIX,))}")


def own_tokenizer(source, config):
    """The tokenizer that a model trained with its own keeps beside its weights (None: OpenAI's)."""
    if config.tokenizer != "trained":
        return None
    return load_directory(source)[1] if os.path.isdir(source) else load_checkpoint_tokenizer(source, config)


def read_torch_state_dict(path):
    """``{key: ndarray}`` from a TorchScript archive (OpenAI's ``.pt``) or a ``torch.save`` file.

    An OpenAI file is a TorchScript archive (a zip with ``constants.pkl`` and
    compiled ``code/``), which ``torch.load`` refuses; a state dict saved with
    ``torch.save`` is read with ``weights_only=True`` (no code runs). open_clip's
    training checkpoints keep the weights under "state_dict", with a
    "module." prefix when they were trained with DistributedDataParallel.
    Floating-point tensors (fp16 and bf16 included) become float32 arrays.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such weights file: {path}")
    torch = _import_torch(path)
    try:
        if _is_torchscript(path):
            with warnings.catch_warnings():      # TorchScript is deprecated, but it is OpenAI's format
                warnings.simplefilter("ignore", DeprecationWarning)
                state = torch.jit.load(path, map_location="cpu").state_dict()
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError) as error:
        raise WeightsFileError(f"{path}: PyTorch cannot read this file (corrupt or truncated?): {error}") from None
    if "state_dict" in state:
        state = state["state_dict"]
    return {_strip_ddp(key): (value.float() if value.is_floating_point() else value).numpy()
            for key, value in state.items()}


def _is_torchscript(path):
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def _strip_ddp(key):
    return key[len("module."):] if key.startswith("module.") else key


def write_torch_state_dict(state_dict, path, dtype="float32"):
    """Save ``{key: ndarray}`` with ``torch.save``, floats as ``dtype``."""
    torch = _import_torch(path)
    tensors = {k: torch.from_numpy(v.astype(dtype) if v.dtype.kind == "f" else v) for k, v in state_dict.items()}
    torch.save(tensors, path)


def _import_torch(path):
    try:
        import torch
    except ImportError:
        raise TorchMissing(f"reading or writing the PyTorch file {path} needs PyTorch, which is not "
                           f"installed: pip install torch (minclip itself runs without it)") from None
    return torch


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m minclip.convert", description=__doc__.split("\n")[0])
    parser.add_argument("source", help="weights to read: .pt/.pth/.bin (PyTorch), .safetensors, "
                                       "or a Hugging Face CLIPModel directory")
    parser.add_argument("target", help="file to write: .safetensors (minclip) or .pt/.pth/.bin (PyTorch); "
                                       "a directory with --to hf")
    parser.add_argument("--to", choices=["hf"], help="hf: write a Hugging Face CLIPModel directory")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"],
                        help="floating-point type on disk (default float32)")
    args = parser.parse_args(argv)
    try:
        model = convert(args.source, args.target, args.dtype, args.to)
    except (TorchMissing, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.target} ({model.extra_repr()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

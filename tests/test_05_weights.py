"""Weight files: minclip.save / minclip.load and ``python -m minclip.convert``.

A model file is safetensors with OpenAI's key names and the config in its
metadata; open_clip's safetensors (no metadata) and PyTorch files (OpenAI's
TorchScript archives, open_clip's state dicts) load too. Broken files fail
with the file's name and the first key that is wrong.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file

import minclip
from minclip.checkpoint import WeightsFileError, load_checkpoint, read_header, read_tensors, save_checkpoint
from minclip.convert import convert
from minclip.convert import main as convert_main
from minclip.model import CLIP, CLIPConfig
from support.compare import array_equal, assert_array_equal

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def openai_shaped_config():
    """A tiny config that follows OpenAI's rules (64-wide heads, OpenAI tokenizer, QuickGELU),
    so that a file without a config still describes it completely."""
    return CLIPConfig.preset("tiny-vit", vision_heads=2, transformer_heads=2, tokenizer="openai",
                             activation="quick_gelu")


@pytest.fixture(scope="module")
def model():
    return CLIP(openai_shaped_config())


def assert_same_weights(expected, got, where):
    assert expected.keys() == got.keys(), f"{where}: keys differ: {sorted(set(expected) ^ set(got))[:5]}"
    for key, value in expected.items():
        assert array_equal(value, got[key]), f"{where}: {key} changed on the way"


# --------------------------------------------------------- save and load

def test_save_then_load_gives_the_same_model(model, tmp_path):
    preset = CLIP(CLIPConfig.preset("tiny-vit"))        # 4 heads: only the metadata can say so
    minclip.save(preset, tmp_path / "tiny.safetensors")
    loaded = minclip.load(tmp_path / "tiny.safetensors")
    assert loaded.config == preset.config, "the config must come back from the file's metadata"
    assert_same_weights(preset.state_dict(), loaded.state_dict(), "save/load")


def test_the_file_has_openai_keys_float32_and_the_config(model, tmp_path):
    minclip.save(model, tmp_path / "m.safetensors")
    tensors, metadata = read_tensors(tmp_path / "m.safetensors")
    assert set(tensors) == set(model.state_dict()), "the keys on disk are the state dict's (OpenAI's names)"
    assert "visual.conv1.weight" in tensors and "transformer.resblocks.0.attn.in_proj_weight" in tensors
    assert {t.dtype for t in tensors.values()} == {np.dtype("float32")}, "float32 on disk by default"
    assert json.loads(metadata["config"]) == model.config.to_dict()


def test_pytorch_reads_the_file(torch, model, tmp_path):
    from safetensors.torch import load_file
    minclip.save(model, tmp_path / "m.safetensors")
    state = {k: v.numpy() for k, v in load_file(tmp_path / "m.safetensors").items()}
    assert_same_weights(model.state_dict(), state, "safetensors.torch.load_file")


def test_a_float16_file_loads_as_float32(model, tmp_path):
    minclip.save(model, tmp_path / "half.safetensors", dtype="float16")
    assert os.path.getsize(tmp_path / "half.safetensors") < 0.6 * model.num_parameters() * 4
    loaded = minclip.load(tmp_path / "half.safetensors")
    weight = loaded.visual.conv1.weight
    assert weight.dtype == np.float32, f"half-precision weights are widened to float32 on load, got {weight.dtype}"
    assert_array_equal(weight.numpy(), model.visual.conv1.weight.numpy().astype("float16"))


def test_a_bfloat16_file_loads_as_float32(torch, tmp_path):
    from safetensors.torch import save_file as torch_save_file
    values = torch.randn(3, 5).to(torch.bfloat16)
    torch_save_file({"w": values}, tmp_path / "bf16.safetensors")
    tensors, _ = read_tensors(tmp_path / "bf16.safetensors")
    assert tensors["w"].dtype == np.float32
    assert_array_equal(tensors["w"], values.float().numpy(), err_msg="bfloat16 -> float32 is exact")


def test_an_open_clip_file_without_metadata_loads(model, tmp_path):
    save_file(model.state_dict(), tmp_path / "open_clip_model.safetensors")     # open_clip: no config
    loaded = minclip.load(tmp_path / "open_clip_model.safetensors")
    assert loaded.config == model.config, "without metadata the config is inferred from the shapes"
    assert_same_weights(model.state_dict(), loaded.state_dict(), "open_clip safetensors")


def test_a_checkpoint_loads_as_a_model_file(tmp_path):
    from minclip.optim import AdamW
    model = CLIP(CLIPConfig.preset("tiny-vit"))
    optimizer = AdamW(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = p.xp.ones_like(p.data)
    optimizer.step()                                     # creates the optimizer's state
    save_checkpoint(tmp_path / "ckpt.safetensors", model, optimizer, {"step": 1})
    assert_same_weights(model.state_dict(), minclip.load(tmp_path / "ckpt.safetensors").state_dict(),
                        "the model inside a checkpoint")


# ------------------------------------------------------------ bad files

def test_a_missing_file_names_its_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        minclip.load(tmp_path / "missing.safetensors")


def test_a_truncated_file_names_the_file_and_the_key(model, tmp_path):
    path = tmp_path / "cut.safetensors"
    minclip.save(model, path)
    header, _ = read_header(path)
    last_key = max(header, key=lambda k: header[k]["data_offsets"][1])   # the array stored last
    os.truncate(path, os.path.getsize(path) - 4)                         # a download cut short
    with pytest.raises(WeightsFileError, match=rf"cut\.safetensors: corrupt or truncated at key '{last_key}'"):
        minclip.load(path)


def test_a_corrupt_file_names_the_file(tmp_path):
    path = tmp_path / "noise.safetensors"
    path.write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(WeightsFileError, match="noise.safetensors"):
        minclip.load(path)


def test_a_header_that_lies_names_the_key(tmp_path):
    header = json.dumps({"visual.proj": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}}).encode()
    path = tmp_path / "liar.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(20))   # 2·3 floats need 24 bytes
    with pytest.raises(WeightsFileError, match=r"liar\.safetensors.*'visual\.proj'.*24 bytes"):
        minclip.load(path)


def test_a_missing_key_is_named(model, tmp_path):
    weights = model.state_dict()
    del weights["text_projection"]
    save_file(weights, tmp_path / "m.safetensors", metadata={"config": json.dumps(model.config.to_dict())})
    with pytest.raises(WeightsFileError, match=r"m\.safetensors.*'text_projection' is missing"):
        minclip.load(tmp_path / "m.safetensors")


def test_a_mismatched_model_names_the_first_offending_key(model, tmp_path):
    minclip.save(model, tmp_path / "m.safetensors")
    wider = CLIP(CLIPConfig.preset("tiny-vit", embed_dim=64))
    first = next(k for k, v in wider.state_dict().items() if v.shape != model.state_dict()[k].shape)
    with pytest.raises(WeightsFileError, match=rf"m\.safetensors does not fit.*first offending key '{first}'"):
        load_checkpoint(tmp_path / "m.safetensors", wider)


def test_a_file_of_other_weights_says_so(tmp_path):
    save_file({"encoder.layer.0.weight": np.zeros((2, 2), "float32")}, tmp_path / "bert.safetensors")
    with pytest.raises(WeightsFileError, match=r"bert\.safetensors: cannot tell which CLIP.*OpenAI.s key names"):
        minclip.load(tmp_path / "bert.safetensors")


# ---------------------------------------------------- python -m minclip.convert

def torch_state_dict(torch, model, dtype):
    return {k: torch.from_numpy(v).to(dtype) for k, v in model.state_dict().items()}


def test_convert_a_pytorch_state_dict_and_back(torch, model, tmp_path, capsys):
    torch.save(torch_state_dict(torch, model, torch.float32), tmp_path / "model.pt")
    assert convert_main([str(tmp_path / "model.pt"), str(tmp_path / "model.safetensors")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert_same_weights(model.state_dict(), minclip.load(tmp_path / "model.safetensors").state_dict(), ".pt -> .safetensors")

    assert convert_main([str(tmp_path / "model.safetensors"), str(tmp_path / "back.pt")]) == 0
    back = {k: v.numpy() for k, v in torch.load(tmp_path / "back.pt", weights_only=True).items()}
    assert_same_weights(model.state_dict(), back, ".safetensors -> .pt")


def test_convert_an_open_clip_training_checkpoint(torch, model, tmp_path):
    # open_clip saves {"epoch", "name", "state_dict", "optimizer"}, with "module." keys after DDP training.
    state = {"module." + k: v for k, v in torch_state_dict(torch, model, torch.float32).items()}
    torch.save({"epoch": 3, "name": "run", "state_dict": state}, tmp_path / "epoch_3.pt")
    converted = convert(str(tmp_path / "epoch_3.pt"), str(tmp_path / "m.safetensors"))
    assert_same_weights(model.state_dict(), converted.state_dict(), "open_clip checkpoint")


def test_convert_names_the_file_and_the_first_offending_key(torch, model, tmp_path):
    state = torch_state_dict(torch, model, torch.float32)
    state["visual.extra_scale"] = torch.ones(1)
    torch.save(state, tmp_path / "model.pt")
    with pytest.raises(WeightsFileError, match=r"model\.pt does not fit.*'visual\.extra_scale' is not in the model"):
        convert(tmp_path / "model.pt", tmp_path / "model.safetensors")


def test_convert_a_corrupt_pytorch_file_names_it(torch, tmp_path):
    (tmp_path / "broken.pt").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(WeightsFileError, match=r"broken\.pt: PyTorch cannot read"):
        convert(tmp_path / "broken.pt", tmp_path / "out.safetensors")


def openai_torchscript_archive(torch, model):
    """A TorchScript module like OpenAI's ViT-B-32.pt: fp16 weights under OpenAI's keys,
    plus the integer bookkeeping entries (input_resolution, context_length, vocab_size)."""
    class Holder(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    root = Holder()
    for key, value in torch_state_dict(torch, model, torch.float16).items():
        *path, name = key.split(".")
        module = root
        for part in path:
            if not hasattr(module, part):
                module.add_module(part, Holder())
            module = getattr(module, part)
        module.register_parameter(name, torch.nn.Parameter(value, requires_grad=False))
    for name, value in (("input_resolution", 32), ("context_length", 32), ("vocab_size", 1024)):
        root.register_buffer(name, torch.tensor(value))
    return torch.jit.script(root)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_convert_an_openai_torchscript_archive(torch, model, tmp_path):
    openai_torchscript_archive(torch, model).save(str(tmp_path / "ViT-tiny.pt"))
    converted = convert(str(tmp_path / "ViT-tiny.pt"), str(tmp_path / "vit.safetensors"))
    expected = {k: v.astype("float16").astype("float32") for k, v in model.state_dict().items()}
    assert_same_weights(expected, minclip.load(tmp_path / "vit.safetensors").state_dict(), "TorchScript archive")
    assert converted.config == model.config


def test_convert_without_torch_says_so(tmp_path):
    (tmp_path / "ViT-B-32.pt").write_bytes(b"not read")
    no_torch = ("import runpy, sys; sys.modules['torch'] = None; "             # `import torch` now fails
                "sys.argv = ['minclip.convert', sys.argv[1], sys.argv[2]]; "
                "runpy.run_module('minclip.convert', run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", no_torch, str(tmp_path / "ViT-B-32.pt"), str(tmp_path / "out.safetensors")],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 1, result.stderr
    assert "needs PyTorch" in result.stderr and "pip install torch" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, "a missing optional dependency deserves one line, not a traceback"


def test_convert_rejects_an_unknown_format(tmp_path, capsys):
    assert convert_main([str(tmp_path / "weights.ckpt"), str(tmp_path / "out.safetensors")]) == 1
    assert "weights.ckpt" in capsys.readouterr().err

"""Hugging Face ``CLIPModel`` directories: ``minclip.load(dir)``, ``convert --to hf``, ``--checkpoint dir``.

The reference is ``transformers.CLIPModel`` with random weights, saved with
``save_pretrained`` (nothing is downloaded). Sizes are chosen so that no rule
of thumb could guess them: head counts that are not width // 64, both GELUs,
a LayerNorm ε that is not 1e-5, both of Hugging Face's text-pooling rules.
Float32 throughout; tolerances: features and logits to 1e-4 of their largest
value, probabilities to 1e-5 (measured: at most 7e-7 and 3e-7).
"""
import json

import numpy as np
import pytest

import minclip
from minclip.backend import to_numpy
from minclip.checkpoint import WeightsFileError
from minclip.convert import main as convert_main
from minclip.hf import hf_to_openai, openai_to_hf
from minclip.model import CLIP, CLIPConfig
from minclip.tensor import Tensor, no_grad
from test_08_using_clip import one_line_error

SHAPES = {   # name: (text width, text heads, vision width, vision heads, activation, eps, eos_token_id)
    "gelu-3-and-4-heads": (48, 3, 64, 4, "gelu", 1e-5, "last"),
    "quick_gelu-eps1e-6-legacy-pooling": (64, 2, 96, 6, "quick_gelu", 1e-6, 2),
}


def hf_model(torch, text_width, text_heads, vision_width, vision_heads, act, eps, eos, vocab=99):
    from transformers import CLIPConfig as HFConfig
    from transformers import CLIPModel
    eos_id = vocab - 1 if eos == "last" else eos
    config = HFConfig(
        text_config=dict(vocab_size=vocab, hidden_size=text_width, intermediate_size=4 * text_width,
                         num_hidden_layers=2, num_attention_heads=text_heads, max_position_embeddings=12,
                         hidden_act=act, layer_norm_eps=eps, eos_token_id=eos_id, bos_token_id=vocab - 2,
                         pad_token_id=0),
        vision_config=dict(hidden_size=vision_width, intermediate_size=4 * vision_width, num_hidden_layers=2,
                           num_attention_heads=vision_heads, image_size=24, patch_size=8, hidden_act=act,
                           layer_norm_eps=eps),
        projection_dim=40)
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    with torch.no_grad():                       # off the special init (LN gains 1, biases 0)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def inputs(vocab=99, context=12, batch=3):
    """Images (B, 3, 24, 24) and token ids ending in the end token (the largest id), then padding."""
    rng = np.random.default_rng(0)
    images = rng.standard_normal((batch, 3, 24, 24)).astype("float32")
    ids = np.zeros((batch, context), dtype="int64")
    for row, length in enumerate((4, 7, context)):
        ids[row, :length] = rng.integers(1, vocab - 2, length)
        ids[row, length - 1] = vocab - 1
    return images, ids


def minclip_outputs(model, images, ids):
    with no_grad():
        image = to_numpy(model.encode_image(Tensor(images)).data)
        text = to_numpy(model.encode_text(Tensor(ids)).data)
        _, _, scale = model(Tensor(images), Tensor(ids))
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)       # noqa: E731
    logits = float(to_numpy(scale.data)) * unit(image) @ unit(text).T
    return image, text, logits


def hf_outputs(torch, hf, images, ids):
    with torch.no_grad():
        images, ids = torch.from_numpy(images), torch.from_numpy(ids)
        image = hf.get_image_features(pixel_values=images)
        text = hf.get_text_features(input_ids=ids)
        logits = hf(input_ids=ids, pixel_values=images).logits_per_image
    image, text = (getattr(x, "pooler_output", x).numpy() for x in (image, text))   # transformers 5 vs 4
    return image, text, logits.numpy()


def assert_same_outputs(got, expected):
    for what, g, e in zip(("image features", "text features", "logits"), got, expected):
        error = np.abs(g - e).max() / np.abs(e).max()
        assert error < 1e-4, f"{what}: relative error {error:.1e}"
    probs = lambda logits: np.exp(logits - logits.max(1, keepdims=True)) / np.exp(   # noqa: E731
        logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)
    np.testing.assert_allclose(probs(got[2]), probs(expected[2]), atol=1e-5, err_msg="probabilities")


@pytest.mark.parametrize("shape", SHAPES, ids=list(SHAPES))
def test_a_hugging_face_directory_loads_and_computes_the_same(torch, shape, tmp_path):
    hf = hf_model(torch, *SHAPES[shape])
    hf.save_pretrained(tmp_path)
    model = minclip.load(tmp_path)
    text_width, text_heads, vision_width, vision_heads, act, eps, _ = SHAPES[shape]
    config = model.config
    assert (config.transformer_heads, config.vision_heads, config.activation, config.layer_norm_eps,
            config.embed_dim) == (text_heads, vision_heads, act, eps, 40), "every size from config.json"
    images, ids = inputs()
    assert_same_outputs(minclip_outputs(model, images, ids), hf_outputs(torch, hf, images, ids))


def test_export_to_hf_loads_in_transformers_and_computes_the_same(torch, tmp_path):
    from transformers import CLIPModel
    config = CLIPConfig(embed_dim=40, image_resolution=24, vision_layers=2, vision_width=96, vision_patch_size=8,
                        vision_heads=6, context_length=12, vocab_size=99, transformer_width=48,
                        transformer_heads=3, transformer_layers=2, activation="gelu", layer_norm_eps=1e-6)
    model = CLIP(config)
    minclip.save(model, tmp_path / "m.safetensors")
    assert convert_main(["--to", "hf", str(tmp_path / "m.safetensors"), str(tmp_path / "hf")]) == 0
    hf = CLIPModel.from_pretrained(tmp_path / "hf").eval()
    images, ids = inputs()
    assert_same_outputs(minclip_outputs(model, images, ids), hf_outputs(torch, hf, images, ids))
    back = minclip.load(tmp_path / "hf")
    assert back.config == config
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[key], value, err_msg=f"{key} changed on the round trip")


def test_the_key_maps_are_inverses():
    model = CLIP(CLIPConfig.preset("tiny-vit"))
    state = model.state_dict()
    hf = openai_to_hf(state, model.config.vision_layers, model.config.transformer_layers)
    assert len(hf) == len(state) + 4 * (model.config.vision_layers + model.config.transformer_layers)  # q,k,v apart
    back = hf_to_openai(hf)
    assert back.keys() == state.keys()
    for key, value in state.items():
        np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_a_model_with_its_own_tokenizer_keeps_it_in_the_directory(tmp_path):
    from minclip.checkpoint import load_checkpoint_model
    from minclip.hf import save_hf
    from minclip.tokenizer import CLIPTokenizer
    captions = ["a small red circle at the top left", "a large blue square in the middle"] * 20
    tokenizer = CLIPTokenizer.train(captions, vocab_size=530)
    model = CLIP(CLIPConfig.preset("tiny-vit", vocab_size=tokenizer.vocab_size))
    save_hf(model, tmp_path / "hf", tokenizer)
    loaded, loaded_tokenizer = load_checkpoint_model(tmp_path / "hf")
    assert loaded.config.tokenizer == "trained"
    assert loaded_tokenizer.encode(captions[0]) == tokenizer.encode(captions[0])


# ------------------------------------------------------------ bad input

def test_a_directory_that_is_neither_hf_nor_minclip_is_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("holiday photos")
    line = one_line_error("minclip.evaluate", "--checkpoint", str(tmp_path), "--no-linear-probe")
    assert str(tmp_path) in line and "neither a Hugging Face CLIPModel directory" in line


def test_pytorch_bin_alone_is_out_of_scope_in_one_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    line = one_line_error("minclip.convert", str(tmp_path), str(tmp_path / "out.safetensors"))
    assert "pytorch_model.bin" in line and "safetensors" in line


def test_a_config_that_does_not_fit_the_tensors_names_the_key_and_both_shapes(tmp_path):
    model = CLIP(CLIPConfig.preset("tiny-vit", tokenizer="openai"))
    from minclip.hf import save_hf
    save_hf(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["projection_dim"] = 64                          # the file's projections are 128 wide
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsFileError, match=r"first offending key 'text_projection' has shape \(128, 128\), "
                                               r"the model expects \(128, 64\)"):
        minclip.load(tmp_path)


def test_a_resnet_cannot_become_a_hugging_face_clipmodel(tmp_path):
    minclip.save(CLIP(CLIPConfig.preset("tiny-rn", tokenizer="openai")), tmp_path / "rn.safetensors")
    line = one_line_error("minclip.convert", "--to", "hf", str(tmp_path / "rn.safetensors"), str(tmp_path / "hf"))
    assert "ResNet" in line
    assert not (tmp_path / "hf" / "config.json").exists(), "nothing half-written"

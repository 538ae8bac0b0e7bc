"""Chapter 4: the encoders and the CLIP model (minclip/model/).

The references are code nobody here wrote: Hugging Face ``transformers.CLIPModel``
(random weights, converted to OpenAI's names below) for the ViT and the text
tower, and a PyTorch ModifiedResNet written below from OpenAI's ``clip/model.py``
structure for the ResNet, which has no Hugging Face twin. Then the published
shapes: ViT-B/32 and RN50 parameter counts and ``from_openai_state_dict``.

Tolerances (relative to the largest magnitude of each compared array):
float64 1e-8, float32 1e-4.
"""
import json

import numpy as np
import pytest

from minclip import Tensor, no_grad
from minclip import functional as F
from minclip.hf import hf_to_openai
from minclip.model import (CLIP, PRESETS, AttentionPool2d, CLIPConfig, ModifiedResNet, ResidualAttentionBlock,
                           VisionTransformer, causal_mask)
from support.compare import allclose, array_equal, assert_allclose, assert_array_equal, host

# A small CLIP with a ViT image tower, shaped so that Hugging Face can build its twin.
SMALL_VIT = dict(embed_dim=24, image_resolution=32, vision_layers=2, vision_width=32, vision_patch_size=8,
                 vision_heads=4, context_length=12, vocab_size=50, transformer_width=32, transformer_heads=4,
                 transformer_layers=2)
# A small ModifiedResNet: two blocks in stage 1 (one without a downsample), a 2×2 grid for the attention pool.
SMALL_RN = dict(layers=(2, 1, 1, 1), output_dim=24, heads=4, input_resolution=64, width=8)


def assert_close(got, expected, rtol, what, floor=1e-30):
    """|got - expected| <= rtol · max(max|expected|, floor), with a message that says where it went wrong.

    ``floor`` is the magnitude below which values count as zero (a gradient
    that is exactly 0 in theory comes out as round-off noise on both sides).
    """
    got, expected = np.asarray(host(got), dtype="float64"), np.asarray(host(expected), dtype="float64")
    assert got.shape == expected.shape, f"{what}: expected shape {expected.shape}, got {got.shape}"
    scale = max(np.abs(expected).max(), floor)
    error = np.abs(got - expected).max() / scale
    assert error <= rtol, f"{what}: relative error {error:.2e} > {rtol:.0e} (max |expected| = {scale:.3g})"


def token_ids(rng, batch, context_length, vocab_size):
    """Random captions as CLIP's tokenizer makes them: ids, then the end-of-text token
    (the highest id of the vocabulary, so that ``argmax`` finds it), then zeros."""
    ids = np.zeros((batch, context_length), dtype="int64")
    for row, length in enumerate(rng.integers(1, context_length - 1, size=batch)):
        ids[row, :length] = rng.integers(1, vocab_size - 1, size=length)
        ids[row, length] = vocab_size - 1
    return ids


def symmetric_cross_entropy(logits):
    """The CLIP loss written inline (minclip/loss.py is chapter 5): the mean of the
    image->text and text->image cross-entropies, the diagonal being the right pairs."""
    labels = np.arange(logits.shape[0])
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) * 0.5


# ===================================================== Hugging Face twin (ViT)

def hf_clip(torch, config, activation="quick_gelu"):
    """``transformers.CLIPModel`` with the shapes of ``config`` and random weights, float64, eval mode."""
    from transformers import CLIPConfig as HFConfig
    from transformers import CLIPModel
    tower = dict(hidden_act=activation, layer_norm_eps=1e-5)
    hf_config = HFConfig(
        text_config=dict(vocab_size=config.vocab_size, hidden_size=config.transformer_width,
                         intermediate_size=4 * config.transformer_width,
                         num_hidden_layers=config.transformer_layers, num_attention_heads=config.transformer_heads,
                         max_position_embeddings=config.context_length, eos_token_id=config.vocab_size - 1,
                         bos_token_id=config.vocab_size - 2, pad_token_id=0, **tower),
        vision_config=dict(hidden_size=config.vision_width, intermediate_size=4 * config.vision_width,
                           num_hidden_layers=config.vision_layers, num_attention_heads=config.vision_heads,
                           image_size=config.image_resolution, patch_size=config.vision_patch_size, **tower),
        projection_dim=config.embed_dim)
    hf_config._attn_implementation = "sdpa"    # "eager" computes its softmax in float32, even in a float64 model
    torch.manual_seed(0)
    model = CLIPModel(hf_config).double().eval()
    with torch.no_grad():                     # move every weight off its special init (LN gains 1, biases 0)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def hf_block_to_openai(hf, h, o):
    """One encoder layer: HF's separate q/k/v projections stack into ``in_proj_weight`` (q, k, v order)."""
    out = {f"{o}attn.in_proj_weight": np.concatenate([hf[f"{h}self_attn.{n}_proj.weight"] for n in "qkv"]),
           f"{o}attn.in_proj_bias": np.concatenate([hf[f"{h}self_attn.{n}_proj.bias"] for n in "qkv"])}
    for theirs, ours in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                         ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
        for p in ("weight", "bias"):
            out[f"{o}{ours}.{p}"] = hf[f"{h}{theirs}.{p}"]
    return out


def minclip_twin(hf, config, dtype="float64"):
    """A minclip CLIP holding the HF model's weights (converted to OpenAI's names)."""
    model = CLIP(config).to(dtype=dtype)
    weights = hf_to_openai({k: v.detach().numpy() for k, v in hf.state_dict().items()})
    return model.load_state_dict(weights)


@pytest.fixture(scope="module")
def vit_pair():
    """(HF model, minclip model with its weights, config, images, token ids), float64."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(2)
    config = CLIPConfig(**SMALL_VIT)
    hf = hf_clip(torch, config)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((3, 3, 32, 32))
    ids = token_ids(rng, 3, config.context_length, config.vocab_size)
    return hf, minclip_twin(hf, config), config, images, ids


def projected(features):
    """transformers 5 returns an output object whose pooler_output is projected; 4.x a tensor."""
    return getattr(features, "pooler_output", features)


def hf_outputs(torch, hf, images, ids):
    """HF's (image features, text features, logits per image), features projected but not normalized."""
    ids, images = torch.from_numpy(ids), torch.from_numpy(images)
    image = projected(hf.get_image_features(pixel_values=images))
    text = projected(hf.get_text_features(input_ids=ids))
    return image, text, hf(input_ids=ids, pixel_values=images).logits_per_image


def test_hf_weights_fill_every_minclip_parameter(vit_pair):
    hf, model, *_ = vit_pair
    converted = hf_to_openai({k: v.detach().numpy() for k, v in hf.state_dict().items()})
    assert set(converted) == set(model.state_dict()), (
        "the state dict keys must be exactly OpenAI's; differences: "
        f"{sorted(set(converted) ^ set(model.state_dict()))}")


@pytest.mark.parametrize("activation", ["quick_gelu", "gelu"])
def test_vit_clip_matches_transformers_float64(torch, activation):
    config = CLIPConfig(**SMALL_VIT, activation=activation)
    hf = hf_clip(torch, config, activation)
    model = minclip_twin(hf, config)
    rng = np.random.default_rng(1)
    images, ids = rng.standard_normal((3, 3, 32, 32)), token_ids(rng, 3, config.context_length, config.vocab_size)
    with torch.no_grad():
        image, text, logits = hf_outputs(torch, hf, images, ids)
    with no_grad():
        assert_close(model.encode_image(images).numpy(), image.numpy(), 1e-8, f"encode_image ({activation})")
        assert_close(model.encode_text(ids).numpy(), text.numpy(), 1e-8, f"encode_text ({activation})")
        image_features, text_features, scale = model(images, ids)
        assert_close((scale * image_features @ text_features.T).numpy(), logits.numpy(), 1e-8,
                     f"logits = logit_scale · image_features @ text_featuresᵀ ({activation})")


def test_vit_clip_matches_transformers_float32(torch, vit_pair):
    hf, _, config, images, ids = vit_pair
    model = minclip_twin(hf, config, dtype="float32")
    with torch.no_grad():
        image, text, logits = hf_outputs(torch, hf, images, ids)
    with no_grad():
        image_features, text_features, scale = model(images.astype("float32"), ids)
        got_image = model.encode_image(images.astype("float32"))
        assert got_image.dtype == np.float32, f"a float32 model gives float32 features, got {got_image.dtype}"
        assert_close(got_image.numpy(), image.numpy(), 1e-4, "encode_image (float32)")
        assert_close(model.encode_text(ids).numpy(), text.numpy(), 1e-4, "encode_text (float32)")
        assert_close((scale * image_features @ text_features.T).numpy(), logits.numpy(), 1e-4, "logits (float32)")


def test_vit_clip_gradients_match_transformers(torch, vit_pair):
    hf, model, _, images, ids = vit_pair
    hf.zero_grad()
    logits = hf(input_ids=torch.from_numpy(ids), pixel_values=torch.from_numpy(images)).logits_per_image
    labels = torch.arange(len(ids))
    loss = (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels)) / 2
    loss.backward()
    expected = hf_to_openai({name: p.grad.numpy() for name, p in hf.named_parameters()})

    model.zero_grad()
    image_features, text_features, scale = model(images, ids)
    ours = symmetric_cross_entropy(scale * image_features @ text_features.T)
    assert_close(ours.item(), loss.item(), 1e-10, "the loss")
    ours.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} received no gradient"
        assert_close(p.grad, expected[name], 1e-8, f"gradient of {name}")


# ================================================== 4.1 patches to tokens

@pytest.mark.exercise("4.1")
def test_embed_turns_patches_into_tokens_after_a_class_token():
    vit = VisionTransformer(input_resolution=16, patch_size=8, width=6, layers=1, heads=2, output_dim=4)
    images = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype("float32")
    tokens = vit.embed(Tensor(images))
    assert tokens.shape == (2, 5, 6), f"2 images, 1 class token + 2×2 patches, width 6: expected (2, 5, 6), got {tokens.shape}"
    weight, pos = vit.conv1.weight.numpy().reshape(6, -1), vit.positional_embedding.numpy()
    for n in range(2):
        assert_close(tokens.numpy()[n, 0], vit.class_embedding.numpy() + pos[0], 1e-6,
                     "token 0 is the class embedding plus position 0")
        for k in range(4):                    # patches in reading order: row k // 2, column k % 2
            r, c = divmod(k, 2)
            patch = images[n, :, 8 * r:8 * r + 8, 8 * c:8 * c + 8].reshape(-1)
            assert_close(tokens.numpy()[n, 1 + k], weight @ patch + pos[1 + k], 1e-5,
                         f"token {1 + k} is conv1's weight times patch (row {r}, column {c}) plus its position")


@pytest.mark.exercise("4.1")
def test_every_image_gets_the_same_class_token_and_its_gradient_adds_up():
    vit = VisionTransformer(input_resolution=8, patch_size=4, width=4, layers=1, heads=1, output_dim=4)
    tokens = vit.embed(Tensor(np.zeros((3, 3, 8, 8), dtype="float32")))
    tokens[:, 0].sum().backward()
    assert_allclose(vit.class_embedding.grad, 3.0, err_msg=(
        "the class token is shared by the 3 images, so its gradient is the sum of the 3 copies'"))


# ===================================== 4.2 residual attention block forward

@pytest.mark.exercise("4.2")
@pytest.mark.parametrize("causal", [False, True])
def test_residual_attention_block_matches_transformers_encoder_layer(torch, vit_pair, causal):
    hf, *_ = vit_pair
    layer = hf.text_model.encoder.layers[0]
    weights = hf_block_to_openai({k: v.detach().numpy() for k, v in layer.state_dict().items()}, "", "")
    block = ResidualAttentionBlock(32, 4).to(dtype="float64").load_state_dict(weights)
    x = np.random.default_rng(0).standard_normal((2, 5, 32))
    upper = np.arange(5)[None, :] > np.arange(5)[:, None]                 # built here: exercise 4.3 is later
    mask = np.where(upper, -np.inf, 0.0) if causal else None
    with torch.no_grad():
        expected = layer(torch.from_numpy(x), None if mask is None else torch.from_numpy(mask)[None, None])
    assert_close(block(Tensor(x), attn_mask=mask).numpy(), expected.numpy(), 1e-10,
                 f"x + attn(ln_1(x)), then + mlp(ln_2(x)) (causal mask: {causal})")


@pytest.mark.exercise("4.2")
def test_a_block_with_silent_branches_is_the_identity():
    block = ResidualAttentionBlock(8, 2)
    for layer in (block.attn.out_proj, block.mlp.c_proj):    # zero the last layer of each branch
        layer.weight.data[...] = 0
        layer.bias.data[...] = 0
    x = np.random.default_rng(0).standard_normal((2, 3, 8)).astype("float32")
    assert_allclose(block(Tensor(x)).numpy(), x, err_msg=(
        "each branch's output is *added* to x: with both branches zero the block must return x unchanged"))


# ================================================ 4.3 the causal mask

@pytest.mark.exercise("4.3")
def test_causal_mask_values():
    inf = np.inf
    expected = np.array([[0, -inf, -inf], [0, 0, -inf], [0, 0, 0]], dtype="float32")
    mask = causal_mask(3)
    assert mask.dtype == np.float32, f"the mask is float32 by default, got {mask.dtype}"
    assert_array_equal(mask, expected, err_msg="row t may see keys 0..t (0) and not the later ones (-inf)")
    assert causal_mask(2, like=np.zeros(1)).dtype == np.float64, "the mask takes the dtype of `like`"


@pytest.mark.exercise("4.3")
def test_with_the_mask_a_later_token_cannot_change_earlier_outputs():
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 4, 8)).astype("float32") for _ in range(3))
    k2, v2 = k.copy(), v.copy()
    k2[0, 3] += 5.0                                        # only the last token's key and value differ
    v2[0, 3] += 5.0
    mask = causal_mask(4)
    before, after = (F.scaled_dot_product_attention(Tensor(q), Tensor(a), Tensor(b), mask).numpy()
                     for a, b in ((k, v), (k2, v2)))
    assert_allclose(after[0, :3], before[0, :3], rtol=1e-6, err_msg=(
        "with the causal mask, queries 0..2 must not see token 3"))
    assert not allclose(after[0, 3], before[0, 3]), "query 3 sees token 3 itself"


# =============================================== 4.4 the text encoder

@pytest.mark.exercise("4.4")
def test_text_features_match_transformers(torch, vit_pair):
    hf, model, _, _, ids = vit_pair
    with torch.no_grad():
        expected = projected(hf.get_text_features(input_ids=torch.from_numpy(ids))).numpy()
    with no_grad():
        assert_close(model.encode_text(ids).numpy(), expected, 1e-8,
                     "encode_text: the end-of-text token's vector (after ln_final) @ text_projection")


@pytest.mark.exercise("4.4")
def test_text_features_are_read_at_the_end_of_text_token():
    model = CLIP(CLIPConfig(**SMALL_VIT))
    ids = np.array([[5, 7, 49, 0, 0, 0, 0, 0, 0, 0, 0, 0]])          # 49 = EOT, the highest id
    with no_grad():
        base = model.encode_text(ids).numpy()
        after_eot = ids.copy()
        after_eot[0, 5] = 3                                               # a token after EOT
        before_eot = ids.copy()
        before_eot[0, 1] = 3                                              # a token before EOT
        assert_close(model.encode_text(after_eot).numpy(), base, 1e-5,
                     "tokens after EOT must not matter: take x[arange(B), ids.argmax(-1)] (and keep the causal mask)")
        assert not allclose(model.encode_text(before_eot).numpy(), base), "tokens before EOT must matter"
        shorter = model.encode_text(ids[:, :4]).numpy()
    assert_close(shorter, base, 1e-5,
                 "ids shorter than context_length use the first T positional embeddings and give the same features")


def test_encode_text_rejects_bad_ids_clearly():
    model = CLIP(CLIPConfig(**SMALL_VIT))
    with pytest.raises(ValueError, match=r"\[0, 50\)"):
        model.encode_text(np.array([[1, 2, 50]]))
    with pytest.raises(ValueError, match="context_length 12"):
        model.encode_text(np.ones((1, 13), dtype="int64"))
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        model.encode_text(np.ones((1, 3), dtype="float32"))


# ========================================= ModifiedResNet: PyTorch twin

def torch_modified_resnet(torch):
    """OpenAI's ModifiedResNet, written out in PyTorch from the structure of
    openai/CLIP clip/model.py (sequence-first attention pool, as theirs)."""
    nn, F_ = torch.nn, torch.nn.functional
    from collections import OrderedDict

    class Bottleneck(nn.Module):
        def __init__(self, inplanes, planes, stride=1):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(inplanes, planes, 1, bias=False), nn.BatchNorm2d(planes)
            self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False), nn.BatchNorm2d(planes)
            self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
            self.conv3, self.bn3 = nn.Conv2d(planes, planes * 4, 1, bias=False), nn.BatchNorm2d(planes * 4)
            self.downsample = None
            if stride > 1 or inplanes != planes * 4:
                self.downsample = nn.Sequential(OrderedDict([
                    ("-1", nn.AvgPool2d(stride)), ("0", nn.Conv2d(inplanes, planes * 4, 1, bias=False)),
                    ("1", nn.BatchNorm2d(planes * 4))]))

        def forward(self, x):
            out = F_.relu(self.bn1(self.conv1(x)))
            out = F_.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(self.avgpool(out)))
            identity = x if self.downsample is None else self.downsample(x)
            return F_.relu(out + identity)

    class AttentionPool2d(nn.Module):
        def __init__(self, spacial_dim, embed_dim, num_heads, output_dim):
            super().__init__()
            self.positional_embedding = nn.Parameter(torch.randn(spacial_dim ** 2 + 1, embed_dim) / embed_dim ** 0.5)
            self.k_proj, self.q_proj = nn.Linear(embed_dim, embed_dim), nn.Linear(embed_dim, embed_dim)
            self.v_proj, self.c_proj = nn.Linear(embed_dim, embed_dim), nn.Linear(embed_dim, output_dim)
            self.num_heads = num_heads

        def forward(self, x):
            x = x.flatten(start_dim=2).permute(2, 0, 1)                    # (HW, N, C)
            x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
            x = x + self.positional_embedding[:, None, :]
            out, _ = F_.multi_head_attention_forward(
                query=x[:1], key=x, value=x, embed_dim_to_check=x.shape[-1], num_heads=self.num_heads,
                q_proj_weight=self.q_proj.weight, k_proj_weight=self.k_proj.weight,
                v_proj_weight=self.v_proj.weight, in_proj_weight=None,
                in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
                bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
                out_proj_weight=self.c_proj.weight, out_proj_bias=self.c_proj.bias,
                use_separate_proj_weight=True, training=self.training, need_weights=False)
            return out.squeeze(0)

    class ModifiedResNet(nn.Module):
        def __init__(self, layers, output_dim, heads, input_resolution, width):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width // 2)
            self.conv2, self.bn2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False), nn.BatchNorm2d(width // 2)
            self.conv3, self.bn3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
            self.avgpool = nn.AvgPool2d(2)
            inplanes, stages = width, []
            for i, blocks in enumerate(layers):
                planes = width * 2 ** i
                stage = [Bottleneck(inplanes, planes, 1 if i == 0 else 2)]
                inplanes = planes * 4
                stage += [Bottleneck(inplanes, planes) for _ in range(1, blocks)]
                stages.append(nn.Sequential(*stage))
            self.layer1, self.layer2, self.layer3, self.layer4 = stages
            self.attnpool = AttentionPool2d(input_resolution // 32, width * 32, heads, output_dim)

        def forward(self, x):
            for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
                x = F_.relu(bn(conv(x)))
            x = self.avgpool(x)
            for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
                x = stage(x)
            return self.attnpool(x)

    return ModifiedResNet


@pytest.fixture(scope="module")
def resnet_pair():
    """(torch twin, minclip ModifiedResNet with its weights), float64, every weight and
    running statistic random (so that no zero-initialized gain hides a branch)."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(2)
    torch.manual_seed(0)
    twin = torch_modified_resnet(torch)(**SMALL_RN).double()
    with torch.no_grad():
        for name, value in twin.state_dict().items():
            if name.endswith("running_var"):
                value.uniform_(0.5, 1.5)
            elif value.is_floating_point():
                value.normal_(0.0, 0.3 if name.endswith(".weight") and value.ndim > 1 else 0.5)
    ours = ModifiedResNet(**SMALL_RN).to(dtype="float64")
    ours.load_state_dict({k: v.numpy() for k, v in twin.state_dict().items()})
    return twin, ours


@pytest.mark.parametrize("training", [False, True])
def test_modified_resnet_matches_pytorch_twin(torch, resnet_pair, training):
    twin, ours = resnet_pair
    twin.train(training), ours.train(training)
    images = np.random.default_rng(2).standard_normal((3, 3, 64, 64))
    with torch.no_grad():
        expected = twin(torch.from_numpy(images)).numpy()
    with no_grad():
        got = ours(Tensor(images)).numpy()
    mode = "batch statistics (train)" if training else "running statistics (eval)"
    assert_close(got, expected, 1e-8, f"ModifiedResNet features with {mode}")


def test_modified_resnet_gradients_match_pytorch_twin(torch, resnet_pair):
    twin, ours = resnet_pair
    twin.train(), ours.train()
    images = np.random.default_rng(3).standard_normal((3, 3, 64, 64))
    weights = np.random.default_rng(4).standard_normal((3, 24))
    twin.zero_grad()
    (twin(torch.from_numpy(images)) * torch.from_numpy(weights)).sum().backward()
    ours.zero_grad()
    (ours(Tensor(images)) * weights).sum().backward()
    expected = {name: p.grad.numpy() for name, p in twin.named_parameters()}
    # The key bias gets no gradient in theory (adding b to every key adds the same q·b to every
    # score, which the softmax ignores): measure every error against 1e-6 of the largest gradient.
    floor = 1e-6 * max(np.abs(g).max() for g in expected.values())
    for name, p in ours.named_parameters():
        assert_close(p.grad, expected[name], 1e-8, f"gradient of visual.{name}", floor)


# ================================================== 4.5 attention pooling

@pytest.mark.exercise("4.5")
def test_attention_pool_matches_pytorch_multi_head_attention(torch, resnet_pair):
    twin, ours = resnet_pair
    x = np.random.default_rng(5).standard_normal((2, 256, 2, 2))
    with torch.no_grad():
        expected = twin.attnpool(torch.from_numpy(x)).numpy()
    assert_close(ours.attnpool(Tensor(x)).numpy(), expected, 1e-10,
                 "attention from the mean token (query) to mean + all positions (keys, values), then c_proj")


@pytest.mark.exercise("4.5")
def test_attention_pool_of_a_constant_map_is_its_value_path():
    pool = AttentionPool2d(spacial_dim=2, embed_dim=8, num_heads=2, output_dim=3)
    pool.positional_embedding.data[...] = 0
    x = np.ones((1, 8, 2, 2), dtype="float32") * np.arange(8, dtype="float32")[None, :, None, None]
    # every token (the mean and the 4 positions) is the same vector v, so attention returns v_proj(v)
    v = np.arange(8, dtype="float32")
    expected = pool.c_proj(pool.v_proj(Tensor(v[None]))).numpy()
    assert_allclose(pool(Tensor(x)).numpy(), expected, rtol=1e-5, err_msg=(
        "when all tokens are equal any attention weights average to that token: expected c_proj(v_proj(v))"))


# ====================================== 4.6 the configuration from a state dict

@pytest.mark.exercise("4.6")
@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_config_is_inferred_from_state_dict_shapes(name):
    config = CLIPConfig.preset(name)
    state = CLIP(config).state_dict()
    inferred = CLIPConfig.from_state_dict(state, vision_heads=config.vision_heads,
                                          transformer_heads=config.transformer_heads, tokenizer=config.tokenizer)
    assert inferred == config, f"inferred {inferred}\n expected {config}"


@pytest.mark.exercise("4.6")
def test_config_uses_openai_head_rule_and_spots_siglip():
    config = CLIPConfig.preset("tiny-vit", transformer_width=128, loss="siglip")
    inferred = CLIPConfig.from_state_dict(CLIP(config).state_dict())
    assert inferred.transformer_heads == 2 and inferred.vision_heads == 2, (
        "without overrides, heads are width // 64 as in OpenAI's build_model")
    assert inferred.loss == "siglip", "a logit_bias key means a SigLIP model"


def test_config_inference_names_a_missing_key():
    with pytest.raises(KeyError, match="ln_final.weight"):
        CLIPConfig.from_state_dict({"visual.proj": np.zeros((2, 2)), "visual.conv1.weight": np.zeros((2, 3, 4, 4)),
                                    "visual.positional_embedding": np.zeros((5, 2))})


# ========================================== the published shapes

def openai_transformer_shapes(prefix, width, layers):
    """The keys and shapes of OpenAI's ``Transformer`` (clip/model.py), block by block."""
    shapes = {}
    for i in range(layers):
        b = f"{prefix}resblocks.{i}."
        shapes.update({
            b + "attn.in_proj_weight": (3 * width, width), b + "attn.in_proj_bias": (3 * width,),
            b + "attn.out_proj.weight": (width, width), b + "attn.out_proj.bias": (width,),
            b + "ln_1.weight": (width,), b + "ln_1.bias": (width,),
            b + "mlp.c_fc.weight": (4 * width, width), b + "mlp.c_fc.bias": (4 * width,),
            b + "mlp.c_proj.weight": (width, 4 * width), b + "mlp.c_proj.bias": (width,),
            b + "ln_2.weight": (width,), b + "ln_2.bias": (width,)})
    return shapes


def openai_text_shapes(embed_dim=512, context_length=77, vocab_size=49408, width=512, layers=12):
    """The text tower's keys and shapes in OpenAI's CLIP (top level, no prefix), plus logit_scale."""
    return {"positional_embedding": (context_length, width), "text_projection": (width, embed_dim),
            "logit_scale": (), "token_embedding.weight": (vocab_size, width),
            "ln_final.weight": (width,), "ln_final.bias": (width,),
            **openai_transformer_shapes("transformer.", width, layers)}


def openai_vit_b_32_shapes():
    """OpenAI's ViT-B/32 state dict, shapes only: 224 px, patch 32 (7×7 grid), width 768, 12 layers, embed 512."""
    w = 768
    return {"visual.class_embedding": (w,), "visual.positional_embedding": (7 * 7 + 1, w),
            "visual.proj": (w, 512), "visual.conv1.weight": (w, 3, 32, 32),
            "visual.ln_pre.weight": (w,), "visual.ln_pre.bias": (w,),
            **openai_transformer_shapes("visual.transformer.", w, 12),
            "visual.ln_post.weight": (w,), "visual.ln_post.bias": (w,), **openai_text_shapes()}


def filled(shapes, rng):
    """Arrays of the given shapes, filled cheaply (a random block tiled) with small values."""
    block = rng.uniform(-0.05, 0.05, size=4096).astype("float32")
    return {k: np.resize(block, shape) for k, shape in shapes.items()}


def with_openai_bookkeeping(state, config):
    """OpenAI's files also carry three integers next to the weights."""
    return {**state, "input_resolution": np.array(config.image_resolution),
            "context_length": np.array(config.context_length), "vocab_size": np.array(config.vocab_size)}


def check_published_model(name, state, count):
    """Load ``state`` with from_openai_state_dict and check the config, the count and one 224 px image."""
    expected = CLIPConfig.preset(name)
    model = CLIP.from_openai_state_dict(with_openai_bookkeeping(state, expected))
    assert model.config == expected, f"{name}: inferred {model.config}, expected {expected}"
    assert model.num_parameters() == count, f"{name}: expected {count:,} parameters, got {model.num_parameters():,}"
    key = "visual.conv1.weight"
    assert_array_equal(model.state_dict()[key], state[key], err_msg=f"{name}: {key} was not loaded")
    image = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype("float32")
    with no_grad():
        features = model.eval().encode_image(image).numpy()
    assert features.shape == (1, expected.embed_dim) and np.isfinite(features).all(), (
        f"{name}: expected finite features of shape (1, {expected.embed_dim}), got {features.shape}")


@pytest.mark.slow
def test_vit_b_32_loads_from_openai_shapes_with_151277313_parameters():
    check_published_model("ViT-B/32", filled(openai_vit_b_32_shapes(), np.random.default_rng(0)), 151_277_313)


@pytest.mark.slow
def test_rn50_loads_from_openai_shapes_with_102007137_parameters(torch):
    """The image tower's weights are the PyTorch twin's at RN50's shapes: loading
    them strictly proves the keys and shapes are OpenAI's, key for key."""
    twin = torch_modified_resnet(torch)(layers=(3, 4, 6, 3), output_dim=1024, heads=32, input_resolution=224, width=64)
    visual = {f"visual.{k}": v.numpy() for k, v in twin.state_dict().items()}
    text = filled(openai_text_shapes(embed_dim=1024), np.random.default_rng(0))
    check_published_model("RN50", {**visual, **text}, 102_007_137)


# ============================================= CLIP's API and initialization

def test_forward_returns_normalized_features_and_the_scale():
    model = CLIP(CLIPConfig.preset("tiny-vit"))
    rng = np.random.default_rng(0)
    images = rng.standard_normal((2, 3, 32, 32)).astype("float32")
    image_features, text_features, scale = model(images, token_ids(rng, 2, 16, 1024))
    for what, f in (("image", image_features), ("text", text_features)):
        assert f.shape == (2, 128)
        assert_allclose(np.linalg.norm(f.numpy(), axis=1), 1.0, rtol=1e-5,
                                   err_msg=f"{what} features from forward are L2-normalized")
    assert scale.shape == () and np.isclose(scale.item(), 1 / 0.07), (
        f"forward returns logit_scale.exp() = 1/0.07 at init, got {scale.item()}")
    assert np.isclose(model.logit_scale.item(), np.log(1 / 0.07)), "the parameter holds the log of the scale"
    assert not allclose(np.linalg.norm(model.encode_image(images).numpy(), axis=1), 1.0), (
        "encode_image is projected but not normalized, as OpenAI's")


def test_siglip_models_have_a_logit_bias():
    model = CLIP(CLIPConfig.preset("tiny-vit", loss="siglip"))
    rng = np.random.default_rng(0)
    outputs = model(rng.standard_normal((2, 3, 32, 32)), token_ids(rng, 2, 16, 1024))
    assert len(outputs) == 4, "a SigLIP model returns (image_features, text_features, logit_scale, logit_bias)"
    assert np.isclose(outputs[2].item(), 10.0) and np.isclose(outputs[3].item(), -10.0)
    assert "logit_bias" in model.state_dict()


def test_state_dict_uses_openais_names():
    vit, rn = CLIP(CLIPConfig.preset("tiny-vit")).state_dict(), CLIP(CLIPConfig.preset("tiny-rn")).state_dict()
    for key in ("visual.conv1.weight", "visual.class_embedding", "visual.transformer.resblocks.0.attn.in_proj_weight",
                "visual.ln_post.weight", "visual.proj", "transformer.resblocks.0.mlp.c_fc.weight",
                "token_embedding.weight", "positional_embedding", "ln_final.weight", "text_projection", "logit_scale"):
        assert key in vit, f"missing OpenAI key {key}"
    for key in ("visual.conv1.weight", "visual.bn3.running_var", "visual.layer1.0.downsample.0.weight",
                "visual.layer4.0.bn3.weight", "visual.attnpool.q_proj.weight", "visual.attnpool.c_proj.bias"):
        assert key in rn, f"missing OpenAI key {key}"
    assert not any("attn_mask" in k for k in vit), "the causal mask is not state (OpenAI's files have no such key)"
    assert vit["logit_scale"].shape == (), "logit_scale is a 0-d parameter"


def test_openai_initialization():
    model = CLIP(CLIPConfig.preset("tiny-rn"))
    width, layers = 128, 4
    expected = {
        "token_embedding.weight": 0.02, "positional_embedding": 0.01, "text_projection": width ** -0.5,
        "transformer.resblocks.0.attn.in_proj_weight": width ** -0.5,
        "transformer.resblocks.0.mlp.c_fc.weight": (2 * width) ** -0.5,
        "transformer.resblocks.0.mlp.c_proj.weight": width ** -0.5 * (2 * layers) ** -0.5,
        "transformer.resblocks.0.attn.out_proj.weight": width ** -0.5 * (2 * layers) ** -0.5,
        "visual.attnpool.q_proj.weight": 1024 ** -0.5, "visual.attnpool.c_proj.weight": 1024 ** -0.5,
    }
    state = model.state_dict()
    for key, std in expected.items():
        assert abs(state[key].std() / std - 1) < 0.05, f"{key}: expected std {std:.4f}, got {state[key].std():.4f}"
    for key in ("visual.layer1.0.bn3.weight", "visual.layer4.0.bn3.weight"):
        assert not state[key].any(), f"{key}: the last batch-norm gain of each Bottleneck starts at zero"
    vit = CLIP(CLIPConfig.preset("tiny-vit")).state_dict()
    for key in ("visual.positional_embedding", "visual.proj"):
        std = vit[key].std()
        assert abs(std / 128 ** -0.5 - 1) < 0.05, f"{key}: expected std width^-½ = {128 ** -0.5:.4f}, got {std:.4f}"


def test_building_is_reproducible_from_the_seed():
    from minclip import backend
    backend.seed(3)
    first = CLIP(CLIPConfig.preset("tiny-vit")).state_dict()
    backend.seed(3)
    second = CLIP(CLIPConfig.preset("tiny-vit")).state_dict()
    assert all(array_equal(first[k], second[k]) for k in first), "backend.seed(s) then CLIP(...) is deterministic"


def test_encode_image_accepts_arrays_and_tensors_without_upcasting():
    model = CLIP(CLIPConfig.preset("tiny-vit"))
    images = np.random.default_rng(0).standard_normal((2, 3, 32, 32))         # float64 array
    with no_grad():
        from_array, from_tensor = model.encode_image(images), model.encode_image(Tensor(images))
    assert from_array.dtype == from_tensor.dtype == np.float32, "a float32 model casts its inputs to float32"
    assert_allclose(from_array.numpy(), from_tensor.numpy())
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\).*\(2, 3, 16, 16\)"):
        model.encode_image(np.zeros((2, 3, 16, 16), dtype="float32"))


# ============================================================ the config

def test_presets_and_their_names():
    assert {"tiny-vit", "tiny-rn", "ViT-B-32", "RN50"} <= set(PRESETS)
    assert CLIPConfig.preset("ViT-B/32") == PRESETS["ViT-B-32"], "ViT-B/32 and ViT-B-32 name the same preset"
    vit, rn = CLIPConfig.preset("ViT-B-32"), CLIPConfig.preset("RN50")
    assert (vit.vision_heads, rn.vision_heads) == (12, 32), "OpenAI's head rule: width // 64 (ViT), width·32 // 64 (ResNet)"
    assert CLIPConfig.preset("tiny-vit", vocab_size=500).vocab_size == 500, "fields can be overridden"
    assert PRESETS["tiny-vit"].vocab_size == 1024, "overriding must not change the preset itself"
    with pytest.raises(KeyError, match="tiny-vit"):
        CLIPConfig.preset("tiny")


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn", "RN50"])
def test_config_round_trips_through_json(name):
    config = CLIPConfig.preset(name)
    assert CLIPConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize("field, value, message", [
    ("activation", "relu", "activation"), ("loss", "hinge", "loss"), ("vision_patch_size", 5, "divisible"),
    ("vision_heads", 3, "heads"), ("transformer_heads", 5, "heads")])
def test_config_rejects_bad_values_clearly(field, value, message):
    with pytest.raises(ValueError, match=message):
        CLIPConfig.preset("tiny-vit", **{field: value})


def test_config_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown fields.*'width'"):
        CLIPConfig.from_dict({**CLIPConfig.preset("tiny-vit").to_dict(), "width": 3})

"""OpenAI's CLIP in PyTorch, the reference side of every model benchmark.

A short transcription of openai/CLIP ``clip/model.py`` (sequence-first
Transformer blocks built on ``nn.MultiheadAttention``, pre-LN, QuickGELU;
the ModifiedResNet with its attention pool; the text Transformer), built from
a minclip ``CLIPConfig`` and filled with a minclip model's state dict: the
keys are OpenAI's on both sides, so ``load_state_dict`` copies them one to one
and the two models compute the same function.

The ModifiedResNet is the test suite's transcription (tests/test_04_encoders.py).
Only what the benchmarks need is here: no fp16 handling, no ``build_model``,
no initialization (the weights always come from minclip).
"""
import os
import sys
from collections import OrderedDict

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from test_04_encoders import torch_modified_resnet  # noqa: E402

ModifiedResNet = torch_modified_resnet(torch)


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, d_model, n_head, attn_mask=None):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, n_head)
        self.ln_1 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(d_model, d_model * 4)), ("gelu", QuickGELU()),
                                              ("c_proj", nn.Linear(d_model * 4, d_model))]))
        self.ln_2 = nn.LayerNorm(d_model)
        self.register_buffer("attn_mask", attn_mask, persistent=False)   # a buffer: .double() casts it too

    def forward(self, x):                                             # (L, N, D), sequence first
        x = x + self.attn(*[self.ln_1(x)] * 3, need_weights=False, attn_mask=self.attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width, layers, heads, attn_mask=None):
        super().__init__()
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads, attn_mask) for _ in range(layers)])

    def forward(self, x):
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    def __init__(self, input_resolution, patch_size, width, layers, heads, output_dim):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(width))
        self.positional_embedding = nn.Parameter(torch.empty((input_resolution // patch_size) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.empty(width, output_dim))

    def forward(self, x):
        x = self.conv1(x)                                             # (N, D, g, g)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)    # (N, g², D)
        cls = self.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding    # (N, 1 + g², D)
        x = self.ln_pre(x).permute(1, 0, 2)                           # (L, N, D)
        x = self.transformer(x).permute(1, 0, 2)                      # (N, L, D)
        return self.ln_post(x[:, 0, :]) @ self.proj


class CLIP(nn.Module):
    """OpenAI's CLIP for a minclip ``CLIPConfig`` (QuickGELU activation, the CLIP loss)."""

    def __init__(self, config):
        super().__init__()
        if config.activation != "quick_gelu" or config.loss != "clip":
            raise ValueError("torch_clip.CLIP transcribes OpenAI's model: QuickGELU and the CLIP loss only")
        if config.is_vit:
            self.visual = VisionTransformer(config.image_resolution, config.vision_patch_size, config.vision_width,
                                            config.vision_layers, config.vision_heads, config.embed_dim)
        else:
            self.visual = ModifiedResNet(config.vision_layers, config.embed_dim, config.vision_heads,
                                         config.image_resolution, config.vision_width)
        T, width = config.context_length, config.transformer_width
        causal = torch.full((T, T), float("-inf")).triu_(1)
        self.transformer = Transformer(width, config.transformer_layers, config.transformer_heads, causal)
        self.token_embedding = nn.Embedding(config.vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(T, width))
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, config.embed_dim))
        self.logit_scale = nn.Parameter(torch.empty(()))

    def encode_image(self, images):
        return self.visual(images)

    def encode_text(self, text):
        x = self.token_embedding(text) + self.positional_embedding   # (N, L, D)
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)     # through (L, N, D)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection

    def forward(self, images, text):
        """As minclip's CLIP: (normalized image features, normalized text features, logit scale)."""
        image_features = F.normalize(self.encode_image(images), dim=-1)
        text_features = F.normalize(self.encode_text(text), dim=-1)
        return image_features, text_features, self.logit_scale.exp()


def from_minclip(model):
    """The PyTorch twin of a minclip CLIP, holding a copy of its weights (and batch-norm statistics)."""
    twin = CLIP(model.config)
    state = {k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()}
    twin.load_state_dict(state)
    return twin.train(model.visual.training)


def clip_loss(image_features, text_features, logit_scale):
    """open_clip's ClipLoss: the mean of the two cross-entropies of the (N, N) logits."""
    logits = logit_scale * image_features @ text_features.T
    labels = torch.arange(logits.shape[0])
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

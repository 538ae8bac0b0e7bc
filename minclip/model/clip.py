"""CLIP: an image encoder and a text encoder that map into one shared space.

    images (B, 3, R, R) ──visual──> (B, E) ─┐ normalize
                                            ├─> cosine similarities (B, B) × logit_scale.exp()
    token ids (B, T) ──text tower──> (B, E) ─┘ normalize

Training pulls each image towards its own caption and away from the others'
(the loss lives in ``minclip.loss``); ``logit_scale`` is the learned inverse
temperature, kept as its log so that it stays positive.

Parameter names and the state dict are OpenAI's, key for key
(``visual.conv1.weight``, ``transformer.resblocks.0.attn.in_proj_weight``,
``token_embedding.weight``, ``text_projection``, ``logit_scale``, ...), which
are also open_clip's: the text tower's parts sit at the top level, so
``CLIP`` *is* a ``TextTransformer`` with an image tower ``visual`` added.
"""
import math

from minclip import functional as F
from minclip import nn
from minclip.backend import xp
from minclip.model.config import CLIPConfig
from minclip.model.resnet import ModifiedResNet
from minclip.model.text import TextTransformer
from minclip.model.vit import VisionTransformer
from minclip.tensor import Tensor

# integers that OpenAI's checkpoint files carry next to the weights
OPENAI_BOOKKEEPING_KEYS = ("input_resolution", "context_length", "vocab_size")


class CLIP(TextTransformer):
    """``CLIP(config)``: both towers, built with OpenAI's initialization from minclip's seeded generator.

    ``config.loss == "siglip"`` adds a learned ``logit_bias`` (init -10) and
    starts ``logit_scale`` at ln 10, as open_clip's SigLIP models.
    """

    def __init__(self, config):
        if not isinstance(config, CLIPConfig):
            raise TypeError(f"CLIP(config): expected a CLIPConfig (e.g. CLIPConfig.preset('tiny-vit')), "
                            f"got {type(config).__name__}")
        super().__init__(config.context_length, config.vocab_size, config.transformer_width,
                         config.transformer_heads, config.transformer_layers, config.embed_dim, config.activation)
        self.config = config
        if config.is_vit:
            self.visual = VisionTransformer(config.image_resolution, config.vision_patch_size, config.vision_width,
                                            config.vision_layers, config.vision_heads, config.embed_dim,
                                            config.activation)
        else:
            self.visual = ModifiedResNet(config.vision_layers, config.embed_dim, config.vision_heads,
                                         config.image_resolution, config.vision_width)
        for module in self.modules():                  # every LayerNorm takes the config's ε
            if isinstance(module, nn.LayerNorm):
                module.eps = config.layer_norm_eps
        siglip = config.loss == "siglip"
        self.logit_scale = _scalar_parameter(math.log(10.0) if siglip else math.log(1 / 0.07))
        if siglip:
            self.logit_bias = _scalar_parameter(-10.0)

    @property
    def dtype(self):
        """The dtype of the weights (float32 unless the model was cast with ``.to(dtype=...)``)."""
        return self.logit_scale.dtype

    def encode_image(self, images):
        """Images (B, 3, R, R), a Tensor or an array -> image features (B, embed_dim), not normalized."""
        if not isinstance(images, Tensor):
            images = Tensor(images, dtype=self.dtype)
        elif images.dtype != self.dtype:
            images = images.astype(self.dtype)
        return self.visual(images)

    def forward(self, images, ids):
        """-> ``(image_features, text_features, logit_scale)``, as open_clip's CLIP.

        Features are L2-normalized, (B, E) each; ``logit_scale`` is
        ``self.logit_scale.exp()``, so the logits are
        ``logit_scale * image_features @ text_features.T``. A SigLIP model
        returns ``logit_bias`` as a fourth element.
        """
        image_features = F.normalize(self.encode_image(images), axis=-1)      # (B, E)
        text_features = F.normalize(self.encode_text(ids), axis=-1)           # (B, E)
        if self.config.loss == "siglip":
            return image_features, text_features, self.logit_scale.exp(), self.logit_bias
        return image_features, text_features, self.logit_scale.exp()

    @classmethod
    def from_openai_state_dict(cls, state_dict, **overrides):
        """Build a CLIP from an OpenAI-named state dict of arrays alone.

        The configuration is inferred from the shapes (``CLIPConfig.from_state_dict``;
        ``overrides`` set what shapes cannot tell), the integer bookkeeping
        entries of OpenAI's files (input_resolution, context_length,
        vocab_size) are ignored, and every other key must match.
        """
        config = CLIPConfig.from_state_dict(state_dict, **overrides)
        weights = {k: v for k, v in state_dict.items() if k not in OPENAI_BOOKKEEPING_KEYS}
        return cls(config).load_state_dict(weights)

    def extra_repr(self):
        kind = "ViT" if self.config.is_vit else "ResNet"
        return f"{kind} image tower, embed_dim={self.config.embed_dim}, {self.num_parameters():,} parameters"


def _scalar_parameter(value):
    """A float32 Parameter of shape () (OpenAI's ``logit_scale`` is a 0-d tensor)."""
    return nn.Parameter(xp.asarray(value, dtype="float32"))

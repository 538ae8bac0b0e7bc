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
are also open_clip's. As in OpenAI's ``clip/model.py``, the image tower is
one attribute, ``visual``, and the text tower's parts sit at the top level
(``token_embedding``, ``positional_embedding``, ``transformer``,
``ln_final``, ``text_projection``), run by ``encode_text``.
"""
from minclip import functional as F
from minclip import nn
from minclip.backend import array_module, xp
from minclip.loss import CLIP_INIT_LOGIT_SCALE, SIGLIP_INIT_LOGIT_BIAS, SIGLIP_INIT_LOGIT_SCALE
from minclip.model.config import CLIPConfig
from minclip.model.resnet import ModifiedResNet
from minclip.model.text import causal_mask, check_token_ids, initialize_blocks
from minclip.model.transformer import Transformer, normal_parameter
from minclip.model.vit import VisionTransformer
from minclip.tensor import Tensor

# integers that OpenAI's checkpoint files carry next to the weights
OPENAI_BOOKKEEPING_KEYS = ("input_resolution", "context_length", "vocab_size")


class CLIP(nn.Module):
    """``CLIP(config)``: both towers, built with OpenAI's initialization from minclip's seeded generator.

    ``config.loss == "siglip"`` adds a learned ``logit_bias`` (init -10) and
    starts ``logit_scale`` at ln 10, as open_clip's SigLIP models.
    """

    def __init__(self, config):
        if not isinstance(config, CLIPConfig):
            raise TypeError(f"CLIP(config): expected a CLIPConfig (e.g. CLIPConfig.preset('tiny-vit')), "
                            f"got {type(config).__name__}")
        super().__init__()
        self.config = config
        # the text tower (built first: its draws from the seeded generator come first)
        width = config.transformer_width
        self.transformer = Transformer(width=width, layers=config.transformer_layers,
                                       heads=config.transformer_heads, activation=config.activation)
        self.token_embedding = nn.Embedding(config.vocab_size, width)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        self.positional_embedding = normal_parameter((config.context_length, width), std=0.01)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = normal_parameter((width, config.embed_dim), std=width ** -0.5)
        initialize_blocks(self.transformer)
        # the image tower
        if config.is_vit:
            self.visual = VisionTransformer(
                input_resolution=config.image_resolution, patch_size=config.vision_patch_size,
                width=config.vision_width, layers=config.vision_layers, heads=config.vision_heads,
                output_dim=config.embed_dim, activation=config.activation)
        else:
            self.visual = ModifiedResNet(
                layers=config.vision_layers, output_dim=config.embed_dim, heads=config.vision_heads,
                input_resolution=config.image_resolution, width=config.vision_width)
        for module in self.modules():                  # every LayerNorm takes the config's ε
            if isinstance(module, nn.LayerNorm):
                module.eps = config.layer_norm_eps
        siglip = config.loss == "siglip"
        self.logit_scale = _scalar_parameter(SIGLIP_INIT_LOGIT_SCALE if siglip else CLIP_INIT_LOGIT_SCALE)
        if siglip:
            self.logit_bias = _scalar_parameter(SIGLIP_INIT_LOGIT_BIAS)

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

    def encode_text(self, ids):
        """Token ids (B, T), EOT the highest id of each row -> text features (B, embed_dim), not normalized."""
        # BEGIN EXERCISE 4.4: end-of-text pooling
        ids = check_token_ids(ids, self.config.context_length, self.config.vocab_size, like=self.text_projection.data)
        B, T = ids.shape
        x = F.embedding(self.token_embedding.weight, ids) + self.positional_embedding[:T]  # (B, T, D), ids checked
        x = self.transformer(x, attn_mask=causal_mask(T, like=x.data))          # (B, T, D)
        x = self.ln_final(x)
        eot = array_module(ids).arange(B), ids.argmax(axis=-1)                  # one position per row
        return x[eot] @ self.text_projection                                    # (B, D) @ (D, E) -> (B, E)
        # END EXERCISE

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

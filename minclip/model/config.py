"""``CLIPConfig``: every number that fixes the shape of a CLIP model.

The fields are OpenAI's ``CLIP(...)`` arguments (the same names appear in
their ``build_model``), plus five choices of our own:

* ``vision_heads``: OpenAI computes it (width // 64 for a ViT, width·32 // 64
  for a ResNet, i.e. 64-dimensional heads); tiny models want more, smaller heads.
* ``activation``: "quick_gelu" (x·σ(1.702x), what OpenAI's weights were
  trained with) or "gelu" (the exact erf form).
* ``layer_norm_eps``: the ε of every LayerNorm (1e-5 in OpenAI's code; a
  Hugging Face config may say otherwise).
* ``tokenizer``: "openai" (the published 49,408-token BPE) or "trained" (a
  small BPE trained on our own captions).
* ``loss``: "clip" (softmax InfoNCE) or "siglip" (pairwise sigmoid; the model
  then also learns a ``logit_bias``).

The image tower is a Vision Transformer when ``vision_layers`` is an int, and
a ModifiedResNet when it is a tuple of four block counts, as in OpenAI's code.
"""
import dataclasses
from dataclasses import dataclass

ACTIVATIONS = ("quick_gelu", "gelu")
TOKENIZERS = ("openai", "trained")
LOSSES = ("clip", "siglip")


@dataclass(kw_only=True)
class CLIPConfig:
    embed_dim: int                      # size of the shared image-text space
    # image tower
    image_resolution: int
    vision_layers: int | tuple          # int: ViT depth; (n1, n2, n3, n4): ResNet blocks per stage
    vision_width: int
    vision_patch_size: int | None = None  # ViT only
    vision_heads: int | None = None       # None: OpenAI's rule (see the module docstring)
    # text tower
    context_length: int
    vocab_size: int
    transformer_width: int
    transformer_heads: int
    transformer_layers: int
    # choices
    activation: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    tokenizer: str = "openai"
    loss: str = "clip"

    def __post_init__(self):
        if isinstance(self.vision_layers, list):       # JSON gives lists back
            self.vision_layers = tuple(self.vision_layers)
        if self.vision_heads is None:
            self.vision_heads = self.vision_width // 64 if self.is_vit else self.vision_width * 32 // 64
        self._validate()

    @property
    def is_vit(self):
        """True for a Vision Transformer image tower, False for a ModifiedResNet."""
        return isinstance(self.vision_layers, int)

    def _validate(self):
        for name, allowed in (("activation", ACTIVATIONS), ("tokenizer", TOKENIZERS), ("loss", LOSSES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"CLIPConfig: {name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.is_vit:
            if not self.vision_patch_size or self.image_resolution % self.vision_patch_size:
                raise ValueError(f"CLIPConfig: a ViT needs an image_resolution divisible by vision_patch_size, "
                                 f"got {self.image_resolution} and {self.vision_patch_size}")
            attention_width = self.vision_width
        else:
            if len(self.vision_layers) != 4 or self.vision_patch_size is not None:
                raise ValueError(f"CLIPConfig: a ResNet needs vision_layers of 4 stage depths and no "
                                 f"vision_patch_size, got {self.vision_layers} and {self.vision_patch_size}")
            if self.image_resolution % 32:
                raise ValueError(f"CLIPConfig: a ResNet downsamples by 32, so image_resolution must be a "
                                 f"multiple of 32, got {self.image_resolution}")
            attention_width = self.vision_width * 32           # the attention pool's width
        for what, width, heads in (("vision", attention_width, self.vision_heads),
                                   ("text", self.transformer_width, self.transformer_heads)):
            if heads < 1 or width % heads:
                raise ValueError(f"CLIPConfig: {what} attention width {width} is not divisible "
                                 f"into {heads} heads")

    # ---------------------------------------------------------- presets, I/O
    @classmethod
    def from_state_dict(cls, state_dict, **overrides):
        """Infer the configuration from the shapes in an OpenAI-named state dict.

        As OpenAI's ``build_model``: a ViT if ``visual.proj`` exists, else a
        ModifiedResNet; widths from weight shapes, depths by counting the
        distinct block indices in the keys, the resolution from the number of
        positions (1 + grid², times the patch size or the ResNet's 32), heads
        as width // 64. ``overrides`` set what shapes cannot tell (e.g.
        ``transformer_heads`` of a tiny model, ``activation``, ``tokenizer``).
        A ``logit_bias`` key means a SigLIP model.
        """
        # BEGIN EXERCISE 4.6: the configuration from an OpenAI state dict
        def shape(key):
            if key not in state_dict:
                raise KeyError(f"CLIPConfig.from_state_dict: no {key!r} in the state dict; expected "
                               f"OpenAI's key names (e.g. 'visual.conv1.weight', 'ln_final.weight')")
            return tuple(state_dict[key].shape)

        def count_blocks(prefix):
            return len({k[len(prefix):].split(".")[0] for k in state_dict if k.startswith(prefix)})

        if "visual.proj" in state_dict:
            width, _, patch, _ = shape("visual.conv1.weight")
            grid = round((shape("visual.positional_embedding")[0] - 1) ** 0.5)
            vision = dict(vision_layers=count_blocks("visual.transformer.resblocks."), vision_width=width,
                          vision_patch_size=patch, image_resolution=patch * grid)
        else:
            grid = round((shape("visual.attnpool.positional_embedding")[0] - 1) ** 0.5)
            vision = dict(vision_layers=tuple(count_blocks(f"visual.layer{i}.") for i in (1, 2, 3, 4)),
                          vision_width=shape("visual.layer1.0.conv1.weight")[0], image_resolution=32 * grid)
        text_width = shape("ln_final.weight")[0]
        fields = dict(embed_dim=shape("text_projection")[1], context_length=shape("positional_embedding")[0],
                      vocab_size=shape("token_embedding.weight")[0], transformer_width=text_width,
                      transformer_heads=text_width // 64, transformer_layers=count_blocks("transformer.resblocks."),
                      loss="siglip" if "logit_bias" in state_dict else "clip", **vision)
        return cls(**{**fields, **overrides})
        # END EXERCISE

    @classmethod
    def preset(cls, name, **overrides):
        """A fresh copy of the preset ``name`` (see ``PRESETS``), with any fields overridden."""
        key = name.replace("/", "-")
        if key not in PRESETS:
            raise KeyError(f"unknown CLIP preset {name!r}; choose one of {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[key], **overrides)

    def to_dict(self):
        """Plain JSON-able values (for checkpoint metadata)."""
        d = dataclasses.asdict(self)
        if isinstance(d["vision_layers"], tuple):
            d["vision_layers"] = list(d["vision_layers"])
        return d

    @classmethod
    def from_dict(cls, d):
        """The inverse of ``to_dict``; unknown keys are an error, not silently dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"CLIPConfig.from_dict: unknown fields {unknown}; known fields are {sorted(known)}")
        return cls(**d)


# Captions of the built-in dataset are at most 14 tokens with the start and end tokens, so 16 positions suffice.
_TINY_TEXT = dict(context_length=16, vocab_size=1024, transformer_width=128, transformer_heads=4,
                  transformer_layers=4, tokenizer="trained")
_OPENAI_TEXT = dict(context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
                    transformer_layers=12, tokenizer="openai")

PRESETS = {
    # train on the built-in shapes dataset in minutes on two CPU cores (32 px: a 4×4 grid of 8 px patches)
    "tiny-vit": CLIPConfig(embed_dim=128, image_resolution=32, vision_layers=4, vision_width=128,
                           vision_patch_size=8, vision_heads=4, **_TINY_TEXT),
    "tiny-rn": CLIPConfig(embed_dim=128, image_resolution=32, vision_layers=(1, 1, 1, 1),
                          vision_width=32, **_TINY_TEXT),
    # the published shapes (OpenAI's ViT-B/32 and RN50)
    "ViT-B-32": CLIPConfig(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768,
                           vision_patch_size=32, **_OPENAI_TEXT),
    "RN50": CLIPConfig(embed_dim=1024, image_resolution=224, vision_layers=(3, 4, 6, 3),
                       vision_width=64, **_OPENAI_TEXT),
}

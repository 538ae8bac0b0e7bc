"""Chapter 4: the CLIP model: two encoders, one shared embedding space.

``from minclip.model import CLIP, CLIPConfig, PRESETS``; then
``CLIP(CLIPConfig.preset("tiny-vit"))`` or ``CLIP.from_openai_state_dict(weights)``.
"""
from minclip.model.clip import CLIP
from minclip.model.config import PRESETS, CLIPConfig
from minclip.model.resnet import AttentionPool2d, Bottleneck, ModifiedResNet
from minclip.model.text import causal_mask
from minclip.model.transformer import ResidualAttentionBlock, Transformer
from minclip.model.vit import VisionTransformer

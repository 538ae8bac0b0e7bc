"""The Vision Transformer image encoder: an image becomes a sentence of patches.

    image (B, 3, H, W)
      ──conv1: kernel = stride = patch size──> (B, D, g, g)    one D-vector per patch
      ──flatten, transpose──> (B, g², D)                       g² patch tokens
      ──prepend class_embedding, add positional_embedding──> (B, 1 + g², D)
      ──ln_pre, Transformer (no mask: every patch sees every patch)
      ──ln_post on the class token──> (B, D) @ proj ──> (B, E)

A convolution whose kernel equals its stride sees each p×p patch exactly
once, so it is just one linear map applied to every flattened patch: the
"words" of the image. The class token is a learned extra word that starts
empty of content; after the Transformer it has gathered from every patch
what the image is about, and it alone is projected.

Names are OpenAI's (``visual.conv1.weight``, ``visual.class_embedding``, ...),
and so is the initialization: N(0, 1)·width^-½ for the class token, the
positional embedding and ``proj``; PyTorch's defaults elsewhere.
"""
from minclip import functional as F
from minclip import nn
from minclip.model.transformer import Transformer, normal_parameter


class VisionTransformer(nn.Module):
    """ViT with patch size ``patch_size`` on ``input_resolution``² images, features of size ``output_dim``."""

    def __init__(self, *, input_resolution, patch_size, width, layers, heads, output_dim, activation="quick_gelu"):
        super().__init__()
        self.input_resolution, self.patch_size = input_resolution, patch_size
        self.grid = input_resolution // patch_size
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        scale = width ** -0.5
        self.class_embedding = normal_parameter((width,), scale)
        self.positional_embedding = normal_parameter((self.grid ** 2 + 1, width), scale)
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width=width, layers=layers, heads=heads, activation=activation)
        self.ln_post = nn.LayerNorm(width)
        self.proj = normal_parameter((width, output_dim), scale)

    def embed(self, images):
        """Images (B, 3, H, W) -> the Transformer's input tokens (B, 1 + g², width)."""
        # BEGIN EXERCISE 4.1: patches to tokens
        x = self.conv1(images)                                        # (B, D, g, g)
        B, D = x.shape[:2]
        x = x.reshape(B, D, -1).transpose(0, 2, 1)                    # (B, g², D)
        cls = self.class_embedding + x.xp.zeros((B, 1, D), dtype=x.dtype)  # (B, 1, D)
        x = F.concatenate([cls, x], axis=1)                           # (B, 1 + g², D)
        return x + self.positional_embedding                          # (B, 1 + g², D)
        # END EXERCISE

    def forward(self, images):
        """Images (B, 3, R, R) -> image features (B, output_dim), not normalized."""
        R = self.input_resolution
        self.check_input(images, 4, (3, R, R), f"(B, 3, {R}, {R})")
        x = self.ln_pre(self.embed(images))                           # (B, 1 + g², D)
        x = self.transformer(x)                                       # (B, 1 + g², D)
        return self.ln_post(x[:, 0, :]) @ self.proj                   # (B, D) @ (D, E) -> (B, E)

    def extra_repr(self):
        return f"{self.input_resolution}px, patch={self.patch_size}"

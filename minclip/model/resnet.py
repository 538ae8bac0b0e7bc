"""OpenAI's ModifiedResNet image encoder: a ResNet-50 with three changes.

    image (B, 3, R, R)
      ──stem: three 3×3 convolutions (the first with stride 2), average pool──>   (B, w, R/4, R/4)
      ──layer1 .. layer4: Bottleneck blocks, stages 2-4 halve the grid──>         (B, 32w, R/32, R/32)
      ──attnpool: attention from the mean token to every position──>             (B, E)

1. The stem has three convolutions instead of one 7×7, and an average pool
   instead of a max pool.
2. "Anti-aliased" downsampling: a strided block first *averages* 2×2
   neighbourhoods (AvgPool2d(2)) and then convolves with stride 1, instead of
   a strided convolution that would simply skip three pixels out of four.
3. The final global average pool is replaced by ``AttentionPool2d``: the mean
   of all positions asks one attention query over the grid, so the image
   feature is a learned, content-dependent weighting of positions.

Names are OpenAI's (``visual.layer1.0.conv1.weight``,
``visual.layer1.0.downsample.0.weight``, ``visual.attnpool.q_proj.weight``),
and so is the initialization: each Bottleneck's last batch-norm gain starts
at zero (the block starts as the identity), the attention pool's projections
have std (32w)^-½.
"""
from minclip import functional as F
from minclip import nn
from minclip.model.transformer import normal_parameter


class Bottleneck(nn.Module):
    """1×1 conv (narrow) → 3×3 conv → [avg pool if strided] → 1×1 conv (4× wider), plus a shortcut."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        outplanes = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, outplanes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(outplanes)
        nn.init.zeros_(self.bn3.weight)            # the residual branch starts silent: block = identity
        self.downsample = None
        if stride > 1 or inplanes != outplanes:    # the shortcut must change shape too
            self.downsample = nn.Sequential({
                "-1": nn.AvgPool2d(stride),
                "0": nn.Conv2d(inplanes, outplanes, 1, bias=False),
                "1": nn.BatchNorm2d(outplanes),
            })

    def forward(self, x):
        """x: (B, inplanes, H, W) -> (B, 4·planes, H / stride, W / stride)."""
        out = self.bn1(self.conv1(x)).relu()
        out = self.bn2(self.conv2(out)).relu()
        out = self.bn3(self.conv3(self.avgpool(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return (out + identity).relu()


class AttentionPool2d(nn.Module):
    """Pool a (B, C, H, W) feature map to (B, output_dim) with one attention query.

    The tokens are the H·W positions with the mean of all positions prepended
    (each plus a learned positional embedding). Only the mean token asks a
    query; keys and values come from all 1 + H·W tokens:

        out = c_proj( softmax(q_mean Kᵀ / √d) V )     per head, d = C / heads
    """

    def __init__(self, spacial_dim, embed_dim, num_heads, output_dim=None):
        super().__init__()
        self.num_heads = num_heads
        self.positional_embedding = normal_parameter((spacial_dim ** 2 + 1, embed_dim), embed_dim ** -0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim or embed_dim)
        for layer in (self.q_proj, self.k_proj, self.v_proj, self.c_proj):
            nn.init.normal_(layer.weight, std=embed_dim ** -0.5)

    def forward(self, x):
        """x: (B, C, H, W) -> (B, output_dim)."""
        # BEGIN EXERCISE 4.5: attention pooling
        B, C, H, W = x.shape
        x = x.reshape(B, C, H * W).transpose(0, 2, 1)                  # (B, HW, C)
        x = F.concatenate([x.mean(axis=1, keepdims=True), x], axis=1)  # (B, 1 + HW, C)
        x = x + self.positional_embedding
        heads = self.num_heads
        q = F.split_heads(self.q_proj(x[:, :1]), heads)                # (B, heads, 1, d)
        k = F.split_heads(self.k_proj(x), heads)                       # (B, heads, 1 + HW, d)
        v = F.split_heads(self.v_proj(x), heads)
        out = F.scaled_dot_product_attention(q, k, v)                  # (B, heads, 1, d)
        return self.c_proj(out.reshape(B, C))                          # one query: merging heads is a reshape
        # END EXERCISE


class ModifiedResNet(nn.Module):
    """OpenAI's ResNet: ``layers`` = Bottleneck blocks per stage, base ``width`` (64 for RN50)."""

    def __init__(self, *, layers, output_dim, heads, input_resolution=224, width=64):
        super().__init__()
        self.input_resolution = input_resolution
        # the three-convolution stem
        self.conv1 = nn.Conv2d(3, width // 2, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, kernel_size=3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        # the four residual stages; each after the first halves the grid and doubles the width
        self.layer1 = self._make_layer(width, width, layers[0])
        self.layer2 = self._make_layer(width * 4, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 8, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 16, width * 8, layers[3], stride=2)
        self.attnpool = AttentionPool2d(input_resolution // 32, width * 32, heads, output_dim)

    @staticmethod
    def _make_layer(inplanes, planes, blocks, stride=1):
        """One stage: a (possibly strided) first block, then blocks - 1 more at 4·planes channels."""
        first = Bottleneck(inplanes, planes, stride)
        return nn.Sequential(first, *(Bottleneck(planes * Bottleneck.expansion, planes) for _ in range(1, blocks)))

    def stem(self, x):
        """(B, 3, R, R) -> (B, width, R/4, R/4): three conv-BN-ReLU, then a 2×2 average pool."""
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            x = bn(conv(x)).relu()
        return self.avgpool(x)

    def forward(self, images):
        """Images (B, 3, R, R) -> image features (B, output_dim), not normalized."""
        R = self.input_resolution
        self.check_input(images, 4, (3, R, R), f"(B, 3, {R}, {R})")
        x = self.stem(images)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
        return self.attnpool(x)

    def extra_repr(self):
        return f"{self.input_resolution}px"

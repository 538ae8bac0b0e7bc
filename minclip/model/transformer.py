"""The Transformer shared by both towers: a stack of pre-LN residual attention blocks.

Each block lets every token look at the others (attention), then thinks about
what it saw on its own (an MLP), and *adds* both results to its running
representation (the residual stream):

    x = x + attn(ln_1(x))                 tokens exchange information
    x = x + mlp(ln_2(x))                  mlp = c_proj(act(c_fc(·))), 4× wider inside

The LayerNorm comes *before* each branch ("pre-LN"), so the residual stream
itself is never normalized and gradients flow straight down it.

Names follow OpenAI's ``ResidualAttentionBlock``: ``attn.in_proj_weight``,
``ln_1``, ``mlp.c_fc``, ``mlp.c_proj``, ``ln_2``, stacked in ``resblocks``.
Activations are batch-first, (B, T, D); OpenAI's (T, B, D) is not needed.
"""
from minclip import nn
from minclip.backend import xp


def normal_parameter(shape, std):
    """A float32 Parameter drawn from N(0, std²) by minclip's seeded generator."""
    return nn.init.normal_(nn.Parameter(xp.empty(shape, dtype="float32")), std=std)


def activation_layer(name):
    """The MLP's nonlinearity: "quick_gelu" (OpenAI's) or "gelu" (exact)."""
    layers = {"quick_gelu": nn.QuickGELU, "gelu": nn.GELU}
    if name not in layers:
        raise ValueError(f"unknown activation {name!r}: choose one of {sorted(layers)}")
    return layers[name]()


class ResidualAttentionBlock(nn.Module):
    """One pre-LN Transformer block of width ``d_model`` with ``n_head`` heads."""

    def __init__(self, d_model, n_head, activation="quick_gelu"):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, n_head)
        self.ln_1 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential({
            "c_fc": nn.Linear(d_model, 4 * d_model),
            "gelu": activation_layer(activation),
            "c_proj": nn.Linear(4 * d_model, d_model),
        })
        self.ln_2 = nn.LayerNorm(d_model)

    def forward(self, x, attn_mask=None):
        """x: (B, T, D) -> (B, T, D). ``attn_mask``: additive (T, T), e.g. causal."""
        # BEGIN EXERCISE 4.2: residual attention block
        x = x + self.attn(self.ln_1(x), attn_mask=attn_mask)[0]       # (B, T, D)
        x = x + self.mlp(self.ln_2(x))                                # (B, T, D)
        return x
        # END EXERCISE


class Transformer(nn.Module):
    """``layers`` residual attention blocks of width ``width``, applied in order."""

    def __init__(self, width, layers, heads, activation="quick_gelu"):
        super().__init__()
        self.width, self.layers = width, layers
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, activation) for _ in range(layers))

    def forward(self, x, attn_mask=None):
        """x: (B, T, width) -> (B, T, width); ``attn_mask`` is passed to every block."""
        for block in self.resblocks:
            x = block(x, attn_mask)
        return x

    def extra_repr(self):
        return f"width={self.width}, layers={self.layers}"

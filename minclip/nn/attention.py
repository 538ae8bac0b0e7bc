"""Multi-head attention with PyTorch's parameter layout.

Every token asks a question (query), offers a label (key) and carries a
message (value). Each head compares queries with keys by dot products,
turns the scores into weights with a softmax, and averages the values:

    head_h = softmax(Q_h K_hᵀ / √d + mask) V_h,     d = D / num_heads

All heads run in one batched matrix product: (B, T, D) is reshaped to
(B, H, T, d), so there is no Python loop over heads.

Parameters, named as in ``torch.nn.MultiheadAttention`` (and so in OpenAI's
CLIP weights): ``in_proj_weight`` (3D, D) stacks W_q, W_k, W_v;
``in_proj_bias`` (3D,); ``out_proj`` is a Linear(D, D).
"""
from minclip import functional as F
from minclip.backend import xp
from minclip.nn import init
from minclip.nn.linear import Linear
from minclip.nn.module import Module, Parameter
from minclip.tensor import Tensor


class MultiheadAttention(Module):
    """Batch-first multi-head attention: inputs and output are (B, T, D)."""

    def __init__(self, embed_dim, num_heads, bias=True):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"MultiheadAttention: embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.in_proj_weight = init.xavier_uniform_(Parameter(xp.empty((3 * embed_dim, embed_dim), dtype="float32")))
        self.in_proj_bias = Parameter(xp.zeros(3 * embed_dim, dtype="float32")) if bias else None
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias)
        if bias:
            init.zeros_(self.out_proj.bias)

    def forward(self, query, key=None, value=None, attn_mask=None, need_weights=False):
        """Attend from ``query`` to ``key``/``value`` (self-attention when they are omitted).

        ``attn_mask``: additive (Tq, Tk) array or Tensor, 0 where allowed and
        -inf where not (the text encoder's causal mask). Returns
        ``(output (B, Tq, D), weights (B, Tq, Tk) averaged over heads or None)``,
        as PyTorch does.
        """
        D = self.embed_dim
        self.check_input(query, 3, (D,), f"(B, T, {D})")
        key = query if key is None else key
        value = key if value is None else value
        self.check_input(key, 3, (D,), f"(B, T, {D})")
        self.check_input(value, 3, (D,), f"(B, T, {D})")
        q, k, v = self._project(query, key, value)                                 # (B, T, D) each
        H = self.num_heads
        q, k, v = F.split_heads(q, H), F.split_heads(k, H), F.split_heads(v, H)    # (B, H, T, d)
        mask = attn_mask.data if isinstance(attn_mask, Tensor) else attn_mask
        if not need_weights:
            out = F.merge_heads(F.scaled_dot_product_attention(q, k, v, mask))     # (B, Tq, D)
            return self.out_proj(out), None
        probs = F.attention_weights(q, k, mask)                                    # (B, H, Tq, Tk)
        out = F.merge_heads(probs @ v)                                             # (B, Tq, D)
        return self.out_proj(out), probs.mean(axis=1)

    def _project(self, query, key, value):
        """q, k, v: each input times its third of ``in_proj_weight`` (plus bias).

        Slicing the weight (3D, D), rather than computing one (B, T, 3D)
        product and slicing that, keeps the backward cheap: a slice's gradient
        is written into a zero array the size of the sliced tensor, which is
        small for the weight and large for the activations.
        """
        D, w, b = self.embed_dim, self.in_proj_weight, self.in_proj_bias
        return tuple(F.linear(x, w[i * D:(i + 1) * D], None if b is None else b[i * D:(i + 1) * D])
                     for i, x in enumerate((query, key, value)))

    def extra_repr(self):
        return f"{self.embed_dim}, num_heads={self.num_heads}"

"""The text encoder: token ids (B, T) -> one feature vector per caption (B, embed_dim).

    ids ──token_embedding──> (B, T, D) + positional_embedding
        ──Transformer, causal mask──> ln_final
        ──take the end-of-text token's vector──> @ text_projection ──> (B, E)

The causal mask lets token t attend only to tokens 0..t, as in a language
model. So the only position that has read the *whole* caption is the last
real one: the end-of-text token (EOT). CLIP's tokenizer gives EOT the highest
id in the vocabulary, so its position in each row is simply ``ids.argmax(-1)``
(padding after it is 0). That vector, projected, is the caption's embedding.

The parameter names are OpenAI's, and they sit at the *top level* of a CLIP
model (``token_embedding.weight``, ``transformer.resblocks.0...``,
``ln_final.weight``, ``text_projection``, ``positional_embedding``), which is
why ``CLIP`` inherits from this class instead of holding it as ``self.text``.
"""
from minclip import functional as F, nn
from minclip.backend import array_module, value_range, xp
from minclip.model.transformer import Transformer, normal_parameter
from minclip.tensor import Tensor


def causal_mask(size, like=None):
    """The additive (size, size) causal mask: 0 on and below the diagonal, -inf above.

    Row t is what query t may see: keys 0..t get 0 (kept), keys after t get
    -inf, which the softmax turns into weight exactly 0. It is built with the
    array library and dtype of ``like`` (an array), so that a model moved to
    the GPU or cast to float64 needs no mask of its own; building it costs
    microseconds next to the Transformer it masks.

    Hint: ``triu(full((n, n), -inf), k=1)`` keeps -inf strictly above the diagonal.
    """
    # BEGIN EXERCISE 4.3: causal mask
    lib = xp if like is None else array_module(like)
    dtype = "float32" if like is None else like.dtype
    return lib.triu(lib.full((size, size), -lib.inf, dtype=dtype), k=1)   # (T, T)
    # END EXERCISE


class TextTransformer(nn.Module):
    """Token embedding, positional embedding, causal Transformer, ``ln_final``, ``text_projection``."""

    def __init__(self, context_length, vocab_size, width, heads, layers, embed_dim, activation="quick_gelu"):
        super().__init__()
        self.context_length, self.vocab_size = context_length, vocab_size
        self.transformer = Transformer(width, layers, heads, activation)
        self.token_embedding = nn.Embedding(vocab_size, width)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        self.positional_embedding = normal_parameter((context_length, width), std=0.01)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = normal_parameter((width, embed_dim), std=width ** -0.5)
        self.initialize_blocks()

    def initialize_blocks(self):
        """OpenAI's per-layer stds: residual-branch outputs scaled down with depth.

        Each of the 2·layers branches adds onto the residual stream, so the
        output projections (``attn.out_proj``, ``mlp.c_proj``) get std
        width^-½ · (2·layers)^-½, keeping the sum's variance independent of
        depth; the input projections get width^-½ and (2·width)^-½.
        """
        width, layers = self.transformer.width, self.transformer.layers
        attn_std, fc_std = width ** -0.5, (2 * width) ** -0.5
        proj_std = width ** -0.5 * (2 * layers) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)

    def check_token_ids(self, ids):
        """Integer ids (B, T) with T <= context_length and every id in the vocabulary, as an array."""
        ids = ids.data if isinstance(ids, Tensor) else ids
        if not hasattr(ids, "dtype"):
            ids = array_module(self.text_projection.data).asarray(ids)
        if ids.ndim != 2 or ids.shape[1] > self.context_length or ids.dtype.kind not in "iu":
            raise ValueError(f"encode_text: expected integer token ids (B, T) with T <= context_length "
                             f"{self.context_length}, got {ids.dtype} {ids.shape}")
        low, high = value_range(ids)  # on the host when the ids come from there: no sync
        if low < 0 or high >= self.vocab_size:
            raise ValueError(f"encode_text: token ids must lie in [0, {self.vocab_size}), got "
                             f"[{low}, {high}]; was the tokenizer's vocabulary larger than the model's?")
        return array_module(self.text_projection.data).asarray(ids)

    def encode_text(self, ids):
        """Token ids (B, T), EOT the highest id of each row -> text features (B, embed_dim), not normalized.

        Hint: check the ids (``check_token_ids``), add the token embeddings
        and the first T positional embeddings, run the Transformer with the
        causal mask, apply ``ln_final``; then gather one row per caption with
        advanced indexing, ``x[arange(B), ids.argmax(-1)]``, and project it
        with ``text_projection``.
        """
        # BEGIN EXERCISE 4.4: end-of-text pooling
        ids = self.check_token_ids(ids)
        B, T = ids.shape
        x = F.embedding(self.token_embedding.weight, ids) + self.positional_embedding[:T]  # (B, T, D), ids checked
        x = self.transformer(x, attn_mask=causal_mask(T, like=x.data))          # (B, T, D)
        x = self.ln_final(x)
        eot = array_module(ids).arange(B), ids.argmax(axis=-1)                  # one position per row
        return x[eot] @ self.text_projection                                    # (B, D) @ (D, E) -> (B, E)
        # END EXERCISE

    def forward(self, ids):
        return self.encode_text(ids)

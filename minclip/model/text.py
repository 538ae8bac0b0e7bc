"""The text encoder: token ids (B, T) -> one feature vector per caption (B, embed_dim).

    ids ──token_embedding──> (B, T, D) + positional_embedding
        ──Transformer, causal mask──> ln_final
        ──take the end-of-text token's vector──> @ text_projection ──> (B, E)

The causal mask lets token t attend only to tokens 0..t, as in a language
model. So the only position that has read the *whole* caption is the last
real one: the end-of-text token (EOT). CLIP's tokenizer gives EOT the highest
id in the vocabulary, so its position in each row is simply ``ids.argmax(-1)``
(padding after it is 0). That vector, projected, is the caption's embedding.

The text tower's parts are attributes of ``CLIP`` itself, as in OpenAI's
``clip/model.py`` (``token_embedding.weight``, ``transformer.resblocks.0...``,
``ln_final.weight``, ``text_projection``, ``positional_embedding``), and
``CLIP.encode_text`` runs them. This file holds what they need around them:
the causal mask, OpenAI's per-layer initialization, and the check of the ids.
"""
from minclip import nn
from minclip.backend import array_module, value_range, xp
from minclip.tensor import Tensor


def causal_mask(size, like=None):
    """The additive (size, size) causal mask: 0 on and below the diagonal, -inf above.

    Row t is what query t may see: keys 0..t get 0 (kept), keys after t get
    -inf, which the softmax turns into weight exactly 0. It is built with the
    array library and dtype of ``like`` (an array), so that a model moved to
    the GPU or cast to float64 needs no mask of its own; building it costs
    microseconds next to the Transformer it masks.
    """
    # BEGIN EXERCISE 4.3: causal mask
    lib = xp if like is None else array_module(like)
    dtype = "float32" if like is None else like.dtype
    return lib.triu(lib.full((size, size), -lib.inf, dtype=dtype), k=1)   # (T, T)
    # END EXERCISE


def initialize_blocks(transformer):
    """OpenAI's per-layer stds for the text Transformer: residual-branch outputs scaled down with depth.

    Each of the 2·layers branches adds onto the residual stream, so the
    output projections (``attn.out_proj``, ``mlp.c_proj``) get std
    width^-½ · (2·layers)^-½, keeping the sum's variance independent of
    depth; the input projections get width^-½ and (2·width)^-½.
    """
    width, layers = transformer.width, transformer.layers
    attn_std, fc_std = width ** -0.5, (2 * width) ** -0.5
    proj_std = width ** -0.5 * (2 * layers) ** -0.5
    for block in transformer.resblocks:
        nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
        nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
        nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
        nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)


def check_token_ids(ids, context_length, vocab_size, like):
    """Integer ids (B, T) with T <= context_length and every id in [0, vocab_size), as an array.

    ``ids`` may be a Tensor, an array or a list; the result lives in the
    library of ``like`` (an array of the model). The range is checked where
    the ids are, before the move: free for host ids, one sync for device ids.
    """
    ids = ids.data if isinstance(ids, Tensor) else ids
    if not hasattr(ids, "dtype"):                                   # a list
        ids = array_module(like).asarray(ids)
    if ids.ndim != 2 or ids.shape[1] > context_length or ids.dtype.kind not in "iu":
        raise ValueError(f"encode_text: expected integer token ids (B, T) with T <= context_length "
                         f"{context_length}, got {ids.dtype} {ids.shape}")
    low, high = value_range(ids)
    if low < 0 or high >= vocab_size:
        raise ValueError(f"encode_text: token ids must lie in [0, {vocab_size}), got "
                         f"[{low}, {high}]; was the tokenizer's vocabulary larger than the model's?")
    return array_module(like).asarray(ids)

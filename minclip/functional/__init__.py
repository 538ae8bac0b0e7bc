"""Every differentiable function of minclip, in one index: ``import minclip.functional as F``.

A function here takes Tensors and returns a Tensor; its gradient comes from a
``Function`` subclass (forward and backward on arrays) or, for a composite,
from the Tensor ops it is built of. The Tensor methods (``x.exp()``,
``x.sum()``, ``a @ b``, ...) are the engine's own ops, in ``tensor.py``;
``F.relu``, ``F.sigmoid`` and ``F.tanh`` name them here too, so that ``F`` is
the one place to look. Layers (``minclip.nn``) hold parameters and call these.

The functions live in short files by family, which this index re-exports
(as DeZero's ``functions.py`` does for its convolutions):

* ``join``: ``concatenate``, ``stack``, ``where``, ``masked_fill``
* ``activation``: ``gelu``, ``quick_gelu``, ``relu``, ``sigmoid``, ``tanh``, ``log_sigmoid``, ``dropout``
* ``softmax``: ``softmax``, ``log_softmax``, ``logsumexp``, ``cross_entropy``
* ``norm``: ``layer_norm``, ``normalize``; ``batchnorm``: ``batch_norm``
* ``linear``: ``linear``, ``embedding``
* ``conv``: ``conv2d`` (and its ``im2col``, ``col2im``); ``pool``: ``avg_pool2d``, ``adaptive_avg_pool2d``
* ``attention``: ``split_heads``, ``merge_heads``, ``attention_weights``, ``scaled_dot_product_attention``
  (and its NumPy fast path, one ``AttentionFunction`` node)
"""
from minclip.functional.activation import (GELUFunction, LogSigmoidFunction, QuickGELUFunction,
                                           dropout, gelu, log_sigmoid, quick_gelu, relu, sigmoid, tanh)
from minclip.functional.attention import (AttentionFunction, attention_weights, merge_heads, scaled_dot_product_attention,
                                          split_heads)
from minclip.functional.batchnorm import BatchNormFunction, batch_norm
from minclip.functional.conv import Conv2dFunction, conv2d
from minclip.functional.join import ConcatenateFunction, WhereFunction, concatenate, masked_fill, stack, where
from minclip.functional.linear import EmbeddingFunction, LinearFunction, embedding, linear
from minclip.functional.norm import LayerNormFunction, NormalizeFunction, layer_norm, normalize
from minclip.functional.pool import AvgPool2dFunction, adaptive_avg_pool2d, avg_pool2d
from minclip.functional.softmax import (CrossEntropyFunction, LogSoftmaxFunction, LogSumExpFunction, SoftmaxFunction,
                                        cross_entropy, log_softmax, logsumexp, softmax)

"""Neural-network layers with PyTorch's names and parameter layouts."""
from minclip.nn import init
from minclip.nn.activation import GELU, Dropout, Identity, QuickGELU, ReLU
from minclip.nn.attention import MultiheadAttention
from minclip.nn.container import ModuleList, Sequential
from minclip.nn.linear import Embedding, Linear, linear
from minclip.nn.module import Module, Parameter
from minclip.nn.norm import LayerNorm

"""Neural-network layers with PyTorch's names and parameter layouts (their maths: ``minclip.functional``)."""
from minclip.nn import init
from minclip.nn.activation import GELU, Dropout, Identity, QuickGELU, ReLU
from minclip.nn.attention import MultiheadAttention
from minclip.nn.batchnorm import BatchNorm2d, sync_batchnorm
from minclip.nn.container import ModuleList, Sequential
from minclip.nn.conv import Conv2d
from minclip.nn.linear import Embedding, Linear
from minclip.nn.module import Module, Parameter
from minclip.nn.norm import LayerNorm
from minclip.nn.pool import AdaptiveAvgPool2d, AvgPool2d

"""Average pooling layers, ``AvgPool2d`` and ``AdaptiveAvgPool2d``; the maths is in ``F``."""
from minclip import functional as F
from minclip.nn.module import Module


class AvgPool2d(Module):
    """Average each ``kernel_size`` window, moving by ``stride`` (default: the kernel size)."""

    def __init__(self, kernel_size, stride=None):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride

    def forward(self, x):
        self.check_input(x, 4, (), "(N, C, H, W)")
        return F.avg_pool2d(x, self.kernel_size, self.stride)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class AdaptiveAvgPool2d(Module):
    """Average down to a fixed ``output_size`` (which must divide the input size)."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, x):
        self.check_input(x, 4, (), "(N, C, H, W)")
        return F.adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self):
        return f"output_size={self.output_size}"

import cupy.lib.stride_tricks as stride_tricks  # noqa: F401

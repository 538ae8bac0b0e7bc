"""``BatchNorm2d``: per-channel batch normalization with learned scale and shift; the maths is ``F.batch_norm``.

State, named as in PyTorch (and so in OpenAI's ResNet weights): parameters
``weight``, ``bias``; buffers ``running_mean``, ``running_var`` and
``num_batches_tracked`` (an int64 scalar array). ``sync_batchnorm`` makes
every BatchNorm2d of a model use the statistics of the global batch of
data-parallel training.
"""
from minclip.backend import xp
from minclip.functional import batch_norm
from minclip.nn.module import Module, Parameter


class BatchNorm2d(Module):
    """Per-channel batch normalization of (N, num_features, H, W) inputs.

    ``momentum=None`` makes the running statistics a plain average of all
    batches seen so far (PyTorch's cumulative moving average). ``comm``
    (None: this process's batch alone) is set by ``sync_batchnorm``.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = Parameter(xp.ones(num_features, dtype="float32"))
        self.bias = Parameter(xp.zeros(num_features, dtype="float32"))
        self.register_buffer("running_mean", xp.zeros(num_features, dtype="float32"))
        self.register_buffer("running_var", xp.ones(num_features, dtype="float32"))
        self.register_buffer("num_batches_tracked", xp.zeros((), dtype="int64"))
        self.comm = None

    def forward(self, x):
        self.check_input(x, 4, (self.num_features, None, None), f"(N, {self.num_features}, H, W)")
        momentum = self.momentum
        if self.training:
            self.num_batches_tracked += 1
            if momentum is None:
                momentum = 1.0 / int(self.num_batches_tracked)
        return batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                          training=self.training, momentum=momentum, eps=self.eps, comm=self.comm)

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


def sync_batchnorm(model, comm):
    """Make every ``BatchNorm2d`` of ``model`` use the global batch of ``comm``'s ranks
    in training (PyTorch's ``SyncBatchNorm.convert_sync_batchnorm``); returns ``model``.
    Weights and state are untouched, so checkpoints do not change."""
    for module in model.modules():
        if isinstance(module, BatchNorm2d):
            module.comm = comm
    return model

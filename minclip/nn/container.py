"""Containers: ``Sequential`` (run in order) and ``ModuleList`` (hold a list)."""
from minclip.nn.module import Module


class Sequential(Module):
    """Modules applied one after the other.

    ``Sequential(a, b)`` names them "0", "1" (keys ``0.weight``...);
    ``Sequential({"c_fc": a, "gelu": b})`` keeps the given names, as OpenAI's
    MLP does (``mlp.c_fc.weight``).
    """

    def __init__(self, *modules):
        super().__init__()
        named = modules[0].items() if len(modules) == 1 and isinstance(modules[0], dict) \
            else ((str(i), m) for i, m in enumerate(modules))
        for name, module in named:
            setattr(self, name, module)

    def forward(self, x):
        for module in self._modules.values():
            x = module(x)
        return x

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __len__(self):
        return len(self._modules)


class ModuleList(Module):
    """A list of modules, registered as "0", "1", ... (keys ``resblocks.0.attn...``)."""

    def __init__(self, modules=()):
        super().__init__()
        for module in modules:
            self.append(module)

    def append(self, module):
        setattr(self, str(len(self._modules)), module)

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __iter__(self):
        return iter(self._modules.values())

    def __len__(self):
        return len(self._modules)

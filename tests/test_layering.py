"""The package's layers: lower ones never import higher ones, and imports sit at the top;
and the one index of differentiable functions, ``minclip.functional``, with its naming rule.

The order is the one written in docs/ARCHITECTURE.md (the line that starts
with ``backend <``), so the document and the code cannot drift apart. Each
module of ``minclip`` is parsed (not imported) and every ``minclip`` import
in it, anywhere in the file, must name a part at or below its own.
"""
import ast
import importlib
import os
import re

import pytest

from minclip import functional as F
from minclip import nn
from minclip.tensor import Function

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "minclip")
# The one function-local import the package keeps, and why: PEP 562 lazy loading, so that
# ``python -m minclip.data.shapes`` does not load that module twice (see minclip/data/__init__.py).
LOCAL_IMPORTS_ALLOWED = {("minclip/data/__init__.py", "minclip.data.shapes")}


def documented_layers():
    """The layer order of docs/ARCHITECTURE.md: ["backend", "tensor", ...], lowest first."""
    with open(os.path.join(ROOT, "docs", "ARCHITECTURE.md"), encoding="utf-8") as f:
        lines = [line.strip() for line in f if re.match(r"\s*backend\s*<", line)]
    assert len(lines) == 1, f"docs/ARCHITECTURE.md: expected one line 'backend < tensor < ...', found {len(lines)}"
    return [name.strip() for name in lines[0].split("<")]


def package_modules():
    """(path relative to the repository, dotted module name) of every module of minclip."""
    for folder, _, files in os.walk(PACKAGE):
        for file in sorted(files):
            if file.endswith(".py"):
                path = os.path.relpath(os.path.join(folder, file), ROOT)
                name = path[:-3].replace(os.sep, ".").removesuffix(".__init__")
                yield path.replace(os.sep, "/"), name


def minclip_imports(path, module):
    """(imported module, at top level?) for every import of minclip in the file."""
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    top_level = {id(node) for node in tree.body}
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:                                             # from . import x
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + [base]).strip(".")
            names = [_submodule_or_package(base, alias.name) for alias in node.names]
        else:
            continue
        for name in names:
            if name == "minclip" or name.startswith("minclip."):
                yield name, id(node) in top_level


def _submodule_or_package(base, name):
    """``from minclip import nn`` imports minclip.nn; ``from minclip import Tensor`` imports minclip."""
    candidate = os.path.join(ROOT, *f"{base}.{name}".split("."))
    return f"{base}.{name}" if os.path.isdir(candidate) or os.path.isfile(candidate + ".py") else base


def layer_of(module, layers):
    """The layer of a dotted module name: its first part below ``minclip`` (``minclip.nn.conv`` -> nn)."""
    part = module.split(".")[1] if "." in module else "minclip"
    return layers.index(part) if part in layers else None


MODULES = list(package_modules())


def test_the_documented_order_names_every_part_of_the_package():
    layers = documented_layers()
    parts = {name.split(".")[1] for _, name in MODULES if "." in name}
    assert parts <= set(layers), (f"docs/ARCHITECTURE.md's layer line does not place {sorted(parts - set(layers))}: "
                                  f"add each where it belongs in 'backend < tensor < ...'")


@pytest.mark.parametrize("path, module", MODULES, ids=[path for path, _ in MODULES])
def test_no_module_imports_a_higher_layer(path, module):
    layers = documented_layers()
    own = layer_of(module, layers)
    if own is None:                                    # the package's own __init__: the facade, on top of all
        return
    higher = sorted({name for name, _ in minclip_imports(path, module)
                     if layer_of(name, layers) is None or layer_of(name, layers) > own})
    assert not higher, (f"{path} ({layers[own]}) imports {higher}, which docs/ARCHITECTURE.md places above it "
                        f"({' < '.join(layers)}); move the shared code down a layer")


@pytest.mark.parametrize("path, module", MODULES, ids=[path for path, _ in MODULES])
def test_imports_of_minclip_sit_at_the_top_of_the_file(path, module):
    local = sorted({name for name, top in minclip_imports(path, module)
                    if not top and (path, name) not in LOCAL_IMPORTS_ALLOWED})
    assert not local, (f"{path} imports {local} inside a function; imports go at the top of the file "
                       f"(an import that only works late hides a cycle between layers)")


# ------------------------------------------------------- the index of functions

def function_classes():
    """Every ``Function`` subclass defined in minclip, after importing every module of the package."""
    for _, module in MODULES:
        importlib.import_module(module)
    found, todo = [], [Function]
    while todo:
        for cls in todo.pop().__subclasses__():
            if cls.__module__.startswith("minclip."):
                found.append(cls)
            todo.append(cls)
    return found


def test_every_function_is_in_the_index_or_is_a_tensor_method():
    """``minclip.functional`` (F) indexes every differentiable function; the engine's own ops
    (tensor.py) are Tensor methods and operators, and communication ops sit with the
    communicator (distributed.py, above F's layer). Nothing else defines a Function."""
    homes = {"minclip.tensor", "minclip.distributed"}
    for cls in function_classes():
        if cls.__module__ in homes:
            continue
        assert cls.__module__.startswith("minclip.functional."), \
            f"{cls.__module__}.{cls.__name__}: a Function goes in minclip/functional/ (a layer calls it from F)"
        assert getattr(F, cls.__name__, None) is cls, \
            f"{cls.__module__}.{cls.__name__} is missing from minclip/functional/__init__.py's index"


def test_function_classes_end_in_function_and_never_share_a_module_name():
    """The naming rule of CONTRIBUTING.md: ``SoftmaxFunction`` is the op, ``nn.Softmax`` would be the layer."""
    functions = function_classes()
    misnamed = sorted(f"{cls.__module__}.{cls.__name__}" for cls in functions if not cls.__name__.endswith("Function"))
    assert not misnamed, f"Function classes must end in 'Function' (CONTRIBUTING.md), got {misnamed}"
    modules = {cls.__name__ for cls in _subclasses(nn.Module)}
    shared = sorted(modules & {cls.__name__ for cls in functions})
    assert not shared, f"{shared} name both a Function and an nn Module"


def _subclasses(cls):
    return {cls}.union(*(_subclasses(sub) for sub in cls.__subclasses__()))

"""Record the API of the installed CuPy into ``cupy_api.json``, for the stand-in.

CuPy imports without a GPU, so its names and signatures can be read on any
machine: ``pip install cupy-cuda12x && python tests/support/record_cupy_api.py``.
The stand-in (``tests/support/cupy``) exposes exactly these names, methods and
keywords, so code that passes on it uses nothing the real CuPy lacks.

For each callable the file stores its parameter names, or ``null`` where CuPy
gives no signature (then every keyword is accepted).
"""
import inspect
import json
import pathlib
import re

import cupy
import cupy.lib.stride_tricks
import cupyx
import cupyx.scipy.special

MODULES = {
    "cupy": cupy, "cupy.random": cupy.random, "cupy.linalg": cupy.linalg,
    "cupy.lib.stride_tricks": cupy.lib.stride_tricks, "cupyx": cupyx,
    "cupyx.scipy.special": cupyx.scipy.special,
}
CLASSES = {"cupy.ndarray": cupy.ndarray, "cupy.random.Generator": cupy.random.Generator,
           "cupy.ufunc": cupy.ufunc}


def parameters(obj, name):
    """The parameter names of ``obj`` (``"**"`` for a catch-all), or None if unknown."""
    try:
        params = inspect.signature(obj).parameters.values()
        return [("**" if p.kind is p.VAR_KEYWORD else "*" if p.kind is p.VAR_POSITIONAL else p.name)
                for p in params if p.name != "self"]
    except (TypeError, ValueError):
        pass
    # Cython functions state their signature on the docstring's first lines.
    match = re.search(rf"\b{re.escape(name)}\((.*?)\)", obj.__doc__ or "")
    if match is None:
        return None
    names = []
    for part in match.group(1).replace("\\", "").split(","):
        part = part.split("=")[0].strip()
        if part in ("", "/", "*", "self"):
            continue
        names.append("**" if part.startswith("**") else "*" if part.startswith("*") else part)
    return names


def public(namespace):
    return {n: getattr(namespace, n) for n in dir(namespace) if not n.startswith("_")}


def describe(namespace):
    entries = {}
    for name, obj in sorted(public(namespace).items()):
        if isinstance(obj, cupy.ufunc):
            entries[name] = {"kind": "ufunc", "params": parameters(obj, name)}
        elif inspect.ismodule(obj):
            entries[name] = {"kind": "module"}
        elif inspect.isclass(obj):
            entries[name] = {"kind": "class"}
        elif callable(obj):
            entries[name] = {"kind": "function", "params": parameters(obj, name)}
        else:
            entries[name] = {"kind": "value"}
    return entries


def main():
    api = {"cupy_version": cupy.__version__,
           "modules": {name: describe(module) for name, module in MODULES.items()},
           "classes": {name: describe(cls) for name, cls in CLASSES.items()}}
    for cls in ("cupy.ndarray",):  # the operators the stand-in may define
        dunders = [n for n in dir(CLASSES[cls]) if n.startswith("__")]
        api["classes"][cls]["__dunders__"] = {"kind": "value", "names": dunders}
    path = pathlib.Path(__file__).with_name("cupy_api.json")
    path.write_text(json.dumps(api, indent=1, sort_keys=True) + "\n")
    print(f"wrote {path} (CuPy {cupy.__version__})")


if __name__ == "__main__":
    main()

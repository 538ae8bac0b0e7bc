"""A corpus that every Python installation has: the standard library itself.

Training a tokenizer needs text, and a course should not start with a
download. The standard library ships megabytes of it: docstrings (English
prose) and source files (code and comments).
"""
import ast
import os


def stdlib_texts(max_chars=1_000_000, docstrings=True):
    """Texts from the standard library's ``.py`` files, in a fixed order, up to ``max_chars``.

    ``docstrings=True`` gives the docstrings of modules, classes and
    functions; ``False`` gives whole files. Installed third-party packages
    (site-packages) and files that do not parse are skipped.
    """
    texts, total = [], 0
    for path in _stdlib_files():
        try:
            with open(path, encoding="utf-8") as f:
                source = f.read()
            found = [source] if not docstrings else [
                doc for node in ast.walk(ast.parse(source))
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                and (doc := ast.get_docstring(node))]
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for text in found:
            texts.append(text[:max_chars - total])
            total += len(texts[-1])
            if total >= max_chars:
                return texts
    return texts


def _stdlib_files():
    """The standard library's ``.py`` paths in sorted order, without installed packages."""
    root = os.path.dirname(os.__file__)
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if d not in ("site-packages", "dist-packages", "__pycache__"))
        for name in sorted(files):
            if name.endswith(".py"):
                yield os.path.join(folder, name)

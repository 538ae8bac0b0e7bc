"""CI's second pass: the whole suite again, on the CPU stand-in for CuPy.

No GPU is lent to CI, so ``tests/support/cupy`` plays CuPy: same names and
keywords as the real package, no implicit host copies, counted syncs (see its
docstring). Running every test there with ``MINCLIP_BACKEND=cupy`` proves the
code makes no NumPy-only assumption; only a real GPU proves the CUDA numerics
and the speed (``benchmarks/gpu_check.sh``).

Left out of the second pass, with the reason:
* ``test_01_tokenizer.py``: tokenizing runs on the host, with no array of the backend;
* ``test_notebooks.py``: the notebooks teach on NumPy and are run in the first pass;
* ``test_exercises_tool.py``: it checks the course tooling (export, grading),
  which does not depend on the backend, and would double the time;
* ``test_fast_paths.py``: the blocked fast paths are NumPy's own (on CuPy
  the fused kernels of ``test_gpu_fused.py`` take their place);
* this file itself (it would recurse).
"""
import json
import os
import pathlib
import subprocess
import sys

import pytest
from support.exercise_wait import wait_for_every_exercise, wait_for_unsolved_exercise

ROOT = pathlib.Path(__file__).parent.parent
SUPPORT = ROOT / "tests" / "support"
SKIPPED_HERE = ("tests/test_01_tokenizer.py", "tests/test_notebooks.py", "tests/test_exercises_tool.py",
               "tests/test_fast_paths.py", "tests/test_gpu_standin.py")

pytestmark = pytest.mark.skipif(os.environ.get("MINCLIP_BACKEND") == "cupy",
                                reason="this already is a CuPy run: it must not start another")


def standin_env():
    """The environment of a CuPy run on the stand-in (never the real CuPy)."""
    path = os.pathsep.join(filter(None, [str(SUPPORT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "MINCLIP_BACKEND": "cupy", "PYTHONPATH": path}


def run(args, timeout):
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=standin_env(),
                          capture_output=True, text=True, timeout=timeout)


def test_the_standin_is_imported_and_not_the_real_cupy():
    result = run(["-c", "import cupy, minclip.backend as b; print(cupy.__file__, b.get_backend())"], 60)
    assert result.returncode == 0, result.stderr
    path, name = result.stdout.split()
    assert pathlib.Path(path).is_relative_to(SUPPORT) and name == "cupy", result.stdout


def test_the_whole_suite_passes_on_the_standin():
    wait_for_every_exercise(ROOT, "the stand-in pass reruns the whole suite")
    ignores = [f"--ignore={name}" for name in SKIPPED_HERE]
    result = run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "--tb=short", *ignores], 1500)
    if result.returncode != 0:   # in the student edition the second pass stops where the first does
        wait_for_unsolved_exercise(result.stdout, "the stand-in pass")
    assert result.returncode == 0, f"the suite fails on the CuPy stand-in:\n{result.stdout[-6000:]}{result.stderr[-2000:]}"


def test_train_and_resume_with_backend_cupy(tmp_path):
    common = ["-m", "minclip.train", "--backend", "cupy", "--train-num-samples", "256", "--batch-size", "32",
              "--epochs", "2", "--logs", str(tmp_path), "--name", "standin", "--no-progress", "--no-eval"]
    first = run([*common, "--max-steps", "5"], 600)
    wait_for_unsolved_exercise(first.stderr, "python -m minclip.train --backend cupy")
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = run([*common, "--resume", "latest"], 600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in (tmp_path / "standin" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 16, f"resume must continue the step count: {steps}"


STANDIN_RULES = r'''
import numpy as np, pytest, cupy, cupyx
from cupy import _standin
a = cupy.asarray(np.arange(6, dtype="float32").reshape(2, 3))
with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
    np.asarray(a)
for mixed in (lambda: a + np.ones(3), lambda: np.ones(3) + a, lambda: cupy.exp(np.ones(3))):
    with pytest.raises(TypeError):
        mixed()
with pytest.raises(TypeError, match="unexpected keyword argument 'where'"):
    cupy.sum(a, where=True)
with pytest.raises(AttributeError):
    cupy.random.default_rng(0).normal(size=3)       # CuPy's Generator has no normal()
with pytest.raises(TypeError, match="Unsupported dtype object"):
    cupy.asarray(a.data)                            # .data is a device pointer, not the values
assert isinstance(a.sum(), cupy.ndarray) and a.sum().shape == ()   # reductions stay on the device
_standin.reset()
float(a.sum()), a.get(), a.max().item()
assert sum(_standin.syncs.values()) == 3, _standin.syncs
cupyx.scatter_add(a, (np.array([0, 0]), np.array([1, 1])), 1.0)
assert a.get()[0, 1] == 3.0
fused = cupy.fuse()(lambda x: cupy.exp(x) * 2)
_standin.reset()
fused(a)
assert sum(_standin.calls.values()) == 1, _standin.calls    # one kernel launch
print("ok")
'''


def test_the_standin_enforces_cupys_rules():
    result = run(["-c", STANDIN_RULES], 60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr

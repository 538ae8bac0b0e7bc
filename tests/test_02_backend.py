"""Chapter 2: the array backend (minclip/backend.py), NumPy here and CuPy on a GPU.

The CPU tests run everywhere. The tests marked ``gpu`` need CuPy and an NVIDIA
GPU and skip cleanly without them; the CuPy error tests are the opposite and
run only where there is *no* usable GPU.

The second half holds the package to one code path for NumPy and CuPy:
compute code reaches arrays only through the backend, and only the modules in
``HOST_BOUNDARY`` touch NumPy directly, each for a reason at the host
boundary; and the GPU check script runs here up to where it needs CuPy.
"""
import json
import math
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

import minclip.functional as F
from minclip import Tensor, backend
from minclip.backend import BackendError, xp
from conftest import GPU, requires_gpu
from support.exercise_wait import wait_for_unsolved_exercise
from support.compare import array_equal, assert_allclose

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def restore_backend():
    """Put the backend back as it was, whatever the test switched it to."""
    previous = backend.get_backend()
    yield
    backend.set_backend(previous)


def run_python(code, **environment):
    """Run ``code`` in a fresh interpreter (so the import-time environment is read)."""
    env = {**os.environ, **environment}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)


# ------------------------------------------------------------------ switching

def test_set_backend_numpy_makes_xp_numpy(restore_backend):
    backend.set_backend("numpy")
    assert backend.get_backend() == "numpy"
    assert isinstance(xp.zeros(2), np.ndarray), "after set_backend('numpy'), xp.zeros must give a NumPy array"
    assert isinstance(Tensor([1.0]).data, np.ndarray)


def test_an_unknown_backend_name_lists_the_choices(restore_backend):
    with pytest.raises(ValueError, match=r"unknown backend 'torch'.*numpy.*cupy"):
        backend.set_backend("torch")


@pytest.mark.skipif(GPU, reason="this machine has a GPU, so set_backend('cupy') succeeds")
def test_cupy_without_a_gpu_raises_a_one_line_backend_error(restore_backend):
    with pytest.raises(BackendError) as failure:
        backend.set_backend("cupy")
    message = str(failure.value)
    assert "cupy" in message.lower() and "\n" not in message, (
        f"expected one line that names CuPy and what to do, got: {message!r}")
    assert backend.get_backend() == "numpy", "a failed switch must leave the NumPy backend active"


def test_the_environment_variable_chooses_the_backend():
    result = run_python("import minclip; print(minclip.get_backend())", MINCLIP_BACKEND="numpy")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "numpy"


@pytest.mark.skipif(GPU, reason="this machine has a GPU, so MINCLIP_BACKEND=cupy works")
def test_the_environment_variable_cupy_without_a_gpu_fails_clearly_at_first_use():
    result = run_python("import minclip; print('imported'); minclip.Tensor([1.0])", MINCLIP_BACKEND="cupy")
    assert result.stdout.strip() == "imported", "import minclip must not fail: the CLIs report the reason themselves"
    last_line = result.stderr.strip().splitlines()[-1]
    assert result.returncode != 0 and last_line.startswith("minclip.backend.BackendError: MINCLIP_BACKEND=cupy"), (
        f"the first array must raise one BackendError line naming the variable, got: {last_line!r}")


def test_the_environment_variable_rejects_an_unknown_name_at_first_use():
    result = run_python("import minclip; minclip.Tensor([1.0])", MINCLIP_BACKEND="jax")
    assert result.returncode != 0 and "unknown backend 'jax'" in result.stderr.strip().splitlines()[-1]


@pytest.mark.skipif(GPU, reason="this machine has a GPU, so MINCLIP_BACKEND=cupy works")
def test_a_command_line_tool_given_an_unusable_environment_backend_says_why_in_one_line():
    result = run_python("import sys; from minclip.train import main; sys.exit(main(['--epochs', '1']))",
                        MINCLIP_BACKEND="cupy")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "needs CuPy" in result.stderr, (
        f"expected one error line, got: {result.stderr!r}")


# --------------------------------------------------- the helpers that differ

def test_to_numpy_gives_host_arrays_without_copying_numpy_ones():
    array = np.arange(3.0)
    assert backend.to_numpy(array) is array
    assert isinstance(backend.to_numpy([1, 2]), np.ndarray)


def test_array_module_names_the_library_of_an_array():
    assert backend.array_module(np.zeros(2)) is np and backend.backend_name(np.zeros(2)) == "numpy"
    assert Tensor([1.0]).xp.__name__ == backend.get_backend(), "a new tensor lives on the active backend"


def test_scatter_add_adds_repeated_indices():
    target = np.zeros(3)
    backend.scatter_add(target, np.array([0, 0, 2]), np.array([1.0, 2.0, 3.0]))
    assert target.tolist() == [3.0, 0.0, 3.0], (
        f"index 0 appears twice, so it gets 1 + 2 = 3; got {target.tolist()} "
        "(plain target[idx] += v would keep only one of the writes)")


def test_sliding_window_view_is_every_window():
    windows = backend.sliding_window_view(np.arange(5), 3, axis=0)
    assert windows.tolist() == [[0, 1, 2], [1, 2, 3], [2, 3, 4]]


def test_erf_matches_math_erf_and_keeps_the_dtype():
    x = np.array([-2.0, -0.5, 0.0, 0.3, 3.0], dtype="float32")
    result = backend.erf(x)
    assert result.dtype == np.float32
    assert_allclose(result, [math.erf(v) for v in x.tolist()], rtol=1e-7)
    assert backend.erf(np.array(0.5)) == pytest.approx(math.erf(0.5)), "a 0-d array is an array too"


def test_seed_makes_the_random_generator_reproducible():
    backend.seed(3)
    first = backend.rng().random(4)
    backend.seed(3)
    assert array_equal(first, backend.rng().random(4))


def test_rng_state_round_trips():
    state = backend.get_rng_state()
    first = backend.rng().random(3)
    backend.set_rng_state(state)
    assert array_equal(first, backend.rng().random(3)), "restoring the state must replay the same numbers"


# ----------------------------------------------------------------- on a GPU

@pytest.fixture
def cupy(restore_backend):
    """CuPy as the active backend, for the length of one test."""
    import cupy
    backend.set_backend("cupy")
    return cupy


@pytest.mark.gpu
@requires_gpu
def test_set_backend_cupy_puts_new_arrays_on_the_gpu(cupy):
    assert backend.get_backend() == "cupy"
    assert isinstance(xp.zeros(2), cupy.ndarray)
    assert isinstance(Tensor([1.0]).data, cupy.ndarray)


@pytest.mark.gpu
@requires_gpu
def test_mixing_backends_is_a_clear_error():
    on_cpu = Tensor(np.ones(3, dtype="float32")).to("numpy")
    on_gpu = on_cpu.to("cupy")
    with pytest.raises(ValueError, match="different backends.*numpy.*cupy"):
        on_cpu + on_gpu


@pytest.mark.gpu
@requires_gpu
def test_a_tensor_moves_between_backends(cupy):
    x = Tensor(np.arange(3, dtype="float32"), requires_grad=True)
    on_gpu = x.to("cupy")
    assert isinstance(on_gpu.data, cupy.ndarray) and on_gpu.requires_grad
    assert array_equal(on_gpu.to("numpy").data, x.data)


@pytest.mark.gpu
@requires_gpu
def test_the_environment_variable_selects_cupy():
    result = run_python("import minclip; print(minclip.get_backend())", MINCLIP_BACKEND="cupy")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "cupy"


GPU_OPS = {
    "matmul + softmax": lambda x, w: F.softmax(x @ w),
    "layer_norm": lambda x, w: F.layer_norm(x, w[0], w[1]),
    "cross_entropy": lambda x, w: F.cross_entropy(x @ w, np.array([0, 2, 2, 1])),
    "embedding (scatter_add)": lambda x, w: F.embedding(x, np.array([1, 1, 3])) * w[0, 0],
    "repeated index (scatter_add)": lambda x, w: x[x.xp.asarray([0, 0, 3])] @ w,
    "gelu (cupyx erf)": lambda x, w: F.gelu(x) @ w,
}


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("name", GPU_OPS)
def test_the_same_code_gives_the_same_numbers_on_the_gpu(name, cupy, rng):
    fn = GPU_OPS[name]
    arrays = [rng.standard_normal((4, 3)).astype("float32"), rng.standard_normal((3, 3)).astype("float32")]
    results = {}
    for name_of_backend in ("numpy", "cupy"):
        inputs = [Tensor(a, requires_grad=True).to(name_of_backend) for a in arrays]
        out = fn(*inputs)
        out.sum().backward()
        results[name_of_backend] = [out.numpy()] + [backend.to_numpy(t.grad) for t in inputs]
    for cpu, gpu in zip(results["numpy"], results["cupy"]):
        assert_allclose(gpu, cpu, rtol=1e-5, atol=1e-6, err_msg=f"{name}: GPU and CPU disagree")


# ---------------------------------------------- one code path for NumPy and CuPy

PACKAGE = pathlib.Path(__file__).parent.parent / "minclip"
ROOT = PACKAGE.parent

# module (relative to minclip/) -> why it may use NumPy itself
HOST_BOUNDARY = {
    "backend.py": "it is the backend: every NumPy/CuPy difference lives here",
    "checkpoint.py": "reads and writes files (safetensors) on the host",
    "convert.py": "converts files on the host",
    "hf.py": "reads and writes Hugging Face directories on the host (renames, stacks q/k/v)",
    "safetensors_io.py": "reads and writes safetensors files on the host",
    "tokenizer/": "text is tokenized on the host; ids go to the device with the batch",
    "data/": "images are decoded and batched on the host; the batch is copied once",
    "exercises/": "course tooling, no array compute",
}
NUMPY_IMPORT = re.compile(r"^\s*(import numpy|from numpy)", re.MULTILINE)


def _allowed(relative):
    return any(relative == name or relative.startswith(name) for name in HOST_BOUNDARY)


def test_compute_code_never_imports_numpy():
    offenders = [str(path.relative_to(PACKAGE)) for path in sorted(PACKAGE.rglob("*.py"))
                 if NUMPY_IMPORT.search(path.read_text()) and not _allowed(str(path.relative_to(PACKAGE)).replace("\\", "/"))]
    assert not offenders, (f"these modules import numpy directly: {offenders}. Compute code must use "
                           f"`from minclip.backend import xp` (or tensor.xp) so that CuPy runs the same lines; "
                           f"host-side helpers belong in minclip/backend.py")


def test_the_package_does_not_import_torch():
    heavy = re.compile(r"^\s*(import|from) (torch|transformers|open_clip|scipy|sklearn)\b", re.MULTILINE)
    offenders = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if heavy.search(p.read_text())]
    # convert.py needs torch to read .pt files, and imports it inside a function only
    assert offenders in ([], ["convert.py"]), f"minclip/ must not import reference libraries at module level: {offenders}"
    code = "import sys, minclip, minclip.train, minclip.evaluate; print(sorted(m for m in ('torch', 'transformers', 'scipy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "[]", f"importing minclip pulled in {out.strip()}"


@pytest.mark.parametrize("args", [[], ["a", "b"], ["--help"], [""]], ids=["none", "two", "an option", "empty"])
def test_gpu_check_script_takes_exactly_one_output_folder(args):
    result = subprocess.run(["bash", "benchmarks/gpu_check.sh", *args], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 64 and result.stderr.strip() == "usage: bash benchmarks/gpu_check.sh OUT_DIR", (
        result.stdout + result.stderr)


def test_gpu_check_script_refuses_a_file_as_output_folder(tmp_path):
    (tmp_path / "file").write_text("")
    result = subprocess.run(["bash", "benchmarks/gpu_check.sh", str(tmp_path / "file")],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 64 and "not a directory" in result.stderr, result.stdout + result.stderr


def test_gpu_check_script_stops_cleanly_without_cupy(tmp_path):
    """Run with a ``cupy`` that fails to import (so also on a GPU machine, and in the stand-in pass)."""
    fake = tmp_path / "no_cupy" / "cupy"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no CuPy here')\n")
    env = {**os.environ, "PYTHONPATH": str(fake.parent)}
    result = subprocess.run(["bash", "benchmarks/gpu_check.sh", str(tmp_path / "out")],
                            capture_output=True, text=True, cwd=ROOT, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and "GPU" in result.stderr and not (tmp_path / "out").exists()


def _parity(against, tmp_path):
    """The JSON result of ``benchmarks/gpu_parity.py --against AGAINST``. In the
    student edition the script stops at an unsolved exercise: its
    NotImplementedError is raised again here, so the test waits for that exercise."""
    out = tmp_path / "parity.json"
    run = subprocess.run([sys.executable, "benchmarks/gpu_parity.py", "--against", against, "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True)
    if run.returncode != 0:
        wait_for_unsolved_exercise(run.stderr, "benchmarks/gpu_parity.py")
        pytest.fail(f"benchmarks/gpu_parity.py --against {against} failed:\n{run.stdout}{run.stderr}", pytrace=False)
    return json.loads(out.read_text())


def test_parity_script_runs_on_numpy_against_itself(tmp_path):
    """The GPU parity check, run NumPy vs NumPy: its plumbing works and agrees exactly."""
    result = _parity("numpy", tmp_path)
    assert result["loss_relative_error"] == 0.0 and result["max_gradient_relative_error"] == 0.0, result


@pytest.mark.gpu
@requires_gpu
def test_training_step_on_cupy_matches_numpy(tmp_path):
    result = _parity("cupy", tmp_path)
    assert result["loss_relative_error"] < 1e-5, result
    assert result["max_gradient_relative_error"] < 1e-4, result

"""Shared test helpers: the torch and GPU skips, and the --exercise selector."""
import re

import numpy as np
import pytest

from minclip import backend


def pytest_addoption(parser):
    parser.addoption("--exercise", action="append", default=[],
                     help="run only the tests of course exercise ID (e.g. --exercise 2.3); repeatable")


def pytest_collection_modifyitems(config, items):
    wanted = config.getoption("--exercise")
    if not wanted:
        return
    keep, drop = [], []
    for item in items:
        ids = {str(m.args[0]) for m in item.iter_markers("exercise") if m.args}
        (keep if ids & set(wanted) else drop).append(item)
    config.hook.pytest_deselected(items=drop)
    items[:] = keep


@pytest.fixture(autouse=True)
def _exercise_tests_run_the_plain_formula(request):
    """The tests of an exercise grade the learner's formula: inside them no op takes
    the fast path that sits beside it (``backend.plain_paths``)."""
    if any(m.args for m in request.node.iter_markers("exercise")):
        with backend.plain_paths():
            yield
    else:
        yield


_EXERCISE_ERROR = re.compile(r"Exercise (\d+\.\d+)")
_BLOCKED = pytest.StashKey[set]()     # the exercises that tests of this run were skipped for


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In the student edition, a test that stops at an exercise that is not its
    own is skipped ("needs exercise 2.3 first") instead of failing: only the
    tests of the exercise a learner is working on fail."""
    outcome = yield
    report = outcome.get_result()
    error = _unsolved_exercise(call.excinfo.value) if call.excinfo is not None else None
    if error is None:
        return
    exercise = _EXERCISE_ERROR.search(str(error)).group(1)
    own = {str(m.args[0]) for m in item.iter_markers("exercise") if m.args}
    if exercise not in own:
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, f"needs exercise {exercise} first: {error}")
        item.config.stash.setdefault(_BLOCKED, set()).add(exercise)


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, config):
    """``--exercise 5.4`` whose tests waited for another exercise is not done: say so."""
    for exercise in sorted(_blocked_by(config)):
        terminalreporter.write_line(f"blocked: needs exercise {exercise} first", red=True, bold=True)


def pytest_sessionfinish(session, exitstatus):
    """With ``--exercise``, tests skipped for a missing prerequisite make the run fail (exit status 1),
    so "1 passed, 5 skipped" does not read as done."""
    if _blocked_by(session.config) and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _blocked_by(config):
    """The prerequisites that blocked tests of the exercises chosen with --exercise."""
    return config.stash.get(_BLOCKED, set()) if config.getoption("--exercise") else set()


def _unsolved_exercise(error):
    """The "Exercise N.M" NotImplementedError behind ``error``, if any.

    It may be wrapped: ``pytest.warns`` reports "DID NOT WARN" with the
    exercise's error as its context.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, NotImplementedError) and _EXERCISE_ERROR.search(str(error)):
            return error
        error = error.__cause__ or error.__context__
    return None


def _gpu_available():
    try:
        import cupy
        return bool(cupy.cuda.is_available())
    except Exception:
        return False


GPU = _gpu_available()
requires_gpu = pytest.mark.skipif(not GPU, reason="needs CuPy and an NVIDIA GPU")


@pytest.fixture
def torch():
    """PyTorch, the reference implementation (the test skips cleanly without it)."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(2)
    return torch


@pytest.fixture
def rng():
    """A seeded NumPy generator for test inputs."""
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _seed_minclip():
    """Every test starts from the same minclip random state."""
    backend.seed(0)
    yield

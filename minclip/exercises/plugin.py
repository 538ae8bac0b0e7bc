"""A pytest plugin that reports each test's outcome and exercise ids as JSON lines.

``python -m minclip.exercises`` copies this file into a scratch folder and
loads it into a pytest subprocess with ``-p minclip_exercise_report``; it is
self-contained (standard library and pytest only) so that it works even when
the project under test does not import. It reads three environment variables:

- ``MINCLIP_EXERCISE_REPORT``: the file to append events to, one JSON object a line:
  ``{"event": "collected", "tests": {nodeid: [ids]}}``, ``{"event": "collect_error", ...}``,
  ``{"event": "start", "nodeid": ...}`` and ``{"event": "result", "nodeid", "outcome", "message"}``
  with outcome passed, failed, skipped or timeout;
- ``MINCLIP_EXERCISE_SELECT``: empty (every test), ``*`` (tests marked with any
  exercise) or ``2.3,2.4`` (tests of these exercises);
- ``MINCLIP_EXERCISE_TIMEOUT``: seconds each test phase, and each test module's
  import, may run (0 = no limit). An alarm signal interrupts what runs longer,
  so one infinite loop does not stop the others (the parent process kills a
  test if even that does not help).
"""
import contextlib
import json
import os
import signal

import pytest

REPORT = os.environ.get("MINCLIP_EXERCISE_REPORT", os.devnull)
SELECT = os.environ.get("MINCLIP_EXERCISE_SELECT", "")
TIMEOUT = float(os.environ.get("MINCLIP_EXERCISE_TIMEOUT", "0"))
TOO_LONG = f"took longer than {TIMEOUT:g} s (an infinite loop?)"

_exercises = {}    # nodeid -> exercise ids of the test
_phases = {}       # nodeid -> the reports of setup, call, teardown
_timed_out = set()


class TestTimeout(BaseException):
    """Raised inside a test that ran out of time (a BaseException, so that a
    learner's ``except Exception`` does not swallow it)."""


def _write(**event):
    with open(REPORT, "a", encoding="utf-8") as f:
        f.write(json.dumps(event) + "\n")


def _ids(item):
    return sorted({str(m.args[0]) for m in item.iter_markers("exercise") if m.args})


def pytest_collection_modifyitems(config, items):
    if not SELECT:
        return
    wanted = None if SELECT == "*" else set(SELECT.split(","))
    keep = [item for item in items if _ids(item) and (wanted is None or wanted & set(_ids(item)))]
    config.hook.pytest_deselected(items=[item for item in items if item not in keep])
    items[:] = keep


def pytest_collection_finish(session):
    _exercises.update((item.nodeid, _ids(item)) for item in session.items)
    _write(event="collected", tests=_exercises)


def pytest_collectreport(report):
    if report.failed:
        message = f"importing it {TOO_LONG}" if report.nodeid in _timed_out else _first_line(report)
        _write(event="collect_error", where=report.nodeid, message=message)


def pytest_runtest_logstart(nodeid, location):
    _write(event="start", nodeid=nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """Importing a test module may run exercise code too (a table built at import time)."""
    if isinstance(collector, pytest.Module):
        with _time_limit(collector.nodeid):
            yield
    else:
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    with _time_limit(item.nodeid):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    with _time_limit(item.nodeid):
        yield


@contextlib.contextmanager
def _time_limit(nodeid):
    """Raise TestTimeout inside the block after TIMEOUT seconds (where the OS has alarm signals)."""
    if TIMEOUT <= 0 or not hasattr(signal, "SIGALRM"):
        yield
        return

    def on_alarm(signum, frame):
        _timed_out.add(nodeid)
        raise TestTimeout(TOO_LONG)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, TIMEOUT)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def pytest_runtest_logreport(report):
    _phases.setdefault(report.nodeid, []).append(report)


def pytest_runtest_logfinish(nodeid, location):
    reports = _phases.pop(nodeid, [])
    failed = [r for r in reports if r.failed]
    skipped = [r for r in reports if r.skipped]
    if nodeid in _timed_out:
        outcome, message = "timeout", TOO_LONG
    elif failed:
        outcome, message = "failed", _first_line(failed[0])
    elif skipped:
        outcome, message = "skipped", _first_line(skipped[0])
    else:
        outcome, message = "passed", ""
    _write(event="result", nodeid=nodeid, exercises=_exercises.get(nodeid, []), outcome=outcome, message=message)


def _first_line(report):
    """The line that says what went wrong: the exception of a failure, the reason of a skip."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):                     # a skip: (path, line, reason)
        return str(longrepr[2]).removeprefix("Skipped: ")
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None:
        return crash.message.split("\n")[0]
    lines = [line for line in str(longrepr).splitlines() if line.strip()] or [""]
    errors = [line.removeprefix("E ").strip() for line in lines if line.startswith("E ")]
    return errors[0] if errors else lines[-1]

"""Run a project's tests in a subprocess and collect per-test outcomes.

The tests run in ``python -m pytest`` with the report plugin (plugin.py), in
the project's own folder and with that folder first on PYTHONPATH, so a
student's copy is tested with the student's code. Nothing is written into the
project: no bytecode, no pytest cache.

Time limits: the plugin interrupts a test after ``timeout`` seconds with an
alarm signal. A test that blocks even that (a hang inside C code) is killed
from here after ``1.5 * timeout + 2`` seconds; it is recorded as a timeout, and
pytest starts again with the tests that had not run yet.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PLUGIN = "minclip_exercise_report"


@dataclass
class TestResult:
    nodeid: str              # tests/test_06_data.py::test_normalize
    exercises: list          # ["6.1"]: the ids of its exercise markers
    outcome: str             # passed | failed | skipped | timeout | error
    message: str = ""        # the first line of the failure, or the reason of a skip


@dataclass
class Run:
    tests: dict = field(default_factory=dict)       # nodeid -> TestResult, in the order they ran
    collected: dict = field(default_factory=dict)   # nodeid -> exercise ids, for every selected test
    errors: list = field(default_factory=list)      # what stopped tests from being collected or run


def run_tests(root, *, select="", paths=(), timeout=60.0, collect_only=False):
    """Run (or only collect) the tests of the project at ROOT; return a Run.

    ``select``: "" every test, "*" the exercise tests, "2.3,2.4" the tests of
    these exercises. ``paths``: test files or node ids (default: the project's
    testpaths). A test file that does not import is an entry in ``Run.errors``,
    and the other files still run.
    """
    root = Path(root).resolve()
    run = Run()
    with tempfile.TemporaryDirectory(prefix="minclip-exercises-") as scratch:
        scratch = Path(scratch)
        shutil.copyfile(Path(__file__).with_name("plugin.py"), scratch / f"{PLUGIN}.py")
        env = dict(os.environ, MINCLIP_EXERCISE_REPORT=str(scratch / "events.jsonl"),
                   MINCLIP_EXERCISE_SELECT=select, MINCLIP_EXERCISE_TIMEOUT=str(timeout or 0),
                   PYTHONPATH=os.pathsep.join(filter(None, [str(root), str(scratch), os.environ.get("PYTHONPATH")])),
                   PYTHONDONTWRITEBYTECODE="1")
        args = list(paths) + (["--collect-only"] if collect_only else [])
        while True:
            unfinished = _pytest(root, scratch, args, env, timeout, run)
            if unfinished is None:
                return run
            run.tests[unfinished.nodeid] = unfinished
            rest = [nodeid for nodeid in run.collected if nodeid not in run.tests]
            if not rest:
                return run
            args = rest


def _pytest(root, scratch, args, env, timeout, run):
    """One pytest process; its events go into RUN. Returns the TestResult of a
    test that never finished (killed by the watchdog, or the process died), else None."""
    events_file, log_file = scratch / "events.jsonl", scratch / "pytest.log"
    events_file.write_text("")
    command = [sys.executable, "-m", "pytest", "-p", PLUGIN, "-p", "no:cacheprovider", "-q",
               "--continue-on-collection-errors", *args]
    limit = 1.5 * timeout + 2 if timeout else None
    running, started, offset, killed = None, 0.0, 0, False
    with open(log_file, "w") as log:
        process = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
        while True:
            done = process.poll() is not None
            offset, events = _new_events(events_file, offset)
            for event in events:
                _absorb(event, run)
                if event["event"] == "start":
                    running, started = event["nodeid"], time.monotonic()
                elif event["event"] == "result":
                    running = None
            if done:
                break
            if running and limit and time.monotonic() - started > limit:
                process.kill()
                process.wait()
                killed = True
                break
            time.sleep(0.05)
    if killed:
        return TestResult(running, run.collected.get(running, []), "timeout",
                          f"took longer than {timeout:g} s and did not stop: killed")
    if running:
        return TestResult(running, run.collected.get(running, []), "error",
                          f"the test process died (exit status {process.returncode}) during this test")
    if not run.collected and process.returncode not in (0, 5):   # 5: no tests collected
        tail = log_file.read_text(errors="replace").strip().splitlines()[-15:]
        run.errors.append("pytest could not run the tests:\n" + "\n".join(tail))
    return None


def _new_events(path, offset):
    """The complete JSON lines appended to PATH since OFFSET."""
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    complete = data[:data.rfind(b"\n") + 1]
    return offset + len(complete), [json.loads(line) for line in complete.splitlines()]


def _absorb(event, run):
    kind = event["event"]
    if kind == "collected":
        for nodeid, ids in event["tests"].items():
            run.collected.setdefault(nodeid, ids)
    elif kind == "collect_error":
        run.errors.append(f"{event['where']} could not be collected: {event['message']}")
    elif kind == "result":
        run.tests[event["nodeid"]] = TestResult(event["nodeid"], event["exercises"],
                                                event["outcome"], event["message"])

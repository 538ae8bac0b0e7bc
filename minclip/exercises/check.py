"""``check("2.3")``: run one exercise's tests from a notebook and print a short verdict.

The tests run in a fresh ``python -m pytest`` process (the notebook's kernel
keeps old imports; a new process sees the code as it is on disk now), and a
failure prints its first line, not a traceback, so the notebook goes on.
"""
import re
from pathlib import Path

from minclip.exercises.grading import NEEDS_ANOTHER
from minclip.exercises.runner import run_tests

PROJECT = Path(__file__).resolve().parents[2]    # the folder holding minclip/ and tests/


def check(exercise_id, root=PROJECT, timeout=120.0):
    """Run the tests of exercise EXERCISE_ID (e.g. "2.3") and print one verdict
    line (and the first failure). Returns True when every test of it passes."""
    if not (Path(root) / "tests").is_dir():
        print(f"exercise {exercise_id}: no tests/ folder in {root}: check() needs the course's project folder")
        return False
    files = exercise_test_files(exercise_id, root)
    if not files:
        print(f"exercise {exercise_id}: no test is marked with it (is the id right?)")
        return False
    run = run_tests(root, select=exercise_id, paths=files, timeout=timeout)
    tests = list(run.tests.values())
    failed = [t for t in tests if t.outcome not in ("passed", "skipped")]
    blocked = [t for t in tests if t.outcome == "skipped" and t.message.startswith(NEEDS_ANOTHER)]
    passed = sum(t.outcome == "passed" for t in tests)
    if run.errors or not tests:
        print(f"exercise {exercise_id}: could not run its tests: {(run.errors or ['none was collected'])[0]}")
    elif failed:
        print(f"exercise {exercise_id}: not yet ({passed}/{len(tests)} tests pass)\n  {failed[0].nodeid}: "
              f"{failed[0].message}")
    elif blocked:
        needs = blocked[0].message.removeprefix(NEEDS_ANOTHER).split()[0]
        print(f"exercise {exercise_id}: blocked: needs exercise {needs} first")
    else:
        print(f"exercise {exercise_id}: done ({passed}/{len(tests)} tests pass)")
    return bool(tests) and not (run.errors or failed or blocked)


def exercise_test_files(exercise_id, root=PROJECT):
    """The test files that mark a test with EXERCISE_ID: ``@pytest.mark.exercise("2.3")``, or a
    helper given ``exercise="2.3"`` that marks the tests it makes (only these files are run)."""
    marker = re.compile(rf"""exercise(\(|=)\s*["']{re.escape(exercise_id)}["']""")
    return [str(path) for path in sorted((Path(root) / "tests").glob("test_*.py")) if marker.search(path.read_text())]

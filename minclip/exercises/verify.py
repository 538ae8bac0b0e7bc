"""Check a student edition against its reference: the course's contract.

No solution ships by another road (a notebook cell or saved output that
repeats it, a test oracle written the same way: see leaks.py). In the
student edition every exercise test fails with its own exercise's
NotImplementedError (not some unrelated error), every other test passes, and
putting one exercise's solution back makes that exercise's tests pass. This
runs the whole suite once, then each exercise's tests once: minutes, not
seconds, so it is a slow test and a command (``python -m minclip.exercises verify``).
"""
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from minclip.exercises.export import restore
from minclip.exercises.grading import NEEDS_ANOTHER
from minclip.exercises.leaks import find_leaks
from minclip.exercises.regions import exercise_key, find_regions, read_source, write_source
from minclip.exercises.runner import run_tests


@dataclass
class Problem:
    exercise: str     # "2.3", or "" for a test that is not an exercise's
    where: str        # a test's node id, or file:line
    text: str
    needs: str = ""   # set when the test is only skipped until exercise NEEDS is solved (tolerated, worth a look)

    @property
    def blocked(self):
        return bool(self.needs)

    def __str__(self):
        return f"{self.exercise or '-'} {self.where}: {self.text}"


def verify(student, reference, timeout=60.0):
    """Every way the student edition at STUDENT breaks the contract, as Problems
    (an empty list: all is well). REFERENCE is the project it was exported from."""
    student = Path(student)
    regions = {region.id: region for region in find_regions(student)}
    problems = [Problem(leak.exercise, leak.where, f"its solution ships in the student edition: {leak.line.strip()!r}")
                for leak in find_leaks(reference, student)]
    run = run_tests(student, timeout=timeout)
    problems += [Problem("", "collection", error) for error in run.errors]
    tested = {i for ids in run.collected.values() for i in ids}
    problems += [Problem(i, regions[i].where, "no test is marked with this exercise") for i in regions.keys() - tested]
    problems += [Problem(i, "tests", "tests are marked with this id, but no region has it") for i in tested - regions.keys()]
    for test in run.tests.values():
        problems += _in_student_edition(test)
    for exercise_id in sorted(regions.keys() & tested, key=exercise_key):
        files = sorted({nodeid.split("::")[0] for nodeid, ids in run.collected.items() if exercise_id in ids})
        problems += _after_restoring(student, reference, regions[exercise_id], files, timeout)
    return problems


def report(problems):
    """PROBLEMS as text: each real problem on its own line, then how many tests
    wait for which other exercise (tests of / need / count)."""
    serious = [f"PROBLEM: {p}" for p in problems if not p.blocked]
    blocked = Counter((p.exercise or "not an exercise", p.needs) for p in problems if p.blocked)
    lines = serious + (["skipped in the student edition until another exercise is solved "
                        "(tests of / need / count):"] if blocked else [])
    lines += [f"  {exercise:<16} {needs:<6} {count}" for (exercise, needs), count in sorted(blocked.items())]
    return "\n".join(lines + [f"{len(serious)} problems, {sum(blocked.values())} tests blocked by another exercise"])


def _in_student_edition(test):
    own = test.exercises
    if test.outcome == "skipped" and test.message.startswith(NEEDS_ANOTHER):
        needs = test.message.removeprefix(NEEDS_ANOTHER).split()[0]
        return [Problem(",".join(own), test.nodeid, f"skipped in the student edition: {test.message}", needs=needs)]
    if not own:
        if test.outcome in ("passed", "skipped"):
            return []
        return [Problem("", test.nodeid, f"not an exercise test, yet {test.outcome} in the student edition: "
                                         f"{test.message}")]
    if test.outcome == "passed":
        return [Problem(",".join(own), test.nodeid, "passes in the student edition: does it test its exercise?")]
    if test.outcome == "skipped" or any(f"NotImplementedError: Exercise {i}:" in test.message for i in own):
        return []
    return [Problem(",".join(own), test.nodeid, f"{test.outcome} with an unrelated error: {test.message}")]


def _after_restoring(student, reference, region, files, timeout):
    """Restore one solution, run its tests, put the blank back."""
    path = student / region.path
    blank = read_source(path)
    try:
        restore(student, [region.id], reference)
        run = run_tests(student, select=region.id, paths=files, timeout=timeout)
    finally:
        write_source(path, blank)
    problems = [Problem(region.id, "collection", f"after restoring its solution: {error}") for error in run.errors]
    # A skip here is one already reported: the test needs another exercise too.
    return problems + [Problem(region.id, test.nodeid, f"still {test.outcome} after restoring its solution: "
                                                       f"{test.message}")
                       for test in run.tests.values() if test.outcome not in ("passed", "skipped")]

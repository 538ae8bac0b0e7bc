"""Per-exercise results: which exercises of a project pass their tests.

An exercise passes when every one of its tests passes (skips aside). Status:

- ``pass``: its tests pass;
- ``fail``: a test fails, or is skipped because it needs an earlier exercise first;
- ``timeout``: a test ran past the time limit (an infinite loop?);
- ``error``: no test of it could run (a test file does not import, or no test
  is marked with it);
- ``skipped``: every test of it was skipped for another reason (no PyTorch, no GPU).
"""
from dataclasses import asdict, dataclass

from minclip.exercises.regions import MarkerError, exercise_key, find_regions, notebook_for
from minclip.exercises.runner import run_tests

NEEDS_ANOTHER = "needs exercise "    # how tests/conftest.py words a skip caused by another exercise


@dataclass
class ExerciseResult:
    id: str
    title: str
    status: str       # pass | fail | timeout | error | skipped
    passed: int       # tests that passed
    failed: int       # tests that failed, timed out or could not run
    skipped: int
    message: str      # the first line of the first failure ("" when it passes)
    tests: dict       # nodeid -> outcome

    @property
    def blocked(self):
        """Not done, and nothing of its own failed: its tests wait for another exercise first."""
        return self.status == "fail" and self.failed == 0


@dataclass
class Grade:
    exercises: dict   # id -> ExerciseResult, in course order
    errors: list      # problems that are not one exercise's (a test file that does not import)

    @property
    def score(self):
        return sum(result.status == "pass" for result in self.exercises.values())

    def to_json(self):
        return {"exercises": {i: {k: v for k, v in asdict(r).items() if k != "id"} for i, r in self.exercises.items()},
                "score": self.score, "total": len(self.exercises), "errors": self.errors}


def grade(root, timeout=60.0):
    """Run the exercise tests of the project at ROOT (a student's copy, or your
    own working copy) and return a Grade, one ExerciseResult per exercise.

    The exercises are the regions found in ROOT's source plus any id a test is
    marked with. Never raises because of the student's code: a file that does
    not parse, an infinite loop or a crash shows up as an error or timeout.
    """
    errors = []
    try:
        titles = {region.id: region.title for region in find_regions(root)}
    except MarkerError as error:
        titles, errors = {}, [str(error)]
    run = run_tests(root, select="*", timeout=timeout)
    errors += run.errors
    ids = set(titles) | {i for ids in run.collected.values() for i in ids}
    exercises = {}
    for exercise_id in sorted(ids, key=exercise_key):
        tests = [test for test in run.tests.values() if exercise_id in test.exercises]
        exercises[exercise_id] = _result(exercise_id, titles.get(exercise_id, "(no region)"), tests, run.errors)
    return Grade(exercises, errors)


def _result(exercise_id, title, tests, errors):
    if not tests:
        reason = errors[0] if errors else "no test is marked with this exercise"
        return ExerciseResult(exercise_id, title, "error", 0, 0, 0, reason, {})
    outcomes = [test.outcome for test in tests]
    blocked = [test for test in tests if test.outcome == "skipped" and test.message.startswith(NEEDS_ANOTHER)]
    if "timeout" in outcomes:
        status = "timeout"
    elif "error" in outcomes:
        status = "error"
    elif "failed" in outcomes or blocked:
        status = "fail"
    else:
        status = "pass" if "passed" in outcomes else "skipped"
    first = next((test for test in tests if test.outcome not in ("passed", "skipped")), blocked[0] if blocked else None)
    passed, skipped = outcomes.count("passed"), outcomes.count("skipped")
    return ExerciseResult(exercise_id, title, status, passed, len(tests) - passed - skipped, skipped,
                          first.message if first else "", {test.nodeid: test.outcome for test in tests})


def progress_table(grade, root="."):
    """The learner's view: per chapter, exercises done / total and the next one to do
    (the first whose tests do not wait for another exercise)."""
    chapters = {}
    for result in grade.exercises.values():
        chapters.setdefault(exercise_key(result.id)[0], []).append(result)
    lines = [f"{'chapter':>7}  {'done':>5}  next exercise"]
    for chapter, results in chapters.items():
        todo = _ready_first([r for r in results if r.status != "pass"])
        done = f"{len(results) - len(todo)}/{len(results)}"
        lines.append(f"{chapter:>7}  {done:>5}  " + (f"{todo[0].id}  {todo[0].title}" if todo else "all done"))
    lines.append(f"{'all':>7}  {f'{grade.score}/{len(grade.exercises)}':>5}")
    todo = next(iter(_ready_first([r for r in grade.exercises.values() if r.status != "pass"])), None)
    if todo:
        notebook = notebook_for(root, exercise_key(todo.id)[0]) or "notebooks/"
        lines += ["", f"Next: exercise {todo.id}, {todo.title} ({notebook})",
                  f"  now: {todo.status}: {todo.message}" if todo.message else f"  now: {todo.status}",
                  f"  check it with: python -m pytest --exercise {todo.id}"]
    lines += [f"error: {error}" for error in grade.errors]
    return "\n".join(lines)


def _ready_first(todo):
    """TODO with the exercises whose prerequisites are done first (course order otherwise)."""
    return sorted(todo, key=lambda result: result.blocked)


def grade_table(grade):
    """The instructor's view: one line per exercise."""
    lines = [f"{'exercise':<9}{'status':<9}{'passed':>7}  message"]
    for result in grade.exercises.values():
        tests = f"{result.passed}/{len(result.tests)}"
        lines.append(f"{result.id:<9}{result.status:<9}{tests:>7}  {result.message}")
    lines.append(f"score: {grade.score}/{len(grade.exercises)}")
    lines += [f"error: {error}" for error in grade.errors]
    return "\n".join(lines)

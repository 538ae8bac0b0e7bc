"""The course tooling: exercises in the source, a student edition, progress and grading.

The parts of minclip a learner writes are marked in the source: the rest of a
function body after its docstring sits between a ``# BEGIN EXERCISE 2.3: <title>``
and a ``# END EXERCISE`` comment line, and the tests that check it carry
``@pytest.mark.exercise("2.3")``. The reference solution stays in place, so
the package works as it is. ``python -m minclip.exercises`` then does:

For a learner (in the student edition, from its root folder):
    status                    run the exercise tests quietly; per chapter, exercises
                              done / total and the next one to do
    list                      every exercise: id, title, file:line
    hint 2.3                  the second, more concrete hint of one exercise
    (and to check one: ``python -m pytest --exercise 2.3``, or in a notebook
    ``minclip.exercises.check("2.3")``)

For an instructor (in the reference checkout):
    export DIR                write the student edition: a full copy in which every
                              solution is ``raise NotImplementedError("Exercise 2.3: ...")``
    restore DIR 2.3 --from .  put one solution back into a student copy (a hint, or a check)
    grade DIR [--json]        run a student's copy, per-exercise results, a time limit per test
    verify                    export to a scratch folder and check that each exercise's tests
                              fail there with its own message and pass once it is restored
"""
from minclip.exercises.check import check
from minclip.exercises.export import export, project_files, restore
from minclip.exercises.grading import ExerciseResult, Grade, grade
from minclip.exercises.regions import MarkerError, Region, find_regions
from minclip.exercises.runner import Run, TestResult, run_tests
from minclip.exercises.verify import Problem, verify

"""A test that runs minclip in a subprocess waits for an unsolved exercise, as an in-process test does.

In the student edition a subprocess (a CLI, a script, a second pytest run)
can stop at an exercise the learner has not written yet. Its output then
holds ``NotImplementedError: Exercise N.M ...``; raising that error again in
the test lets ``conftest.py`` turn it into the usual skip ("needs exercise
N.M first") instead of a failure.
"""
import re

from minclip.exercises.regions import find_regions, is_blank, read_source

UNSOLVED = re.compile(r"NotImplementedError: (Exercise \d+\.\d+[^\n]*)")


def wait_for_unsolved_exercise(output, where=None):
    """Raise the first unsolved exercise's NotImplementedError found in ``output``, if there is one."""
    unsolved = UNSOLVED.search(output)
    if unsolved:
        raise NotImplementedError(unsolved.group(1) + (f" (reached by {where})" if where else ""))


def wait_for_every_exercise(root, why):
    """Raise the NotImplementedError of the first exercise still blank in the project at ``root``.

    For a test that runs the whole suite again (the CuPy stand-in pass): in a
    student copy it waits until every exercise is written, instead of running
    hundreds of tests that wait anyway.
    """
    for region in find_regions(root):
        if is_blank(region, read_source(root / region.path)):
            raise NotImplementedError(f"Exercise {region.id}: {region.title} ({why})")

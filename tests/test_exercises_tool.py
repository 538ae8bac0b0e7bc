"""The course tooling: exercise markers, the student edition, progress and grading.

Most tests build a tiny project in a temporary folder (a package with two
exercises, their tests and a notebook) so that they do not depend on the state
of the real course; the last ones check the markers of this repository.
Set MINCLIP_SLOW=1 to also run the full check of the real student edition.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from minclip.exercises import (MarkerError, Problem, check, export, find_regions, grade, project_files, restore,
                               run_tests, verify)
from minclip.exercises.check import exercise_test_files
from minclip.exercises.hints import load_hints
from minclip.exercises.leaks import find_leaks
from minclip.exercises.__main__ import main
from minclip.exercises.verify import report
from minclip.exercises.regions import (is_blank, notebook_for, notebook_sections, placeholder, read_source,
                                       section_title, student_source)

REPO = Path(__file__).resolve().parents[1]

OPS = '''\
"""Two exercises."""


def double(x):
    """Twice x. Hint: one multiplication."""
    # BEGIN EXERCISE 1.1: doubling
    return 2 * x
    # END EXERCISE


class Square:
    def __call__(self, x):
        """x times x."""
        # BEGIN EXERCISE 1.2: squaring
        y = x * x
        return y
        # END EXERCISE


def add(x, y):
    return x + y
'''

STUDENT_OPS = '''\
"""Two exercises."""


def double(x):
    """Twice x. Hint: one multiplication."""
    # BEGIN EXERCISE 1.1: doubling
    raise NotImplementedError("Exercise 1.1: doubling. See notebooks/01_basics.ipynb, section 'doubling'")
    # END EXERCISE


class Square:
    def __call__(self, x):
        """x times x."""
        # BEGIN EXERCISE 1.2: squaring
        raise NotImplementedError("Exercise 1.2: squaring. See notebooks/01_basics.ipynb, section 'squaring'")
        # END EXERCISE


def add(x, y):
    return x + y
'''

TESTS = '''\
import pytest
from minclip.ops import Square, add, double


@pytest.mark.exercise("1.1")
def test_double():
    assert double(3) == 6


@pytest.mark.exercise("1.2")
def test_square():
    assert Square()(3) == 9


def test_add():
    assert add(2, 3) == 5
'''

FILES = {
    "minclip/__init__.py": "",
    "minclip/ops.py": OPS,
    "tests/test_01_ops.py": TESTS,
    "pytest.ini": "[pytest]\nmarkers =\n    exercise(id): the test checks course exercise id\n",
    "notebooks/01_basics.ipynb": '{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}\n',
    ".gitignore": "logs/\n",
    "logs/run.txt": "a log: not part of the project\n",
}
MESSAGE_1_1 = "NotImplementedError: Exercise 1.1: doubling. See notebooks/01_basics.ipynb, section 'doubling'"


def write(root, files):
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.fixture
def reference(tmp_path, monkeypatch):
    """The tiny project with its solutions. Its pytest runs need no installed
    plugins, and loading them would triple the time of each run."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    return write(tmp_path / "reference", FILES)


@pytest.fixture
def student(reference, tmp_path):
    """Its student edition."""
    export(reference, tmp_path / "student")
    return tmp_path / "student"


# ======================================================== markers in the source

def test_find_regions_reads_ids_titles_and_places(reference):
    regions = find_regions(reference)
    assert [(r.id, r.title, str(r.path), r.begin, r.end) for r in regions] == [
        ("1.1", "doubling", "minclip/ops.py", 6, 8),
        ("1.2", "squaring", "minclip/ops.py", 14, 17)], "ids, titles, files and BEGIN/END lines of the two regions"


BAD_MARKERS = {
    "never closed": ("def f():\n    # BEGIN EXERCISE 1.1: f\n    return 1\n", 2, "is never closed"),
    "END without BEGIN": ("def f():\n    return 1\n    # END EXERCISE\n", 3, "without a BEGIN"),
    "nested": ("def f():\n    # BEGIN EXERCISE 1.1: f\n    # BEGIN EXERCISE 1.2: g\n    return 1\n"
               "    # END EXERCISE\n", 3, "inside exercise 1.1"),
    "malformed": ("def f():\n    # BEGIN EXERCISE 1: f\n    return 1\n", 2, "malformed exercise marker"),
    "module level": ("# BEGIN EXERCISE 1.1: f\nX = 1\n# END EXERCISE\n", 1, "inside a function body"),
    "empty": ("def f():\n    # BEGIN EXERCISE 1.1: f\n    # END EXERCISE\n", 2, "is empty"),
    "code after END": ("def f():\n    # BEGIN EXERCISE 1.1: f\n    x = 1\n    # END EXERCISE\n    return x\n",
                       5, "would never run"),
    "END indented differently": ("def f():\n    # BEGIN EXERCISE 1.1: f\n    return 1\n# END EXERCISE\n",
                                 4, "indented differently"),
}


@pytest.mark.parametrize("case", BAD_MARKERS)
def test_marker_errors_name_the_file_and_line(tmp_path, case):
    source, line, words = BAD_MARKERS[case]
    write(tmp_path, {"minclip/bad.py": source})
    with pytest.raises(MarkerError) as error:
        find_regions(tmp_path)
    assert f"minclip/bad.py:{line}:" in str(error.value) and words in str(error.value), (
        f"{case}: expected 'minclip/bad.py:{line}: ...{words}...', got:\n{error.value}")


def test_duplicate_ids_name_both_places(tmp_path):
    region = "def f():\n    # BEGIN EXERCISE 2.1: f\n    return 1\n    # END EXERCISE\n"
    write(tmp_path, {"minclip/a.py": region, "minclip/b.py": region})
    with pytest.raises(MarkerError, match=r"minclip/b.py:2: exercise 2.1 is defined twice \(first at minclip/a.py:2\)"):
        find_regions(tmp_path)


# ============================================================ the student edition

def test_student_source_replaces_only_the_region_body(reference):
    regions = find_regions(reference)
    blank = student_source(OPS, regions, {1: "notebooks/01_basics.ipynb"})
    assert blank == STUDENT_OPS, "each region's body becomes one raise line at its indentation; nothing else changes"


@pytest.mark.parametrize("title", ["it's a 'quoted' title", 'say "hi"', "back\\slash {braces}"])
def test_placeholder_is_valid_python_for_any_title(tmp_path, title):
    write(tmp_path, {"minclip/t.py": f"def f():\n    # BEGIN EXERCISE 3.1: {title}\n    return 1\n    # END EXERCISE\n"})
    [region] = find_regions(tmp_path)
    namespace = {}
    exec(student_source((tmp_path / "minclip/t.py").read_text(), [region], {}), namespace)
    with pytest.raises(NotImplementedError) as error:
        namespace["f"]()
    assert str(error.value) == (f"Exercise 3.1: {title}. See the chapter 3 notebook in notebooks/, "
                                f"section '{title}'"), "the title reaches the message unchanged"


def test_export_copies_the_project_with_only_the_exercises_blanked(reference, student):
    assert project_files(student) == [Path(name) for name in sorted(FILES) if not name.startswith("logs/")], (
        "every project file is copied; what .gitignore excludes (logs/) is not")
    for name in FILES:
        if name != "minclip/ops.py" and not name.startswith("logs/"):
            assert (student / name).read_bytes() == (reference / name).read_bytes(), f"{name} must not change"
    assert read_source(student / "minclip/ops.py") == student_source(OPS, find_regions(reference),
                                                                     {1: notebook_for(reference, 1)})


def test_export_refuses_a_non_empty_folder_unless_forced(reference, student):
    with pytest.raises(FileExistsError, match="not empty.*--force"):
        export(reference, student)
    assert [r.id for r in export(reference, student, force=True)] == ["1.1", "1.2"]


def test_restore_puts_back_exactly_one_solution(reference, student):
    restore(student, ["1.1"], reference)
    only_1_2 = [r for r in find_regions(reference) if r.id == "1.2"]
    assert read_source(student / "minclip/ops.py") == student_source(OPS, only_1_2, {1: "notebooks/01_basics.ipynb"}), (
        "after restoring 1.1 the file is the reference with only 1.2 blanked")
    with pytest.raises(ValueError, match="exercise 9.9 is not in"):
        restore(student, ["9.9"], reference)
    with pytest.raises(ValueError, match="no solution in .*it is a student edition"):
        restore(student, ["1.2"], student)


# ======================================================= running and grading

def test_grade_gives_each_exercise_its_status_and_message(reference, student):
    before = grade(student, timeout=30)
    assert {i: (r.status, r.message) for i, r in before.exercises.items()} == {
        "1.1": ("fail", MESSAGE_1_1),
        "1.2": ("fail", "NotImplementedError: Exercise 1.2: squaring. See notebooks/01_basics.ipynb, section 'squaring'")}
    restore(student, ["1.1"], reference)
    after = grade(student, timeout=30)
    assert (after.exercises["1.1"].status, after.score) == ("pass", 1), "restoring 1.1 makes exactly 1.1 pass"


def test_an_infinite_loop_costs_one_time_limit_and_the_other_tests_still_run(student):
    ops = student / "minclip/ops.py"
    ops.write_text(ops.read_text().replace('raise NotImplementedError("Exercise 1.2', "while True: pass  # ("))
    write(student, {"tests/test_01_table.py": "from minclip.ops import Square\n\nTABLE = [Square()(i) for i in range(3)]\n"})
    run = run_tests(student, timeout=1)
    assert {t.nodeid.split("::")[1]: t.outcome for t in run.tests.values()} == {
        "test_double": "failed", "test_square": "timeout", "test_add": "passed"}
    assert run.errors == ["tests/test_01_table.py could not be collected: importing it took longer than 1 s "
                          "(an infinite loop?)"], "a module whose import loops forever is reported, not waited for"


def test_a_test_that_blocks_the_alarm_is_killed_and_the_rest_still_run(student):
    ops = student / "minclip/ops.py"
    ops.write_text(ops.read_text().replace(
        'raise NotImplementedError("Exercise 1.2',
        'import signal; signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})\n        while True: pass  # ('))
    run = run_tests(student, timeout=1)
    square = next(t for t in run.tests.values() if t.nodeid.endswith("test_square"))
    assert (square.outcome, square.message) == ("timeout", "took longer than 1 s and did not stop: killed")
    assert [t.outcome for t in run.tests.values() if t.nodeid.endswith("test_add")] == ["passed"], (
        "after killing a hung test, pytest starts again with the tests that had not run")


def test_grade_reports_a_file_that_does_not_parse_instead_of_crashing(student):
    ops = student / "minclip/ops.py"
    ops.write_text(ops.read_text().replace('raise NotImplementedError("Exercise 1.1', 'return 2 * (x  # ("'))
    result = grade(student, timeout=30)
    assert result.errors and "tests/test_01_ops.py could not be collected" in result.errors[0], result.errors
    assert {r.status for r in result.exercises.values()} == {"error"}, "no test of either exercise could run"


def test_verify_names_exactly_the_test_that_does_not_test_its_exercise(reference, tmp_path):
    write(reference, {"tests/test_01_lazy.py": 'import pytest\n\n\n@pytest.mark.exercise("1.1")\n'
                                               'def test_lazy():\n    assert 2 * 3 == 6\n'})
    export(reference, tmp_path / "student")
    problems = [str(p) for p in verify(tmp_path / "student", reference, timeout=30)]
    assert problems == ["1.1 tests/test_01_lazy.py::test_lazy: passes in the student edition: "
                        "does it test its exercise?"], problems


def test_verify_report_lists_problems_and_counts_blocked_tests():
    problems = [Problem("2.4", "t.py::a", "passes in the student edition"),
                Problem("3.5", "t.py::b", "skipped", needs="2.3"), Problem("3.5", "t.py::c", "skipped", needs="2.3")]
    assert report(problems).splitlines() == [
        "PROBLEM: 2.4 t.py::a: passes in the student edition",
        "skipped in the student edition until another exercise is solved (tests of / need / count):",
        "  3.5              2.3    2",
        "1 problems, 2 tests blocked by another exercise"]


# ============================================================ the command line

def test_cli_list_export_and_status(reference, tmp_path, capsys):
    assert main(["list", "--root", str(reference)]) == 0
    assert "1.2    squaring  (minclip/ops.py:14)" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "s"), "--root", str(reference)]) == 0
    assert "2 exercises\n  chapter 1: 2 (1.1-1.2)" in capsys.readouterr().out
    assert main(["status", "--root", str(tmp_path / "s")]) == 0
    table = capsys.readouterr().out
    assert "      1    0/2  1.1  doubling" in table and "python -m pytest --exercise 1.1" in table, table


def test_cli_grade_json(student, capsys):
    assert main(["grade", str(student), "--json", "--timeout", "30"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["score"], report["total"], report["exercises"]["1.1"]["status"]) == (0, 2, "fail")


def test_cli_reports_marker_errors_without_a_traceback(tmp_path, capsys):
    write(tmp_path, {"minclip/bad.py": "def f():\n    # END EXERCISE\n"})
    assert main(["list", "--root", str(tmp_path)]) == 2
    assert "error: exercise markers:\n  minclip/bad.py:2: END EXERCISE without a BEGIN" in capsys.readouterr().err


# ===================================================== what else ships, and the learner's tools

def notebook(*cells):
    """A notebook's JSON text with CELLS, each (cell_type, source, output text)."""
    return json.dumps({"cells": [{"cell_type": kind, "source": source, "metadata": {},
                                  **({"outputs": [{"output_type": "stream", "name": "stdout", "text": out}],
                                      "execution_count": 1} if kind == "code" else {})}
                                 for kind, source, out in cells], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


SHOUT = '''\
def shout(words):
    """Upper-case words joined by spaces."""
    # BEGIN EXERCISE 1.3: shouting
    loud = [word.upper() + "!" for word in words if word]
    return " ".join(loud).strip()
    # END EXERCISE
'''


def test_leaks_find_a_solution_repeated_in_a_notebook_output_or_a_test_even_renamed(reference):
    write(reference, {"minclip/shout.py": SHOUT})
    assert find_leaks(reference) == []
    renamed = "yell = [w.upper() + '!' for w in ws if w]\nreturn ' '.join(yell).strip()"
    write(reference, {"notebooks/01_basics.ipynb": notebook(("code", "print(1)", renamed), ("markdown", "# doubling", "")),
                      "tests/test_01_oracle.py": "def oracle(ws):\n    " + renamed.replace("\n", "\n    ") + "\n"})
    assert sorted((leak.exercise, leak.where) for leak in find_leaks(reference)) == [
        ("1.3", "notebooks/01_basics.ipynb cell 0 (saved output)"), ("1.3", "tests/test_01_oracle.py")]


def test_export_writes_start_here_and_leaves_the_instructor_notes_out(reference, tmp_path):
    write(reference, {"minclip/exercises/START_HERE.md": "# Start here\n", "instructor/answers.md": "42\n"})
    export(reference, tmp_path / "s")
    assert (tmp_path / "s" / "START_HERE.md").read_text() == "# Start here\n"
    assert "START_HERE.md" in (tmp_path / "s" / "README.md").read_text()
    assert not (tmp_path / "s" / "instructor").exists()


def test_cli_hint_and_list_show_both_hint_levels_difficulty_and_time(reference, capsys):
    write(reference, {"minclip/exercises/hints.json": json.dumps(
        {"1.1": {"difficulty": 2, "minutes": 15, "hint": "multiply", "more": "by two, with *"}})})
    assert main(["hint", "1.1", "--root", str(reference)]) == 0
    assert capsys.readouterr().out == ("Exercise 1.1: doubling (★★☆ ~15 min)\n\nHint: multiply\n\n"
                                       "If that is not enough: by two, with *\n")
    assert main(["list", "--root", str(reference)]) == 0
    assert "1.1    doubling  (minclip/ops.py:6)  ★★☆ ~15 min" in capsys.readouterr().out
    assert main(["hint", "1.2", "--root", str(reference)]) == 2
    assert "no hints for exercise 1.2" in capsys.readouterr().err


def test_check_prints_one_verdict_line(reference, student, capsys):
    assert check("1.1", root=reference) is True
    assert capsys.readouterr().out == "exercise 1.1: done (1/1 tests pass)\n"
    assert check("1.1", root=student) is False
    assert capsys.readouterr().out.startswith("exercise 1.1: not yet (0/1 tests pass)\n"
                                              "  tests/test_01_ops.py::test_double: ")


def test_status_suggests_an_exercise_whose_prerequisites_are_done(student, capsys):
    write(student, {"tests/test_01_ops.py": TESTS.replace("assert double(3) == 6",
                                                          "pytest.skip('needs exercise 1.2 first')")})
    assert main(["status", "--root", str(student)]) == 0
    assert "Next: exercise 1.2, squaring" in capsys.readouterr().out


# ================================================================ this repository

@pytest.fixture(scope="module")
def repo_tests():
    """This repository's tests: node id -> exercise ids (collected once, in a subprocess)."""
    run = run_tests(REPO, collect_only=True)
    assert not run.errors, "the test suite must collect cleanly:\n" + "\n".join(run.errors)
    return run.collected


def test_this_repository_markers_match_its_tests(repo_tests):
    regions = {region.id: region for region in find_regions(REPO)}   # raises on a bad marker, with file:line
    tested = {i for ids in repo_tests.values() for i in ids}
    untested = [f"{regions[i].id} ({regions[i].where})" for i in sorted(regions.keys() - tested)]
    unknown = sorted(f"{i} ({nodeid})" for nodeid, ids in repo_tests.items() for i in ids if i not in regions)
    assert not untested and not unknown, (
        f"regions that no test is marked with: {untested or 'none'}\n"
        f"test markers whose exercise has no region: {unknown or 'none'}")


def test_this_repository_has_a_section_and_a_check_cell_for_every_exercise():
    problems = []
    for region in find_regions(REPO):
        path = REPO / notebook_for(REPO, region.chapter)
        if section_title(region.title) not in notebook_sections(path):
            problems.append(f"{region.id}: its message sends the learner to section {region.title!r}, "
                            f"which is not a heading of {path.name}")
        code = ["".join(cell["source"]) for cell in json.loads(read_source(path))["cells"] if cell["cell_type"] == "code"]
        if f'check("{region.id}")' not in code:
            problems.append(f'{region.id}: no check("{region.id}") cell in {path.name}')
    assert not problems, "\n".join(problems)


def test_this_repository_check_finds_the_tests_of_every_exercise():
    missing = [region.id for region in find_regions(REPO) if not exercise_test_files(region.id, REPO)]
    assert not missing, f"check() would find no test file for exercises {missing}"


def test_this_repository_ships_no_solution_outside_its_regions():
    leaks = find_leaks(REPO)
    assert not leaks, "\n".join(map(str, leaks))


def test_this_repository_has_hints_difficulty_and_time_for_every_exercise():
    hints = load_hints(REPO)
    missing = [region.id for region in find_regions(REPO) if region.id not in hints]
    assert not missing, f"exercises without an entry in minclip/exercises/hints.json: {missing}"
    assert all(1 <= h["difficulty"] <= 3 and h["minutes"] > 0 and h["hint"] and h["more"] for h in hints.values())


@pytest.fixture
def reference_repo():
    """This repository, when it holds the solutions (in a student edition, the
    checks of the reference are skipped: there is nothing to restore)."""
    for region in find_regions(REPO):
        if is_blank(region, read_source(REPO / region.path)):
            pytest.skip(f"this is a student edition ({region.where} has no solution)")
    return REPO


def test_this_repository_student_edition_fails_then_passes_one_exercise_per_chapter(reference_repo, repo_tests,
                                                                                     tmp_path):
    student = tmp_path / "student"
    regions = export(REPO, student)
    for region in find_regions(student):
        body = read_source(student / region.path).splitlines()[region.begin:region.end - 1]
        assert body == [placeholder(region, notebook_for(REPO, region.chapter))], f"{region.where}: {body}"
    modules = sorted({".".join(r.path.with_suffix("").parts) for r in regions})
    imported = subprocess.run([sys.executable, "-c", f"import minclip, {', '.join(modules) or 'minclip'}"],
                              cwd=student, env=dict(os.environ, PYTHONPATH=str(student)), capture_output=True, text=True)
    assert imported.returncode == 0, f"the student edition does not import:\n{imported.stderr[-2000:]}"

    tested = {i for ids in repo_tests.values() for i in ids}
    first = {}
    for region in regions:
        if region.id in tested:
            first.setdefault(region.chapter, region.id)
    chosen = sorted(first.values())
    files = sorted({n.split("::")[0] for n, ids in repo_tests.items() if set(ids) & set(chosen)})
    blank = run_tests(student, select=",".join(chosen), paths=files, timeout=60)
    restore(student, chosen, REPO)
    solved = run_tests(student, select=",".join(chosen), paths=files, timeout=60)
    problems = [f"student edition, {t.nodeid}: {t.outcome} {t.message}" for t in blank.tests.values()
                if not (t.outcome == "failed" and any(f"NotImplementedError: Exercise {i}:" in t.message
                                                      for i in t.exercises))
                and not (t.outcome == "skipped" and t.message.startswith("needs exercise"))]
    problems += [f"with {', '.join(chosen)} restored, {t.nodeid}: {t.outcome} {t.message}"
                 for t in solved.tests.values() if t.outcome not in ("passed", "skipped")]
    assert blank.tests and not problems, (
        f"exercises {chosen}: each test should fail with its own NotImplementedError in the student edition and "
        f"pass once its solution is restored:\n" + "\n".join(problems + blank.errors + solved.errors))


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("MINCLIP_SLOW") != "1", reason="the full student-edition check: set MINCLIP_SLOW=1")
def test_this_repository_student_edition_in_full(reference_repo, tmp_path):
    export(REPO, tmp_path / "student")
    problems = verify(tmp_path / "student", REPO)
    assert all(p.blocked for p in problems), report(problems)

"""The student edition: a copy of the project with every exercise blanked out,
and the way back (restoring one reference solution into such a copy)."""
import shutil
import subprocess
import tempfile
from collections import defaultdict
from pathlib import Path

from minclip.exercises.regions import (MarkerError, find_regions, is_blank, notebook_for, read_source,
                                       restore_source, student_source, write_source)

# Left out of the student edition: the instructor's notes (answers to the chapters' questions).
INSTRUCTOR_ONLY = "instructor"
# The learner's README, written into the student edition in place of the project's README.md.
START_HERE = Path("minclip") / "exercises" / "START_HERE.md"
STUDENT_README = ("# minclip, student edition\n\nThis is the course's student edition: every exercise is blanked out. "
                  "Open START_HERE.md.\n")

# Never copied by the fallback walk, used only where git is not installed.
SKIPPED_FOLDERS = {".git", "__pycache__", ".pytest_cache", ".hypothesis", ".ipynb_checkpoints", ".venv", "venv",
                   "logs", "build", "dist", "cache", ".cache"}


def project_files(root, exclude=None):
    """The project's files, relative to ROOT, as git sees them: tracked, plus
    untracked ones that .gitignore does not exclude (so generated data, logs
    and caches stay behind). Without git: every file outside cache, log and
    build folders. Files under EXCLUDE (a folder) are left out."""
    root = Path(root).resolve()
    try:
        files = [Path(name) for name in _git_ls_files(root).split("\0") if name and (root / name).is_file()]
    except OSError:                                    # git is not installed
        files = [path.relative_to(root) for path in root.rglob("*") if path.is_file()
                 and not SKIPPED_FOLDERS.intersection(path.relative_to(root).parts)]
    if exclude is not None:
        exclude = Path(exclude).resolve()
        files = [f for f in files if not (root / f).resolve().is_relative_to(exclude)]
    return sorted(files)


def _git_ls_files(root):
    """``git ls-files`` of ROOT. Outside a git checkout, an empty throwaway
    repository lends git's .gitignore rules to the folder."""
    listing = ["ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    inside = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=root, capture_output=True)
    if inside.returncode == 0:
        return subprocess.run(["git", *listing], cwd=root, capture_output=True, text=True, check=True).stdout
    with tempfile.TemporaryDirectory() as empty:
        subprocess.run(["git", "init", "-q", "--bare", empty], capture_output=True, check=True)
        return subprocess.run(["git", f"--git-dir={empty}", f"--work-tree={root}", *listing],
                              cwd=root, capture_output=True, text=True, check=True).stdout


def export(root, dest, force=False):
    """Write the student edition of the project at ROOT into DEST; return its regions.

    Every file is copied as is, except that in each exercise region the
    solution becomes one ``raise NotImplementedError("Exercise 2.3: <title>.
    See notebooks/02_....ipynb, section '<title>'")`` line between the kept
    BEGIN/END comments. DEST must be empty or absent unless ``force``.
    The instructor's folder stays behind, and when the project has a
    START_HERE template, it becomes the edition's START_HERE.md and its
    README.md a pointer to it (the project's README is the instructor's).
    """
    root, dest = Path(root).resolve(), Path(dest).resolve()
    if dest.exists() and any(dest.iterdir()) and not force:
        raise FileExistsError(f"{dest} is not empty: choose a new folder, or pass --force to write into it")
    regions = find_regions(root)
    by_file = defaultdict(list)
    for region in regions:
        by_file[region.path].append(region)
    notebooks = {region.chapter: notebook_for(root, region.chapter) for region in regions}
    blanked = {}
    for path, file_regions in by_file.items():
        text = student_source(read_source(root / path), file_regions, notebooks)
        try:
            compile(text, str(path), "exec")
        except SyntaxError as error:
            raise MarkerError([f"{path}:{error.lineno}: the student edition of this file "
                               f"is not valid Python: {error.msg}"]) from None
        blanked[path] = text
    for path in project_files(root, exclude=dest):
        if path.parts[0] == INSTRUCTOR_ONLY:
            continue
        target = dest / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / path, target)
        if path in blanked:
            write_source(target, blanked[path])
    if (root / START_HERE).is_file():
        shutil.copyfile(root / START_HERE, dest / "START_HERE.md")
        write_source(dest / "README.md", STUDENT_README)
    return regions


def restore(student, ids, reference):
    """Put the reference solutions of exercises IDS back into the student copy
    at STUDENT (the BEGIN/END lines of each must still be there)."""
    student, reference = Path(student), Path(reference)
    solutions = {region.id: region for region in find_regions(reference)}
    for exercise_id in ids:
        if exercise_id not in solutions:
            raise ValueError(f"exercise {exercise_id} is not in {reference} "
                             f"(it has {', '.join(solutions) or 'no exercises'})")
        blank = {region.id: region for region in find_regions(student)}.get(exercise_id)
        if blank is None:
            raise ValueError(f"exercise {exercise_id}: its BEGIN/END EXERCISE lines are missing "
                             f"from {student}, so there is no place to put the solution back")
        solution = solutions[exercise_id]
        solution_text = read_source(reference / solution.path)
        if is_blank(solution, solution_text):
            raise ValueError(f"exercise {exercise_id} has no solution in {reference} ({solution.where}): "
                             f"it is a student edition, not the reference")
        text = restore_source(read_source(student / blank.path), blank, solution_text, solution)
        write_source(student / blank.path, text)

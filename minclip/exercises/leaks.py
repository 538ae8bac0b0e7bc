"""Solutions must not reach the student edition by another road.

The student edition blanks every exercise region, but a solution can still
ship elsewhere: a notebook cell that repeats it, a saved output that prints
it (``inspect.getsource``), a test oracle written the same way. This module
looks for the lines of each reference solution in every file a learner
receives outside the package itself (notebook sources and outputs, tests,
benchmarks, documents).

Matching is by *shape*, not by text: each line becomes a skeleton in which
every name and dotted name is ``N`` (string literals stay) (``np.triu(np.full((T, T), -np.inf))``
and ``lib.triu(lib.full((size, size), -lib.inf))`` are the same line), so
renaming variables does not hide a copy. A solution leaks when a run of its
consecutive lines, long enough not to be a coincidence, appears as
consecutive lines of a shipped file.
"""
import json
import keyword
import re
from dataclasses import dataclass
from pathlib import Path

from minclip.exercises.export import INSTRUCTOR_ONLY, project_files
from minclip.exercises.regions import PACKAGE, find_regions, read_source

TOKEN = re.compile(r"\"[^\"]*\"|'[^']*'|[A-Za-z_]\w*(?:\s*\.\s*[A-Za-z_]\w*)*|\d+(?:\.\d*)?(?:e-?\d+)?|\*\*|//|==|!=|<=|>=|->|\S")
SHORTEST_LINE = 6       # tokens: shorter lines (``return x``, ``else:``) say nothing about where they came from
COMPUTES = set("([+-*/@")   # a line without any (``B, C, H, W = x.shape``) is bookkeeping, not a solution
ENOUGH = 18             # tokens in a matching run of lines before it counts as a copy
SHIPPED = (".py", ".ipynb", ".md", ".txt")


@dataclass(frozen=True)
class Leak:
    exercise: str
    where: str        # the shipped file, and the notebook cell
    line: str         # the first copied line, as the file has it

    def __str__(self):
        return f"the solution of exercise {self.exercise} appears in {self.where}: {self.line.strip()!r}"


def skeleton(line):
    """LINE's tokens with every (dotted) name replaced by N, comments dropped; a tuple."""
    words = TOKEN.findall(line.split("  #", 1)[0].split("# ", 1)[0])
    return tuple("N" if (w[0].isalpha() or w[0] == "_") and not keyword.iskeyword(w)
                 else f"'{w[1:-1]}'" if w[0] in "'\"" else w for w in words)


def _significant(lines):
    """(skeleton, original line) of the lines that compute something and are long enough to carry meaning."""
    pairs = [(skeleton(line), line) for line in lines]
    return [(s, line) for s, line in pairs if len(s) >= SHORTEST_LINE and COMPUTES.intersection(s)]


def solution_lines(root, region):
    """The significant lines of REGION's reference solution, in order."""
    body = read_source(Path(root) / region.path).splitlines()[region.begin:region.end - 1]
    return [s for s, _ in _significant(body)]


def shipped_texts(root):
    """(where, lines) for each text a learner receives outside the package
    (the instructor's folder is not shipped): every notebook cell's source
    and outputs, every other text file."""
    root = Path(root)
    for path in project_files(root):
        if path.parts[0] in (PACKAGE, INSTRUCTOR_ONLY) or path.suffix not in SHIPPED:
            continue
        if path.suffix == ".ipynb":
            cells = json.loads(read_source(root / path)).get("cells", [])
            for number, cell in enumerate(cells):
                yield f"{path.as_posix()} cell {number}", _joined(cell.get("source", "")).splitlines()
                for output in cell.get("outputs", []):
                    texts = [output.get("text", "")] + [output.get("data", {}).get("text/plain", "")]
                    yield f"{path.as_posix()} cell {number} (saved output)", \
                        "\n".join(_joined(t) for t in texts).splitlines()
        else:
            yield path.as_posix(), read_source(root / path).splitlines()


def _joined(text):
    return "".join(text) if isinstance(text, list) else text


def find_leaks(reference, student=None):
    """Every place where a solution of REFERENCE's exercises appears in the
    shipped files of STUDENT (default: REFERENCE itself), as Leaks."""
    solutions = {region.id: solution_lines(reference, region) for region in find_regions(reference)}
    leaks = []
    for where, lines in shipped_texts(student or reference):
        text = _significant(lines)
        shapes = [s for s, _ in text]
        for exercise_id, solution in solutions.items():
            at = _copied_run(solution, shapes)
            if at is not None:
                leaks.append(Leak(exercise_id, where, text[at][1]))
    return leaks


def _copied_run(solution, shapes):
    """Index in SHAPES where a run of SOLUTION's consecutive lines of at least
    ENOUGH tokens (or the whole solution, if shorter but not trivial) starts; else None."""
    need = min(ENOUGH, sum(len(s) for s in solution))
    if need < 2 * SHORTEST_LINE:
        return None
    for start in range(len(shapes)):
        for first in range(len(solution)):
            run = 0
            for offset in range(min(len(solution) - first, len(shapes) - start)):
                if shapes[start + offset] != solution[first + offset]:
                    break
                run += len(solution[first + offset])
                if run >= need:
                    return start
    return None

"""Exercise regions: find them in the source, blank them out, put them back.

A region is the whole rest of one function body, between two comment lines
indented at that body's level::

    def normalize(images):
        \"\"\"... hints for the learner ...\"\"\"
        # BEGIN EXERCISE 6.1: normalize images with CLIP's mean and std
        ... the reference solution ...
        # END EXERCISE

The student edition keeps both comment lines and puts one
``raise NotImplementedError("Exercise 6.1: ...")`` between them, so a learner
sees where to write, and an instructor can restore the solution by the same
markers.
"""
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "minclip"
BEGIN = re.compile(r"^(\s*)# BEGIN EXERCISE (\d+)\.(\d+): (\S.*?)\s*$")
END = re.compile(r"^(\s*)# END EXERCISE\s*$")
LOOKS_LIKE_MARKER = re.compile(r"^\s*#\s*(BEGIN|END)\s+EXERCISE", re.IGNORECASE)
MARKER_FORMS = "'# BEGIN EXERCISE <chapter>.<n>: <title>' or '# END EXERCISE'"


class MarkerError(ValueError):
    """Badly formed exercise markers; each problem is one 'path:line: what' line."""

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("exercise markers:\n  " + "\n  ".join(self.problems))


@dataclass(frozen=True)
class Region:
    """One exercise: where it is in the source and what it is called."""
    id: str          # "6.1"
    title: str       # "normalize images with CLIP's mean and std"
    path: Path       # minclip/data/transforms.py, relative to the project root
    begin: int       # line number (1-based) of the BEGIN comment
    end: int         # line number (1-based) of the END comment
    indent: str      # the whitespace in front of the BEGIN comment

    @property
    def chapter(self):
        return exercise_key(self.id)[0]

    @property
    def where(self):
        return f"{self.path}:{self.begin}"


def exercise_key(exercise_id):
    """Sort key: "2.10" comes after "2.9"."""
    return tuple(int(part) for part in exercise_id.split("."))


def source_files(root):
    """The package's Python files, where exercises live (not this tool's own
    folder: its documentation talks about markers)."""
    package = Path(root) / PACKAGE
    if not package.is_dir():
        raise FileNotFoundError(f"no {PACKAGE}/ package in {Path(root).resolve()}: "
                                f"run from the project root or pass its path")
    tool = Path(__file__).parent.name
    return sorted(p for p in package.rglob("*.py") if p.relative_to(package).parts[0] != tool)


def read_source(path):
    """A file's text with its line endings as they are (so that writing it back changes nothing)."""
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()


def write_source(path, text):
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def _lines(text):
    """Lines with their endings, split where Python counts lines (\\n, \\r\\n, \\r)."""
    return io.StringIO(text, newline="").readlines()


def parse_regions(text, path):
    """The regions of one file's text, and a list of 'path:line: problem' strings."""
    lines = [line.rstrip("\r\n") for line in _lines(text)]
    regions, problems, open_at = [], [], None
    for number, line in enumerate(lines, start=1):
        begin, end = BEGIN.match(line), END.match(line)
        if begin:
            if open_at:
                problems.append(f"{path}:{number}: BEGIN EXERCISE inside exercise {open_at[1]} "
                                f"(opened at line {open_at[0]}): close that one with '# END EXERCISE' first")
            open_at = (number, f"{begin[2]}.{begin[3]}", begin[4], begin[1])
        elif end:
            if not open_at:
                problems.append(f"{path}:{number}: END EXERCISE without a BEGIN EXERCISE before it")
                continue
            begin_line, exercise_id, title, indent = open_at
            open_at = None
            region = Region(exercise_id, title, Path(path), begin_line, number, indent)
            problems += _shape_problems(region, lines, end[1])
            regions.append(region)
        elif LOOKS_LIKE_MARKER.match(line):
            problems.append(f"{path}:{number}: malformed exercise marker {line.strip()!r}: expected {MARKER_FORMS}")
    if open_at:
        problems.append(f"{path}:{open_at[0]}: BEGIN EXERCISE {open_at[1]} is never closed with '# END EXERCISE'")
    return regions, problems


def _shape_problems(region, lines, end_indent):
    """A region must be the whole rest of a function body, so that replacing it
    with one `raise` line leaves valid code that behaves the same elsewhere."""
    problems = []
    at = f"{region.path}:{region.begin}: exercise {region.id}"
    body = [(n, lines[n - 1]) for n in range(region.begin + 1, region.end) if _is_code(lines[n - 1])]
    if not region.indent:
        problems.append(f"{at}: a region must be inside a function body, not at module level")
    if end_indent != region.indent:
        problems.append(f"{region.path}:{region.end}: END EXERCISE is indented differently "
                        f"from BEGIN EXERCISE {region.id} at line {region.begin}")
    if not body:
        problems.append(f"{at} is empty: a region wraps the reference solution")
    elif _indent(body[0][1]) != region.indent:
        problems.append(f"{region.path}:{body[0][0]}: the code of exercise {region.id} must be "
                        f"indented exactly like its BEGIN line (the function body's level)")
    after = next((n for n in range(region.end + 1, len(lines) + 1) if _is_code(lines[n - 1])), None)
    if after and len(_indent(lines[after - 1])) >= len(region.indent):
        problems.append(f"{region.path}:{after}: code after the END of exercise {region.id} would never "
                        f"run in the student edition: a region must be the whole rest of a function body")
    return problems


def _is_code(line):
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def _indent(line):
    return line[:len(line) - len(line.lstrip())]


def find_regions(root):
    """Every exercise region under ROOT/minclip, sorted by id.

    Raises MarkerError listing every problem (unbalanced BEGIN/END, nested or
    duplicate ids, malformed markers, a region that is not a function's tail)
    with its file and line.
    """
    root = Path(root)
    regions, problems, seen = [], [], {}
    for file in source_files(root):
        found, file_problems = parse_regions(read_source(file), file.relative_to(root))
        problems += file_problems
        for region in found:
            if region.id in seen:
                problems.append(f"{region.where}: exercise {region.id} is defined twice "
                                f"(first at {seen[region.id].where})")
            else:
                seen[region.id] = region
                regions.append(region)
    if problems:
        raise MarkerError(problems)
    return sorted(regions, key=lambda r: exercise_key(r.id))


def notebook_for(root, chapter):
    """The chapter's notebook as a path relative to ROOT (notebooks/NN_*.ipynb), or None."""
    found = sorted((Path(root) / "notebooks").glob(f"{chapter:02d}_*.ipynb"))
    return found[0].relative_to(root).as_posix() if found else None


HEADING = re.compile(r"^#{1,6}\s+(?:\d+\.\s+)?(.*?)(?:\s+\(exercise \d+\.\d+\))?\s*$")


def section_title(text):
    """A title as the course compares them: the first letter's case does not count."""
    return text[:1].lower() + text[1:]


def notebook_sections(path):
    """The section titles of a notebook's Markdown headings, without their number
    ("## 3. ") or exercise tag (" (exercise 2.3)"), as ``section_title`` writes them."""
    cells = json.loads(read_source(path)).get("cells", [])
    lines = [line for cell in cells if cell.get("cell_type") == "markdown"
             for line in "".join(cell.get("source", "")).splitlines()]
    return {section_title(match[1]) for match in map(HEADING.match, lines) if match}


def placeholder(region, notebook):
    """The line that replaces a solution in the student edition."""
    where = notebook or f"the chapter {region.chapter} notebook in notebooks/"
    message = f"Exercise {region.id}: {region.title}. See {where}, section '{region.title}'"
    return f"{region.indent}raise NotImplementedError({message!r})"


def is_blank(region, text):
    """Whether REGION, in its file's TEXT, holds only the student-edition placeholder (no solution)."""
    body = _lines(text)[region.begin:region.end - 1]
    return (len(body) == 1 and body[0].lstrip().startswith("raise NotImplementedError(")
            and f"Exercise {region.id}:" in body[0])


def student_source(text, regions, notebooks):
    """TEXT with each region's body replaced by its placeholder line.

    ``regions`` are this file's regions; ``notebooks`` maps chapter -> notebook
    path (or None). Everything outside the regions, line endings included,
    stays byte for byte.
    """
    lines = _lines(text)
    for region in sorted(regions, key=lambda r: r.begin, reverse=True):   # bottom-up keeps line numbers valid
        newline = lines[region.begin - 1][len(lines[region.begin - 1].rstrip("\r\n")):]
        lines[region.begin:region.end - 1] = [placeholder(region, notebooks.get(region.chapter)) + newline]
    return "".join(lines)


def restore_source(student_text, student_region, reference_text, reference_region):
    """STUDENT_TEXT with one region (BEGIN to END lines) taken from the reference."""
    student, reference = _lines(student_text), _lines(reference_text)
    student[student_region.begin - 1:student_region.end] = \
        reference[reference_region.begin - 1:reference_region.end]
    return "".join(student)

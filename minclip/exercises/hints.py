"""Hints, difficulty and time per exercise, for ``list`` and ``hint``.

They live in one data file of the project, ``minclip/exercises/hints.json``:
``{"2.3": {"difficulty": 1-3, "minutes": 45, "hint": "...", "more": "..."}}``.
``hint`` is the first nudge, ``more`` the second, more concrete level (the
steps in order, and the exact wording a test expects of an error message),
short of the solution itself.
"""
import json
from pathlib import Path

HINTS_FILE = Path("minclip") / "exercises" / "hints.json"


def load_hints(root):
    """{id: entry} from ROOT's hints file, or {} when the project has none."""
    path = Path(root) / HINTS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def effort(entry):
    """'★★☆ ~30 min': difficulty out of three and the time it takes a learner."""
    return f"{'★' * entry['difficulty']}{'☆' * (3 - entry['difficulty'])} ~{entry['minutes']} min"


def hint_text(root, exercise_id, title):
    """Both hint levels of one exercise, as text to print."""
    hints = load_hints(root)
    if exercise_id not in hints:
        raise ValueError(f"no hints for exercise {exercise_id} in {Path(root) / HINTS_FILE} "
                         f"(it has {', '.join(hints) or 'none'})")
    entry = hints[exercise_id]
    return (f"Exercise {exercise_id}: {title} ({effort(entry)})\n\n"
            f"Hint: {entry['hint']}\n\nIf that is not enough: {entry['more']}")

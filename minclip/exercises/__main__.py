"""``python -m minclip.exercises COMMAND``: see ``--help`` and the package docstring."""
import argparse
import json
import sys
import tempfile

from minclip.exercises import __doc__ as OVERVIEW
from minclip.exercises.export import export, restore
from minclip.exercises.grading import grade, grade_table, progress_table
from minclip.exercises.hints import effort, hint_text, load_hints
from minclip.exercises.regions import MarkerError, find_regions
from minclip.exercises.verify import report, verify


def list_exercises(args):
    """Print every exercise: id, title, where it is (file:line), difficulty and time."""
    regions = find_regions(args.root)
    hints = load_hints(args.root)
    for region in regions:
        known = f"  {effort(hints[region.id])}" if region.id in hints else ""
        print(f"{region.id:<6} {region.title}  ({region.where}){known}")
    print(f"{len(regions)} exercises")


def show_hint(args):
    """Print the hints of exercise ID: a nudge, then a second, more concrete level."""
    titles = {region.id: region.title for region in find_regions(args.root)}
    if args.id not in titles:
        raise ValueError(f"no exercise {args.id} (there are {', '.join(titles) or 'none'})")
    print(hint_text(args.root, args.id, titles[args.id]))


def export_student_edition(args):
    """Write the student edition of the project into DIR.

    Every exercise's solution becomes a NotImplementedError naming the exercise
    and its notebook; everything else is copied as it is. DIR must be empty or
    absent, unless --force."""
    regions = export(args.root, args.dir, force=args.force)
    print(f"wrote the student edition to {args.dir}: {len(regions)} exercises")
    for chapter in sorted({region.chapter for region in regions}):
        ids = [region.id for region in regions if region.chapter == chapter]
        print(f"  chapter {chapter}: {len(ids)} ({ids[0] if len(ids) == 1 else f'{ids[0]}-{ids[-1]}'})")


def restore_solutions(args):
    """Put the reference solution of exercises IDS back into the student copy DIR."""
    restore(args.dir, args.ids, args.reference)
    print(f"restored {', '.join(args.ids)} into {args.dir} from {args.reference}")


def show_status(args):
    """Run the exercise tests quietly and print, per chapter, exercises done and the next one."""
    print(progress_table(grade(args.root, timeout=args.timeout), args.root))


def grade_copy(args):
    """Run a student's copy DIR and print per-exercise results (a table, or --json)."""
    result = grade(args.dir, timeout=args.timeout)
    print(json.dumps(result.to_json(), indent=2) if args.json else grade_table(result))


def verify_student_edition(args):
    """Check the student edition: export it to a scratch folder and test it (minutes).

    Each exercise's tests must fail there with its own message, the other tests
    pass, and restoring one solution must make its tests pass. Prints every
    problem; exit status 1 when there is one."""
    with tempfile.TemporaryDirectory(prefix="minclip-student-") as scratch:
        export(args.root, scratch, force=True)
        problems = verify(scratch, args.root, timeout=args.timeout)
    print(report(problems))
    return 1 if any(not p.blocked for p in problems) else 0


def parser():
    p = argparse.ArgumentParser(prog="python -m minclip.exercises", description=OVERVIEW,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, run, *, root=True, timeout=False):
        sub = commands.add_parser(name, help=run.__doc__.split("\n")[0], description=run.__doc__)
        sub.set_defaults(run=run)
        if root:
            sub.add_argument("--root", default=".", help="the project's root folder (default: here)")
        if timeout:
            sub.add_argument("--timeout", type=float, default=60.0, help="seconds per test (default 60)")
        return sub

    command("list", list_exercises)
    sub = command("hint", show_hint)
    sub.add_argument("id", metavar="ID", help="the exercise, e.g. 2.3")
    sub = command("export", export_student_edition)
    sub.add_argument("dir", help="where to write the student edition")
    sub.add_argument("--force", action="store_true", help="write into a non-empty folder")
    sub = command("restore", restore_solutions, root=False)
    sub.add_argument("dir", help="the student copy")
    sub.add_argument("ids", nargs="+", metavar="ID", help="exercise ids, e.g. 2.3")
    sub.add_argument("--from", dest="reference", required=True, help="the reference project (with solutions)")
    command("status", show_status, timeout=True)
    sub = command("grade", grade_copy, root=False, timeout=True)
    sub.add_argument("dir", help="the student's copy")
    sub.add_argument("--json", action="store_true", help="print JSON instead of a table")
    command("verify", verify_student_edition, timeout=True)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except (MarkerError, FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Every notebook of the course runs top to bottom (the course is tested too).

Each notebook is executed by a fresh Jupyter kernel, from the ``notebooks/``
folder, exactly as a learner would run it; the committed file is not touched.
A cell that raises fails the test with the cell's source and the error; in the
student edition, a cell that stops at an unsolved exercise raises that
exercise's NotImplementedError again here, so the test waits for it
("needs exercise 1.1 first") instead of failing; but a notebook that stops
at an exercise of a *later* chapter fails: chapter k must run with chapters
1..k done.
"""
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CELL_TIMEOUT = 600  # seconds for one cell: generous for a loaded 2-core machine


def test_every_chapter_has_a_notebook():
    chapters = {p.name[:2] for p in NOTEBOOKS}
    assert chapters >= {"01", "02", "03", "04", "05", "06", "07"}, f"notebooks found: {[p.name for p in NOTEBOOKS]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, monkeypatch):
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    monkeypatch.setenv("MPLBACKEND", "Agg")   # the kernel inherits it: no window opens
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as error:
        if error.ename == "NotImplementedError" and error.evalue.startswith("Exercise "):
            chapter = int(error.evalue.removeprefix("Exercise ").split(".")[0])
            if chapter > int(path.name[:2]):
                pytest.fail(f"{path.name} stopped at an exercise of a later chapter: {error.evalue}", pytrace=False)
            raise NotImplementedError(f"{error.evalue} (reached by {path.name})") from None
        pytest.fail(f"{path.name} stopped at a cell:\n{error}", pytrace=False)
    assert any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), \
        f"{path.name} produced no output at all"

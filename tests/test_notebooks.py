"""Every notebook runs top to bottom, offline, on the bundled checkpoints (as a reader would)."""

from __future__ import annotations

import pytest

from conftest import ROOT, WIKISPLIT

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
NEEDS_DATA = {"03_evaluation.ipynb"}


def test_notebooks_exist():
    names = {p.name for p in NOTEBOOKS}
    assert {"01_quickstart.ipynb", "02_warm_start_and_fine_tune.ipynb", "03_evaluation.ipynb",
            "04_attention.ipynb"} <= names


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, monkeypatch, tmp_path):
    if path.name in NEEDS_DATA and not (WIKISPLIT / "validation.tsv").is_file():
        pytest.skip(f"WikiSplit data not found at {WIKISPLIT}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # what a notebook leaves in its temp folders stays in pytest's
    book = nbformat.read(path, as_version=4)
    assert book.cells[0].cell_type == "markdown", "the first cell says what the notebook shows"
    assert not any(c.get("outputs") for c in book.cells if c.cell_type == "code"), "stored without outputs"
    client = nbclient.NotebookClient(book, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError naming the failing cell

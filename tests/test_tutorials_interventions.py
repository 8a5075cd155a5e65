"""Execute tutorials/interventions.ipynb (toy model: well under a minute on one CPU thread)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "tutorials" / "interventions.ipynb"


def test_interventions_tutorial_runs(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # The kernel inherits the environment: it imports sae_bilinear (and sae_bilinear.toy) from
    # this checkout, as the tests do, not from wherever the package happens to be installed.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    notebook = nbformat.read(TUTORIAL, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(TUTORIAL.parent)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, if a cell fails
    text = "\n".join(
        output.get("text", "") + str(output.get("data", {}).get("text/plain", ""))
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )
    assert "ce_loss_recovered" in text
    assert "ΔCE when ablated" in text
    assert "max |change − contribution|" in text
    assert "strength 2.0" in text

"""The notebooks run end to end with the tiny configuration (PROBUNET_TINY=1) on CPU."""

from __future__ import annotations

import os
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "experiments" / "notebooks"
NAMES = ("quickstart.ipynb", "explore_latent_space.ipynb")
FIGURES = {"quickstart.ipynb": 2, "explore_latent_space.ipynb": 5}  # Figures each one draws.


def _outputs(notebook) -> list[dict]:
    return [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]


@pytest.mark.parametrize("name", NAMES)
def test_committed_without_outputs(name):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert not _outputs(notebook), f"{name} has outputs: strip them before committing."
    assert all(
        cell.get("execution_count") is None for cell in notebook.cells if "execution_count" in cell
    )
    assert any("parameters" in cell.metadata.get("tags", []) for cell in notebook.cells)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_tiny(name, tmp_path, monkeypatch):
    monkeypatch.setenv("PROBUNET_TINY", "1")
    monkeypatch.setenv("WORKDIR", str(tmp_path / "work"))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    # The kernel imports the project from this checkout (installed or not).
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    )
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(ROOT)}},
    )
    start = time.perf_counter()
    client.execute()  # Raises CellExecutionError naming the failing cell.
    print(f"{name}: {time.perf_counter() - start:.1f} s")
    images = [o for o in _outputs(notebook) if "image/png" in o.get("data", {})]
    assert len(images) == FIGURES[name], f"{name} drew {len(images)} figures"
    if name == "quickstart.ipynb":  # GED break-up tables: synthetic (with the oracle), own data.
        tables = [
            o["data"]["text/plain"]
            for o in _outputs(notebook)
            if "E[d(S, Y)]" in o.get("data", {}).get("text/plain", "")
        ]
        assert len(tables) == 2
        assert "oracle" in tables[0] and "nan" not in tables[0].lower()
        assert "oracle" not in tables[1] and "nan" not in tables[1].lower()

"""Notebooks stay runnable: their code cells execute in order, in one namespace."""

import json
import pathlib
import tempfile

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # its work dirs go with tmp_path
    cells = json.loads(path.read_text())["cells"]
    namespace = {}
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        assert not source.lstrip().startswith("!"), "shell cells do not run in CI"
        exec(compile(source, f"{path.name}[cell {i}]", "exec"), namespace)  # noqa: S102

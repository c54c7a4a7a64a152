"""`pip install .` (not editable) ships every file the package reads: the wheel holds each
data file under `himl/` and the configs as `himl.configs`."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]


@pytest.mark.slow
def test_the_wheel_holds_every_package_file(tmp_path):
    pytest.importorskip("setuptools")
    source = tmp_path / "src"  # a copy: building writes build/ and *.egg-info beside setup.py
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("himl", "configs"):
        shutil.copytree(REPO / folder, source / folder, ignore=ignore)
    for file in ("setup.py", "README.md"):
        shutil.copy(REPO / file, source / file)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "wheel"), str(source)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = (tmp_path / "wheel").glob("himl-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        p.relative_to(source).as_posix() for p in (source / "himl").rglob("*") if p.is_file()
    }
    expected |= {f"himl/configs/{p.name}" for p in (source / "configs").glob("*.py")}
    assert sorted(expected - shipped) == []

"""The examples in docstrings run and print what they say (every module with `>>>`)."""

import doctest
import importlib
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).parents[1] / "himl"
MODULES = sorted(
    ".".join(("himl", *p.relative_to(PACKAGE).with_suffix("").parts))
    for p in PACKAGE.rglob("*.py")
    if ">>> " in p.read_text(encoding="utf-8")
)


def test_some_modules_have_examples():
    assert MODULES, "no docstring examples found"


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"

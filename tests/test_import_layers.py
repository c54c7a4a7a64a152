"""The package's imports run one way (CONTRIBUTING.md, "The flow"): read with `ast` from the
source, lazy imports inside functions included, so a violation fails without running it."""

import ast
import pathlib

import pytest

HIML = pathlib.Path(__file__).resolve().parents[1] / "himl"

# package -> the parts of himl it must not import. The config (himl.configs, config_lib)
# sits above everything; training sits above evaluation, which reads work directories
# (himl/runs.py) but never trains.
FORBIDDEN = {
    "data": {"configs", "config_lib", "models", "losses", "train", "eval"},
    "models": {"configs", "config_lib", "data", "train", "eval"},
    "losses": {"configs", "config_lib", "data", "train", "eval"},
    "eval": {"configs", "train"},
    "runs": {"train"},
    "embedder": {"train"},
}


def himl_imports(path: pathlib.Path) -> set[str]:
    """The `himl.<part>` names a module imports (`from himl import x` counts as `x`)."""
    parts = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            if node.module == "himl":
                names = [f"himl.{a.name}" for a in node.names]
        elif isinstance(node, ast.ImportFrom):  # relative: resolved against the package
            raise AssertionError(f"{path}: relative import; himl uses absolute imports")
        else:
            continue
        parts.update(n.split(".")[1] for n in names if n.startswith("himl."))
    return parts


def modules(part: str) -> list[pathlib.Path]:
    return sorted((HIML / part).rglob("*.py")) or [HIML / f"{part}.py"]


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_imports_run_one_way(part):
    files = modules(part)
    assert files[0].is_file(), files
    bad = {
        f"{path.relative_to(HIML.parent)} imports himl.{name}"
        for path in files
        for name in himl_imports(path) & FORBIDDEN[part]
    }
    assert not bad, sorted(bad)


def test_the_check_sees_lazy_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from himl.configs import tiny\n    import himl.train.loop\n")
    assert himl_imports(module) == {"configs", "train"}


def test_a_bare_import_himl_reaches_every_public_submodule_and_starts_nothing():
    """`import himl` loads no JAX; `himl.losses`, `himl.eval`, ... and `himl.Embedder` then
    resolve on first use, in any order (they depended on what had been used before)."""
    import subprocess
    import sys

    script = (
        "import sys, himl; assert 'jax' not in sys.modules, 'import himl loaded jax';"
        "assert callable(himl.losses.supcon) and callable(himl.eval.retrieval.retrieval_metrics);"
        "assert himl.hierarchy.validate_tree and himl.data.load and himl.Embedder and himl.Gallery;"
        "assert set(himl.SUBMODULES) <= set(dir(himl))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]

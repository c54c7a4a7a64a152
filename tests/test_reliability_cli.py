"""The commands' answers to the issue-13 mistakes: one line, exit status 2, no traceback,
and an untouched (here: never created) work directory."""

import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).parents[1]


def _train(*args, python=()):
    return subprocess.run(
        [sys.executable, *python, "-m", "himl.train", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _one_error_line(result) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--config", "configs/tiny.py"], "write --config=configs/tiny.py (with '=')"),
        (
            ["--config=configs/default.py:fashion_mnsit"],
            "default.py has no argument 'fashion_mnsit'; it accepts default.py:fashion_mnist",
        ),
        (["--config=configs/cub.py:hierarchicl"], "cub.py:m_per_class, cub.py:hierarchical"),
        (["--config.loss.himulcone.temperature=0"], "config.loss.himulcone.temperature"),
        (["--config.train.keep_checkpoints=0"], "config.train.keep_checkpoints must be >= 1"),
        (["--config.eval.ks=0"], "config.eval.ks"),
        (  # only the selected loss's section is read: it trained himulcone unchanged
            ["--config.loss.supcon.temperature=0.2"],
            "config.loss.name=himulcone reads only config.loss.himulcone (add "
            "--config.loss.name=supcon)",
        ),
        (  # ml_collections names only the key: "'temp'"
            ["--config.loss.supcon.temp=0.2"],
            "config.loss.supcon has no field 'temp'; its fields: chunk_size, temperature",
        ),
        (["--config.data.crop_ratio=0.5"], "config.data.crop_ratio must be two numbers"),
        (
            [
                "--config.loss.name=supcon",
                "--config.data.sampler=m_per_class",
                "--config.data.samples_per_class=1",
                "--config.data.num_views=1",
                "--config.data.batch_size=8",
            ],
            "config.loss.name=supcon needs two samples of a class",
        ),
    ],
)
def test_mistake_is_one_line_before_any_work(args, expected, tmp_path):
    line = _one_error_line(_train(f"--workdir={tmp_path / 'w'}", *args))
    assert expected in line
    assert not (tmp_path / "w").exists()


def test_a_mistake_is_reported_before_the_evaluation_libraries_load(tmp_path):
    """scikit-learn (k-means, the probe) takes ~2 s to import: a config mistake must not
    wait for it (nor for plotting)."""
    result = _train(
        f"--workdir={tmp_path / 'w'}", "--config.eval.ks=0", python=("-X", "importtime")
    )
    assert "config.eval.ks" in _one_error_line(result)
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()}
    assert "jax" in imported  # the import log is there
    assert not imported & {"sklearn", "scipy.stats", "matplotlib"}


def test_workdir_that_is_a_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("mine")
    line = _one_error_line(_train(f"--workdir={path}", "--config=configs/tiny.py"))
    assert f"{path} is a file" in line and path.read_text() == "mine"


def test_diverging_run_stops_in_one_line_naming_step_and_cause(tmp_path):
    result = _train(
        f"--workdir={tmp_path / 'w'}",
        "--config=configs/tiny.py",
        "--config.optimizer.name=sgd",
        "--config.optimizer.learning_rate=1e30",
        "--noprogress",
    )
    line = _one_error_line(result)
    assert "went non-finite" in line and "learning_rate=1e+30" in line
    assert "nothing non-finite was saved" in line

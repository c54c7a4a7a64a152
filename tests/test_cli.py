"""The commands answer a user's mistakes with one clear line and exit status 2."""

import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).parents[1]


def _run(module, *args, cwd=REPO):
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--config.train.stepz=3"], 'Did you mean "steps"'),
        (["--config.loss.name=supcontrast"], "unknown config.loss.name 'supcontrast'; valid:"),
        (["--config.train.steps=abc"], "--config.train.steps=abc"),
        (["--config=configs/nonexistent.py"], "nonexistent.py"),
        (
            ["--config.data.sampler=m_per_class", "--config.data.batch_size=128"],
            "needs 8 classes, the data has 7",
        ),
    ],
)
def test_train_rejects_bad_config_in_one_line(args, expected, tmp_path):
    result = _run("himl.train", f"--workdir={tmp_path / 'w'}", *args)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and expected in errors[0], result.stderr[-2000:]
    assert not (tmp_path / "w" / "checkpoints").exists()


def test_eval_reports_missing_workdir(tmp_path):
    result = _run("himl.eval", f"--workdir={tmp_path / 'nothing'}")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "config.json not found" in result.stderr


def test_a_none_default_can_be_set_and_reset_on_the_command_line():
    """`chunk_size` defaults to None (the loss's default blocks): `=512` is an int and
    `=None` sets it back (it was typed int, so `None` was refused)."""
    show = (
        "from absl import app; from ml_collections import config_flags;"
        "C = config_flags.DEFINE_config_file('config');"
        "app.run(lambda _: print(repr(C.value.loss.supcon.chunk_size)))"
    )
    for value, expected in [("None", None), ("512", 512)]:
        out = subprocess.run(
            [sys.executable, "-c", show, "--config=configs/tiny.py",
             f"--config.loss.supcon.chunk_size={value}"],
            capture_output=True, text=True, check=True, cwd=REPO,
        ).stdout  # fmt: skip
        assert out.strip() == repr(expected)

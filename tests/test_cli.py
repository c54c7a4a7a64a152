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
        (["--config.train.steps=abc"], "--config.train.steps=abc: an int field: give a whole"),
        (["--config.eval.at_start=yes"], "at_start=yes: a bool field: give true or false"),
        (["--config.optimizer.learning_rate=None"], "=None: a float field: give a number"),
        (["--config=configs/nonexistent.py"], "nonexistent.py"),
        (["--config=configs/tiny.py", "--config=configs/tiny.py:x"], "give --config once, got"),
        (
            ["--config.eval.every=0", "--config.train.stepz=3"],
            "bad --config or override (--config.train.stepz=3): 'stepz' Did you mean",
        ),
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


def test_a_config_named_as_in_the_readme_is_found_from_any_folder(tmp_path, monkeypatch, capsys):
    """`--config=configs/cub.py` is the installed config when the folder you run in has no
    `configs/` (a pip-installed himl); a file that exists is used as given."""
    from himl.cli import config_file, installed_configs

    monkeypatch.chdir(tmp_path)
    tiny = REPO / "configs" / "tiny.py"
    assert installed_configs()["tiny"].read_text() == tiny.read_text()
    for given in ["configs/tiny.py", "tiny.py", "tiny"]:
        resolved = config_file(f"{given}:small", "himl-train")
        assert resolved == f"{installed_configs()['tiny']}:small"
        assert f"config {given} is himl's installed" in capsys.readouterr().err
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tiny.py").write_text("# my own\n")
    assert config_file("configs/tiny.py:x") == "configs/tiny.py:x"
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "given", ["configs/tinny.py", "elsewhere/tiny.py", "/nowhere/configs/tiny.py"]
)
def test_a_missing_config_file_lists_the_installed_ones(given, tmp_path, monkeypatch, capsys):
    from himl.cli import config_file

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        config_file(given, "himl-train")
    assert exit_.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"himl-train: error: no config file {given} (the configs installed")
    listed = line.split("himl: ")[1].split(";")[0].split(", ")
    assert "cub" in listed and "default" in listed and "benchmark" not in listed


@pytest.mark.parametrize(
    "script,summary,flags",
    [
        (
            "himl-train",
            "train, checkpoint, then evaluate",
            ["--config", "--workdir", "--[no]progress"],
        ),
        (
            "himl-eval",
            "evaluate a himl-train checkpoint",
            ["--workdir", "--step", "--splits", "--out"],
        ),
        (
            "himl-embed",
            "a trained embedding on new images",
            ["--images", "--query", "--k", "--plot"],
        ),
    ],
)
def test_help_of_each_installed_command_describes_it(script, summary, flags, tmp_path):
    """`--help` of the console scripts (whose `__main__` is pip's wrapper, not the module)
    prints the command's docstring and its own flags."""
    command = pathlib.Path(sys.executable).parent / script
    if not command.exists():
        pytest.skip(f"{script} is not installed beside {sys.executable}")
    result = subprocess.run(
        [str(command), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    text = result.stdout + result.stderr
    assert summary in text, text[-2000:]  # (absl exits 1 after --help)
    for flag in flags:
        assert f"  {flag}:" in text, (flag, text[-2000:])


def test_a_warning_is_one_line_naming_the_command(monkeypatch, capsys):
    """Not the file, line and source of the code that warned (the user did not write it)."""
    import warnings

    from himl.cli import run_quietly

    def main(argv):
        warnings.warn("Recall@K for K in [50]: clipped", stacklevel=1)
        warnings.warn("old", DeprecationWarning, stacklevel=1)

    monkeypatch.setattr(sys, "argv", ["himl-x"])
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # restored after
    with warnings.catch_warnings(), pytest.raises(SystemExit) as done:
        warnings.simplefilter("always")
        # As Python's own showwarning (pytest records warnings instead of showing them).
        warnings.showwarning = lambda *args, file=None, line=None: sys.stderr.write(
            warnings.formatwarning(*args, line=line)
        )
        run_quietly(main, "himl-x")
    assert done.value.code in (0, None)
    assert capsys.readouterr().err == (
        "himl-x: warning: Recall@K for K in [50]: clipped\nhiml-x: DeprecationWarning: old\n"
    )


def test_an_override_given_twice_is_the_last_one():
    """As for any flag, the later value wins - ml_collections alone would join the values
    of a tuple field (`ks=1` then `ks=2` gave (1, 2): two R@ columns nobody asked for)."""
    show = (
        "from absl import app; from ml_collections import config_flags;"
        "from himl.cli import flags_parser;"
        "C = config_flags.DEFINE_config_file('config');"
        "app.run(lambda _: print(C.value.eval.ks, C.value.eval.splits, C.value.train.steps),"
        " flags_parser=flags_parser('x'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", show, "--config=configs/tiny.py", "--config.eval.ks=1",
         "--config.train.steps=3", "--config.eval.splits=unseen", "-config.eval.ks=2,4",
         "--config.eval.splits=seen_test", "--config.train.steps=5"],
        capture_output=True, text=True, check=True, cwd=REPO,
    ).stdout  # fmt: skip
    assert out.strip() == "(2, 4) ('seen_test',) 5"


@pytest.mark.parametrize(
    "given, expected",
    [
        ({"process_id": 1},
         "--process_id given without --coordinator_address, --num_processes: give all three"),
        ({"coordinator_address": "h:1", "num_processes": 2, "process_id": 2},
         "--process_id=2 with --num_processes=2: the ids run 0..1"),
        ({"coordinator_address": "h:1", "num_processes": 0, "process_id": 0},
         "--num_processes=0: give how many processes, >= 1"),
        ({"coordinator_address": "h:1", "num_processes": 2, "process_id": 0, "timeout_s": 0},
         "--join_timeout=0: give the seconds to wait, >= 1"),
    ],
)  # fmt: skip
def test_process_flags_are_checked_before_joining(given, expected, monkeypatch):
    import jax

    from himl.errors import ConfigError
    from himl.train.processes import join_processes

    monkeypatch.setattr(jax.distributed, "initialize", lambda **_: pytest.fail("joined"))
    with pytest.raises(ConfigError) as error:
        join_processes(**given)
    assert str(error.value) == expected

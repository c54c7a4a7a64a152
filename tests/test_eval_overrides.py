"""`himl-eval --config.x=y` overrides the run's saved config, `--config=FILE` replaces it
with a note per changed model/data/seed field, and mistakes are one line before the data
is loaded (`himl/eval/main.py`, `himl/runs.py`, `himl/eval/run.py`)."""

import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).parents[1]


def _eval(*args):
    return subprocess.run(
        [sys.executable, "-m", "himl.eval", "--noprogress", "--noplots", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_overrides_change_the_run_config_and_names_split_on_commas(tiny_run, tmp_path):
    workdir, _ = tiny_run
    result = _eval(
        f"--workdir={workdir}",
        "--config.eval.ks=1,3",
        "--config.eval.splits=unseen,seen_test",
        "--config.eval.query_gallery=",
        "--config.eval.evaluators=retrieval",
        f"--out={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    written = json.loads((tmp_path / "metrics.json").read_text())
    saved = json.loads((workdir / "config.json").read_text())
    expected = {**saved["eval"], "ks": [1, 3], "splits": ["unseen", "seen_test"],
                "query_gallery": [], "evaluators": ["retrieval"]}  # fmt: skip
    assert written["config"]["eval"] == expected
    assert {k: v for k, v in written["config"].items() if k != "eval"} == {
        k: v for k, v in saved.items() if k != "eval"
    }
    assert sorted(written["results"]) == ["seen_test", "unseen"]
    assert {"recall@1", "recall@3"} <= set(written["results"]["seen_test"]["class"])
    assert "note:" not in result.stderr  # model, data and seed are the run's
    assert "Metadata file does not exist" not in result.stderr


def test_config_file_differences_are_notes_and_old_plots_go(tiny_run, tmp_path):
    workdir, _ = tiny_run
    # An earlier evaluation in --out: its metrics.json and the plots of its split.
    (tmp_path / "metrics.json").write_text(json.dumps({"results": {"unseen": {}}}))
    old_plots = [tmp_path / f"unseen_{kind}.png" for kind in ("recall_at_k", "retrievals")]
    for path in [*old_plots, tmp_path / "mine.png"]:
        path.write_bytes(b"png")
    result = _eval(
        f"--workdir={workdir}",
        "--config=configs/tiny.py",
        "--config.model.dtype=bfloat16",
        "--step=4",
        f"--out={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    # tiny.py trains 12 steps, the run 8; the model (and data, seed) differ in dtype only.
    assert notes == ['note: config.model.dtype = "bfloat16" here; the run saved "float32"']
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["config"]["model"]["dtype"] == "bfloat16"
    assert written["step"] == 4
    assert not any(path.exists() for path in old_plots)
    assert (tmp_path / "mine.png").exists()  # not a plot of the earlier evaluation


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--config.eval.kz=1"], "bad --config or override (--config.eval.kz=1)"),
        (["--config.eval.ks=x"], "config.eval.ks must be a non-empty list of ints"),
        (["--config.data.crop_scale=0.5"], "config.data.crop_scale must be two numbers"),
        # one of the two would silently win
        (["--splits=unseen", "--config.eval.splits=seen_test"],
         "give --splits or --config.eval.splits, not both"),
    ],
)  # fmt: skip
def test_a_bad_override_is_one_line(tiny_run, args, expected):
    workdir, _ = tiny_run
    result = _eval(f"--workdir={workdir}", *args)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and expected in errors[0], result.stderr[-3000:]


@pytest.mark.parametrize(
    "kwargs,expected",
    [
        ({"step": 3}, "no checkpoint for step 3"),
        ({"splits": []}, "--splits is empty"),
        ({"evaluators": ()}, "config.eval.evaluators is empty: name some of retrieval, "),
        ({"out_dir": "config.json/eval"}, "config.json is a file, not a directory"),
        # writable by its permission bits as root, yet no folder can be made there
        ({"out_dir": "/proc/himl_eval"}, "(cannot create a folder in /proc|/proc is read-only)"),
    ],
)
def test_step_splits_and_out_are_checked_before_the_data_loads(
    tiny_run, monkeypatch, kwargs, expected
):
    from himl.eval import run
    from himl.runs import RunError, load_run_config

    workdir, _ = tiny_run

    def no_data(*_):
        raise AssertionError("the dataset was loaded")

    monkeypatch.setattr(run, "load_dataset", no_data)
    if "out_dir" in kwargs:
        kwargs = {"out_dir": workdir / kwargs["out_dir"]}
    if "evaluators" in kwargs:
        config = load_run_config(workdir)
        config.eval.evaluators = kwargs.pop("evaluators")
        kwargs["config"] = config
    with pytest.raises(RunError, match=expected):
        run.evaluate_checkpoint(workdir, **kwargs)


def test_unquoted_names_in_a_tuple_override_split_on_commas():
    import ml_collections

    from himl.cli import split_name_lists

    config = ml_collections.ConfigDict({"eval": {"splits": ("a",), "ks": (1,), "g": ("b",)}})
    overrides = {"eval.splits": ("unseen, seen_test",), "eval.ks": (1, 10), "eval.g": ("",)}
    for path, value in overrides.items():
        config.eval[path.split(".")[1]] = value
    split_name_lists(config, overrides)
    assert config.eval.splits == ("unseen", "seen_test")
    assert config.eval.g == () and config.eval.ks == (1, 10)

"""`himl-eval` end to end on a tiny trained checkpoint, and its one-line errors."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from himl.data.registry import load_dataset
from himl.eval import hierarchical_metrics
from himl.models.inference import EmbeddingFunction
from himl.models.registry import build_model
from himl.runs import restore_model_variables

REPO = pathlib.Path(__file__).parents[1]


@pytest.fixture
def trained_workdir(tiny_run):
    """The shared tiny trained run (conftest.py)."""
    return tiny_run


def _eval(*args):
    return subprocess.run(
        [sys.executable, "-m", "himl.eval", "--noprogress", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_eval_binary_json_matches_library(trained_workdir, tmp_path):
    workdir, config = trained_workdir
    result = _eval(f"--workdir={workdir}", "--splits=unseen", f"--out={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["step"] == 8
    assert written["config"]["model"]["embedding_dim"] == config.model.embedding_dim
    for plot in ("unseen_recall_at_k.png", "unseen_embedding_2d.png", "unseen_retrievals.png"):
        assert (tmp_path / plot).stat().st_size > 1000

    # The same numbers straight from the library on the restored parameters.
    model, split = build_model(config.model), load_dataset(config.data).split("unseen")
    variables, _ = restore_model_variables(model, split.images.shape[1:], workdir)
    emb = EmbeddingFunction(model, batch_size=128)(variables, split.images)
    expected = hierarchical_metrics(
        emb, split.labels[:, :2], ks=tuple(config.eval.ks), level_names=("group", "class")
    )
    for level in ("group", "class"):
        for key in ("recall@1", "recall@8", "map@r", "r_precision", "nmi"):
            np.testing.assert_allclose(
                written["results"]["unseen"][level][key], expected[level][key], rtol=1e-5
            )
    assert "linear probe on 'unseen'" in result.stdout


def test_eval_rejects_a_checkpoint_of_another_model(trained_workdir):
    workdir, _ = trained_workdir
    result = _eval(
        f"--workdir={workdir}",
        "--config=configs/tiny.py",
        "--config.model.embedding_dim=8",
        "--noplots",
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert (
        "has params/model/embedding/bias of shape/dtype ((16,), 'float32'), this config "
        "makes ((8,), 'float32')" in result.stderr
    )


def test_eval_rejects_unknown_split_and_missing_step(trained_workdir):
    workdir, _ = trained_workdir
    result = _eval(f"--workdir={workdir}", "--splits=valdation", "--noplots")
    assert result.returncode == 2 and "has no split 'valdation'" in result.stderr
    result = _eval(f"--workdir={workdir}", "--step=3", "--noplots")
    assert result.returncode == 2 and "no checkpoint for step 3" in result.stderr


def test_checkpoint_path_names_workdir_and_step(tmp_path):
    from himl.eval.run import split_checkpoint_path

    assert split_checkpoint_path(tmp_path / "checkpoints" / "40", None) == (tmp_path, 40)
    assert split_checkpoint_path(tmp_path, 7) == (tmp_path, 7)


def test_older_run_config_gets_new_fields_from_the_defaults(tmp_path, capsys):
    import json

    from himl.configs import tiny
    from himl.eval.run import load_run_config

    saved = tiny.get_config().to_dict()
    del saved["eval"]["query_gallery"]
    (tmp_path / "config.json").write_text(json.dumps(saved, default=list))
    config = load_run_config(tmp_path)
    assert config.eval.query_gallery == () and config.model.widths == [8, 16]
    assert "eval.query_gallery" in capsys.readouterr().err


def test_run_config_keeps_its_own_lr_multipliers_without_a_note(tmp_path, capsys):
    """`optimizer.lr_multipliers` is keyed by the user (In-Shop's has no "loss"): a run
    that saved it is not an older run, and its map is not filled from the defaults."""
    import json

    from himl.configs import inshop
    from himl.eval.run import load_run_config

    saved = inshop.get_config("himulcone").to_dict()
    assert "loss" not in saved["optimizer"]["lr_multipliers"]
    (tmp_path / "config.json").write_text(json.dumps(saved, default=list))
    config = load_run_config(tmp_path)
    assert config.optimizer.lr_multipliers.to_dict() == saved["optimizer"]["lr_multipliers"]
    assert "predates" not in capsys.readouterr().err

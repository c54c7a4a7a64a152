"""Catalogue of work-directory states and failures mid-run (issue 13): good state is never
lost or replaced, nothing in a workdir changes before a run is known valid, every exit
path closes the checkpoint manager after its save in flight."""

import json
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import himl.train.loop as loop
from himl.data.sampling import make_batcher
from himl.errors import ConfigError, UserError
from himl.train.checkpoint import Checkpointer, CheckpointError
from himl.train.experiment import build_experiment
from himl.train.health import NonFiniteError
from himl.train.loop import resume_keys, train_and_evaluate
from himl.train.workdir import ReadRecorder, WorkdirError


@pytest.fixture
def config(tiny_config):
    tiny_config.eval.splits = ()  # no evaluation: these tests are about the workdir
    tiny_config.train.steps = 8
    tiny_config.train.keep_checkpoints = 5
    return tiny_config


def _snapshot(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _steps(workdir):
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _restore(config, workdir, step=None):
    exp = build_experiment(config)
    ckpt = Checkpointer(workdir / "checkpoints", every=1, keep=100)
    state = ckpt.restore(exp.initial_state(), step)
    ckpt.close()
    return state


def _all_finite(state):
    return all(np.all(np.isfinite(x)) for x in jax.tree.leaves(jax.device_get(state)))


def _poisoned_batcher(monkeypatch, *, nan_at=None, raise_at=None):
    """Makes the loop's batcher put a NaN into batch `nan_at` or raise at `raise_at`."""

    def make(data_config, dataset, seed):
        batcher = make_batcher(data_config, dataset, seed)

        def batch(step):
            out = batcher(step)
            if step == raise_at:
                raise RuntimeError("disk went away")
            if step == nan_at:
                out["images"] = out["images"].copy()
                out["images"][3, 0, 5, 5, 0] = np.nan
            return out

        return batch

    monkeypatch.setattr(loop, "make_batcher", make)


# --- non-finite steps --------------------------------------------------------------------


def test_nan_input_stops_at_the_exact_step_and_saves_nothing_non_finite(
    config, tmp_path, monkeypatch
):
    config.train.steps, config.train.checkpoint_every, config.train.log_every = 12, 4, 4
    _poisoned_batcher(monkeypatch, nan_at=6)
    with pytest.raises(NonFiniteError) as err:
        train_and_evaluate(config, tmp_path, progress=False)
    message = str(err.value)
    assert "from step 6 to 7" in message and "input batch" in message
    assert "step 4" in message and "\n" not in message
    assert max(_steps(tmp_path)) == 4  # step 8 (after the NaN) was never saved
    for step in _steps(tmp_path):
        assert _all_finite(_restore(config, tmp_path, step))


def test_diverging_learning_rate_is_named(config, tmp_path):
    config.optimizer.name, config.optimizer.learning_rate = "sgd", 1e30
    with pytest.raises(NonFiniteError, match="learning_rate=1e\\+30"):
        train_and_evaluate(config, tmp_path, progress=False)
    for step in _steps(tmp_path):
        assert _all_finite(_restore(config, tmp_path, step))


def test_resume_after_a_non_finite_stop_continues_from_the_finite_checkpoint(
    config, tmp_path, monkeypatch
):
    _poisoned_batcher(monkeypatch, nan_at=5)
    with pytest.raises(NonFiniteError):
        train_and_evaluate(config, tmp_path, progress=False)
    monkeypatch.undo()
    summary = train_and_evaluate(config, tmp_path, progress=False)
    assert summary["step"] == 8 and _all_finite(_restore(config, tmp_path))


# --- every exit path closes the manager ---------------------------------------------------


def test_exception_mid_run_waits_for_the_save_and_closes_the_manager(config, tmp_path, monkeypatch):
    closed = []
    original = Checkpointer.close

    def spy(self):
        closed.append(self.manager.is_saving_in_progress())
        original(self)
        closed.append(self.manager.is_saving_in_progress())

    monkeypatch.setattr(Checkpointer, "close", spy)
    managers_closed = []
    manager_close = ocp.CheckpointManager.close

    def manager_spy(manager):
        managers_closed.append(manager)
        manager_close(manager)

    monkeypatch.setattr(ocp.CheckpointManager, "close", manager_spy)
    _poisoned_batcher(monkeypatch, raise_at=6)
    with pytest.raises(RuntimeError, match="disk went away"):
        train_and_evaluate(config, tmp_path, progress=False)
    assert closed and closed[-1] is False
    assert managers_closed  # its threads stopped, not only its save awaited
    assert 4 in _steps(tmp_path)
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if "tmp" in p.name]
    assert _all_finite(_restore(config, tmp_path, 4))


# --- workdir states -----------------------------------------------------------------------


def test_workdir_that_is_a_file(config, tmp_path):
    path = tmp_path / "run"
    path.write_text("notes")
    with pytest.raises(WorkdirError, match=f"{path} is a file"):
        train_and_evaluate(config, path, progress=False)
    assert path.read_text() == "notes"


def test_garbled_config_json_is_named_and_left_alone(tiny_run_copy):
    workdir, config = tiny_run_copy
    (workdir / "config.json").write_text('{"seed": 0, "data": {')
    before = _snapshot(workdir)
    with pytest.raises(WorkdirError, match="config.json is not valid JSON"):
        train_and_evaluate(config, workdir, progress=False)
    assert _snapshot(workdir) == before


def test_checkpoints_without_config_json_are_refused(tiny_run_copy):
    workdir, config = tiny_run_copy
    (workdir / "config.json").unlink()
    before = _snapshot(workdir)
    with pytest.raises(WorkdirError, match="config.json is missing"):
        train_and_evaluate(config, workdir, progress=False)
    assert _snapshot(workdir) == before


def test_run_failing_before_training_leaves_nothing_and_the_fix_runs(config, tmp_path):
    workdir = tmp_path / "run"
    bad = config.copy_and_resolve_references()
    bad.data.name, bad.data.manual_dir = "fashion_mnist", str(tmp_path / "no-such-folder")
    with pytest.raises(FileNotFoundError, match="no-such-folder"):
        train_and_evaluate(bad, workdir, progress=False)
    assert not workdir.exists()
    assert train_and_evaluate(config, workdir, progress=False)["step"] == 8


@pytest.mark.parametrize(
    "key,value",
    [
        ("data.num_views", 1),
        ("data.samples_per_class", 16),
        ("data.sampler", "hierarchical"),
        ("data.batch_size", 16),
        ("optimizer.name", "adam"),
        ("seed", 1),
        ("loss.name", "supcon"),
        ("model.embedding_dim", 8),
    ],
)
def test_refused_resume_changes_nothing(tiny_run_copy, key, value):
    workdir, config = tiny_run_copy
    before = _snapshot(workdir)
    *parents, leaf = key.split(".")
    section = config
    for part in parents:
        section = section[part]
    section[leaf] = value
    config.train.steps = 12
    with pytest.raises(UserError, match=f"config.{key.split('.')[0]}"):
        train_and_evaluate(config, workdir, progress=False)
    assert _snapshot(workdir) == before


def test_batch_settings_are_what_the_batcher_reads(config):
    exp = build_experiment(config)
    settings = ReadRecorder(config.data)
    make_batcher(settings, exp.dataset, config.seed)
    keys = set(resume_keys(settings.keys_read))
    for key in ("num_views", "samples_per_class", "sampler", "augmentation", "batch_size"):
        assert f"data.{key}" in keys
    assert "data.train_split" in keys and "data.num_workers" not in keys
    # The hierarchical sampler does not read samples_per_class: changing it is harmless.
    config.data.sampler = "hierarchical"
    settings = ReadRecorder(config.data)
    make_batcher(settings, exp.dataset, config.seed)
    assert "data.samples_per_class" not in resume_keys(settings.keys_read)


def test_changing_a_setting_that_does_not_change_batches_resumes(tiny_run_copy):
    workdir, config = tiny_run_copy
    # image_size: the in-memory set's own side (28), not the saved default (224).
    config.train.steps, config.data.num_workers, config.data.image_size = 12, 2, 28
    assert train_and_evaluate(config, workdir, progress=False)["step"] == 12


def test_a_run_saved_before_new_model_fields_resumes(tiny_run_copy):
    """config.json of an older himl lacks fields added since (model.dtype, pretrained...):
    the run still resumes; a changed field it does have is still refused."""
    workdir, config = tiny_run_copy
    saved = json.loads((workdir / "config.json").read_text())
    for key in ("dtype", "pretrained", "freeze_bn"):
        del saved["model"][key]
    (workdir / "config.json").write_text(json.dumps(saved))
    config.train.steps = 12
    assert train_and_evaluate(config, workdir, progress=False)["step"] == 12
    config.train.steps, config.model.embedding_dim = 16, 8
    with pytest.raises(ConfigError, match="config.model.embedding_dim = 16, this run has 8"):
        train_and_evaluate(config, workdir, progress=False)


def test_removed_checkpoints_start_over_out_loud(tiny_run_copy, capsys):
    workdir, config = tiny_run_copy
    old_metrics = (workdir / "metrics.jsonl").read_text()
    shutil.rmtree(workdir / "checkpoints")
    train_and_evaluate(config, workdir, progress=False)
    err = capsys.readouterr().err
    assert "holds no checkpoint: starting over from step 0" in err
    assert (workdir / "previous-1" / "metrics.jsonl").read_text() == old_metrics
    assert (workdir / "previous-1" / "config.json").exists()
    assert _steps(workdir)[-1] == 8


def test_config_json_of_a_run_that_never_saved_does_not_block(config, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"seed": 5, "model": {"name": "x"}}))
    assert train_and_evaluate(config, tmp_path, progress=False)["step"] == 8
    assert json.loads((tmp_path / "config.json").read_text())["seed"] == config.seed


def test_unknown_train_split_names_its_key(config, tmp_path):
    config.data.train_split = "train_no_val"  # the embedded data has no validation split
    with pytest.raises(UserError, match=r"has no split 'train_no_val' \(named by config.data"):
        train_and_evaluate(config, tmp_path / "w", progress=False)
    assert not (tmp_path / "w").exists()


def test_keep_checkpoints_zero_is_refused_before_anything(config, tmp_path):
    config.train.keep_checkpoints = 0
    with pytest.raises(ConfigError, match="config.train.keep_checkpoints must be >= 1"):
        train_and_evaluate(config, tmp_path / "w", progress=False)
    assert not (tmp_path / "w").exists()


def test_resumed_run_does_not_repeat_the_untrained_evaluation(config, tmp_path, monkeypatch):
    config.eval.splits = ("unseen",)
    config.train.steps = 4
    calls = []
    original = loop.run_evaluators
    monkeypatch.setattr(
        loop, "run_evaluators", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    first = train_and_evaluate(config, tmp_path, progress=False)
    assert len(calls) == 2  # untrained + trained
    config.train.steps = 8
    second = train_and_evaluate(config, tmp_path, progress=False)
    assert len(calls) == 3  # trained only
    assert second["untrained"] == first["untrained"]


# --- damaged checkpoints ------------------------------------------------------------------


def test_truncated_checkpoint_offers_the_previous_intact_step(tiny_run_copy):
    workdir, config = tiny_run_copy
    assert _steps(workdir)[-2:] == [4, 8]
    for path in (workdir / "checkpoints" / "8").rglob("*"):
        if path.is_file() and path.stat().st_size > 200:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    before = _snapshot(workdir)
    config.train.steps = 12
    with pytest.raises(CheckpointError) as err:
        train_and_evaluate(config, workdir, progress=False)
    message = str(err.value)
    assert "checkpoint step 8" in message and "step 4 is intact" in message
    for internal in ("orbax", "tensorstore", "Error:", "Traceback", "\n"):
        assert internal not in message
    assert _snapshot(workdir) == before
    # Doing what the message says resumes from step 4.
    (workdir / "checkpoints" / "8").rename(workdir / "damaged-8")
    assert train_and_evaluate(config, workdir, progress=False)["step"] == 12

"""What a resumed (or re-run) work directory accepts, and what it keeps on disk: the
settings that must not change, `train.steps`, metrics rows of checkpointed steps, a
finished run, untrained results of other eval settings."""

import json
import logging
import shutil
import types

import jax
import pytest
import test_reliability_run as reliability
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

import himl.runs as runs_module
import himl.train.experiment as experiment
import himl.train.loop as loop
from himl.data.sampling import make_batcher
from himl.errors import ConfigError, UserError
from himl.eval.report import results_table
from himl.train.checkpoint import Checkpointer
from himl.train.experiment import build_experiment
from himl.train.loop import RESUME_KEYS, train_and_evaluate
from himl.train.workdir import Workdir, WorkdirError, jsonable

# The same tiny run without evaluation, and helpers, as the work-directory tests there.
config = reliability.config
_snapshot, _steps = reliability._snapshot, reliability._steps


def _rows(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _event_steps(workdir):
    steps = []
    for path in sorted(workdir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            if any(v.tag == "loss" for v in event.summary.value):
                steps.append(event.step)
    return steps


@pytest.mark.parametrize(
    "key,value",
    [
        ("loss.himulcone.temperature", 0.5),
        ("optimizer.learning_rate", 0.1),
        ("optimizer.schedule", "constant"),
        ("optimizer.lr_multipliers.loss", 2.0),
    ],
)
def test_resume_refuses_other_hyperparameters(tiny_run_copy, key, value):
    workdir, config = tiny_run_copy
    before = _snapshot(workdir)
    *parents, leaf = key.split(".")
    section = config
    for part in parents:
        section = section[part]
    section[leaf] = value
    config.train.steps = 12
    with pytest.raises(ConfigError, match=f"config.{key} = ") as err:
        train_and_evaluate(config, workdir, progress=False)
    assert "\n" not in str(err.value)
    assert _snapshot(workdir) == before


def test_resume_refuses_another_custom_dataset(tmp_path):
    from himl.configs import custom

    saved = custom.get_config("small")
    saved.data.custom.source = "ns.npz"
    (tmp_path / "checkpoints" / "4").mkdir(parents=True)
    (tmp_path / "config.json").write_text(json.dumps(jsonable(saved.to_dict())))
    config = saved.copy_and_resolve_references()
    config.train.steps = 8
    Workdir(tmp_path).check_resume(config, RESUME_KEYS)  # the same data resumes
    config.data.custom.source = "qg.npz"
    with pytest.raises(ConfigError, match="config.data.custom.source = ns.npz, this run has qg"):
        Workdir(tmp_path).check_resume(config, RESUME_KEYS)


def test_resume_beyond_train_steps_is_refused(tiny_run_copy):
    workdir, config = tiny_run_copy
    before = _snapshot(workdir)
    config.train.steps = 4
    with pytest.raises(ConfigError, match="at step 8, beyond config.train.steps=4") as err:
        train_and_evaluate(config, workdir, progress=False)
    assert "himl-eval" in str(err.value) and "\n" not in str(err.value)
    assert _snapshot(workdir) == before


def test_resume_from_an_earlier_checkpoint_keeps_one_row_per_step(tiny_run_copy, capsys):
    """A kill after checkpoint 4 left rows (and events) of steps 5-8 behind: the resume
    drops them, so each step is logged once. Another loss's hyperparameters may change;
    a longer run says that its learning-rate schedule changes."""
    workdir, config = tiny_run_copy
    assert [r["step"] for r in _rows(workdir) if "loss" in r] == [4, 8]
    shutil.move(workdir / "checkpoints" / "8", workdir / "damaged-8")
    config.train.steps, config.loss.supcon.temperature = 12, 0.3
    train_and_evaluate(config, workdir, progress=False)
    out = capsys.readouterr().out
    assert "at step 4" in out
    assert "config.train.steps changed from 8 to 12: the learning-rate schedule" in out
    assert "note: config.loss.supcon sets temperature=0.3, but config.loss.name=" in out
    assert [r["step"] for r in _rows(workdir) if "loss" in r] == [4, 8, 12]
    accumulator = EventAccumulator(str(workdir))
    accumulator.Reload()
    assert [e.step for e in accumulator.Scalars("loss")] == [4, 8, 12]


def test_a_resume_restores_into_shapes_and_initialises_nothing(tiny_run_copy, monkeypatch):
    """The restore template is abstract: no parameter is initialised only to be
    overwritten by the checkpoint, and the pretrained file is not read (it may be gone)."""
    concrete, reads_weights = [], []

    def recording(*args, **kwargs):
        state = create_state(*args, **kwargs)
        concrete.append(not isinstance(state.step, jax.core.Tracer))
        return state

    def building(config, **kwargs):
        reads_weights.append(kwargs.get("pretrained", True))
        return build_experiment(config, **kwargs)

    create_state = experiment.create_state
    monkeypatch.setattr(experiment, "create_state", recording)
    monkeypatch.setattr(loop, "build_experiment", building)
    workdir, config = tiny_run_copy
    config.train.steps = 9
    train_and_evaluate(config, workdir, progress=False)
    assert concrete == [False] and reads_weights == [False]
    assert [r["step"] for r in _rows(workdir) if "loss" in r] == [4, 8, 9]


def test_finished_run_prints_its_results_and_writes_nothing(tiny_run_copy, capsys, monkeypatch):
    workdir, config = tiny_run_copy
    before = _snapshot(workdir)
    monkeypatch.setattr(loop, "run_evaluators", lambda *a, **k: pytest.fail("evaluated again"))
    summary = train_and_evaluate(config, workdir, progress=False)
    assert summary == json.loads((workdir / "metrics.json").read_text())
    out = capsys.readouterr().out
    assert "complete run (step 8" in out and "does not apply" not in out
    assert _snapshot(workdir) == before
    # Eval overrides on a finished run: its saved results, saying the overrides wait for
    # himl-eval.
    config.eval.ks = (1,)
    train_and_evaluate(config, workdir, progress=False)
    assert "re-evaluates (with config.eval overrides, which this command does not apply)" in (
        capsys.readouterr().out
    )
    assert _snapshot(workdir) == before


def test_a_finished_runs_metrics_json_of_the_earlier_layout_is_evaluated_again(tiny_run_copy):
    """Before `results` held the trained numbers alone they were `results.trained`: such a
    metrics.json is rewritten in the current layout, not printed as an empty table."""
    workdir, config = tiny_run_copy
    path = workdir / "metrics.json"
    current = json.loads(path.read_text())
    earlier = {k: v for k, v in current.items() if k != "untrained"}
    earlier["results"] = {"untrained": current["untrained"], "trained": current["results"]}
    path.write_text(json.dumps(earlier))
    summary = train_and_evaluate(config, workdir, progress=False)
    assert json.loads(path.read_text()) == json.loads(json.dumps(summary))
    assert summary["results"] == current["results"] and "trained" not in summary["results"]


def test_rows_are_on_disk_at_each_checkpoint_and_rates_count_the_steps_done(
    config, tmp_path, monkeypatch
):
    """kill -9 right after a checkpoint loses none of its rows; steps_per_second of a
    short last interval divides by its own steps (a clock that ticks once per batch gives
    exactly 1); checkpoints are the periodic ones and the last, none at step 1."""
    config.train.steps, config.train.log_every, config.train.checkpoint_every = 10, 4, 4
    ticks = []

    def make(data_config, dataset, seed):
        batcher = make_batcher(data_config, dataset, seed)
        return lambda step: ticks.append(step) or batcher(step)

    monkeypatch.setattr(loop, "make_batcher", make)
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(time=lambda: float(len(ticks))))
    on_disk = {}
    save = Checkpointer.save

    def spy(self, step, state, **kwargs):
        on_disk[step] = ([r["step"] for r in _rows(tmp_path)], _event_steps(tmp_path))
        return save(self, step, state, **kwargs)

    monkeypatch.setattr(Checkpointer, "save", spy)
    train_and_evaluate(config, tmp_path, progress=False)
    assert _steps(tmp_path) == [4, 8, 10]
    assert on_disk == {4: ([4], [4]), 8: ([4, 8], [4, 8]), 10: ([4, 8, 10], [4, 8, 10])}
    rates = [r["steps_per_second"] for r in _rows(tmp_path) if "loss" in r]
    assert rates == [1.0, 1.0, 1.0]


def test_untrained_results_of_other_eval_settings_are_left_out(config, tmp_path, capsys):
    config.eval.splits, config.train.steps = ("unseen",), 4
    config.eval.evaluators = ("retrieval",)  # enough to compare, and faster
    first = train_and_evaluate(config, tmp_path, progress=False)
    assert json.loads((tmp_path / "untrained.json").read_text())["eval"]["splits"] == ["unseen"]
    capsys.readouterr()
    # Other splits: the untrained results are left out, with a note (not a KeyError).
    config.eval.splits, config.train.steps = ("seen_test",), 6
    second = train_and_evaluate(config, tmp_path, progress=False)
    out = capsys.readouterr().out
    assert "config.eval.splits=['unseen'], this run has ['seen_test']" in out
    assert "untrained" not in second and list(second["results"]) == ["seen_test"]
    assert "split 'seen_test'" in out
    # An untrained.json of an older himl (results only) counts when its splits match.
    (tmp_path / "untrained.json").write_text(json.dumps(first["untrained"]))
    config.eval.splits, config.train.steps = ("unseen",), 8
    third = train_and_evaluate(config, tmp_path, progress=False)
    assert third["untrained"] == first["untrained"]


def test_results_table_shows_every_split_of_every_model():
    level = {"recall@1": 0.5, "map@r": 0.25, "nmi": 0.1, "ami": 0.1}
    untrained = {"unseen": {"num_samples": 10, "class": level}}
    trained = {"unseen": {"num_samples": 10, "class": level}, "seen_test": {"class": level}}
    table = results_table({"untrained": untrained, "trained": trained}, ["class"], (1,))
    blocks = table.split("\n\n")
    assert "split 'unseen' (10 images)" in blocks[0] and "split 'seen_test'" in blocks[1]
    rows = [line.split() for line in blocks[1].splitlines()[3:]]
    assert rows == [
        ["untrained", "class", "-", "-", "-", "-"],
        ["trained", "class", "50.00", "25.00", "10.00", "10.00"],
    ]


def test_a_split_with_a_probe_alone_gets_no_table():
    """`--config.eval.evaluators=linear_probe` printed an empty table "(? images)"."""
    probe_only = {"trained": {"unseen": {"linear_probe": {"accuracy": 0.5}}}}
    assert results_table(probe_only, ["group", "class"], (1,)) == ""


def test_a_level_with_nothing_to_find_shows_no_retrieval_numbers():
    """Query classes the gallery lacks (every query left out): the evaluators record None
    (`none_where_nothing_found`, tested in test_evaluator.py); the table shows "-" and
    says why, the clustering scores stay."""
    found = {"recall@1": 0.5, "map@r": 0.25, "num_queries": 4, "num_left_out": 1}
    none = {"recall@1": None, "map@r": None, "num_queries": 4, "num_left_out": 4, "nmi": 0.5}
    results = {"trained": {"q->g": {"num_samples": 4, "group": found, "class": none}}}
    table = results_table(results, ["group", "class"], (1,))
    lines = table.splitlines()
    assert [line.split() for line in lines[3:5]] == [
        ["trained", "group", "50.00", "25.00", "-", "-"],
        ["trained", "class", "-", "-", "50.00", "-"],
    ]
    assert (
        lines[5] == "no query has an image of its class label to find: R@K and MAP@R not measured"
    )
    # Some queries of a level left out, or their R capped: a line each says how they count.
    found |= {"num_r_truncated": 3, "r_cap": 1024}
    lines = results_table(results, ["group", "class"], (1,)).splitlines()
    assert lines[6:] == [
        "1 of 4 queries have no image of their group label to find: R@K counts them as misses, "
        "P@1 and MAP@R leave them out",
        "MAP@R at group: R capped at 1024 same-label images for 3 of 4 queries "
        "(config.eval.max_r=0: exact)",
    ]


def test_unusable_workdir_fails_before_the_data(config, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("notes")
    monkeypatch.setattr(loop, "build_experiment", lambda c: pytest.fail("data loaded"))
    with pytest.raises(WorkdirError, match="file is a file, not a directory"):
        train_and_evaluate(config, tmp_path / "file" / "run", progress=False)
    # writable by its permission bits as root, yet no folder can be made there
    with pytest.raises(WorkdirError, match="(cannot create a folder in /proc|/proc is read-only)"):
        Workdir("/proc/himl_run")
    monkeypatch.setattr(runs_module.os, "access", lambda path, mode: False)
    with pytest.raises(UserError, match=f"{tmp_path} is read-only"):
        Workdir(tmp_path / "new" / "run")


def test_a_workdir_inside_a_runs_checkpoints_is_refused(config, tmp_path, monkeypatch):
    """`<run>/checkpoints/<step>` is a checkpoint to himl-eval and himl-embed; a run trained
    there would be deleted with that step by the run's checkpoint rotation."""
    run = tmp_path / "run"
    (run / "checkpoints" / "80").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    monkeypatch.setattr(loop, "build_experiment", lambda *a, **k: pytest.fail("data loaded"))
    for inside in (run / "checkpoints" / "80", run / "checkpoints" / "80" / "mine"):
        with pytest.raises(WorkdirError, match=f"inside the checkpoints of the run in {run}, "):
            train_and_evaluate(config, inside, progress=False)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["80"]
    Workdir(tmp_path / "checkpoints" / "run")  # a folder named so, outside a run: fine


def test_checkpoint_check_logs_no_orbax_warning(tiny_run, config, caplog):
    workdir, _ = tiny_run
    ckpt = Checkpointer(workdir / "checkpoints", every=4, keep=5)
    with caplog.at_level(logging.WARNING):
        ckpt.check_compatible(build_experiment(config).initial_state(), 8)
    ckpt.close()
    assert "Metadata file does not exist" not in caplog.text


def test_a_run_without_an_untrained_evaluation_resumes_without_a_note(config, tmp_path, capsys):
    config.eval.at_start, config.train.steps = False, 4
    train_and_evaluate(config, tmp_path, progress=False)
    config.train.steps = 8
    capsys.readouterr()
    train_and_evaluate(config, tmp_path, progress=False)
    out = capsys.readouterr()
    assert "untrained" not in out.out + out.err and not (tmp_path / "untrained.json").exists()


def test_a_data_error_mid_run_saves_the_steps_trained_first(config, tmp_path, monkeypatch):
    """An image that fails to decode at step 6 (its header passed the check before the run)
    stops the run with the steps before it saved and the resume named; the same command,
    once the file is replaced, resumes there."""
    from himl.data.images import CorruptImageError

    config.train.steps, config.train.checkpoint_every = 8, 4

    def make(data_config, dataset, seed):
        batcher = make_batcher(data_config, dataset, seed)

        def batch(step):
            if step == 6:
                raise CorruptImageError(
                    "cannot decode image x.jpg (list.csv:7): image file is truncated"
                )
            return batcher(step)

        return batch

    with monkeypatch.context() as patch:
        patch.setattr(loop, "make_batcher", make)
        with pytest.raises(UserError) as error:
            train_and_evaluate(config, tmp_path, progress=False)
    assert str(error.value) == (
        "cannot decode image x.jpg (list.csv:7): image file is truncated; saved step 6 in "
        f"{tmp_path / 'checkpoints'}: replace that file and run the same command again to resume"
    )
    assert _steps(tmp_path) == [4, 6]
    train_and_evaluate(config, tmp_path, progress=False)  # the file replaced
    assert _steps(tmp_path) == [4, 6, 8]


def test_a_resume_on_other_data_is_refused(tiny_run_copy):
    """The run records its data's fingerprint (data.json); a resume whose data differs (a
    manifest edited since: other images, other labels) is one line, changing nothing; a
    run made before the record resumes unchecked."""
    workdir, config = tiny_run_copy
    saved = json.loads((workdir / "data.json").read_text())
    assert saved == build_experiment(config).dataset.fingerprint()
    config.train.steps = 10
    for split, change, message in [
        ("train", {"images": 3501}, "split 'train' had 3501 images, this run's data has 3500"),
        ("unseen", {"hash": "0" * 16}, "the images or labels of split 'unseen' differ"),
    ]:
        other = {**saved, split: {**saved[split], **change}}
        (workdir / "data.json").write_text(json.dumps(other))
        before = _snapshot(workdir)
        with pytest.raises(WorkdirError) as error:
            train_and_evaluate(config, workdir, progress=False)
        assert str(error.value) == (
            f"{workdir} holds a run trained on other data ({message}; {workdir / 'data.json'}): "
            "train in a new --workdir, or restore the data it was trained on"
        )
        assert _snapshot(workdir) == before
    # Data read with another setting (e.g. a label layout, or a class_list given where
    # the run had none): named with its old and new value; a path given in both is left
    # out (the data may have moved).
    (workdir / "data.json").write_text(json.dumps(saved))
    run_config = json.loads((workdir / "config.json").read_text())
    run_config["data"]["manual_dir"] = "/old"
    (workdir / "config.json").write_text(json.dumps(run_config))
    changed = config.copy_and_resolve_references()
    changed.data.val_fraction, changed.data.manual_dir = 0.5, "/moved"
    changed.data.class_list = "/lists/imagenet100.txt"
    with pytest.raises(WorkdirError) as error:
        Workdir(workdir).check_data({**saved, "val": saved["unseen"]}, changed)
    assert str(error.value) == (
        f"{workdir} holds a run trained on other data (split 'val' had 0 images, this run's "
        f"data has 2100; {workdir / 'data.json'}), read with other settings: "
        'config.data.class_list = "/lists/imagenet100.txt" here; the run saved "", '
        f"config.data.val_fraction = 0.5 here; the run saved {config.data.val_fraction}; "
        "train in a new --workdir, or set them back"
    )
    run_config["data"]["manual_dir"] = ""
    (workdir / "config.json").write_text(json.dumps(run_config))
    (workdir / "data.json").write_text('{"train": ')  # cut short by hand
    with pytest.raises(WorkdirError, match=r"data.json is damaged: delete it to resume"):
        train_and_evaluate(config, workdir, progress=False)
    (workdir / "data.json").unlink()  # an older run
    train_and_evaluate(config, workdir, progress=False)
    assert _steps(workdir)[-1] == 10 and json.loads((workdir / "data.json").read_text()) == saved


def test_the_data_fingerprint_sees_images_labels_and_file_names(tmp_path):
    import numpy as np

    from himl.data.custom import load_custom
    from himl.data.dataset import Dataset, Split
    from himl.data.embedded import load_embedded
    from himl.data.export import write_manifest

    embedded = load_embedded()
    assert embedded.fingerprint() == load_embedded().fingerprint()
    split = embedded.split("unseen")
    pixels = np.array(split.images)
    pixels[0, 0, 0, 0] ^= 1
    for changed in (Split(pixels, split.labels), Split(split.images[1:], split.labels[1:])):
        other = Dataset(**{**embedded.__dict__, "splits": {**embedded.splits, "unseen": changed}})
        differs = {k for k, v in other.fingerprint().items() if v != embedded.fingerprint()[k]}
        assert differs == {"unseen"}
    manifest = write_manifest(embedded, tmp_path / "m.csv", splits=("train",), per_class=6)
    first = load_custom(manifest, image_size=28, channels=1, verbose=False).fingerprint()
    assert first == load_custom(manifest, image_size=28, channels=1, verbose=False).fingerprint()
    text = manifest.read_text()
    renamed = tmp_path / "copy.png"
    line = text.splitlines()[1]
    renamed.write_bytes((tmp_path / line.split(",")[0]).read_bytes())
    manifest.write_text(text.replace(line.split(",")[0], "copy.png", 1))
    second = load_custom(manifest, image_size=28, channels=1, verbose=False).fingerprint()
    assert second != first and [v["images"] for v in second.values()] == [
        v["images"] for v in first.values()
    ]


def test_ctrl_c_in_the_final_evaluation_says_the_step_is_saved(
    config, tmp_path, monkeypatch, capsys
):
    """Trained and saved, interrupted while evaluating: one line says so (it exited 130
    without a word), and the same command evaluates the saved step."""
    config.train.steps, config.eval.at_start = 2, False

    def interrupted(exp, *, progress):
        def evaluate(state):
            raise KeyboardInterrupt

        return evaluate

    monkeypatch.setattr(loop, "make_evaluate_fn", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(config, tmp_path, progress=False)
    assert (
        f"interrupted while evaluating step 2, which is saved in {tmp_path / 'checkpoints'}: "
        "run the same command again to evaluate it"
    ) in capsys.readouterr().out
    assert _steps(tmp_path) == [2]


def test_a_run_with_nothing_to_evaluate_says_so(config, tmp_path, capsys):
    config.train.steps, config.eval.splits, config.eval.query_gallery = 1, (), ()
    summary = train_and_evaluate(config, tmp_path, progress=False)
    assert (summary["untrained"], summary["results"]) == ({}, {})
    assert "note: config.eval gives its evaluators no split (config.eval.evaluators, " in (
        capsys.readouterr().out
    )

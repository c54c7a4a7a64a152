"""`train_and_evaluate(config, workdir)`: the whole main job, resumable from its workdir.

config -> dataset -> model + objective -> jit(train_step) over a 1-D data mesh -> orbax
checkpoints + TensorBoard scalars -> retrieval/clustering metrics of the untrained and the
trained embedding on classes never seen in training -> `metrics.json` and a table.

metrics.json has himl-eval's layout (`step`, `level_names`, `results.<split>.<level>.<metric>`
for the trained embedding), plus `untrained.<split>...` for the untrained one.
"""

from __future__ import annotations

import functools
import json
import time

import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from himl.config_lib import absolute_paths, config_notes, validate_config
from himl.data.registry import input_spec
from himl.data.sampling import NOT_IN_BATCHES, make_batcher
from himl.errors import UserError
from himl.eval.evaluators import build_evaluators, check_splits, run_evaluators
from himl.eval.report import probe_lines, results_by_model, results_table
from himl.eval.retrieval import DEFAULT_MAX_K
from himl.models.inference import EmbeddingFunction
from himl.runs import write_input_spec
from himl.train import health
from himl.train.checkpoint import Checkpointer
from himl.train.experiment import build_experiment
from himl.train.interrupt import Interrupted, StopRequests
from himl.train.metrics_writer import metrics_writer
from himl.train.processes import check_same_run
from himl.train.state import train_step
from himl.train.workdir import ReadRecorder, Workdir, jsonable

# Config sections that decide the checkpointed state, how it is updated or the data it saw:
# a resumed run must agree with the run that wrote the checkpoints on all of them.
# "{loss.name}" stands for the selected loss: only its own hyperparameters count.
# `train.steps` may grow (the learning-rate schedule is then recomputed, with a note).
RESUME_KEYS = (
    "seed",
    "data.name",
    "data.batch_size",
    "data.custom",  # which images and classes are in which split (when present)
    "model",
    "loss.name",
    "loss.flat_level",
    "loss.{loss.name}",
    "optimizer.name",
    "optimizer",
)

# The `config.eval` settings an evaluation's numbers depend on, saved in untrained.json:
# a resumed run whose settings differ leaves the untrained results out.
EVAL_SETTINGS = ("splits", "query_gallery", "ks", "metric", "evaluators", "max_r")
# The value an EVAL_SETTINGS key had before it was a setting (an older untrained.json).
EARLIER_EVAL_SETTINGS = {"max_r": DEFAULT_MAX_K}


def make_mesh(devices=None) -> Mesh:
    """A 1-D data-parallel mesh over `devices` (default: every device of every process).

    Auto axes: the compiler propagates shardings, so loss code needs no annotations and
    sees the global batch as one array (the B x B similarity is computed across devices).
    """
    devices = jax.devices() if devices is None else list(devices)
    return jax.make_mesh(
        (len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
    )


def make_step_fn(model, objective, tx, mesh: Mesh):
    """`jit(train_step)`: state replicated, batch sharded along B, state buffers donated."""
    replicated, batch_sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    step = functools.partial(train_step, model=model, objective=objective, tx=tx)
    return jax.jit(
        step,
        in_shardings=(replicated, batch_sharded),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )


def device_batch(batch: dict, mesh: Mesh) -> dict:
    """The global batch as arrays sharded over the mesh, from this process's slice.

    `batch` is what `make_batcher` returns: this process's `[B / process_count, ...]`
    slice of the global batch (the whole batch on one host).
    """
    sharding = NamedSharding(mesh, P("data"))
    n = jax.process_count()

    def put(x):
        return jax.make_array_from_process_local_data(sharding, x, (x.shape[0] * n, *x.shape[1:]))

    return jax.tree.map(put, batch)


def make_guarded_step_fn(model, objective, tx, mesh: Mesh):
    """`jit(step)(state, batch, health) -> (state, metrics, health)`: the train step plus
    the on-device non-finite record of `himl.train.health` (no host sync)."""
    replicated, batch_sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

    def step(state, batch, health_record):
        new_state, metrics = train_step(state, batch, model=model, objective=objective, tx=tx)
        health_record = health.update(health_record, state.step, batch, metrics, new_state.params)
        return new_state, metrics, health_record

    return jax.jit(
        step,
        in_shardings=(replicated, batch_sharded, replicated),
        out_shardings=(replicated, replicated, replicated),
        donate_argnums=0,
    )


def resume_keys(batch_settings) -> tuple[str, ...]:
    """Config keys a resumed run must share with the run it resumes: what decides the
    checkpointed state, plus every `config.data` key the batcher read (`batch_settings`,
    less those that do not change the batches)."""
    batch_keys = sorted(set(batch_settings) - set(NOT_IN_BATCHES))
    return (*RESUME_KEYS, *(f"data.{k}" for k in batch_keys))


def model_variables(state) -> dict:
    """The embedding network's variables (`params`, and `batch_stats` when it has them)."""
    stats = state.batch_stats["model"]
    return {"params": state.params["model"], **({"batch_stats": stats} if stats else {})}


def make_evaluate_fn(exp, *, progress: bool):
    """`evaluate(state) -> results`: the config's evaluators (`himl.eval.evaluators`) on
    the embedding of `state`, with one embedding function compiled for the whole run."""
    config = exp.config
    evaluators = build_evaluators(config.eval, exp.dataset, seed=config.seed)
    if not evaluators:  # himl-eval refuses this; a run may mean it (training only)
        tqdm.write(
            "note: config.eval gives its evaluators no split (config.eval.evaluators, "
            "config.eval.splits, config.eval.query_gallery): the run trains, and evaluates nothing"
        )
    embed_fn = EmbeddingFunction(exp.model, batch_size=config.eval.batch_size)

    def evaluate(state):
        variables = model_variables(state)

        def embed(split):
            return embed_fn(variables, exp.dataset.split(split).images, progress=progress)

        return run_evaluators(evaluators, embed, progress=progress)

    return evaluate


def write_eval_scalars(writer, step: int, results: dict, level_names) -> None:
    """Every scalar of an evaluation as `eval/<split>/<level>/<metric>`,
    `eval/<split>/linear_probe/accuracy` and, for the split-wide numbers (mistake
    severity, hierarchical precision@K, ...), `eval/<split>/<metric>`, beside the training
    scalars. An evaluation with no scalar (no split evaluated) writes no row."""
    scalars = {}
    for key, by_level in results.items():
        for name, value in by_level.items():
            if isinstance(value, float):
                scalars[f"eval/{key}/{name}"] = value
        for level in (*level_names, "linear_probe"):
            for name, value in by_level.get(level, {}).items():
                if isinstance(value, float):
                    scalars[f"eval/{key}/{level}/{name}"] = value
    if scalars:
        writer.write(step, scalars)


def _train(exp, batcher, state, mesh, ckpt, writer, *, progress, evaluate=None):
    """Steps from `state.step` to `config.train.steps`, logging and checkpointing.

    Ctrl-C or SIGTERM stops after the current step with a checkpoint and raises
    `Interrupted`; the same command resumes from there. A non-finite step raises
    NonFiniteError at the next log or checkpoint boundary, before anything is saved.
    Whatever ends the loop, the checkpoint save in flight is waited for and the manager
    closed.
    """
    config = exp.config
    step_fn = make_guarded_step_fn(exp.model, exp.objective, exp.tx, mesh)
    record = jax.device_put(health.healthy(), NamedSharding(mesh, P()))
    first, total = int(state.step), config.train.steps
    bar = tqdm(total=total, initial=first, desc="training", disable=not progress, unit="step")

    def check():
        health.raise_if_bad(
            record,
            learning_rate=config.optimizer.learning_rate,
            last_saved=ckpt.latest_step(),
            directory=ckpt.directory,
        )

    tic, last_logged = time.time(), first
    try:
        with StopRequests() as stop, writer:
            for step in range(first, total):
                try:
                    batch = batcher(step)
                except UserError as error:  # e.g. an image cut short after its header
                    raise _saved_before(error, state, ckpt, writer, check) from None
                state, metrics, record = step_fn(state, device_batch(batch, mesh), record)
                bar.update(1)
                done = step + 1
                log_due = done % config.train.log_every == 0 or done == total
                save_due = ckpt.due(done) or done == total or stop.requested
                if log_due or save_due:
                    check()  # the only host syncs: here, where the loop waits anyway
                if log_due:
                    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    metrics["steps_per_second"] = (done - last_logged) / (time.time() - tic)
                    tic, last_logged = time.time(), done
                    writer.write(done, metrics)
                    bar.set_postfix(loss=f"{metrics['loss']:.4f}")
                if save_due:
                    writer.flush()  # every row of a checkpointed step is on disk first
                    ckpt.save(done, state, force=True)
                every = config.eval.get("every", 0)
                if evaluate is not None and every and done % every == 0 and done < total:
                    check()  # never evaluate a non-finite state
                    results = evaluate(state)
                    write_eval_scalars(writer, done, results, exp.dataset.eval_level_names)
                    tic, last_logged = time.time(), done  # the rate counts training only
                if stop.requested:
                    break
            bar.close()
            if total > first or ckpt.latest_step() is None:
                ckpt.save(int(state.step), state, force=True)
    finally:
        bar.close()  # an error then starts on its own line, not on the bar's
        ckpt.close()  # waits for the save in flight, on every exit path
        getattr(batcher, "close", lambda: None)()
    if stop.requested:
        tqdm.write(
            f"{stop.requested}: saved step {int(state.step)} in {ckpt.directory}; "
            "run the same command again to resume"
        )
        raise Interrupted(stop.requested)
    return state


def _saved_before(error, state, ckpt, writer, check) -> UserError:
    """`error`, a data error met while making a batch, once the steps trained so far are
    checkpointed (unless non-finite: `check` raises), so fixing the file loses nothing."""
    check()
    writer.flush()
    step = int(state.step)
    if ckpt.latest_step() != step:
        ckpt.save(step, state, force=True)
    return UserError(
        f"{error}; saved step {step} in {ckpt.directory}: replace that file and run the same "
        "command again to resume"
    )


def _checkpointer(run_dir, config) -> Checkpointer:
    return Checkpointer(
        run_dir.checkpoints,
        every=config.train.checkpoint_every,
        keep=config.train.keep_checkpoints,
    )


def eval_settings(config) -> dict:
    """The `config.eval` settings (EVAL_SETTINGS) an evaluation's numbers depend on."""
    return jsonable({key: config.eval.get(key) for key in EVAL_SETTINGS})


def _write_untrained(path, untrained: dict, config) -> None:
    path.write_text(json.dumps({"eval": eval_settings(config), "results": untrained}, indent=2))


def _read_untrained(path) -> tuple[dict | None, dict | None]:
    """`(results, eval settings)` of the untrained evaluation a resumed run's first
    attempt saved: results None if it has none, settings None in a file written before
    they were saved (which holds the results alone)."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        tqdm.write(f"note: {path} is missing or unreadable; the untrained results are omitted")
        return None, None
    if isinstance(saved, dict) and set(saved) == {"eval", "results"}:
        return saved["results"], saved["eval"]
    return saved, None


def _comparable_untrained(path, config, trained: dict) -> dict | None:
    """The saved untrained results if they were evaluated as `trained` was (the current
    `EVAL_SETTINGS`; an older file without them: the same splits); None, with a note
    naming the difference, otherwise."""
    untrained, settings = _read_untrained(path)
    if untrained is None:
        return None
    if settings is None:
        old, new = sorted(untrained), sorted(trained)
        differs = [("splits", old, new)] if old != new else []
    else:
        now = eval_settings(config)
        settings = EARLIER_EVAL_SETTINGS | settings
        differs = [(k, settings.get(k), now[k]) for k in EVAL_SETTINGS if settings.get(k) != now[k]]
    if not differs:
        return untrained
    key, old, new = differs[0]
    tqdm.write(
        f"note: {path} was evaluated with config.eval.{key}={old}, this run has {new}: the "
        "untrained results are left out of the table and metrics.json"
    )
    return None


def _finished_summary(run_dir, step: int, total: int) -> dict | None:
    """metrics.json of a run that already trained to `total` steps and evaluated step
    `step` (None otherwise, or if it cannot be read)."""
    try:
        summary = json.loads((run_dir.path / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    finished = step == total and isinstance(summary, dict) and summary.get("step") == step
    # A metrics.json from before `results` held the trained numbers alone (they were under
    # results.trained) is evaluated again, which rewrites it.
    return summary if finished and "trained" not in summary.get("results", {}) else None


def print_summary(summary: dict) -> None:
    """The table and linear-probe lines of a metrics.json summary."""
    ks = tuple(summary["config"]["eval"]["ks"])
    by_model = results_by_model(summary)
    print(results_table(by_model, summary["level_names"], ks))
    for line in probe_lines(by_model):
        print(line)


def train_and_evaluate(config, workdir, *, progress: bool = True) -> dict:
    """Trains (or resumes) and evaluates; returns the dict also written to metrics.json.

    Order: config checks, work directory checks, data, batches, checkpoint restore - and
    only then is anything in `workdir` written (see `himl.train.workdir`). A resume drops
    the metrics.jsonl rows logged after its checkpoint; a run already trained to
    `train.steps` and evaluated prints its saved results and returns them, writing nothing.
    Over several processes (`jax.distributed`) every process runs this, on a shared
    `workdir`: all save the checkpoints, the first writes the other files.
    """
    start_time = time.time()
    primary = jax.process_index() == 0  # writes the work directory and prints the results
    # The file and folder fields as absolute paths (in place): config.json then says where
    # the data is, so himl-eval or a resume run from another folder reads the same files.
    absolute_paths(config)
    validate_config(config, num_devices=jax.device_count())
    check_same_run(config, workdir)
    for note in config_notes(config):
        tqdm.write(f"note: {note}")
    run_dir = Workdir(workdir)
    run_dir.check_resume(config, RESUME_KEYS)  # the part that needs no data: fail early
    resumed = run_dir.holds_run()
    # A resume restores every variable: the pretrained file is not read (it may be gone).
    exp = build_experiment(config, pretrained=not resumed)
    dataset = exp.dataset
    check_splits(dataset, [config.data.train_split], what="config.data.train_split")
    evaluate = make_evaluate_fn(exp, progress=progress)  # checks every split it will read
    # Before any expensive work: fails at once if the data cannot fill the batches.
    settings = ReadRecorder(config.data)
    batcher = make_batcher(settings, dataset, config.seed)
    ckpt = None

    def close():
        if ckpt is not None:
            ckpt.close()
        getattr(batcher, "close", lambda: None)()

    try:
        run_dir.check_resume(config, resume_keys(settings.keys_read))
        fingerprint = dataset.fingerprint()
        run_dir.check_data(fingerprint, config)
        mesh = make_mesh()
        replicated = NamedSharding(mesh, P())
        untrained_path = run_dir.path / "untrained.json"
        untrained = None
        if resumed:
            ckpt = _checkpointer(run_dir, config)
            # closes the manager itself if it fails
            state = ckpt.restore(exp.abstract_state(replicated))
            finished = _finished_summary(run_dir, int(state.step), config.train.steps)
            if finished is not None:  # nothing to train or evaluate; nothing is written
                close()
                other_eval = run_dir.saved("eval") != jsonable(config.eval.to_dict())
                tqdm.write(
                    f"{run_dir.path} holds a complete run (step {finished['step']}, evaluated): "
                    f"its saved results follow; himl-eval --workdir={run_dir.path} re-evaluates"
                    + (" (with config.eval overrides, which this command does not apply)"
                       if other_eval else "")
                )  # fmt: skip
                print_summary(finished)
                return finished
            tqdm.write(f"resuming from {ckpt.directory} at step {int(state.step)}")
            saved_steps = run_dir.saved("train.steps")
            if saved_steps is not None and saved_steps != config.train.steps:
                tqdm.write(
                    f"note: config.train.steps changed from {saved_steps} to "
                    f"{config.train.steps}: the learning-rate schedule is recomputed for "
                    f"{config.train.steps} steps"
                )
        else:
            state = jax.device_put(exp.initial_state(), replicated)
        dataset.open()  # e.g. writes a tensorflow-datasets store: only once all checks pass
        if not resumed and config.eval.get("at_start", True):
            untrained = evaluate(state)
        # The run is known valid: from here on the workdir changes, written by the first
        # process alone (each process has read it above; they share it).
        if primary:
            run_dir.start(config)
            run_dir.write_data(fingerprint)
            write_input_spec(run_dir.path, *input_spec(config.data))  # for himl-embed
            if not resumed and untrained is not None:
                _write_untrained(untrained_path, untrained, config)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("himl: work directory ready")
        if not resumed:
            ckpt = _checkpointer(run_dir, config)  # every process saves its arrays' shards
    except BaseException:
        close()
        raise

    writer = metrics_writer(
        run_dir.path, resumed_at=int(state.step) if resumed else None, primary=primary
    )
    state = _train(exp, batcher, state, mesh, ckpt, writer, progress=progress, evaluate=evaluate)

    try:
        trained = evaluate(state)
    except KeyboardInterrupt:
        tqdm.write(
            f"interrupted while evaluating step {int(state.step)}, which is saved in "
            f"{run_dir.checkpoints}: run the same command again to evaluate it"
        )
        raise
    with metrics_writer(run_dir.path, primary=primary) as writer:
        write_eval_scalars(writer, int(state.step), trained, dataset.eval_level_names)
    # Evaluated once, by the first run, with the eval settings it had (none to look for
    # when neither that run nor this one evaluates at the start).
    if resumed and (untrained_path.exists() or config.eval.get("at_start", True)):
        untrained = _comparable_untrained(untrained_path, config, trained)
    # `results` as himl-eval writes them for a checkpoint; `untrained` left out when not
    # evaluated (eval.at_start=False, other eval settings, or an older run).
    summary = {
        "step": int(state.step),
        "dataset": dataset.name,
        "level_names": list(dataset.eval_level_names),
        "results": trained,
        **({"untrained": untrained} if untrained is not None else {}),
        "wall_time_s": time.time() - start_time,
        "config": jsonable(config.to_dict()),
    }
    if primary:
        (run_dir.path / "metrics.json").write_text(json.dumps(summary, indent=2))
        print_summary(summary)
    return summary

"""`train_and_evaluate(config, workdir)`: the whole main job, resumable from its workdir.

config -> dataset -> model + objective -> jit(train_step) over a 1-D data mesh -> orbax
checkpoints + TensorBoard scalars -> retrieval/clustering metrics of the untrained and the
trained embedding on classes never seen in training -> `metrics.json` and a table.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import jax
import ml_collections
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from himl.data.sampling import make_batcher
from himl.eval.evaluator import evaluate
from himl.eval.report import results_table
from himl.train.checkpoint import Checkpointer
from himl.train.config_lib import ConfigError, validate_config
from himl.train.experiment import build_experiment
from himl.train.interrupt import Interrupted, StopRequests
from himl.train.metrics_writer import MetricsWriter
from himl.train.state import train_step

# Config sections that decide the shape of the checkpointed state or the data it saw: a
# resumed run must agree with the run that wrote the checkpoints on all of them.
RESUME_KEYS = ("seed", "data.name", "data.batch_size", "model", "loss.name", "optimizer.name")


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


def _select(config, dotted: str):
    for part in dotted.split("."):
        config = config[part]
    return config.to_dict() if hasattr(config, "to_dict") else config


def check_resume_config(config, workdir: Path) -> None:
    """Saves the config; on resume, fails if it changed in a way the checkpoint cannot follow."""
    path = workdir / "config.json"
    if path.exists():
        saved = json.loads(path.read_text())
        for key in RESUME_KEYS:
            old, new = _select(_as_cfg(saved), key), _select(config, key)
            if json.dumps(old, sort_keys=True) != json.dumps(_jsonable(new), sort_keys=True):
                raise ConfigError(
                    f"{workdir} holds a run with config.{key} = {old}, this run has {new}; "
                    "use another --workdir (the saved run is left untouched)"
                )
    workdir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(config.to_dict()), indent=2, sort_keys=True))


def _as_cfg(d):
    return ml_collections.ConfigDict(d)


def _jsonable(x):
    return json.loads(json.dumps(x, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


def _train(exp, batcher, state, mesh, ckpt, writer, *, progress):
    """Steps from `state.step` to `config.train.steps`, logging and checkpointing.

    Ctrl-C or SIGTERM stops after the current step with a checkpoint and raises
    `Interrupted`; the same command resumes from there.
    """
    config = exp.config
    step_fn = make_step_fn(exp.model, exp.objective, exp.tx, mesh)
    first, total = int(state.step), config.train.steps
    bar = tqdm(total=total, initial=first, desc="training", disable=not progress, unit="step")
    tic = time.time()
    with StopRequests() as stop, writer:
        for step in range(first, total):
            state, metrics = step_fn(state, device_batch(batcher(step), mesh))
            bar.update(1)
            if (step + 1) % config.train.log_every == 0 or step + 1 == total:
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                metrics["steps_per_second"] = config.train.log_every / (time.time() - tic)
                tic = time.time()
                writer.write(step + 1, metrics)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}")
            ckpt.save(step + 1, state)
            if stop.requested:
                break
        bar.close()
        ckpt.save(int(state.step), state, force=True)
        ckpt.close()
        getattr(batcher, "close", lambda: None)()
    if stop.requested:
        tqdm.write(
            f"{stop.requested}: saved step {int(state.step)} in {ckpt.directory}; "
            "run the same command again to resume"
        )
        raise Interrupted(stop.requested)
    return state


def train_and_evaluate(config, workdir, *, progress: bool = True) -> dict:
    """Trains (or resumes) and evaluates; returns the dict also written to metrics.json."""
    start_time = time.time()
    validate_config(config, num_devices=jax.device_count())
    workdir = Path(workdir).expanduser()
    check_resume_config(config, workdir)
    exp = build_experiment(config)
    dataset, model = exp.dataset, exp.model
    # Before any expensive work: fails at once if the data cannot fill the batches.
    batcher = make_batcher(config.data, dataset, config.seed)
    mesh = make_mesh()
    state = jax.device_put(exp.initial_state(), NamedSharding(mesh, P()))

    untrained = evaluate(
        model,
        state.params["model"],
        state.batch_stats["model"],
        dataset,
        config.eval,
        progress=progress,
    )

    ckpt = Checkpointer(
        workdir / "checkpoints",
        every=config.train.checkpoint_every,
        keep=config.train.keep_checkpoints,
    )
    if ckpt.latest_step() is not None:
        state = ckpt.restore(state)
        tqdm.write(f"resuming from {ckpt.directory} at step {int(state.step)}")

    state = _train(exp, batcher, state, mesh, ckpt, MetricsWriter(workdir), progress=progress)

    trained = evaluate(
        model,
        state.params["model"],
        state.batch_stats["model"],
        dataset,
        config.eval,
        progress=progress,
    )
    with MetricsWriter(workdir) as writer:
        for split, by_level in trained.items():
            for level in dataset.eval_level_names:
                scalars = {k: v for k, v in by_level[level].items() if isinstance(v, float)}
                writer.write(
                    int(state.step), {f"eval/{split}/{level}/{k}": v for k, v in scalars.items()}
                )
    summary = {
        "step": int(state.step),
        "dataset": dataset.name,
        "level_names": list(dataset.eval_level_names),
        "results": {"untrained": untrained, "trained": trained},
        "wall_time_s": time.time() - start_time,
        "config": _jsonable(config.to_dict()),
    }
    (workdir / "metrics.json").write_text(json.dumps(summary, indent=2))
    print(results_table(summary["results"], dataset.eval_level_names, tuple(config.eval.ks)))
    return summary

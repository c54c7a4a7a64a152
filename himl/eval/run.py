"""`evaluate_checkpoint`: metrics, table and plots of a trained run's checkpoint."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import ml_collections
import numpy as np

from himl.configs import default
from himl.eval.evaluator import check_splits, evaluate_query_gallery, evaluate_split
from himl.eval.knn import knn
from himl.eval.plots import plot_embedding_2d, plot_recall_at_k, plot_retrieval_grid
from himl.eval.probe import linear_probe, stratified_split
from himl.eval.report import results_table
from himl.train.checkpoint import Checkpointer, CheckpointError
from himl.train.config_lib import ConfigError
from himl.train.experiment import build_experiment
from himl.train.workdir import Workdir


def load_run_config(workdir: Path) -> ml_collections.ConfigDict:
    """The config a training run saved in its workdir.

    Fields added to himl after the run was made are taken from `configs/default.py`, and
    named on stderr, so older work directories stay evaluable.
    """
    path = workdir / "config.json"
    if not path.is_file():
        raise ConfigError(f"{path} not found: is {workdir} a himl-train work directory?")
    saved = Workdir(workdir).saved_config  # one line naming the file if it is garbled
    added = _fill_missing(saved, default.get_config().to_dict())
    if added:
        print(f"note: {path} predates fields {added}; using their defaults", file=sys.stderr)
    return ml_collections.ConfigDict(saved)


def _fill_missing(saved: dict, defaults: dict, prefix: str = "") -> list[str]:
    added = []
    for key, value in defaults.items():
        if key not in saved:
            saved[key] = value
            added.append(prefix + key)
        elif isinstance(value, dict) and isinstance(saved[key], dict):
            added += _fill_missing(saved[key], value, f"{prefix}{key}.")
    return added


def split_checkpoint_path(path: Path, step: int | None) -> tuple[Path, int | None]:
    """`(workdir, step)` of a work directory or of a checkpoint `<workdir>/checkpoints/<step>`."""
    if path.name.isdigit() and path.parent.name == "checkpoints":
        if step is not None and step != int(path.name):
            raise ConfigError(f"--step={step} contradicts the checkpoint path {path}")
        return path.parent.parent, int(path.name)
    return path, step


def restore_params(exp, workdir: Path, step: int | None):
    """(model params, model batch stats, step) of checkpoint `step` (default: latest)."""
    directory = workdir / "checkpoints"
    if not directory.is_dir() or not any(p.name.isdigit() for p in directory.iterdir()):
        raise CheckpointError(f"no checkpoint in {directory}: train first (himl-train)")
    ckpt = Checkpointer(directory, every=1, keep=1_000_000)
    available = sorted(ckpt.manager.all_steps())
    if step is not None and step not in available:
        ckpt.close()
        raise CheckpointError(f"no checkpoint for step {step} in {directory}; have {available}")
    state = ckpt.restore(exp.initial_state(), step)  # closes the manager itself on failure
    ckpt.close()
    return state.params["model"], state.batch_stats["model"], int(state.step)


def probe_split(emb, labels, seed: int) -> dict:
    """Linear-probe accuracy on a 50/50 stratified split of one evaluation split."""
    train = stratified_split(labels, train_fraction=0.5, seed=seed)
    return linear_probe(emb[train], labels[train], emb[~train], labels[~train], seed=seed)


def evaluate_checkpoint(
    workdir, *, config=None, step=None, splits=None, out_dir=None, plots=True, progress=True
) -> dict:
    """Embeds the evaluation splits with a checkpoint and writes metrics.json and plots.

    Args:
      workdir: a `himl-train` work directory (its config.json and checkpoints/), or one
        of its checkpoints, `<workdir>/checkpoints/<step>`.
      config: overrides the run's saved config (must describe the same model).
      step: checkpoint step (default: latest). splits: split names (default: config.eval).
      out_dir: where results go (default: `<workdir>/eval`).

    Returns:
      The dict written to `<out_dir>/metrics.json`.
    """
    workdir, step = split_checkpoint_path(Path(workdir).expanduser(), step)
    config = config if config is not None else load_run_config(workdir)
    exp = build_experiment(config)
    dataset, eval_cfg = exp.dataset, config.eval
    # Every requested split exists and is non-empty before any is embedded.
    check_splits(
        dataset, splits or eval_cfg.splits, what="--splits" if splits else "config.eval.splits"
    )
    if eval_cfg.query_gallery and not splits:
        check_splits(dataset, eval_cfg.query_gallery, what="config.eval.query_gallery")
    params, batch_stats, step = restore_params(exp, workdir, step)
    levels = dataset.eval_level_names
    out = Path(out_dir) if out_dir else workdir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in splits or eval_cfg.splits:
        metrics, emb = evaluate_split(
            exp.model, params, batch_stats, dataset, name, eval_cfg, progress=progress
        )
        split = dataset.split(name)
        labels = split.labels[:, : len(levels)]
        metrics["linear_probe"] = probe_split(emb, labels[:, -1], config.seed)
        results[name] = metrics
        if plots:
            _plot(out, name, split, emb, labels, metrics, levels, eval_cfg)
    if eval_cfg.query_gallery and not splits:
        query, gallery = eval_cfg.query_gallery
        results[f"{query}->{gallery}"] = evaluate_query_gallery(
            exp.model, params, batch_stats, dataset, eval_cfg, progress=progress
        )
    summary = {
        "workdir": str(workdir),
        "checkpoint_step": step,
        "dataset": dataset.name,
        "level_names": list(levels),
        "results": results,
        "config": json.loads(json.dumps(config.to_dict(), default=list)),
    }
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    print(results_table({f"step {step}": results}, levels, tuple(eval_cfg.ks)))
    for name, metrics in results.items():
        if "linear_probe" not in metrics:
            continue
        print(f"linear probe on {name!r}: accuracy {100 * metrics['linear_probe']['accuracy']:.2f}")
    print(f"wrote {out / 'metrics.json'}" + (" and plots" if plots else ""))
    return summary


def _plot(out, name, split, emb, labels, metrics, levels, eval_cfg):
    plot_recall_at_k(
        {lvl: metrics[lvl] for lvl in levels},
        out / f"{name}_recall_at_k.png",
        title=f"Recall@K on {name!r}",
    )
    plot_embedding_2d(
        emb,
        labels[:, 0],
        labels[:, -1],
        out / f"{name}_embedding_2d.png",
        title=f"{name}: PCA of the embedding",
    )
    top = min(5, len(split) - 1)
    indices, _ = knn(emb, k=top, metric=eval_cfg.metric, block_size=eval_cfg.block_size)
    plot_retrieval_grid(
        split.images,
        labels[:, -1],
        split.images,
        labels[:, -1],
        np.asarray(jax.device_get(indices)),
        out / f"{name}_retrievals.png",
        top=top,
    )

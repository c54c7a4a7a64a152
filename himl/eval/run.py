"""`evaluate_checkpoint`: the run's evaluators on a checkpoint, then a table and plots.

Needs only the data, the model and the checkpoint's model variables (`himl.runs`): no
optimizer, no loss, no pretrained file, and any number of devices.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import numpy as np

from himl.config_lib import absolute_paths, validate_config
from himl.data.registry import load_dataset
from himl.eval.evaluators import (
    DEFAULT_EVALUATORS,
    EVALUATORS,
    QueryGalleryEvaluator,
    build_evaluators,
    run_evaluators,
)
from himl.eval.knn import EvalInputError, knn
from himl.eval.plots import plot_embedding_2d, plot_recall_at_k, plot_retrieval_grid
from himl.eval.report import probe_lines, results_table
from himl.models.inference import EmbeddingFunction
from himl.models.registry import build_model
from himl.runs import (
    RunError,
    checkpoint_step,
    config_differences,
    load_run_config,
    read_config_json,
    restore_model_variables,
    split_checkpoint_path,
    unwritable_reason,
)

# The plots of a split, written beside metrics.json.
PLOT_FILES = ("{}_recall_at_k.png", "{}_embedding_2d.png", "{}_retrievals.png")


def evaluate_checkpoint(
    workdir, *, config=None, step=None, splits=None, out_dir=None, plots=True, progress=True
) -> dict:
    """Runs the config's evaluators on a checkpoint and writes metrics.json and plots.

    Args:
      workdir: a `himl-train` work directory (its config.json and checkpoints/), or one
        of its checkpoints, `<workdir>/checkpoints/<step>`.
      config: the config to evaluate with (default: the run's saved config.json); each
        field of its `model`, `data` or `seed` that differs from the saved one is printed
        as a note (another dataset is a legitimate evaluation; another model fails on
        the checkpoint's shapes).
      step: checkpoint step (default: latest). splits: split names (default:
        `config.eval.splits`; naming splits leaves the query -> gallery evaluation out).
      out_dir: where results go (default: `<workdir>/eval`). The plots of the evaluation
        whose metrics.json is replaced there are removed, so none is left beside the new
        metrics.json that it did not make.

    Mistakes in the config, step, splits or output directory are reported (one line)
    before the dataset is loaded. The path fields of `config` (`PATH_FIELDS`; e.g. a
    `--config.data.manual_dir=` override) are made absolute in place, as himl-train does.

    Returns:
      The dict written to `<out_dir>/metrics.json`.
    """
    workdir, step = split_checkpoint_path(Path(workdir).expanduser(), step)
    given = config is not None
    config = config if given else load_run_config(workdir)
    # As himl-train does: a relative path (e.g. --config.data.data_dir=cache) is taken from
    # the working directory, and metrics.json records it absolute.
    absolute_paths(config)
    saved = read_config_json(workdir / "config.json") if given else None
    if saved is not None:
        absolute_paths(saved)  # an older run's relative paths, taken from here too
        for line in config_differences(saved, config):
            print(f"note: {line}", file=sys.stderr)
    validate_config(config)  # any device count: evaluation batches are padded
    step = checkpoint_step(workdir, step)
    if splits is not None and not splits:
        raise RunError("--splits is empty: name the splits to evaluate, or leave it out")
    if not config.eval.get("evaluators", DEFAULT_EVALUATORS):
        raise RunError(
            f"config.eval.evaluators is empty: name some of {', '.join(EVALUATORS)}, or leave "
            "it out"
        )
    out = Path(out_dir).expanduser() if out_dir else workdir / "eval"
    check_writable_dir(out, "--out")
    dataset = load_dataset(config.data)
    evaluators = build_evaluators(config.eval, dataset, seed=config.seed, splits=splits)
    if splits:
        evaluators = [e for e in evaluators if not isinstance(e, QueryGalleryEvaluator)]
    if not evaluators:
        raise EvalInputError(
            "nothing to evaluate: the evaluators read no split (config.eval.splits or --splits, "
            "config.eval.query_gallery)"
        )
    model = build_model(config.model)
    shape = dataset.split(config.data.train_split).images.shape[1:]  # what the model saw
    variables, step = restore_model_variables(model, shape, workdir, step)
    embed_fn = EmbeddingFunction(model, batch_size=config.eval.batch_size)
    embeddings = {}

    def embed(name):
        embeddings[name] = embed_fn(variables, dataset.split(name).images, progress=progress)
        return embeddings[name]

    results = run_evaluators(evaluators, embed, progress=progress)
    about = {"workdir": str(workdir), "step": step, "dataset": dataset.name}
    return write_report(
        out, about, dataset, evaluators, results, embeddings, config,
        model=f"step {step}", plots=plots,
    )  # fmt: skip


def write_report(out, about, dataset, evaluators, results, embeddings, config, *, model, plots):
    """Writes `out/metrics.json` (`about`, the level names, `results`, `config`) and the
    plots of each split with per-level retrieval results (replacing an earlier
    evaluation's), and prints the table and the linear-probe lines, `model` naming the
    rows. Returns the dict written."""
    levels = dataset.eval_level_names
    out.mkdir(parents=True, exist_ok=True)
    _remove_previous_plots(out)
    if plots:
        for name in dict.fromkeys(s for e in evaluators for s in e.splits):
            if levels[0] in results.get(name, {}):  # a split with per-level retrieval results
                _plot(out, name, dataset, embeddings[name], results[name], config.eval)
    summary = {
        **about,
        "level_names": list(levels),
        "results": results,
        "config": json.loads(json.dumps(config.to_dict(), default=list)),
    }
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    print(results_table({model: results}, levels, tuple(config.eval.ks)))
    for line in probe_lines({model: results}):
        print(line)
    print(f"wrote {out / 'metrics.json'}" + (" and plots" if plots else ""))
    return summary


def check_writable_dir(path: Path, what: str) -> None:
    """RunError unless `path` is a directory, or can be made one, that we can write in."""
    reason = unwritable_reason(path)
    if reason:
        raise RunError(f"{what} {path}: {reason}")


def _remove_previous_plots(out: Path) -> None:
    """Removes the plots of the splits in `out`'s metrics.json (an earlier evaluation)."""
    try:
        previous = json.loads((out / "metrics.json").read_text())["results"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # no earlier evaluation here (or not one of ours): nothing is removed
    for split in previous:
        for name in PLOT_FILES:
            (out / name.format(split)).unlink(missing_ok=True)


def _plot(out, name, dataset, emb, metrics, eval_cfg):
    """The split's plots, its labels shown by name where the dataset has names."""
    recall_file, embedding_file, retrievals_file = (f.format(name) for f in PLOT_FILES)
    split, levels = dataset.split(name), dataset.eval_level_names
    labels, class_level = split.labels[:, : len(levels)], len(levels) - 1
    plot_recall_at_k(
        {lvl: metrics[lvl] for lvl in levels},
        out / recall_file,
        title=f"Recall@K on {name!r}",
    )
    plot_embedding_2d(
        emb,
        labels[:, 0],
        labels[:, -1],
        out / embedding_file,
        title=f"{name}: PCA of the embedding",
        coarse_name=lambda label: dataset.label_name(0, int(label)),
    )
    if not split.images.shape[1]:
        return  # labels only (embeddings made elsewhere, no image files): no retrieval grid
    top = min(5, len(split) - 1)
    indices, _ = knn(emb, k=top, metric=eval_cfg.metric, block_size=eval_cfg.block_size)
    plot_retrieval_grid(
        split.images,
        labels[:, -1],
        split.images,
        labels[:, -1],
        np.asarray(jax.device_get(indices)),
        out / retrievals_file,
        top=top,
        label_name=lambda label: dataset.label_name(class_level, int(label)),
    )

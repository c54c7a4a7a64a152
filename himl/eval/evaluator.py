"""Embeds a split with a model and computes its metrics; used by training and `himl-eval`."""

from __future__ import annotations

import functools

import jax
import numpy as np
from tqdm.auto import tqdm

from himl.data.dataset import Dataset, Split
from himl.eval.hierarchical import hierarchical_metrics
from himl.eval.knn import EvalInputError, as_embeddings, search_mesh
from himl.eval.retrieval import query_gallery_retrieval_metrics
from himl.hierarchy import prefix_ids
from himl.train.state import embed


def embed_split(model, params, batch_stats, split: Split, *, batch_size: int, progress=True):
    """Embeddings `[N, D]` float32 of a split's images (eval mode, in batches)."""
    apply = jax.jit(functools.partial(embed, model, train=False))
    chunks = []
    starts = range(0, len(split), batch_size)
    for start in tqdm(starts, desc="embedding", leave=False, disable=not progress):
        images = split.images[start : start + batch_size].astype(np.float32) / 255.0
        if len(images) < batch_size:  # pad the last batch: one compiled shape
            pad = np.zeros((batch_size - len(images), *images.shape[1:]), np.float32)
            out, _ = apply(params, batch_stats, np.concatenate([images, pad]))
            out = out[: len(images)]
        else:
            out, _ = apply(params, batch_stats, images)
        chunks.append(np.asarray(out, np.float32))
    return np.concatenate(chunks)


def evaluate_split(
    model, params, batch_stats, dataset: Dataset, split_name: str, eval_config, *, progress=True
) -> tuple[dict, np.ndarray]:
    """Metrics per label level (coarsest to class level) of one split, and its embeddings.

    Returns `(metrics, embeddings [N, D])`; metrics as `hierarchical_metrics` plus
    "num_samples", e.g. `{"group": {"recall@1": ...}, "class": {...}, ...}`.
    """
    split = dataset.split(split_name)
    if len(split) == 0:
        raise EvalInputError(f"split {split_name!r} of {dataset.name!r} is empty")
    emb = embed_split(
        model, params, batch_stats, split, batch_size=eval_config.batch_size, progress=progress
    )
    # NaN rows mean a diverged model: say so here rather than deep inside the metrics.
    as_embeddings(emb, name=f"embeddings of split {split_name!r}")
    levels = dataset.eval_level_names
    metrics = hierarchical_metrics(
        emb,
        split.labels[:, : len(levels)],
        ks=tuple(eval_config.ks),
        level_names=levels,
        metric=eval_config.metric,
        block_size=eval_config.block_size,
        mesh=search_mesh(),  # the gallery sharded over every device when there are several
    )
    metrics["num_samples"] = len(split)
    return metrics, emb


def evaluate_query_gallery(
    model, params, batch_stats, dataset: Dataset, eval_config, *, progress=True
) -> dict:
    """Query -> gallery retrieval per label level (the In-Shop protocol).

    `eval_config.query_gallery = (query split, gallery split)`; returns
    `{level: query_gallery_retrieval_metrics(...)}` plus "num_samples" (queries).
    """
    query_name, gallery_name = eval_config.query_gallery
    splits = [dataset.split(query_name), dataset.split(gallery_name)]
    emb = []
    for name, split in zip((query_name, gallery_name), splits, strict=True):
        if len(split) == 0:
            raise EvalInputError(f"split {name!r} of {dataset.name!r} is empty")
        emb.append(
            embed_split(
                model,
                params,
                batch_stats,
                split,
                batch_size=eval_config.batch_size,
                progress=progress,
            )
        )
        as_embeddings(emb[-1], name=f"embeddings of split {name!r}")
    labels = np.concatenate([s.labels for s in splits])
    num_queries = len(splits[0])
    results = {"num_samples": num_queries}
    for depth, level in enumerate(dataset.eval_level_names, start=1):
        ids = prefix_ids(labels, depth)  # one id space for query and gallery
        results[level] = query_gallery_retrieval_metrics(
            emb[0],
            ids[:num_queries],
            emb[1],
            ids[num_queries:],
            ks=tuple(eval_config.ks),
            metric=eval_config.metric,
            block_size=eval_config.block_size,
            mesh=search_mesh(),
        )
    return results


def evaluate(model, params, batch_stats, dataset: Dataset, eval_config, *, progress=True):
    """`{split: metrics}` for every split in `eval_config.splits` (see `evaluate_split`),
    plus `{"query->gallery": ...}` when `eval_config.query_gallery` names two splits."""
    results = {
        name: evaluate_split(
            model, params, batch_stats, dataset, name, eval_config, progress=progress
        )[0]
        for name in eval_config.splits
    }
    if eval_config.query_gallery:
        query, gallery = eval_config.query_gallery
        results[f"{query}->{gallery}"] = evaluate_query_gallery(
            model, params, batch_stats, dataset, eval_config, progress=progress
        )
    return results


def check_eval_config(eval_config) -> None:
    """Raises ConfigError naming the `config.eval` key the evaluation cannot use (split
    names are checked against the data by `check_splits`, once it is loaded)."""
    from himl.errors import ConfigError
    from himl.eval.knn import METRICS

    ks = tuple(eval_config.ks)
    if not ks or not all(isinstance(k, int) and k >= 1 for k in ks):
        raise ConfigError(f"config.eval.ks must be a non-empty list of ints >= 1, got {ks}")
    if eval_config.metric not in METRICS:
        raise ConfigError(
            f"unknown config.eval.metric {eval_config.metric!r}; valid: {', '.join(METRICS)}"
        )
    for key in ("batch_size", "block_size"):
        if not eval_config[key] >= 1:
            raise ConfigError(f"config.eval.{key} must be >= 1, got {eval_config[key]}")
    if eval_config.query_gallery and len(eval_config.query_gallery) != 2:
        raise ConfigError(
            "config.eval.query_gallery must be empty or (query split, gallery split), got "
            f"{tuple(eval_config.query_gallery)}"
        )


def check_splits(dataset: Dataset, names, *, what: str = "config.eval.splits") -> None:
    """Raises EvalInputError unless every split in `names` exists in `dataset` and is
    non-empty: called before any split is embedded."""
    for name in names:
        if name not in dataset.splits:
            raise EvalInputError(
                f"dataset {dataset.name!r} has no split {name!r} (named by {what}); it has "
                f"{', '.join(sorted(dataset.splits))}"
            )
        if len(dataset.split(name)) == 0:
            raise EvalInputError(f"split {name!r} of {dataset.name!r} ({what}) is empty")

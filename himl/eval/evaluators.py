"""Evaluators: one interface, and the explicit name -> evaluator table `config.eval` picks from.

    evaluators = build_evaluators(config.eval, dataset, seed=config.seed)
    results = run_evaluators(evaluators, embed_split, progress=True)

An evaluator names the splits it reads (`splits`) and turns their embeddings into named
numbers (`run(embeddings) -> {result key: {...}}`). `run_evaluators` embeds every split
once, however many evaluators read it, and merges the results per key, e.g.

    {"unseen": {"group": {"recall@1": ...}, "class": {...}, "num_samples": 2100,
                "linear_probe": {"accuracy": ...}},
     "query->gallery": {"category": {...}, ...}}

The training loop (before training, every `config.eval.every` steps, at the end) and
`himl-eval` (which adds plots) run the same evaluators, as big_vision's evaluators serve
both `train.py` and `tools/eval_only.py`; himl's table is explicit instead of imports by
string. A new evaluator is a class with `splits` and `run` (and optionally `check()`, run
on the splits' labels before anything is embedded), and one row in `EVALUATORS`.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from himl.data.dataset import Dataset
from himl.eval.hierarchical import hierarchical_metrics
from himl.eval.knn import EvalInputError, as_embeddings, search_mesh
from himl.eval.probe import linear_probe, stratified_split
from himl.eval.retrieval import DEFAULT_MAX_K, query_gallery_retrieval_metrics
from himl.hierarchy import prefix_ids

# Rank metrics of a level where no query has an image of its label to find: PML's 0 (the
# library functions keep it), recorded by the evaluators as None (JSON null), which the
# table shows as "-" and no scalar log receives.
RANK_METRICS = re.compile(r"^(recall@\d+|precision@1|r_precision|map@r)$")


def none_where_nothing_found(metrics: dict) -> dict:
    """`metrics` of one level with its rank metrics None when every query was left out."""
    if not 0 < metrics.get("num_queries", 0) == metrics.get("num_left_out"):
        return metrics
    return {k: None if RANK_METRICS.match(k) else v for k, v in metrics.items()}


def _has_pairs(labels: np.ndarray) -> bool:
    """Whether some label holds two or more of the images."""
    return np.unique(labels, return_counts=True)[1].max() >= 2


class Evaluator(Protocol):
    """Reads the embeddings of `splits` and returns `{result key: {name: number...}}`."""

    splits: tuple[str, ...]

    def run(self, embeddings: Mapping[str, np.ndarray]) -> dict: ...


@dataclasses.dataclass(frozen=True)
class RetrievalEvaluator:
    """Leave-one-out retrieval within each split, per level of the label tree (coarsest to
    the class level): Recall@K, MAP@R, R-precision, NMI/AMI of k-means, mistake severity
    (`himl.eval.hierarchical_metrics`). Results under the split's name."""

    dataset: Dataset
    splits: tuple[str, ...]
    ks: tuple[int, ...]
    metric: str
    block_size: int
    max_r: int = DEFAULT_MAX_K  # R cap of R-Precision / MAP@R; 0: none

    def check(self) -> None:
        """Warns of a level at which a split's retrieval measures nothing: no image has a
        same-label neighbour (Recall@K and MAP@R read 0, NMI 100), or every image has
        the same label (everything reads 100)."""
        for name in self.splits:
            labels = self.dataset.split(name).labels
            for level, level_name in enumerate(self.dataset.eval_level_names):
                if len(labels) and not _has_pairs(labels[:, level]):
                    warnings.warn(
                        f"split {name!r}: each image is the only one of its {level_name!r} "
                        f"label ({len(labels)} images), so retrieval at that level measures "
                        "nothing (no query has a positive)",
                        stacklevel=2,
                    )
                elif len(labels) > 1 and len(np.unique(labels[:, level])) == 1:
                    warnings.warn(
                        f"split {name!r}: all its {len(labels)} images have one "
                        f"{level_name!r} label, so retrieval and clustering at that level "
                        "measure nothing (every neighbour is a match: 100)",
                        stacklevel=2,
                    )

    def run(self, embeddings):
        levels = self.dataset.eval_level_names
        results = {}
        for name in self.splits:
            labels = self.dataset.split(name).labels[:, : len(levels)]
            metrics = hierarchical_metrics(
                embeddings[name], labels, ks=self.ks, level_names=levels, metric=self.metric,
                block_size=self.block_size, max_k=self.max_r or None, mesh=search_mesh(),
            )  # fmt: skip
            for level in levels:
                metrics[level] = none_where_nothing_found(metrics[level])
            results[name] = {**metrics, "num_samples": len(labels)}
        return results


@dataclasses.dataclass(frozen=True)
class QueryGalleryEvaluator:
    """Query -> gallery retrieval per level (the In-Shop protocol): every query searches
    the whole gallery; labels compare by their prefix down to each level. Results under
    "<query>-><gallery>"."""

    dataset: Dataset
    splits: tuple[str, ...]  # (query split, gallery split)
    ks: tuple[int, ...]
    metric: str
    block_size: int
    max_r: int = DEFAULT_MAX_K  # R cap of R-Precision / MAP@R; 0: none

    def check(self) -> None:
        """EvalInputError when query and gallery share images (by the instance level, where
        the data has one): each such query would find itself, a Recall@1 of 100."""
        query, gallery = (self.dataset.split(s).labels for s in self.splits)
        if self.dataset.class_level + 1 < len(self.dataset.level_names):
            shared = np.intersect1d(query[:, -1], gallery[:, -1])
            if len(shared):
                raise EvalInputError(
                    f"config.eval.query_gallery: query split {self.splits[0]!r} and gallery "
                    f"split {self.splits[1]!r} share {len(shared)} images, which would find "
                    "themselves; give disjoint splits (retrieval within one split is the "
                    "retrieval evaluator's, config.eval.splits)"
                )

    def run(self, embeddings):
        query, gallery = self.splits
        labels = np.concatenate([self.dataset.split(s).labels for s in self.splits])
        num_queries = len(embeddings[query])
        results = {"num_samples": num_queries}
        for depth, level in enumerate(self.dataset.eval_level_names, start=1):
            ids = prefix_ids(labels, depth)  # one id space for query and gallery
            results[level] = none_where_nothing_found(query_gallery_retrieval_metrics(
                embeddings[query], ids[:num_queries], embeddings[gallery], ids[num_queries:],
                ks=self.ks, metric=self.metric, block_size=self.block_size,
                max_k=self.max_r or None, mesh=search_mesh(),
            ))  # fmt: skip
        return {f"{query}->{gallery}": results}


@dataclasses.dataclass(frozen=True)
class LinearProbeEvaluator:
    """Top-1 accuracy of a logistic-regression probe on the class level, trained on a
    stratified half of each split and tested on the other half (`himl.eval.linear_probe`).
    Results under the split's name, key "linear_probe"."""

    dataset: Dataset
    splits: tuple[str, ...]
    seed: int

    def check(self) -> None:
        """EvalInputError for a split with no class of 2 images (no test half)."""
        for name in self.splits:
            labels = self.dataset.split(name).labels[:, self.dataset.class_level]
            if not _has_pairs(labels):
                raise EvalInputError(
                    f"linear_probe on split {name!r}: each of its {len(labels)} images is the "
                    "only one of its class, so the probe has nothing to test on; give the split "
                    "more images per class (e.g. config.data.custom.seen_test_fraction), or "
                    "leave the probe out: --config.eval.evaluators=retrieval,query_gallery"
                )

    def run(self, embeddings):
        results = {}
        for name in self.splits:
            labels = self.dataset.split(name).labels[:, self.dataset.class_level]
            train = stratified_split(labels, train_fraction=0.5, seed=self.seed)
            probe = linear_probe(
                embeddings[name][train], labels[train], embeddings[name][~train],
                labels[~train], seed=self.seed,
            )  # fmt: skip
            results[name] = {"linear_probe": probe}
        return results


def _retrieval(eval_config, dataset, splits, seed):
    del seed
    return RetrievalEvaluator(dataset, tuple(splits), tuple(eval_config.ks), eval_config.metric,
                              eval_config.block_size, _max_r(eval_config))  # fmt: skip


def _query_gallery(eval_config, dataset, splits, seed):
    del splits, seed  # its own pair of splits
    if not eval_config.query_gallery:
        return None  # the dataset has no query/gallery protocol
    return QueryGalleryEvaluator(dataset, tuple(eval_config.query_gallery),
                                 tuple(eval_config.ks), eval_config.metric,
                                 eval_config.block_size, _max_r(eval_config))  # fmt: skip


def _max_r(eval_config) -> int:
    return eval_config.get("max_r", DEFAULT_MAX_K)  # the cap before it was a setting


def _linear_probe(eval_config, dataset, splits, seed):
    del eval_config
    return LinearProbeEvaluator(dataset, tuple(splits), seed)


# name -> builder(config.eval, dataset, splits, seed) -> Evaluator (or None: not applicable)
EVALUATORS: dict[str, Callable[..., Any]] = {
    "retrieval": _retrieval,
    "query_gallery": _query_gallery,  # runs when config.eval.query_gallery names two splits
    "linear_probe": _linear_probe,
}
DEFAULT_EVALUATORS = ("retrieval", "query_gallery", "linear_probe")


def build_evaluators(eval_config, dataset: Dataset, *, seed: int = 0, splits=None) -> list:
    """The evaluators `eval_config.evaluators` names, over `splits` (default
    `eval_config.splits`). Every split they read is checked to exist and be non-empty,
    before anything is embedded."""
    what = "config.eval.splits" if splits is None else "--splits"
    splits = tuple(eval_config.splits if splits is None else splits)
    names = tuple(eval_config.get("evaluators", DEFAULT_EVALUATORS))
    built = [EVALUATORS[name](eval_config, dataset, splits, seed) for name in names]
    built = [e for e in built if e is not None and e.splits]
    for evaluator in built:
        query_gallery = isinstance(evaluator, QueryGalleryEvaluator)
        check_splits(dataset, evaluator.splits,
                     what="config.eval.query_gallery" if query_gallery else what)  # fmt: skip
    for evaluator in built:
        getattr(evaluator, "check", lambda: None)()  # what its splits can measure
    return built


def run_evaluators(evaluators, embed: Callable[[str], np.ndarray], *, progress=False) -> dict:
    """Embeds each split the evaluators read (once) with `embed(split name) -> [N, D]`,
    runs them, and merges their results per key (see the module docstring)."""
    names = list(dict.fromkeys(s for e in evaluators for s in e.splits))
    embeddings = {}
    for name in tqdm(names, desc="evaluating", leave=False, disable=not progress or len(names) < 2):
        embeddings[name] = embed(name)
        # NaN rows mean a diverged model: say so here rather than deep inside the metrics.
        as_embeddings(embeddings[name], name=f"embeddings of split {name!r}")
    results: dict = {}
    for evaluator in evaluators:
        for key, value in evaluator.run(embeddings).items():
            results.setdefault(key, {}).update(value)
    return results


def check_eval_config(eval_config) -> None:
    """Raises ConfigError naming the `config.eval` key the evaluation cannot use (split
    names are checked against the data by `check_splits`, once it is loaded)."""
    from himl.errors import ConfigError, check_choice
    from himl.eval.knn import METRICS

    ks = tuple(eval_config.ks)
    if not ks or not all(isinstance(k, int) and k >= 1 for k in ks):
        raise ConfigError(f"config.eval.ks must be a non-empty list of ints >= 1, got {ks}")
    if len(set(ks)) != len(ks):
        raise ConfigError(f"config.eval.ks must not repeat a K, got {ks}")
    check_choice(eval_config.metric, METRICS, "config.eval.metric")
    for key in ("batch_size", "block_size"):
        if not eval_config[key] >= 1:
            raise ConfigError(f"config.eval.{key} must be >= 1, got {eval_config[key]}")
    if not _max_r(eval_config) >= 0:
        raise ConfigError(
            f"config.eval.max_r must be >= 0 (0: no cap on R), got {eval_config.max_r}"
        )
    if eval_config.query_gallery and len(eval_config.query_gallery) != 2:
        raise ConfigError(
            "config.eval.query_gallery must be empty or (query split, gallery split), got "
            f"{tuple(eval_config.query_gallery)}"
        )
    if eval_config.query_gallery and len(set(eval_config.query_gallery)) == 1:
        raise ConfigError(
            f"config.eval.query_gallery names {eval_config.query_gallery[0]!r} twice: every "
            "query would find itself in the gallery; retrieval within one split is the "
            "retrieval evaluator's (config.eval.splits)"
        )
    for name in eval_config.get("evaluators", DEFAULT_EVALUATORS):
        if name not in EVALUATORS:
            raise ConfigError(
                f"unknown evaluator {name!r} in config.eval.evaluators; valid: "
                f"{', '.join(EVALUATORS)}"
            )
    if not eval_config.get("every", 0) >= 0:
        raise ConfigError(f"config.eval.every must be >= 0, got {eval_config.every}")


_SPLITS_FLAGS = {"config.eval.splits": "--config.eval.splits", "--splits": "--splits"}


def _splits_hint(dataset: Dataset, what: str) -> str:
    """The flag that evaluates the splits `dataset` holds out of training, for a list of
    evaluation splits (e.g. a custom dataset's own `test` split under a seen/unseen
    config)."""
    held_out = [s for s in sorted(dataset.splits) if not s.startswith("train")]
    if what not in _SPLITS_FLAGS or not held_out:
        return ""
    return f" (evaluate those with {_SPLITS_FLAGS[what]}={','.join(held_out)})"


def check_splits(dataset: Dataset, names, *, what: str = "config.eval.splits") -> None:
    """Raises EvalInputError unless every split in `names` exists in `dataset` and is
    non-empty: called before any split is embedded."""
    for name in names:
        if name not in dataset.splits:
            raise EvalInputError(
                f"dataset {dataset.name!r} has no split {name!r} (named by {what}); it has "
                f"{', '.join(sorted(dataset.splits))}{_splits_hint(dataset, what)}"
            )
        if len(dataset.split(name)) == 0:
            raise EvalInputError(f"split {name!r} of {dataset.name!r} ({what}) is empty")

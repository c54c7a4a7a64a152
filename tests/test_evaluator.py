"""The evaluator on a hand-made dataset: per-level metrics and query -> gallery retrieval."""

import jax
import ml_collections
import numpy as np
import pytest

from himl.data.dataset import Dataset, Split
from himl.eval import hierarchical_metrics, query_gallery_retrieval_metrics
from himl.eval.evaluator import embed_split, evaluate
from himl.eval.knn import EvalInputError
from himl.models.cnn import SmallCNN


def _split(rng, n, first_id):
    classes = rng.integers(0, 4, n)
    labels = np.stack([classes // 2, classes, np.arange(first_id, first_id + n)], axis=1)
    return Split(images=rng.integers(0, 255, (n, 12, 12, 1), dtype=np.uint8), labels=labels)


@pytest.fixture
def setup():
    rng = np.random.default_rng(0)
    splits = {"query": _split(rng, 30, 0), "gallery": _split(rng, 50, 100)}
    splits["train"] = splits["gallery"]
    dataset = Dataset("toy", ("group", "class", "instance"), 1, {}, splits)
    model = SmallCNN(widths=(4,), embedding_dim=8)
    params = model.init(jax.random.key(0), np.zeros((1, 12, 12, 1), np.float32))["params"]
    config = ml_collections.ConfigDict(
        dict(
            splits=("query",),
            query_gallery=("query", "gallery"),
            ks=(1, 3),
            metric="cosine",
            batch_size=16,
            block_size=32,
        )
    )
    return dataset, model, params, config


def test_per_level_and_query_gallery_match_the_metric_functions(setup):
    dataset, model, params, config = setup
    results = evaluate(model, params, {}, dataset, config, progress=False)
    q = embed_split(model, params, {}, dataset.split("query"), batch_size=7, progress=False)
    g = embed_split(model, params, {}, dataset.split("gallery"), batch_size=7, progress=False)
    ql, gl = dataset.split("query").labels, dataset.split("gallery").labels
    expected = hierarchical_metrics(q, ql[:, :2], ks=(1, 3), level_names=("group", "class"))
    assert results["query"]["class"]["map@r"] == pytest.approx(expected["class"]["map@r"])
    for depth, level in ((1, "group"), (2, "class")):
        # Prefix ids by hand: group is column 0, class determines group.
        qi, gi = ql[:, depth - 1], gl[:, depth - 1]
        want = query_gallery_retrieval_metrics(q, qi, g, gi, ks=(1, 3))
        got = results["query->gallery"][level]
        for key in ("recall@1", "recall@3", "map@r", "precision@1"):
            assert got[key] == pytest.approx(want[key], rel=1e-6), (level, key)


def test_empty_split_is_a_clear_error(setup):
    dataset, model, params, config = setup
    empty = Split(images=np.zeros((0, 12, 12, 1), np.uint8), labels=np.zeros((0, 3), int))
    dataset = Dataset("toy", dataset.level_names, 1, {}, {**dataset.splits, "query": empty})
    with pytest.raises(EvalInputError, match="split 'query' of 'toy' is empty"):
        evaluate(model, params, {}, dataset, config, progress=False)

"""Evaluators (`himl.eval.evaluators`) on a hand-made dataset: one interface, the name ->
evaluator table, each split embedded once, and periodic evaluation during training."""

import json

import jax
import ml_collections
import numpy as np
import pytest

from himl.config_lib import validate_config
from himl.data.dataset import Dataset, Split
from himl.errors import ConfigError
from himl.eval import hierarchical_metrics, linear_probe, query_gallery_retrieval_metrics
from himl.eval.evaluators import EVALUATORS, build_evaluators, check_eval_config, run_evaluators
from himl.eval.knn import EvalInputError
from himl.eval.probe import stratified_split
from himl.models.cnn import SmallCNN
from himl.models.inference import EmbeddingFunction


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
    variables = model.init(jax.random.key(0), np.zeros((1, 12, 12, 1), np.float32))
    config = ml_collections.ConfigDict(
        dict(
            splits=("query",),
            query_gallery=("query", "gallery"),
            ks=(1, 3),
            metric="cosine",
            batch_size=16,
            block_size=32,
            evaluators=("retrieval", "query_gallery", "linear_probe"),
        )
    )
    return dataset, model, variables, config


def _run(dataset, model, variables, config, calls=None):
    embed_fn = EmbeddingFunction(model, batch_size=config.batch_size)

    def embed(name):
        if calls is not None:
            calls.append(name)
        return embed_fn(variables, dataset.split(name).images)

    return run_evaluators(build_evaluators(config, dataset, seed=0), embed)


def test_every_evaluator_matches_the_metric_functions(setup):
    dataset, model, variables, config = setup
    calls = []
    results = _run(dataset, model, variables, config, calls)
    assert sorted(calls) == ["gallery", "query"]  # each split embedded once for 3 evaluators
    embed = EmbeddingFunction(model, batch_size=7)  # another batch size: the same vectors
    q, g = (
        embed(variables, dataset.split("query").images),
        embed(variables, dataset.split("gallery").images),
    )
    ql, gl = dataset.split("query").labels, dataset.split("gallery").labels
    expected = hierarchical_metrics(q, ql[:, :2], ks=(1, 3), level_names=("group", "class"))
    assert results["query"]["class"]["map@r"] == pytest.approx(expected["class"]["map@r"])
    assert results["query"]["num_samples"] == 30
    for depth, level in ((1, "group"), (2, "class")):
        # Prefix ids by hand: group is column 0, class determines group.
        qi, gi = ql[:, depth - 1], gl[:, depth - 1]
        want = query_gallery_retrieval_metrics(q, qi, g, gi, ks=(1, 3))
        got = results["query->gallery"][level]
        for key in ("recall@1", "recall@3", "map@r", "precision@1"):
            assert got[key] == pytest.approx(want[key], rel=1e-6), (level, key)
    train = stratified_split(ql[:, 1], train_fraction=0.5, seed=0)
    probe = linear_probe(q[train], ql[train, 1], q[~train], ql[~train, 1], seed=0)
    assert results["query"]["linear_probe"]["accuracy"] == pytest.approx(probe["accuracy"])


def test_a_level_with_nothing_to_find_records_none_not_pmls_zero(setup):
    """Classes 0 and 2 queried, 1 and 3 in the gallery: at the class level no query has an
    image to find, and its rank metrics are None (JSON null; the table's "-"), not PML's 0,
    which a script would read as a measured failure. The group level is measured."""
    dataset, model, variables, config = setup
    query, gallery = dataset.split("query"), dataset.split("gallery")
    even = query.labels[:, 1] % 2 == 0
    query = Split(images=query.images[even], labels=query.labels[even])
    odd = gallery.labels[:, 1] % 2 == 1
    gallery = Split(images=gallery.images[odd], labels=gallery.labels[odd])
    splits = {**dataset.splits, "query": query, "gallery": gallery}
    dataset = Dataset("toy", dataset.level_names, 1, {}, splits)
    config.evaluators = ("query_gallery",)
    results = _run(dataset, model, variables, config)["query->gallery"]
    assert results["class"]["num_left_out"] == results["class"]["num_queries"] == even.sum()
    for key in ("recall@1", "recall@3", "precision@1", "r_precision", "map@r"):
        assert results["class"][key] is None, key
    assert results["group"]["num_left_out"] == 0
    assert 0 < results["group"]["map@r"] <= 1
    json.dumps(results)


def test_the_table_picks_what_runs(setup):
    dataset, model, variables, config = setup
    config.evaluators = ("linear_probe",)
    config.query_gallery = ()
    results = _run(dataset, model, variables, config)
    assert list(results) == ["query"] and list(results["query"]) == ["linear_probe"]
    assert set(EVALUATORS) == {"retrieval", "query_gallery", "linear_probe"}


def test_unknown_evaluator_and_bad_every_are_config_errors():
    from himl.configs import tiny

    config = tiny.get_config()
    config.eval.evaluators = ("retrieval", "knn_accuracy")
    with pytest.raises(ConfigError, match="unknown evaluator 'knn_accuracy' in config.eval"):
        validate_config(config)
    config = tiny.get_config()
    config.eval.every = -1
    with pytest.raises(ConfigError, match="config.eval.every must be >= 0"):
        validate_config(config)


def test_missing_or_empty_split_is_named_before_any_embedding(setup):
    dataset, model, variables, config = setup
    empty = Split(images=np.zeros((0, 12, 12, 1), np.uint8), labels=np.zeros((0, 3), int))
    dataset = Dataset("toy", dataset.level_names, 1, {}, {**dataset.splits, "query": empty})
    with pytest.raises(EvalInputError, match="split 'query' of 'toy' .* is empty"):
        build_evaluators(config, dataset)
    config.splits = ("nope",)
    held_out = ",".join(s for s in sorted(dataset.splits) if s != "train")
    with pytest.raises(EvalInputError, match="has no split 'nope'") as error:
        build_evaluators(config, dataset)
    assert str(error.value).endswith(f"(evaluate those with --config.eval.splits={held_out})")
    with pytest.raises(EvalInputError) as error:
        build_evaluators(config, dataset, splits=("nope",))
    assert str(error.value).endswith(f"(evaluate those with --splits={held_out})")


@pytest.mark.slow
def test_periodic_evaluation_lands_in_metrics_jsonl(tmp_path):
    from himl.configs import tiny
    from himl.train.loop import train_and_evaluate

    config = tiny.get_config()
    config.train.steps, config.eval.every, config.eval.at_start = 8, 4, False
    summary = train_and_evaluate(config, tmp_path, progress=False)
    assert "untrained" not in summary
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evaluated = {r["step"] for r in rows if "eval/unseen/class/recall@1" in r}
    assert evaluated == {4, 8}  # every 4 steps, and at the end
    assert any("eval/unseen/linear_probe/accuracy" in r for r in rows)
    final = next(r for r in rows if r["step"] == 8 and "eval/unseen/class/map@r" in r)
    assert final["eval/unseen/class/map@r"] == pytest.approx(
        summary["results"]["unseen"]["class"]["map@r"]
    )
    # Split-wide numbers (hierarchical metrics) land there too.
    assert final["eval/unseen/mistake_severity"] == pytest.approx(
        summary["results"]["unseen"]["mistake_severity"]
    )


def test_eval_scalars_name_levels_and_split_wide_numbers_and_skip_empty_evaluations():
    from himl.train.loop import write_eval_scalars

    class Rows:
        def __init__(self):
            self.rows = []

        def write(self, step, scalars):
            self.rows.append((step, scalars))

    results = {
        "unseen": {
            "class": {"map@r": 0.5, "num_classes": 3},
            "linear_probe": {"accuracy": 0.75},
            "mistake_severity": 1.5,
            "num_levels": 2,
        }
    }
    writer = Rows()
    write_eval_scalars(writer, 4, results, ("group", "class"))
    write_eval_scalars(writer, 8, {}, ("group", "class"))  # no split evaluated: no row
    assert writer.rows == [
        (
            4,
            {
                "eval/unseen/mistake_severity": 1.5,
                "eval/unseen/class/map@r": 0.5,
                "eval/unseen/linear_probe/accuracy": 0.75,
            },
        )
    ]


def test_splits_that_cannot_be_measured_are_named_before_any_embedding(setup):
    """A split whose every class holds one image: the probe has no test half (one line
    naming the split and the way out), and retrieval at that level would read 0 (a warning)."""
    dataset, model, variables, config = setup
    labels = np.stack([np.arange(6) // 3, np.arange(6), np.arange(6)], axis=1)
    single = Split(images=np.zeros((6, 12, 12, 1), np.uint8), labels=labels)
    dataset = Dataset("toy", dataset.level_names, 1, {}, {**dataset.splits, "few": single})
    config.splits = ("few",)
    with pytest.raises(EvalInputError) as error:
        build_evaluators(config, dataset)
    assert str(error.value).startswith(
        "linear_probe on split 'few': each of its 6 images is the only one of its class"
    )
    assert str(error.value).endswith("--config.eval.evaluators=retrieval,query_gallery")
    config.evaluators = ("retrieval",)
    with pytest.warns(UserWarning, match="split 'few': each image is the only one of its "):
        build_evaluators(config, dataset)
    # One label for the whole split at a level: everything there would read 100.
    labels[:, 0] = 0
    with pytest.warns(UserWarning, match="split 'few': all its 6 images have one 'group' label"):
        build_evaluators(config, dataset)


def test_a_query_split_sharing_images_with_its_gallery_is_refused(setup):
    """Each shared query would find itself: Recall@1 of 100 measured nothing (train is the
    gallery split itself here; the same name twice is refused by the config check)."""
    dataset, _, _, config = setup
    config.query_gallery = ("train", "gallery")
    with pytest.raises(EvalInputError) as error:
        build_evaluators(config, dataset)
    assert str(error.value).startswith(
        "config.eval.query_gallery: query split 'train' and gallery split 'gallery' share 50 "
        "images, which would find themselves; give disjoint splits"
    )
    config.query_gallery = ("gallery", "gallery")
    with pytest.raises(ConfigError, match="names 'gallery' twice: every query would find"):
        check_eval_config(config)

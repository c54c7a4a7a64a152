"""Retrieval, clustering, hierarchical and probe metrics against brute-force references."""

import json

import numpy as np
import pytest
from references.retrieval import ranking, reference_metrics, vote_reference
from sklearn.metrics import normalized_mutual_info_score

from himl.eval import (
    clustering_metrics,
    hierarchical_metrics,
    query_gallery_retrieval_metrics,
    retrieval_metrics,
)
from himl.eval.hierarchical import majority_vote
from himl.eval.probe import linear_probe


def assert_close(result, ref):
    for key, value in ref.items():
        assert result[key] == pytest.approx(value, abs=1e-9), key


def clustered(n, num_classes, d=8, noise=1.0, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    x = rng.normal(size=(num_classes, d))[labels] + noise * rng.normal(size=(n, d))
    return x.astype(np.float32), labels


@pytest.mark.parametrize("block_size", [4096, 33])
def test_retrieval_matches_reference_on_random_data(block_size):
    x, y = clustered(300, 25, noise=1.5)
    y[:3] = 1000 + np.arange(3)  # three singleton classes
    ks = (1, 2, 4, 8, 16)
    res = retrieval_metrics(x, y, ks=ks, block_size=block_size)
    assert_close(res, reference_metrics(x, y, x, y, ks, exclude_self=True))
    assert res["num_queries"] == 300 and res["num_left_out"] == 3
    json.dumps(res)
    assert all(type(v) in (int, float) for v in res.values())


def test_query_gallery_matches_reference():
    g, gl = clustered(200, 20, seed=1)
    q, ql = clustered(70, 24, seed=1)  # labels 20..23 have no gallery member
    ks = (1, 10, 20, 30)
    res = query_gallery_retrieval_metrics(q, ql, g, gl, ks=ks, block_size=64)
    ref = reference_metrics(q, ql, g, gl, ks, exclude_self=False)
    assert ref["num_left_out"] > 0
    assert_close(res, ref)


def test_perfect_and_worst_rankings():
    # Two tight, far-apart pairs: perfect ranking.
    x = np.array([[1, 0], [1, 0.01], [-1, 0], [-1, 0.01]], np.float32)
    res = retrieval_metrics(x, [0, 0, 1, 1], ks=(1, 2))
    for key in ("recall@1", "recall@2", "precision@1", "r_precision", "map@r"):
        assert res[key] == 1.0
    # Same points, labels crossed: every first neighbour is wrong (R = 1, so R-Precision
    # and MAP@R are 0 too), and the match is always within 3.
    res = retrieval_metrics(x, [0, 1, 0, 1], ks=(1, 2, 3))
    assert res["recall@1"] == res["precision@1"] == res["r_precision"] == res["map@r"] == 0.0
    assert res["recall@3"] == 1.0


def test_map_at_r_hand_computed():
    # Query 0 (class 0, R = 2): neighbours ranked [wrong, right, right].
    # P@R = 1/2; MAP@R = (0 + 1/2) / 2 = 1/4  (Musgrave et al. 2020, Sec. 3.2 example style).
    x = np.array([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.9, 0.436]], np.float32)
    y = np.array([0, 0, 0, 1])
    order = ranking(x, x, True)
    assert list(order[0]) == [3, 1, 2]
    res = retrieval_metrics(x, y, ks=(1,))
    ref = reference_metrics(x, y, x, y, (1,), True)
    assert_close(res, ref)
    rel0 = np.array([0, 1])
    assert (np.cumsum(rel0) / [1, 2] * rel0).sum() / 2 == 0.25


def test_ties_broken_by_index():
    # All points identical: neighbours are in index order, so the labels decide.
    x = np.ones((4, 3), np.float32)
    res = retrieval_metrics(x, [0, 1, 0, 1], ks=(1, 2))
    # Query 0 -> [1, 2, 3]: miss at 1. Query 1 -> [0, 2, 3]: miss at 1, 2 and hit at 3.
    # Query 2 -> [0, 1, 3]: hit. Query 3 -> [0, 1, 2]: miss, hit at 2.
    assert res["recall@1"] == 0.25
    assert res["recall@2"] == 0.75


def test_all_singletons_and_r_cap():
    x, _ = clustered(20, 3)
    res = retrieval_metrics(x, np.arange(20), ks=(1, 4))
    assert res["num_left_out"] == 20 and res["recall@4"] == 0.0 and res["map@r"] == 0.0
    y = np.zeros(20, np.int64)
    res = retrieval_metrics(x, y, ks=(1,), max_k=5)
    assert res["k"] == 5 and res["num_r_truncated"] == 20 and res["map@r"] == 1.0


def test_large_k_never_changes_the_r_cap():
    """R is capped at max_k whatever the ks: a Recall@K beyond the cap fetches more
    neighbours but leaves R-Precision and MAP@R as PML's capped definition has them."""
    x, y = clustered(120, 3, noise=2.0)  # R ~ 40 > max_k
    for ks in [(1, 2), (1, 2, 30, 100)]:
        res = retrieval_metrics(x, y, ks=ks, max_k=8)
        assert_close(res, reference_metrics(x, y, x, y, ks, exclude_self=True, r_cap=8))
        assert res["num_r_truncated"] == 120
        tree = np.stack([y // 2, y], 1)
        levels = hierarchical_metrics(
            x, tree, ks=ks, level_names=["coarse", "fine"], clustering=False, max_k=8
        )
        for level, labels in zip(("coarse", "fine"), (y // 2, y), strict=True):
            ref = reference_metrics(x, labels, x, labels, ks, exclude_self=True, r_cap=8)
            assert levels[level]["map@r"] == pytest.approx(ref["map@r"], abs=1e-9)
    g, gl = clustered(90, 3, seed=1)
    res = query_gallery_retrieval_metrics(x[:20], y[:20], g, gl, ks=(1, 50), max_k=8)
    assert_close(res, reference_metrics(x[:20], y[:20], g, gl, (1, 50), False, r_cap=8))


def test_map_at_r_is_exact_without_a_cap_and_capped_at_1024_by_default():
    """R above 1024 (two classes of ~1,100): the default caps it and counts those queries;
    max_k=None gives the definition (Musgrave et al.; PML's AccuracyCalculator(k=None))."""
    x, y = clustered(2200, 2, noise=3.0)
    capped = retrieval_metrics(x, y, ks=(1,))
    assert capped["r_cap"] == 1024 and capped["num_r_truncated"] == 2200
    exact = retrieval_metrics(x, y, ks=(1,), max_k=None)
    assert exact["num_r_truncated"] == 0 and exact["r_cap"] == max(np.bincount(y)) - 1
    for result, r_cap in [(capped, 1024), (exact, None)]:
        ref = reference_metrics(x, y, x, y, (1,), exclude_self=True, r_cap=r_cap)
        for key, value in ref.items():  # sums over 2,200 queries: float64 rounding apart
            assert result[key] == pytest.approx(value, abs=1e-7), key
    assert abs(exact["map@r"] - capped["map@r"]) > 1e-3


def test_a_repeated_k_is_refused():
    x, y = clustered(10, 2)
    with pytest.raises(ValueError, match="must not repeat a K"):
        retrieval_metrics(x, y, ks=(1, 1, 2))


def test_retrieval_validation():
    x, y = clustered(10, 2)
    with pytest.raises(ValueError, match="9 entries but there are 10"):
        retrieval_metrics(x, y[:9])
    bad = x.copy()
    bad[[0, 3], 1] = np.nan
    with pytest.raises(ValueError, match="2 of 10 rows containing NaN"):
        retrieval_metrics(bad, y)
    with pytest.raises(ValueError, match="empty"):
        retrieval_metrics(np.zeros((0, 3)), np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="integers"):
        retrieval_metrics(x, y.astype(float))


def test_clustering_perfect_and_reference():
    x, y = clustered(200, 5, noise=0.01)
    res = clustering_metrics(x, y, seed=0)
    assert res["nmi"] == pytest.approx(1.0) and res["ami"] == pytest.approx(1.0)
    assert res["num_clusters"] == 5
    x, y = clustered(200, 5, noise=3.0)
    a = clustering_metrics(x, y, seed=3, average="geometric")
    b = clustering_metrics(x, y, seed=3)
    assert a["nmi"] == b["nmi_geometric"] and b["nmi"] == b["nmi_arithmetic"]
    assert 0.0 < b["nmi"] < 1.0
    # Deterministic in the seed.
    assert clustering_metrics(x, y, seed=3) == b
    perm = np.random.default_rng(0).permutation(5)
    assert normalized_mutual_info_score(y, perm[y]) == pytest.approx(1.0)


def test_majority_vote():
    got = majority_vote(np.array([[3, 1, 1, 3], [2, 2, 5, 5], [0, 1, 2, 3], [7, 7, 7, 1]]))
    np.testing.assert_array_equal(got, [3, 2, 0, 7])


def test_hierarchical_against_per_level_reference():
    x, fine = clustered(240, 12, noise=1.2, seed=4)
    labels = np.stack([fine // 4, fine], 1)
    ks = (1, 2, 4)
    res = hierarchical_metrics(x, labels, ks=ks, level_names=["coarse", "fine"], clustering=False)
    for name, y in (("coarse", fine // 4), ("fine", fine)):
        ref = retrieval_metrics(x, y, ks=ks)
        for key in ("recall@1", "recall@4", "precision@1", "r_precision", "map@r"):
            assert res[name][key] == pytest.approx(ref[key]), (name, key)
    order = ranking(x, x, True)
    for k in ks:
        nbr = labels[order[:, :k]]
        h = 2 - np.argmax(
            np.concatenate([nbr != labels[:, None], np.ones((240, k, 1), bool)], -1), -1
        )
        assert res[f"mean_lca_height@{k}"] == pytest.approx(h.mean())
        assert res[f"hierarchical_precision@{k}"] == pytest.approx(1 - h.mean() / 2)
        for name, y in (("coarse", fine // 4), ("fine", fine)):
            votes = [vote_reference(list(r)) for r in y[order[:, :k]]]
            assert res[name][f"accuracy@{k}"] == pytest.approx(np.mean(votes == y))
    top1 = labels[order[:, 0]]
    wrong = top1[:, 1] != fine
    sev = np.where(top1[wrong, 0] == labels[wrong, 0], 1, 2).mean()
    assert res["mistake_severity"] == pytest.approx(sev)
    json.dumps(res)


def test_hierarchical_perfect_and_clustering():
    x, fine = clustered(120, 6, noise=0.01, seed=5)
    labels = np.stack([fine // 3, fine], 1)
    x = x + 20.0 * np.eye(8, dtype=np.float32)[fine // 3]  # coarse classes far apart
    res = hierarchical_metrics(x, labels, ks=(1, 8))
    for level in ("level_0", "level_1"):
        assert res[level]["recall@1"] == 1.0 and res[level]["nmi"] == pytest.approx(1.0)
        assert res[level]["accuracy@8"] == 1.0
    assert res["mean_lca_height@1"] == 0.0 and res["hierarchical_precision@1"] == 1.0
    with pytest.raises(ValueError, match="level names"):
        hierarchical_metrics(x, labels, level_names=["a"])


def test_linear_probe():
    x, y = clustered(300, 4, noise=0.2, seed=6)
    res = linear_probe(x[:200], y[:200], x[200:], y[200:], seed=0)
    assert res["accuracy"] == 1.0
    again = linear_probe(x[:200], y[:200], x[200:], y[200:], seed=0)
    assert again == res
    rng = np.random.default_rng(0)
    noise = linear_probe(rng.normal(size=(200, 8)), y[:200], rng.normal(size=(100, 8)), y[200:])
    assert noise["accuracy"] < 0.6
    json.dumps(res)


def test_ks_may_be_one_int_and_anything_else_is_refused_in_one_line():
    """`ks=1` means `ks=(1,)`; a string, a float or a non-integer entry (which `int()` would
    silently truncate or split into digits) is refused saying what to pass."""
    x, y = clustered(12, 3)
    assert retrieval_metrics(x, y, ks=4) == retrieval_metrics(x, y, ks=(4,))
    assert "recall@4" in retrieval_metrics(x, y, ks=np.int64(4))
    g = query_gallery_retrieval_metrics(x[:4], y[:4], x[4:], y[4:], ks=2)
    assert g == query_gallery_retrieval_metrics(x[:4], y[:4], x[4:], y[4:], ks=[2])
    for bad in ("15", 1.0, (1.5, 2), None, (True,), (1, "2")):
        with pytest.raises(ValueError) as err:
            retrieval_metrics(x, y, ks=bad)
        assert str(err.value) == (
            f"ks must be a positive int or a sequence of them, e.g. ks=(1, 10), got {bad!r}"
        )


def test_class_names_give_the_numbers_of_their_ids():
    """Labels may be class names (as read from a CSV): each metric gives what it gives for
    integer ids, query and gallery (probe train and test) sharing one encoding even when
    their name sets differ; integers on one side and names on the other are refused."""
    x, y = clustered(160, 6, noise=1.0, seed=7)
    names = np.array(["zebra", "ant", "Ünicode", "b c", "ant2", "0"])[y]
    assert retrieval_metrics(x, names) == retrieval_metrics(x, y)
    assert retrieval_metrics(x, names.astype(object)) == retrieval_metrics(x, y)
    # The same clusters; sklearn sums the contingency table in another order (1 ulp).
    assert clustering_metrics(x, list(names), seed=0) == pytest.approx(
        clustering_metrics(x, y, seed=0), rel=1e-12
    )
    q, g = slice(0, 50), slice(50, None)
    g_keep = y[g] != 2  # the query side has a name the gallery lacks
    assert query_gallery_retrieval_metrics(
        x[q], names[q], x[g][g_keep], names[g][g_keep]
    ) == query_gallery_retrieval_metrics(x[q], y[q], x[g][g_keep], y[g][g_keep])
    probe = linear_probe(x[50:], names[50:], x[:50], names[:50], seed=0)
    assert probe["accuracy"] == linear_probe(x[50:], y[50:], x[:50], y[:50], seed=0)["accuracy"]
    tree = np.stack([y // 3, y], 1)
    name_tree = np.stack([np.array(["odd", "even"])[y // 3], names], 1)
    assert hierarchical_metrics(x, name_tree, clustering=False) == hierarchical_metrics(
        x, tree, clustering=False
    )
    with pytest.raises(ValueError, match="query_labels are class names but gallery_labels"):
        query_gallery_retrieval_metrics(x[q], names[q], x[g], y[g])
    with pytest.raises(ValueError, match="integers or class names"):
        retrieval_metrics(x, [None] * len(x))

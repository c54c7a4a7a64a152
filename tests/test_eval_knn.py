"""Blocked exact kNN against a brute-force NumPy reference with the same tie rule."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from himl.eval.knn import iter_knn, knn


def brute_force(queries, gallery, k, metric, exclude_self):
    """Full argsort in float64: best score first, then smaller gallery index."""
    q = np.asarray(queries, np.float64)
    g = np.asarray(gallery, np.float64)
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        g = g / np.linalg.norm(g, axis=1, keepdims=True)
        cost = -(q[:, None, :] * g[None, :, :]).sum(-1)  # per pair: exact ties stay exact
    else:
        cost = np.sqrt(((q[:, None, :] - g[None, :, :]) ** 2).sum(-1))
    if exclude_self:
        cost[np.arange(len(q)), np.arange(len(q))] = np.inf
    order = np.argsort(cost, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(cost, order, axis=1)


def data_with_duplicates(n, d, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x[5] = x[2]
    x[n - 1] = x[2]  # duplicates of row 2 spread over different blocks
    x[7] = x[2]
    x[11] = 2.0 * x[3]  # a cosine tie (same direction), not a Euclidean one
    return x


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("block_size", [4096, 37, 5])
def test_self_search_matches_brute_force(metric, block_size):
    x = data_with_duplicates(203, 12)
    idx, scores = knn(x, k=9, metric=metric, block_size=block_size)
    ref_idx, ref_cost = brute_force(x, x, 9, metric, exclude_self=True)
    assert idx.dtype == np.int32 and scores.dtype == np.float32
    assert idx.shape == scores.shape == (203, 9)
    np.testing.assert_array_equal(idx, ref_idx)
    ref_scores = -ref_cost if metric == "cosine" else ref_cost
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    assert not (idx == np.arange(203)[:, None]).any()
    # Duplicates of the query are found (self excluded by index, not by distance).
    np.testing.assert_array_equal(idx[2, :3], [5, 7, 202])
    if metric == "euclidean":
        np.testing.assert_array_equal(scores[2, :3], 0.0)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("block_size", [1000, 23])
def test_separate_gallery_matches_brute_force(metric, block_size):
    g = data_with_duplicates(150, 8, seed=1)
    q = np.concatenate([g[:3], np.random.default_rng(2).normal(size=(58, 8))]).astype(np.float32)
    idx, scores = knn(q, g, k=6, metric=metric, block_size=block_size)
    ref_idx, ref_cost = brute_force(q, g, 6, metric, exclude_self=False)
    np.testing.assert_array_equal(idx, ref_idx)
    ref_scores = -ref_cost if metric == "cosine" else ref_cost
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    # The query itself is in the gallery and not excluded: it comes first (ties by index).
    np.testing.assert_array_equal(idx[0, 0], 0)
    np.testing.assert_array_equal(idx[2, :4], [2, 5, 7, 149])


@pytest.mark.parametrize("k", [1, 3, 20])
def test_grouped_block_top_k_path(k):
    # Blocks wide enough for the two-stage (column-group) top-k, with many exact ties.
    x = data_with_duplicates(700, 6, seed=3)
    x[100:160] = x[50]  # a large run of duplicates spanning several column groups
    x[600:610] = x[50]
    idx, _ = knn(x, k=k, block_size=4096)
    ref_idx, _ = brute_force(x, x, k, "cosine", exclude_self=True)
    np.testing.assert_array_equal(idx, ref_idx)


def test_all_equal_points_order_by_index():
    x = np.ones((50, 4), np.float32)
    idx, _ = knn(x, k=49, block_size=8)
    for i in (0, 17, 49):
        np.testing.assert_array_equal(idx[i], [j for j in range(50) if j != i])


def test_exclude_self_with_explicit_gallery_and_jax_input():
    x = data_with_duplicates(40, 5)
    # Explicit gallery: the streaming search; gallery=None: the symmetric one.
    a, _ = knn(jnp.asarray(x), jnp.asarray(x), k=3, exclude_self=True, block_size=16)
    b, _ = knn(x, k=3, block_size=16)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_streaming_self_search_matches_brute_force(monkeypatch, metric):
    # `himl.eval.knn` the attribute is the function (re-export); patch the module itself.
    monkeypatch.setattr(sys.modules["himl.eval.knn"], "SYMMETRIC_MAX_ENTRIES", 0)
    x = data_with_duplicates(203, 12)
    idx, _ = knn(x, k=9, metric=metric, block_size=37)
    np.testing.assert_array_equal(idx, brute_force(x, x, 9, metric, exclude_self=True)[0])


def test_k_equals_gallery_size_and_iter_blocks():
    x = data_with_duplicates(30, 3)
    idx, _ = knn(x, k=29, block_size=7)
    np.testing.assert_array_equal(np.sort(idx, axis=1)[0], np.arange(1, 30))
    starts = [s for s, i, _ in iter_knn(x, k=2, block_size=7)]
    assert starts[0] == 0 and len(starts) > 1
    parts = np.concatenate([i for _, i, _ in iter_knn(x, k=2, block_size=7)])
    np.testing.assert_array_equal(parts, idx[:, :2])


def test_validation_errors():
    x = np.zeros((10, 4), np.float32) + 1.0
    with pytest.raises(ValueError, match="k must be in 1..9"):
        knn(x, k=10)
    with pytest.raises(ValueError, match="empty"):
        knn(np.zeros((0, 4), np.float32), k=1)
    bad = x.copy()
    bad[[1, 4, 6], 2] = np.nan
    with pytest.raises(ValueError, match="3 of 10 rows containing NaN"):
        knn(bad, k=2)
    with pytest.raises(ValueError, match="dimension"):
        knn(x, np.ones((5, 3), np.float32), k=2)
    with pytest.raises(ValueError, match="shape"):
        knn(np.ones(5), k=1)
    with pytest.raises(ValueError, match="metric"):
        knn(x, k=1, metric="manhattan")


# Sharded search: the gallery split over the 8 forced CPU devices (tests/conftest.py).


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("block_size", [4096, 37, 5])
def test_sharded_self_search_equals_one_device_and_brute_force(metric, block_size):
    from himl.eval.knn import search_mesh

    mesh = search_mesh()
    assert mesh is not None and mesh.size == 8
    x = data_with_duplicates(203, 12)
    idx, scores = knn(x, k=9, metric=metric, block_size=block_size, mesh=mesh)
    one_idx, one_scores = knn(x, k=9, metric=metric, block_size=block_size)
    np.testing.assert_array_equal(idx, one_idx)
    np.testing.assert_allclose(scores, one_scores, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(idx, brute_force(x, x, 9, metric, exclude_self=True)[0])
    assert idx.dtype == np.int32 and scores.dtype == np.float32
    np.testing.assert_array_equal(idx[2, :3], [5, 7, 202])  # duplicates on other shards


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_sharded_query_gallery_and_ties_across_shards(metric):
    from himl.eval.knn import search_mesh

    g = data_with_duplicates(150, 8, seed=1)
    g[100:140] = g[50]  # a run of equal rows spanning several devices' shards
    q = np.concatenate([g[:3], g[50:51], np.random.default_rng(2).normal(size=(57, 8))])
    q = q.astype(np.float32)
    idx, scores = knn(q, g, k=30, metric=metric, block_size=7, mesh=search_mesh())
    ref_idx, ref_cost = brute_force(q, g, 30, metric, exclude_self=False)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(scores, -ref_cost if metric == "cosine" else ref_cost, atol=1e-5)
    np.testing.assert_array_equal(idx[3, :30], [50, *range(100, 129)])


def test_sharded_small_gallery_fewer_rows_than_devices_times_k():
    from himl.eval.knn import search_mesh

    # 12 rows over 8 devices: most shards hold 2 rows (or only padding), k = 11.
    x = data_with_duplicates(12, 3)
    idx, _ = knn(x, k=11, block_size=4096, mesh=search_mesh())
    np.testing.assert_array_equal(idx, brute_force(x, x, 11, "cosine", exclude_self=True)[0])
    one_device, _ = knn(x, k=11, mesh=search_mesh(jax.devices()[:1]))  # None: plain search
    np.testing.assert_array_equal(idx, one_device)


def test_sharded_metrics_equal_one_device():
    from himl.eval.hierarchical import hierarchical_metrics
    from himl.eval.knn import search_mesh

    rng = np.random.default_rng(0)
    labels = np.stack([rng.integers(0, 3, 300), rng.integers(0, 5, 300)], axis=1)
    x = (rng.normal(size=(300, 6)) + labels[:, 1:] * 0.5).astype(np.float32)
    kw = dict(ks=(1, 4), block_size=32, clustering=False)
    assert hierarchical_metrics(x, labels, mesh=search_mesh(), **kw) == hierarchical_metrics(
        x, labels, **kw
    )


def test_sharded_validation_errors():
    from himl.eval.knn import search_mesh

    bad = np.ones((10, 4), np.float32)
    bad[[1, 4], 0] = np.inf
    with pytest.raises(ValueError, match="2 of 10 rows containing inf"):
        knn(bad, k=2, mesh=search_mesh())
    with pytest.raises(ValueError, match="k must be in 1..9"):
        knn(np.ones((10, 4), np.float32), k=10, mesh=search_mesh())


def test_sharded_search_temp_memory_independent_of_gallery_size():
    """Per-device scratch memory of the compiled sharded search is set by the block size:
    a 4x larger gallery (more blocks per shard) needs no more temporary memory."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from himl.eval.knn import _sharded_search_fn, search_mesh

    mesh = search_mesh()
    axis = mesh.axis_names[0]

    def temp_bytes(blocks_per_device, bg=64, bq=64, d=16):
        rows = mesh.size * blocks_per_device * bg
        fn = _sharded_search_fn(mesh, k=5, euclidean=False, exclude_self=True, num_gallery=rows)
        rep, shard = NamedSharding(mesh, P()), NamedSharding(mesh, P(axis))
        args = (
            jax.ShapeDtypeStruct((bq, d), jnp.float32, sharding=rep),
            jax.ShapeDtypeStruct((), jnp.int32, sharding=rep),
            jax.ShapeDtypeStruct(
                (mesh.size * blocks_per_device, bg, d), jnp.float32, sharding=shard
            ),
            jax.ShapeDtypeStruct((mesh.size * blocks_per_device, bg), jnp.float32, sharding=shard),
        )
        stats = fn.lower(*args).compile().memory_analysis()
        if stats is None:
            pytest.skip("no memory analysis on this backend")
        return stats.temp_size_in_bytes

    small, large = temp_bytes(4), temp_bytes(16)
    assert 0 < large <= small, (small, large)

"""HiMulCon / HiConE / HiMulConE against a slow NumPy reference written from the definitions.

The reference-mode oracle replays the official algorithm step by step (SupCon per level,
then re-sort the batch by its unique label prefixes and keep first occurrences); the
paper-mode oracle evaluates the published equations pair by pair.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads
from references.hierarchical import oracle

from himl.losses import get_loss, hicone, himulcon, himulcone, supcon
from himl.losses.registry import default_hparams

LOSSES = {"himulcon": himulcon, "hicone": hicone, "himulcone": himulcone}

ALL = [(loss, mode) for loss in LOSSES for mode in ("reference", "paper")]


@functools.partial(jax.jit, static_argnames="level_penalty")
def all_losses(x, y, temperature=0.07, level_penalty="exp", base_temperature=0.07):
    """The six (loss, mode) values in the order of ALL; one compile per shape and penalty."""
    kw = {"temperature": temperature, "base_temperature": base_temperature}
    penalty = {"level_penalty": level_penalty}
    return jnp.stack(
        [LOSSES[n](x, y, mode=m, **kw, **({} if n == "hicone" else penalty)) for n, m in ALL]
    )


all_jacobians = jax.jit(jax.jacrev(all_losses))


def all_oracles(x, y, **kw):
    return np.array([oracle(x, y, loss, mode, **kw) for loss, mode in ALL])


def random_batch(rng, n=8, views=2, dim=4, num_coarse=2, num_fine=2, tie_free=False):
    """Labels [coarse, fine, instance] forming a tree; a fine label has one parent."""
    coarse = rng.integers(0, num_coarse, n)
    fine = coarse * 10 + rng.integers(0, num_fine, n)
    instance = rng.permutation(n) if tie_free else rng.integers(0, 3, n)
    if tie_free:  # make rows without their last column distinct: put the id one level up
        labels = np.stack([coarse, fine, fine * 100 + instance, instance], 1)
    else:
        labels = np.stack([coarse, fine, instance], 1)
    x = rng.normal(size=(n, views, dim)).astype(np.float32)
    return x, labels.astype(np.int32)


def assert_close(got, want, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(np.asarray(got), want, rtol=rtol, atol=atol, err_msg=str(ALL))


# --------------------------------------------------------------------------- oracle match


def test_matches_oracle_on_random_batches():
    rng = np.random.default_rng(0)
    for _ in range(4):
        x, y = random_batch(rng)
        assert_close(all_losses(x, y), all_oracles(x, y))


@pytest.mark.parametrize("level_penalty", ["pow2", "none"])
def test_penalties_and_temperature_match_oracle(level_penalty):
    x, y = random_batch(np.random.default_rng(1))
    got = all_losses(x, y, temperature=0.2, level_penalty=level_penalty)
    assert_close(got, all_oracles(x, y, t=0.2, level_penalty=level_penalty))


def test_base_temperature_scales_reference_only():
    x, y = random_batch(np.random.default_rng(2))
    got = np.asarray(all_losses(x, y, temperature=0.1, base_temperature=0.05))
    assert_close(got, all_oracles(x, y, t=0.1, bt=0.05))
    again = np.asarray(all_losses(x, y, temperature=0.1, base_temperature=1.0))
    paper = [i for i, (_, mode) in enumerate(ALL) if mode == "paper"]
    assert_close(again[paper], got[paper], rtol=1e-6)


HAND = {
    # Rows 0 and 1 tie on (coarse, fine): the representative is the one with the smaller
    # batch index; rows 2 and 3 differ in fine, so row 3 (fine 4 < 5) represents coarse 1.
    "ties": np.array([[0, 1, 9], [0, 1, 2], [1, 5, 0], [1, 4, 1], [0, 0, 3]]),
    "one_class": np.array([[3, 7, 0], [3, 7, 1], [3, 7, 2], [3, 7, 3], [3, 7, 4]]),
    "all_distinct": np.array([[0, 0, 0], [1, 1, 1], [2, 2, 2], [3, 3, 3], [4, 4, 4]]),
    "duplicate_rows": np.array([[1, 2, 3], [1, 2, 3], [1, 2, 3], [0, 1, 1], [0, 1, 1]]),
    "negative_labels": np.array([[-1, -5, 0], [-1, -4, 1], [2, 7, 2], [-1, -5, 3], [2, 7, 4]]),
}


@pytest.mark.parametrize("case", sorted(HAND))
def test_matches_oracle_on_hand_built_cases(case):
    y = HAND[case].astype(np.int32)
    x = np.random.default_rng(3).normal(size=(5, 2, 4)).astype(np.float32)
    assert_close(all_losses(x, y), all_oracles(x, y))


def test_representative_is_lexicographically_smallest_then_first():
    """Swapping the two tied rows changes which embedding survives, hence the value."""
    y = HAND["ties"].astype(np.int32)
    x = np.random.default_rng(4).normal(size=(5, 2, 4)).astype(np.float32)
    swapped = x.copy()
    swapped[[0, 1]] = x[[1, 0]]
    a, b = np.asarray(all_losses(x, y)), np.asarray(all_losses(swapped, y))
    ref = [i for i, (_, mode) in enumerate(ALL) if mode == "reference"]
    assert np.all(np.abs(a[ref] - b[ref]) > 1e-4 * np.abs(a[ref]))
    assert_close(b, all_oracles(swapped, y))


def test_two_levels_reduce_to_supcon():
    """With L = 2 only the coarse level exists: SupCon (t = 0.07) divided by 2."""
    x, y = random_batch(np.random.default_rng(5))
    want = jax.jit(functools.partial(supcon, temperature=0.07))(x, jnp.asarray(y[:, 0])) / 2
    got = jax.jit(functools.partial(himulcon, level_penalty="none"))(x, y[:, [0, 2]])
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_single_view_input_and_anchors_without_positives():
    """[N, D] input is V = 1; singleton groups then have no positive and drop out."""
    x, y = random_batch(np.random.default_rng(6), views=1)
    y[0, :2] = [7, 70]  # a coarse class of its own
    got = all_losses(x[:, 0], y)
    assert_close(got, all_oracles(x, y))
    assert_close(got, all_losses(x, y), rtol=1e-6)
    assert np.all(np.isfinite(all_jacobians(x[:, 0], y)))
    # All labels distinct and (almost) all vectors zero: no positive anywhere -> 0.
    distinct = np.repeat(np.arange(8, dtype=np.int32)[:, None], 3, axis=1)
    zeros = jnp.zeros((8, 4)).at[0, 0].set(1.0)
    assert np.all(np.asarray(all_losses(zeros, distinct)) == 0.0)
    assert np.all(np.isfinite(all_jacobians(zeros, distinct)))


def test_hicone_clamp_is_active_somewhere():
    """The oracle match is vacuous if the clamp never binds; make sure it does."""
    rng = np.random.default_rng(7)
    bound = np.zeros(2, bool)
    for _ in range(4):
        x, y = random_batch(rng)
        plain = np.asarray(all_losses(x, y, level_penalty="none"))
        # ALL order: himulcon ref/paper, hicone ref/paper, ...
        bound |= plain[2:4] > plain[0:2] * (1 + 1e-4)
    assert bound.all()


# --------------------------------------------------------------------------- robustness


EDGE = {
    "plain": lambda x: x,
    "zero_vectors": lambda x: x.at[0].set(0.0).at[3, 1].set(0.0),
    "duplicate_embeddings": lambda x: x.at[1].set(x[0]).at[2, 1].set(x[2, 0]),
    "bf16": lambda x: x.astype(jnp.bfloat16),
}


@pytest.mark.parametrize("edge", sorted(EDGE))
def test_finite_values_and_gradients(edge):
    x = EDGE[edge](jax.random.normal(jax.random.PRNGKey(0), (5, 2, 4)))
    for case in ("ties", "one_class", "all_distinct", "duplicate_rows"):
        y = jnp.asarray(HAND[case], jnp.int32)
        for temperature in (0.01, 0.07):
            values = all_losses(x, y, temperature=temperature)
            jac = all_jacobians(x, y, temperature=temperature)
            assert values.dtype == jnp.float32 and np.all(np.isfinite(values)), case
            assert np.all(np.isfinite(np.asarray(jac, np.float32))), case


def test_single_label_column_gives_zero():
    assert np.all(np.asarray(all_losses(jnp.ones((4, 2, 3)), jnp.arange(4)[:, None])) == 0.0)


def test_gradients_match_finite_differences():
    y = HAND["ties"].astype(np.int32)
    x = np.random.default_rng(8).normal(size=(5, 2, 4)).astype(np.float32)
    check_grads(lambda e: all_losses(e, y, temperature=0.5), (jnp.asarray(x),), order=1,
                modes=["rev"], eps=1e-2, atol=5e-2, rtol=5e-2)  # fmt: skip


def test_sharded_batch_gives_same_value():
    devices = np.array(jax.devices())
    mesh = jax.sharding.Mesh(devices, ("batch",))
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
    x, y = random_batch(np.random.default_rng(9), n=8 * len(devices))
    got = all_losses(jax.device_put(x, spec), jax.device_put(y, spec))
    assert_close(got, all_losses(x, y), rtol=1e-6)


# --------------------------------------------------------------------------- API


def test_errors():
    x, y = jnp.ones((4, 2, 3)), jnp.zeros((4, 3), jnp.int32)
    with pytest.raises(ValueError, match="mode"):
        himulcon(x, y, mode="official")
    with pytest.raises(ValueError, match="level_penalty"):
        himulcone(x, y, level_penalty="linear")
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        hicone(x, jnp.zeros((4,), jnp.int32))
    with pytest.raises(ValueError, match="labels"):
        himulcon(x, jnp.zeros((5, 3), jnp.int32))
    with pytest.raises(ValueError, match="integers"):
        himulcon(x, jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match="embeddings"):
        himulcon(jnp.ones((4, 2, 3, 1)), y)
    with pytest.raises(ValueError, match="temperature"):
        himulcon(x, y, temperature=0.0)


def test_registry_defaults():
    assert default_hparams("himulcone") == {
        "chunk_size": None,
        "temperature": 0.07,
        "mode": "reference",
        "level_penalty": "exp",
        "base_temperature": 0.07,
    }
    assert "level_penalty" not in default_hparams("hicone")
    assert get_loss("hicone") is hicone


# --------------------------------------------------------------------------- properties


@st.composite
def tree_batches(draw, tie_free):
    seed = draw(st.integers(0, 2**31 - 1))
    num_coarse = draw(st.integers(1, 3))
    return random_batch(np.random.default_rng(seed), num_coarse=num_coarse, tie_free=tie_free)


PROPERTY = settings(max_examples=20, deadline=None, derandomize=True)
PAPER = [i for i, (_, mode) in enumerate(ALL) if mode == "paper"]


@PROPERTY
@given(tree_batches(tie_free=True), st.randoms(use_true_random=False))
def test_batch_permutation_invariance(batch, random):
    """Holds in both modes when no two rows tie outside the instance column."""
    x, y = batch
    perm = list(range(len(y)))
    random.shuffle(perm)
    assert_close(all_losses(x[perm], y[perm]), np.asarray(all_losses(x, y)), rtol=2e-5)


@PROPERTY
@given(tree_batches(tie_free=False), st.randoms(use_true_random=False))
def test_paper_mode_permutation_invariance_with_ties(batch, random):
    x, y = batch
    perm = list(range(len(y)))
    random.shuffle(perm)
    got = np.asarray(all_losses(x[perm], y[perm]))[PAPER]
    assert_close(got, np.asarray(all_losses(x, y))[PAPER], rtol=2e-5)


@PROPERTY
@given(tree_batches(tie_free=False), st.integers(-50, 50), st.integers(1, 5))
def test_order_preserving_relabelling_invariance(batch, shift, stretch):
    """An increasing map of each column keeps groups and the representative order."""
    x, y = batch
    relabelled = (y * stretch + shift).astype(np.int32)
    assert_close(all_losses(x, relabelled), np.asarray(all_losses(x, y)), rtol=1e-6)


@PROPERTY
@given(tree_batches(tie_free=False))
def test_paper_mode_any_relabelling_invariance(batch):
    """Paper mode has no representatives: decreasing maps are fine too."""
    x, y = batch
    got = np.asarray(all_losses(x, -y))[PAPER]
    assert_close(got, np.asarray(all_losses(x, y))[PAPER], rtol=1e-6)


@PROPERTY
@given(tree_batches(tie_free=False), st.floats(0.1, 10.0))
def test_embedding_scale_invariance(batch, scale):
    x, y = batch
    got = all_losses(x * np.float32(scale), y)
    assert_close(got, np.asarray(all_losses(x, y)), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- memory-bounded path


def _value_and_grads(x, y, chunk_size, **kw):
    """Values and gradients of the six (loss, mode) pairs at one chunk size."""

    def six(e):
        return jnp.stack([LOSSES[n](e, y, mode=m, chunk_size=chunk_size, **kw) for n, m in ALL])

    return jax.jit(six)(x), jax.jit(jax.jacrev(six))(x)


@pytest.mark.parametrize("chunk_size", [1, 7, 64])
def test_chunked_equals_dense(chunk_size):
    """Several chunk sizes, including ones that do not divide R = N * V = 24 and one > R."""
    x, y = random_batch(np.random.default_rng(10), n=12, views=2, dim=5, tie_free=True)
    dense_v, dense_g = _value_and_grads(x, y, None)
    got_v, got_g = _value_and_grads(x, y, chunk_size)
    assert_close(got_v, dense_v, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(got_g), np.asarray(dense_g), rtol=1e-4, atol=1e-6)
    assert_close(got_v, all_oracles(x, y))


def test_chunked_single_view_and_small_temperature():
    """V = 1 (anchors without positives) and t = 0.01, where the exact fallback runs."""
    x, y = random_batch(np.random.default_rng(11), n=10, views=1)
    y[0, :2] = [7, 70]
    for t in (0.01, 0.07):
        dense_v, dense_g = _value_and_grads(x[:, 0], y, None, temperature=t)
        got_v, got_g = _value_and_grads(x[:, 0], y, 4, temperature=t)
        assert_close(got_v, dense_v, rtol=1e-5)
        assert_close(dense_v, all_oracles(x, y, t=t), rtol=1e-5)
        np.testing.assert_allclose(np.asarray(got_g), np.asarray(dense_g), rtol=1e-4, atol=1e-6)
        assert np.all(np.isfinite(np.asarray(got_g)))


def test_chunk_size_must_be_positive_int():
    x, y = jnp.ones((4, 2, 3)), jnp.zeros((4, 3), jnp.int32)
    for bad in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match="chunk_size"):
            himulcone(x, y, chunk_size=bad)


def test_chunked_memory_is_linear_in_batch():
    """No [R, R] buffer in the compiled chunked step: its temporaries stay O(R * c)."""
    d, c = 16, 64
    sizes = {}
    for n in (2048, 8192):
        x, y = random_batch(np.random.default_rng(12), n=n, views=1, dim=d)
        step = jax.jit(jax.grad(functools.partial(himulcone, chunk_size=c)))
        mem = step.lower(jnp.asarray(x[:, 0]), jnp.asarray(y)).compile().memory_analysis()
        if mem is None:
            pytest.skip("backend has no memory analysis")
        sizes[n] = mem.temp_size_in_bytes
    assert sizes[8192] < 8192 * 8192 * 4 / 8, sizes  # far below one [R, R] float32
    assert sizes[8192] < 6 * sizes[2048], sizes  # 4x the rows: ~4x the memory, not 16x


def test_default_blocks_equal_one_dense_pass():
    """R = CPU_BLOCK_ROWS + 44: chunk_size=None runs blocks on the CPU (the last one padded,
    the exps kept for the backward pass); c >= R is one dense pass."""
    from himl.losses.class_lse import CPU_BLOCK_ROWS

    n = CPU_BLOCK_ROWS // 2 + 22
    x, y = random_batch(np.random.default_rng(13), n=n, views=2, dim=8, num_coarse=3)
    for mode in ("reference", "paper"):
        fns = [functools.partial(himulcone, mode=mode, chunk_size=c) for c in (None, 4 * n)]
        (v0, g0), (v1, g1) = (jax.jit(jax.value_and_grad(f))(x, y) for f in fns)
        np.testing.assert_allclose(v0, v1, rtol=1e-6)
        np.testing.assert_allclose(g0, g1, rtol=1e-4, atol=1e-7)


def test_benchmark_command_runs_and_reports_the_loss_value(tmp_path):
    """experiments/bench_hierarchical.py at toy sizes: its values are the loss's, JSON out."""
    import importlib.util
    import json
    import pathlib

    script = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "bench_hierarchical.py"
    spec = importlib.util.spec_from_file_location("bench_hierarchical", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    rows = bench.main(
        ["--sizes", "8", "16", "--repeats", "2", "--products", "--clock", "cpu", "--out", str(out)]
    )
    assert [r["N"] for r in json.loads(out.read_text())["rows"]] == [8, 16]
    for row in rows:
        x, y = bench.hierarchical_batch(row["N"], 128)
        assert row["value"] == pytest.approx(float(himulcone(x, y)), rel=1e-6)
        assert 0 < row["himl_min_ms"] <= row["himl_ms"] and row["product_ms"] > 0
    assert rows[1]["himl_growth"] > 0 and "speedup" not in rows[1]


def naive_clamp_sums(z, groups):
    """Paper-mode HiConE sums from the definition, dense, for autodiff: level l sums
    `min(s_ip, min over the finer positives)` over its positives (none finer at level 1)."""
    s = z @ z.T
    others = ~jnp.eye(len(z), dtype=bool)
    bound = jnp.full((len(z),), jnp.inf)
    sums = []
    for level in range(groups.shape[0]):
        pos = others & (groups[level][:, None] == groups[level][None, :])
        sums.append(jnp.sum(jnp.where(pos, jnp.minimum(s, bound[:, None]), 0.0), axis=1))
        bound = jnp.minimum(bound, jnp.min(jnp.where(pos, s, jnp.inf), axis=1))
    return jnp.stack(sums, axis=1)


@pytest.mark.parametrize(
    "chunk_size,n,num_coarse",
    [(None, 24, 3), (7, 24, 3), (1, 20, 6), (4, 24, 12), (None, 90, 12), (5, 24, 1)],
)
def test_paper_clamp_gradient_equals_autodiff_of_the_definition(chunk_size, n, num_coarse):
    """The band-limited paper-mode HiConE sums and their hand-written gradient against
    autodiff of the dense definition (the finite-difference test is too coarse for them):
    rows in a random order, coarsest groups starting and ending inside blocks and spanning
    several, one group for all (the band is every block), and the default blocks over
    R = 180 > CLAMP_BLOCK_ROWS (two, the last padded)."""
    from himl.losses.hierarchical import _clamp_sums, _level_groups

    x, y = random_batch(np.random.default_rng(21), n=n, views=2, dim=6, num_coarse=num_coarse)
    r = 2 * n
    z = jnp.asarray(x.reshape(r, 6)) * 2.0
    groups = jnp.repeat(_level_groups(jnp.asarray(y))[0], 2, axis=1)
    weights = jnp.asarray(np.random.default_rng(22).normal(size=(r, groups.shape[0])))
    # Jitted: op by op, the blocked passes compile ~240 programs (10 s a case).
    clamp = jax.jit(functools.partial(_clamp_sums, temperature=1.0, chunk_size=chunk_size))
    got = clamp(z, groups)
    np.testing.assert_allclose(got, jax.jit(naive_clamp_sums)(z, groups), rtol=1e-5, atol=1e-5)
    s = z @ z.T
    same = (groups[1][:, None] == groups[1][None, :]) & ~jnp.eye(r, dtype=bool)
    unclamped = jnp.sum(jnp.where(same, s, 0.0), axis=1)
    assert np.any(np.asarray(got[:, 1]) < np.asarray(unclamped) - 1e-2)  # the clamp binds
    for levels in (groups, groups[:1]):  # and one level alone: no bound, plain sums
        w = weights[:, : len(levels)]
        grad = jax.jit(jax.grad(lambda z, g, w: jnp.sum(w * clamp(z, g))))
        want = jax.jit(jax.grad(lambda z, g, w: jnp.sum(w * naive_clamp_sums(z, g))))
        np.testing.assert_allclose(grad(z, levels, w), want(z, levels, w), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("c", [1, 4, 7])
def test_clamp_band_is_exactly_the_blocks_sharing_a_coarsest_group(c):
    """Each row block meets each column block holding a row of one of its coarsest groups
    once, and no other: the pass is as cheap as the groups allow, and misses no positive."""
    from himl.losses.hierarchical import _over_band

    coarse = np.sort(np.random.default_rng(31).integers(0, 9, 50))
    coarse[:12] = 0  # one group over several blocks
    blocks = -(-50 // c)
    visits = _over_band(
        lambda i, j, v: v.at[i, j].add(1), jnp.zeros((blocks, blocks), jnp.int32),
        jnp.asarray(coarse), c,
    )  # fmt: skip
    members = [set(coarse[b * c : (b + 1) * c]) for b in range(blocks)]
    want = [[int(bool(members[i] & members[j])) for j in range(blocks)] for i in range(blocks)]
    np.testing.assert_array_equal(visits, want)
    assert c == 1 or np.sum(want) < blocks * blocks  # some blocks are skipped

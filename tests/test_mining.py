"""Mining helpers against brute-force triplet enumeration."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from himl.mining import (
    batch_hard,
    label_masks,
    sort_rows,
    triplet_sums_chunked,
    triplet_sums_sorted,
)


def _case(seed, b=10, classes=3):
    rng = np.random.default_rng(seed)
    d = rng.uniform(0, 2, size=(b, b)).astype(np.float32)
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0)
    return d, rng.integers(0, classes, size=b)


def _brute(d, y, margin, semi_hard=False):
    total, count = 0.0, 0
    b = len(y)
    for a, p, n in itertools.product(range(b), repeat=3):
        if a == p or y[a] != y[p] or y[a] == y[n]:
            continue
        if semi_hard and not d[a, n] > d[a, p]:
            continue
        loss = max(float(d[a, p]) - float(d[a, n]) + margin, 0.0)
        total += loss
        count += loss > 0
    return total, count


def test_label_masks():
    pos, neg = label_masks(jnp.array([0, 1, 0, 2]))
    want_pos = np.zeros((4, 4), bool)
    want_pos[0, 2] = want_pos[2, 0] = True
    np.testing.assert_array_equal(pos, want_pos)
    np.testing.assert_array_equal(neg, np.array([0, 1, 0, 2])[:, None] != [0, 1, 0, 2])


@pytest.mark.parametrize("semi_hard", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sorted_triplet_sums_match_brute_force(seed, semi_hard):
    d, y = _case(seed)
    pos, neg = label_masks(jnp.asarray(y))
    total, count = jax.jit(triplet_sums_sorted, static_argnames="semi_hard")(
        d, pos, neg, 0.3, semi_hard=semi_hard
    )
    want_total, want_count = _brute(d, y, 0.3, semi_hard)
    assert int(count) == want_count
    np.testing.assert_allclose(float(total), want_total, rtol=1e-5)


def _dense_triplet_sum(d, pos, neg, margin, semi_hard):
    """Sum of the non-zero `relu(d_ap - d_an + margin)` over every (a, p, n) as one
    `[B, B, B]` tensor: the definition, for autodiff."""
    loss = jax.nn.relu(d[:, :, None] - d[:, None, :] + margin)  # [a, p, n]
    keep = pos[:, :, None] & neg[:, None, :]
    if semi_hard:
        keep = keep & (d[:, None, :] > d[:, :, None])
    return jnp.sum(jnp.where(keep, loss, 0.0))


@pytest.mark.parametrize("semi_hard", [False, True])
@pytest.mark.parametrize(
    "case",
    [
        dict(seed=0, margin=0.3),
        dict(seed=1, margin=0.05, ties=True),  # runs of equal distances among the negatives
        dict(seed=2, margin=0.25, ties=True, asymmetric=True),
        dict(seed=3, margin=0.0),
        dict(seed=4, margin=-0.1),  # no triplet violates
        dict(seed=5, margin=0.3, labels=[0, 0, 0, 0, 0, 0]),  # no negatives
        dict(seed=6, margin=0.3, labels=[0, 1, 2, 3, 3, 4]),  # anchors without positives
    ],
)
def test_sorted_triplet_sums_gradient_equals_autodiff_of_the_definition(case, semi_hard):
    """The hand-written gradient (counts per pair, covering ranges per negative; no sort
    permutation) against autodiff of the dense `[B, B, B]` sum, in `dist` and `margin`."""
    rng = np.random.default_rng(case["seed"])
    y = np.asarray(case.get("labels", rng.integers(0, 4, size=14)))
    d = rng.uniform(0, 2, size=(len(y), len(y))).astype(np.float32)
    if case.get("ties"):
        d = np.round(d * 4) / 4
    if not case.get("asymmetric"):
        d = (d + d.T) / 2
    pos, neg = label_masks(jnp.asarray(y))

    def ours(d, margin):
        return triplet_sums_sorted(d, pos, neg, margin, semi_hard=semi_hard)[0]

    def dense(d, margin):
        return _dense_triplet_sum(d, pos, neg, margin, semi_hard)

    args = (jnp.asarray(d), jnp.float32(case["margin"]))
    value, (g_d, g_m) = jax.jit(jax.value_and_grad(ours, argnums=(0, 1)))(*args)
    want, (w_d, w_m) = jax.value_and_grad(dense, argnums=(0, 1))(*args)
    np.testing.assert_allclose(value, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g_d, w_d, atol=1e-6)
    np.testing.assert_allclose(g_m, w_m, rtol=1e-6)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    st.lists(
        st.floats(allow_nan=False, width=32) | st.sampled_from([0.0, -0.0, 1e-45, -1e-45]),
        min_size=1,
        max_size=40,
    )
)
def test_sort_rows_equals_numpy_sort(values):
    """The integer-key sort gives exactly NumPy's float order: signs, zeros, subnormals,
    infinities."""
    x = np.asarray(values, np.float32).reshape(1, -1)
    x = np.concatenate([x, x[:, ::-1]])
    got = np.asarray(jax.jit(sort_rows)(x))
    np.testing.assert_array_equal(got, np.sort(x, axis=1))


def test_chunked_triplet_sums_match_sorted_value_and_grad():
    d, y = _case(3, b=12)
    pos, neg = label_masks(jnp.asarray(y))

    def sorted_mean(d):
        t, c = triplet_sums_sorted(d, pos, neg, 0.3)
        return t / c

    def chunked_mean(d):
        t, c = triplet_sums_chunked(
            d, pos, neg, lambda ap, an, pn: jax.nn.relu(ap - an + 0.3), chunk_size=5
        )
        return t / c

    v1, g1 = jax.value_and_grad(sorted_mean)(jnp.asarray(d))
    v2, g2 = jax.value_and_grad(chunked_mean)(jnp.asarray(d))
    np.testing.assert_allclose(v1, v2, rtol=1e-5)
    np.testing.assert_allclose(g1, g2, rtol=1e-5, atol=1e-7)


def test_batch_hard():
    d, y = _case(4)
    y[0] = 99  # anchor 0 has no positive
    pos, neg = label_masks(jnp.asarray(y))
    d_ap, d_an, valid = batch_hard(jnp.asarray(d), pos, neg)
    for a in range(len(y)):
        p = [j for j in range(len(y)) if j != a and y[j] == y[a]]
        n = [j for j in range(len(y)) if y[j] != y[a]]
        assert bool(valid[a]) == (bool(p) and bool(n))
        if p and n:
            assert float(d_ap[a]) == d[a, p].max()
            assert float(d_an[a]) == d[a, n].min()

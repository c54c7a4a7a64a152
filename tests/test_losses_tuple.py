"""N-pairs and lifted structure against slow NumPy references (PML semantics)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads
from references.tuples import ref_lifted, ref_npairs

from himl.losses import default_hparams, loss_info
from himl.losses.tuple import lifted_structure, npairs

CASES = [("npairs", npairs, ref_npairs), ("lifted_structure", lifted_structure, ref_lifted)]
IDS = [c[0] for c in CASES]


def _data(seed, b=10, d=6, c=4):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(b, d)).astype(np.float32)
    y = rng.integers(0, c, size=b).astype(np.int32)
    return x, y


@functools.cache
def _compiled(fn, hp):
    return jax.jit(lambda x, y: fn(x, y, **dict(hp)))


def _jitted(fn, y, **hp):
    """`x -> fn(x, y, **hp)` under jit; labels are traced, so one compile per shape."""
    f = _compiled(fn, tuple(sorted(hp.items())))
    return lambda x: f(x, jnp.asarray(y))


@pytest.mark.parametrize("name,fn,ref", CASES, ids=IDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference(name, fn, ref, seed):
    x, y = _data(seed)
    if seed == 2:  # a zero embedding and a duplicate
        x[0] = 0.0
        x[2] = x[3]
    # Distances come from the Gram matrix (as torch.cdist does for B > 25), so coincident
    # points sit ~3e-4 apart instead of 0 in float32; the tolerance covers that for lifted.
    atol = 1e-3 if (seed == 2 and name == "lifted_structure") else 1e-6
    np.testing.assert_allclose(float(_jitted(fn, y)(x)), ref(x, y), rtol=1e-5, atol=atol)


def test_lifted_non_default_margins():
    x, y = _data(3)
    hp = {"pos_margin": 0.2, "neg_margin": 0.5}
    np.testing.assert_allclose(
        float(_jitted(lifted_structure, y, **hp)(x)), ref_lifted(x, y, **hp), rtol=1e-5
    )


def _npairs_pairs_given(x, first, second):
    """The N-pair loss of the pairs `(first[k], second[k])` from its definition, for
    autodiff: `mean_k -log softmax_j(cos(a_k, p_j))[k]`."""
    a, p = (v / jnp.linalg.norm(v, axis=1, keepdims=True) for v in (x[first], x[second]))
    logits = a @ p.T
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - jnp.diagonal(logits))


@pytest.mark.parametrize("pairs", [1, 25, 26, 50, 51, 100])
def test_npairs_at_each_computed_size_equals_the_definition(pairs):
    """B = 200 holds at most 100 pairs, computed at 25, 50 or 100 (`_pair_sizes`): each
    size's boundary, value and gradient against the definition and the NumPy reference."""
    rng = np.random.default_rng(pairs)
    b = 200
    # `pairs` classes of two samples, then singletons; shuffled (pairs in batch order).
    y = np.concatenate([np.repeat(np.arange(pairs), 2), np.arange(pairs, pairs + b - 2 * pairs)])
    y = rng.permutation(y).astype(np.int32)
    x = rng.normal(size=(b, 8)).astype(np.float32)
    first = [int(np.flatnonzero(y == c)[0]) for c in range(pairs)]
    order = np.argsort(first)
    first = np.asarray(first)[order]
    second = np.asarray([int(np.flatnonzero(y == c)[1]) for c in range(pairs)])[order]
    value, grad = jax.value_and_grad(_jitted(npairs, y))(jnp.asarray(x))
    want, want_grad = jax.value_and_grad(_npairs_pairs_given)(jnp.asarray(x), first, second)
    np.testing.assert_allclose(float(value), float(want), rtol=1e-5)
    np.testing.assert_allclose(float(value), ref_npairs(x, y), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(want_grad), rtol=1e-4, atol=1e-7)


def test_npairs_picks_first_two_samples_of_each_class():
    # Moving a third sample of class 0 around changes nothing; swapping the first two does.
    x, _ = _data(4, b=5)
    y = np.array([0, 1, 0, 1, 0], np.int32)
    base = float(npairs(x, y))
    moved = x[[0, 1, 2, 3, 4]].copy()
    moved[4] = 10.0 * x[4] + 3.0
    assert float(npairs(moved, y)) == pytest.approx(base, rel=1e-6)
    np.testing.assert_allclose(base, ref_npairs(x, y), rtol=1e-5)


@pytest.mark.parametrize("name,fn,ref", CASES, ids=IDS)
def test_gradient_matches_reference_finite_differences(name, fn, ref):
    x, y = _data(5, b=6, d=3, c=2)
    grad = np.asarray(jax.grad(lambda a: fn(a, jnp.asarray(y)))(x))
    num, eps = np.zeros(x.shape), 1e-6
    for idx in np.ndindex(x.shape):
        hi, lo = x.astype(np.float64), x.astype(np.float64)
        hi[idx] += eps
        lo[idx] -= eps
        num[idx] = (ref(hi, y) - ref(lo, y)) / (2 * eps)
    np.testing.assert_allclose(grad, num, rtol=2e-3, atol=2e-4 * np.abs(num).max())


@pytest.mark.parametrize("name,fn,ref", CASES, ids=IDS)
def test_check_grads(name, fn, ref):
    x, y = _data(6, b=6, d=4, c=2)
    f = lambda a: fn(a, jnp.asarray(y))
    check_grads(f, (jnp.asarray(x),), order=1, modes=["rev"], eps=1e-2, rtol=2e-2)


# ----------------------------------------------------------------------------------------
# Edge cases: finite value and gradient for every legal input.

EDGE = {
    "one_class": lambda x, y: (x, np.zeros_like(y)),
    "all_distinct": lambda x, y: (x, np.arange(len(y), dtype=np.int32)),
    "single_sample": lambda x, y: (x[:1], y[:1]),
    "duplicates": lambda x, y: (np.repeat(x[:1], len(x), 0), y),
    "zero_vectors": lambda x, y: (np.zeros_like(x), y),
    "one_pair": lambda x, y: (x[:3], np.array([5, 5, 7], np.int32)),
}


@pytest.mark.parametrize("name,fn,ref", CASES, ids=IDS)
@pytest.mark.parametrize("edge", sorted(EDGE))
def test_edge_cases_finite(name, fn, ref, edge):
    x, y = EDGE[edge](*_data(7))
    v, g = jax.value_and_grad(_jitted(fn, y))(jnp.asarray(x))
    assert np.isfinite(float(v)) and np.all(np.isfinite(np.asarray(g)))
    if edge != "zero_vectors":
        atol = 1e-3 if edge == "duplicates" else 1e-6  # Gram-based distances, see above
        np.testing.assert_allclose(float(v), ref(x, y), rtol=1e-5, atol=atol)
    if edge in ("one_class", "all_distinct", "single_sample") and name == "lifted_structure":
        assert float(v) == 0.0
    if edge in ("all_distinct", "single_sample") and name == "npairs":
        assert float(v) == 0.0


def test_huge_logits_finite():
    x, y = _data(8)
    f = _jitted(lifted_structure, y, neg_margin=1e4, pos_margin=-1e4)
    v, g = jax.value_and_grad(f)(jnp.asarray(x * 1e20))
    assert np.isfinite(float(v)) and np.all(np.isfinite(np.asarray(g)))
    v, g = jax.value_and_grad(_jitted(npairs, y))(jnp.asarray(x * 1e20))
    assert np.isfinite(float(v)) and np.all(np.isfinite(np.asarray(g)))


@pytest.mark.parametrize("name,fn,ref", CASES, ids=IDS)
def test_bf16_inputs(name, fn, ref):
    x, y = _data(9)
    xb = jnp.asarray(x, jnp.bfloat16)
    v, g = jax.value_and_grad(_jitted(fn, y))(xb)
    assert v.dtype == jnp.float32 and g.dtype == jnp.bfloat16
    assert np.all(np.isfinite(np.asarray(g, np.float32)))
    np.testing.assert_allclose(float(v), ref(np.asarray(xb, np.float32), y), rtol=1e-4)


@pytest.mark.parametrize("name,fn,ref", CASES, ids=IDS)
def test_views_are_flattened(name, fn, ref):
    rng = np.random.default_rng(10)
    x = rng.normal(size=(4, 3, 5)).astype(np.float32)
    y = np.array([0, 1, 1, 2], np.int32)
    np.testing.assert_allclose(float(fn(x, y)), ref(x.reshape(12, 5), np.repeat(y, 3)), rtol=1e-5)


@pytest.mark.parametrize("name,fn,ref", CASES, ids=IDS)
def test_illegal_inputs_raise(name, fn, ref):
    x, y = _data(11)
    with pytest.raises(ValueError, match="labels"):
        fn(x, y[:-1])
    with pytest.raises(ValueError, match="integers"):
        fn(x, y.astype(np.float32))
    with pytest.raises(ValueError, match="floating"):
        fn(x.astype(np.int32), y)
    with pytest.raises(ValueError, match="embeddings"):
        fn(x[0], y)


def test_registry_and_defaults():
    assert loss_info("npairs").fn is npairs and loss_info("npairs").labels == "flat"
    assert loss_info("lifted_structure").fn is lifted_structure
    assert loss_info("npairs").init_params is None
    assert default_hparams("npairs") == {}
    assert default_hparams("lifted_structure") == {"pos_margin": 0.0, "neg_margin": 1.0}


# ----------------------------------------------------------------------------------------
# Properties.

_settings = settings(max_examples=8, deadline=None)


@st.composite
def _batches(draw):
    seed = draw(st.integers(0, 2**16))
    x, y = _data(seed, b=8, d=4, c=3)
    return x, y, seed


def _class_order_preserving_permutation(y, rng):
    """A random batch permutation that keeps each class's samples in the same order."""
    perm = rng.permutation(len(y))
    out = perm.copy()
    for c in np.unique(y):
        slots = np.sort(np.flatnonzero(y[perm] == c))
        out[slots] = np.flatnonzero(y == c)
    return out


@pytest.mark.parametrize("name,fn,ref", CASES, ids=IDS)
@_settings
@given(batch=_batches())
def test_batch_permutation_invariance(name, fn, ref, batch):
    # N-pairs picks each class's first two samples, so for it only permutations that keep
    # the order within each class leave the value unchanged (as in PML).
    x, y, seed = batch
    rng = np.random.default_rng(seed)
    if name == "npairs":
        perm = _class_order_preserving_permutation(y, rng)
    else:
        perm = rng.permutation(len(y))
    got = float(_jitted(fn, y[perm])(x[perm]))
    np.testing.assert_allclose(got, float(_jitted(fn, y)(x)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,fn,ref", CASES, ids=IDS)
@_settings
@given(batch=_batches(), offset=st.integers(-1000, 1000))
def test_class_relabelling_invariance(name, fn, ref, batch, offset):
    x, y, seed = batch
    mapping = np.random.default_rng(seed).permutation(3) * 7 + offset
    got = float(_jitted(fn, mapping[y].astype(np.int32))(x))
    np.testing.assert_allclose(got, float(_jitted(fn, y)(x)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,fn,ref", CASES, ids=IDS)
@_settings
@given(batch=_batches(), scale=st.floats(0.01, 100.0))
def test_scale_invariance(name, fn, ref, batch, scale):
    x, y, _ = batch
    f = _jitted(fn, y)
    np.testing.assert_allclose(float(f(x * np.float32(scale))), float(f(x)), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------
# Optional cross-check against pytorch-metric-learning itself.


@pytest.mark.parametrize("name,fn,ref", CASES, ids=IDS)
def test_matches_pml(name, fn, ref):
    torch = pytest.importorskip("torch")
    pml = pytest.importorskip("pytorch_metric_learning.losses")
    x, y = _data(12, b=16, d=8, c=5)
    x[0] = 0.0
    loss = pml.NPairsLoss() if name == "npairs" else pml.LiftedStructureLoss()
    xt = torch.tensor(x, requires_grad=True)
    want = loss(xt, torch.tensor(y, dtype=torch.long))
    want.backward()
    got, g = jax.value_and_grad(_jitted(fn, y))(jnp.asarray(x))
    np.testing.assert_allclose(float(got), want.item(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(g), xt.grad.numpy(), rtol=1e-4, atol=1e-6)

"""The masked reductions every loss uses, against plain Python loops written from their
definitions: values, gradients, fully masked slices, stability and broadcast masks."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from references.reductions import ref_logsumexp, ref_softmax_grad

from himl.losses.reductions import MASKED_LOGIT, masked_logsumexp, masked_mean, mean_over_nonzero


def _data(shape=(6, 9), seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 3, shape).astype(np.float32)
    mask = rng.uniform(size=shape) < 0.5
    mask[2] = False  # a fully masked row
    mask[4] = True  # a full row
    mask[:, 7] = False  # a fully masked column
    return x, mask


# ---------------------------------------------------------------- masked_logsumexp
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("add_one", [False, True])
def test_logsumexp_matches_loop(axis, add_one):
    x, mask = _data()
    got = masked_logsumexp(jnp.asarray(x), jnp.asarray(mask), axis, add_one=add_one)
    np.testing.assert_allclose(got, ref_logsumexp(x, mask, axis, add_one), rtol=1e-6, atol=1e-6)


def test_empty_slice_value_and_broadcast_mask():
    x, mask = _data()
    got = masked_logsumexp(jnp.asarray(x), jnp.asarray(mask), 1, empty=MASKED_LOGIT)
    assert float(got[2]) == np.float32(MASKED_LOGIT)
    # a [1, M] column mask applies to every row
    cols = mask[4:5] & (np.arange(9) % 2 == 0)
    want = ref_logsumexp(x, np.broadcast_to(cols, x.shape), 1)
    np.testing.assert_allclose(masked_logsumexp(x, cols, 1), want, rtol=1e-6, atol=1e-6)


def test_logsumexp_is_stable_for_large_logits():
    """A shift by c moves the result by c (no overflow at 1e3, no underflow at -1e3)."""
    x, mask = _data()
    base = np.asarray(masked_logsumexp(x, mask, 1))
    kept = mask.any(axis=1)
    for c in (1e3, -1e3):
        got = np.asarray(masked_logsumexp(x + np.float32(c), mask, 1))
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got[kept], base[kept] + c, rtol=1e-6)
        assert np.all(got[~kept] == 0.0)


@pytest.mark.parametrize("add_one", [False, True])
def test_logsumexp_gradient_is_masked_softmax(add_one):
    x, mask = _data()
    g = jax.grad(lambda z: jnp.sum(masked_logsumexp(z, mask, 1, add_one=add_one)))(x)
    np.testing.assert_allclose(g, ref_softmax_grad(x, mask, add_one), rtol=1e-5, atol=1e-7)
    assert np.all(np.asarray(g)[~mask] == 0.0)  # masked and fully masked entries: exactly 0


def test_logsumexp_gradients_float64():
    x, mask = _data()
    with jax.enable_x64(True):
        f = lambda z: masked_logsumexp(z, mask, 1, add_one=True)  # noqa: E731
        check_grads(f, (jnp.asarray(x, jnp.float64),), order=2, modes=("rev",))


def test_fully_masked_row_stays_finite_with_masked_logit_inputs():
    """Inputs already at MASKED_LOGIT (as the losses build them) give a finite gradient."""
    x = jnp.full((3, 4), MASKED_LOGIT).at[0, :2].set(jnp.array([1.0, 2.0]))
    mask = x > MASKED_LOGIT
    val, g = jax.value_and_grad(lambda z: jnp.sum(masked_logsumexp(z, mask, 1)))(x)
    assert float(val) == pytest.approx(math.log(math.e + math.e**2), rel=1e-6)
    assert np.all(np.isfinite(np.asarray(g))) and np.all(np.asarray(g)[1:] == 0)


# ---------------------------------------------------------------- mean reducers
def test_masked_mean_matches_loop():
    x, mask = _data()
    kept = [float(v) for v, m in zip(x.ravel(), mask.ravel(), strict=True) if m]
    assert float(masked_mean(x, mask)) == pytest.approx(math.fsum(kept) / len(kept), rel=1e-6)
    rows = masked_mean(x, mask, axis=1)
    for i in range(x.shape[0]):
        vals = [float(x[i, j]) for j in range(x.shape[1]) if mask[i, j]]
        want = math.fsum(vals) / len(vals) if vals else 0.0
        assert float(rows[i]) == pytest.approx(want, rel=1e-6, abs=1e-7)
    assert float(masked_mean(x, np.zeros_like(mask))) == 0.0
    g = jax.grad(lambda z: masked_mean(z, mask))(x)
    np.testing.assert_allclose(g, mask / mask.sum(), rtol=1e-6)


def test_mean_over_nonzero_matches_loop():
    x, mask = _data()
    losses = np.maximum(x, 0.0)  # hinge-like: many exact zeros
    kept = [float(v) for v, m in zip(losses.ravel(), mask.ravel(), strict=True) if m]
    nonzero = [v for v in kept if v > 0]
    got = mean_over_nonzero(losses, mask)
    assert float(got) == pytest.approx(math.fsum(nonzero) / len(nonzero), rel=1e-6)
    everything = [float(v) for v in losses.ravel() if v > 0]
    assert float(mean_over_nonzero(losses)) == pytest.approx(
        math.fsum(everything) / len(everything), rel=1e-6
    )
    assert float(mean_over_nonzero(np.zeros(5, np.float32))) == 0.0
    g = jax.grad(lambda z: mean_over_nonzero(jax.nn.relu(z), mask))(x)
    np.testing.assert_allclose(g, (mask & (x > 0)) / len(nonzero), rtol=1e-6)

"""Distances: values against NumPy, safe gradients, dispatcher and errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from himl.distances import (
    MEASURES,
    euclidean_distance,
    is_similarity,
    mahalanobis_diag_distance,
    pairwise,
    safe_sqrt,
    self_gram,
)


def _normalize(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(7, 5)).astype(np.float32), rng.normal(size=(4, 5)).astype(np.float32)


def test_euclidean_matches_numpy(data):
    a, b = data
    an, bn = _normalize(a.astype(np.float64)), _normalize(b.astype(np.float64))
    want = np.sqrt(((an[:, None] - bn[None]) ** 2).sum(-1))
    np.testing.assert_allclose(pairwise("euclidean", a, b), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pairwise("squared_euclidean", a, b), want**2, rtol=1e-5, atol=1e-6)
    raw = np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1))
    np.testing.assert_allclose(euclidean_distance(a, b, normalize=False), raw, rtol=1e-5)
    self_d = pairwise("euclidean", a)
    np.testing.assert_array_equal(np.diag(self_d), 0.0)


def test_cosine_dot_mahalanobis(data):
    a, b = data
    an, bn = _normalize(a), _normalize(b)
    np.testing.assert_allclose(pairwise("cosine", a, b), an @ bn.T, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pairwise("dot", a, b), a @ b.T, rtol=1e-5, atol=1e-5)
    s2 = np.linspace(0.5, 3.0, 5).astype(np.float32)
    want = (((a[:, None] - b[None]) ** 2) / s2).sum(-1)
    np.testing.assert_allclose(pairwise("mahalanobis", a, b, s2=s2), want, rtol=1e-4, atol=1e-5)
    s2_rows = np.random.default_rng(1).uniform(1, 3, size=(4, 5)).astype(np.float32)
    want = (((a[:, None] - b[None]) ** 2) / s2_rows[None]).sum(-1)
    got = mahalanobis_diag_distance(a, b, s2=s2_rows)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_similarity_flags():
    assert set(MEASURES) == {"euclidean", "squared_euclidean", "cosine", "dot", "mahalanobis"}
    assert is_similarity("cosine") and is_similarity("dot")
    assert not is_similarity("euclidean") and not is_similarity("mahalanobis")


def test_safe_sqrt_and_zero_gradients():
    assert float(jax.grad(lambda v: safe_sqrt(v))(0.0)) == 0.0
    x = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.3, -2.0]])
    for name in ("euclidean", "squared_euclidean", "cosine", "dot"):
        g = jax.grad(lambda x, name=name: jnp.sum(pairwise(name, x)))(x)
        assert np.all(np.isfinite(g)), name
    g = jax.grad(lambda x: jnp.sum(pairwise("mahalanobis", x, s2=jnp.ones(2))))(x)
    assert np.all(np.isfinite(g))


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_self_gram_gradient_is_both_operands(data, backend, monkeypatch):
    """`self_gram`'s backward (one product on the CPU, two elsewhere) against NumPy float64
    for a cotangent that is not symmetric (a symmetric one would hide a missing transpose),
    and `pairwise(name, x)` against the same measure with a copy as second operand."""
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    a, _ = data
    g = np.random.default_rng(1).normal(size=(a.shape[0], a.shape[0]))
    value, vjp = jax.vjp(self_gram, jnp.asarray(a))
    a64 = a.astype(np.float64)
    np.testing.assert_allclose(value, a64 @ a64.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(vjp(jnp.asarray(g, jnp.float32))[0], (g + g.T) @ a64, rtol=1e-5)
    for name in ("dot", "cosine"):

        def weighted(x, y, name=name):
            return jnp.sum(jnp.asarray(g, jnp.float32) * pairwise(name, x, y))

        expected = sum(jax.grad(weighted, argnums=(0, 1))(a, a))
        got = jax.grad(lambda x, name=name: weighted(x, None))(a)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    half = jnp.asarray(a, jnp.bfloat16)
    assert jax.grad(lambda x: jnp.sum(self_gram(x)))(half).dtype == jnp.bfloat16


def test_bf16_inputs_give_float32(data):
    a, _ = data
    out = pairwise("euclidean", jnp.asarray(a, jnp.bfloat16))
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, pairwise("euclidean", a), atol=2e-2)


def test_errors(data):
    a, b = data
    with pytest.raises(ValueError, match="unknown distance"):
        pairwise("manhattan", a)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        pairwise("euclidean", a[0])
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        pairwise("euclidean", a, b[:, :3])
    with pytest.raises(ValueError, match="s2"):
        pairwise("mahalanobis", a, b, s2=np.ones(3))

"""`class_logsumexp` against a float64 NumPy loop and autodiff of a naive JAX version."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from references.reductions import ref_class_logsumexp

from himl.losses.class_lse import MASKED_LOGIT, class_logsumexp


def naive(z, col_class, num_classes):
    s = z @ z.T
    valid = ~jnp.eye(len(z), dtype=bool)
    cols = [
        jax.nn.logsumexp(jnp.where(valid & (col_class == c)[None, :], s, -jnp.inf), axis=1)
        for c in range(num_classes)
    ]
    return jnp.stack(cols, axis=1)


@pytest.mark.parametrize("scale", [1.0, 4.0, 12.0])  # 12: logits span > 46, exact fallback
@pytest.mark.parametrize("chunk_size", [None, 1, 5, 64])
def test_values_and_gradients(scale, chunk_size):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(13, 4)).astype(np.float32)
    z = scale * z / np.linalg.norm(z, axis=1, keepdims=True)
    z[3] = 0.0  # a zero row: all its logits are 0
    col_class = np.array([0, 1, 2, 0, 1, 2, 0, 0, 1, 1, 0, 0, 0], np.int32)
    got = class_logsumexp(jnp.asarray(z), jnp.asarray(col_class), 3, chunk_size)
    np.testing.assert_allclose(got, ref_class_logsumexp(z, col_class, 3), rtol=2e-6, atol=1e-5)
    weights = jnp.asarray(rng.normal(size=(13, 3)).astype(np.float32))

    def loss(fn, z):
        return jnp.sum(weights * fn(z))

    g = jax.grad(lambda z: loss(lambda z: class_logsumexp(z, col_class, 3, chunk_size), z))(z)
    want = jax.grad(lambda z: loss(lambda z: naive(z, jnp.asarray(col_class), 3), z))(z)
    np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-4 * scale)


def test_empty_class_is_masked_and_has_finite_gradient():
    z = jnp.asarray(np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32))
    col_class = jnp.array([0, 0, 0, 1], jnp.int32)  # row 3 is alone in class 1
    lse = class_logsumexp(z, col_class, 2)
    assert lse[3, 1] == np.float32(MASKED_LOGIT) and lse[0, 1] != np.float32(MASKED_LOGIT)
    g = jax.grad(
        lambda z: jnp.sum(jnp.where(lse > MASKED_LOGIT, class_logsumexp(z, col_class, 2), 0))
    )(z)
    assert np.all(np.isfinite(np.asarray(g)))


@pytest.mark.parametrize(
    "keep_rows, scale",
    [(8192, 3.0), (100, 3.0), (8192, 12.0)],  # 100: exps recomputed; 12: exact fallback
)
def test_default_blocks_past_the_block_size(monkeypatch, keep_rows, scale):
    """More rows than one default CPU block (3 blocks of 104 here, for 128 at most): the
    symmetric pass over block pairs, the last block padded, with the forward exps kept for
    the backward pass or recomputed; at scale 12 the exact path, in 8 row blocks of 40."""
    import himl.losses.class_lse as class_lse

    monkeypatch.setattr(class_lse, "KEEP_ROWS", keep_rows)
    monkeypatch.setattr(class_lse, "CPU_BLOCK_ROWS", 128)
    monkeypatch.setattr(class_lse, "EXACT_BLOCK_LOGITS", 300 * 40)
    monkeypatch.setattr(class_lse, "EXACT_MIN_ROWS", 16)
    rng = np.random.default_rng(2)
    z = rng.normal(size=(300, 8)).astype(np.float32)
    z = scale * z / np.linalg.norm(z, axis=1, keepdims=True)
    col_class = rng.integers(0, 3, size=300).astype(np.int32)
    weights = jnp.asarray(rng.normal(size=(300, 3)).astype(np.float32))
    value, grad = jax.value_and_grad(
        lambda z: jnp.sum(weights * class_logsumexp(z, jnp.asarray(col_class), 3))
    )(jnp.asarray(z))
    want = np.sum(np.asarray(weights) * ref_class_logsumexp(z, col_class, 3))
    np.testing.assert_allclose(value, want, rtol=1e-5)
    naive_grad = jax.grad(lambda z: jnp.sum(weights * naive(z, jnp.asarray(col_class), 3)))(z)
    # Gradients grow as scale^2 (entries up to ~74 at scale 12), float32 rounding with them.
    np.testing.assert_allclose(grad, naive_grad, rtol=1e-4, atol=2e-6 * scale**2)


@pytest.mark.parametrize("r", [513, 640, 1030, 1536, 4099, 65_536])
def test_default_blocks_are_balanced(r):
    """The default CPU blocks split the rows evenly: at most 8 padding rows per block, no
    block above `CPU_BLOCK_ROWS`, and a given chunk_size is kept as it is."""
    from himl.losses.class_lse import CPU_BLOCK_ROWS, block_rows

    rows = block_rows(None, r)
    blocks = -(-r // rows)
    assert rows <= CPU_BLOCK_ROWS and rows % 8 == 0
    assert blocks == -(-r // CPU_BLOCK_ROWS) and blocks * rows - r < 8 * blocks
    assert block_rows(500, r) == 500 and block_rows(None, CPU_BLOCK_ROWS) is None

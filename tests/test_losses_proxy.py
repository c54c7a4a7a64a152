"""Proxy-Anchor, Proxy-NCA and Normalized-Softmax against slow NumPy references (PML semantics)."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads
from references.proxy import ref_normalized_softmax, ref_proxy_anchor, ref_proxy_nca

from himl.losses import default_hparams, loss_info
from himl.losses.proxy import (
    init_normalized_softmax,
    init_proxy_anchor,
    init_proxy_nca,
    normalized_softmax,
    proxy_anchor,
    proxy_nca,
)

CASES = [
    ("proxy_anchor", proxy_anchor, ref_proxy_anchor, init_proxy_anchor),
    ("proxy_nca", proxy_nca, ref_proxy_nca, init_proxy_nca),
    ("normalized_softmax", normalized_softmax, ref_normalized_softmax, init_normalized_softmax),
]
IDS = [c[0] for c in CASES]
HUGE = {"proxy_anchor": {"alpha": 1e5}, "proxy_nca": {"softmax_scale": 1e6}}
HUGE["normalized_softmax"] = {"temperature": 1e-6}


def _data(seed, b=10, d=6, c=4):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(b, d)).astype(np.float32)
    y = rng.integers(0, c, size=b).astype(np.int32)
    p = rng.normal(size=(c, d)).astype(np.float32)
    return x, y, p


@functools.cache
def _compiled(fn, hp):
    return jax.jit(lambda x, y, p: fn(x, y, proxies=p, **dict(hp)))


def _jitted(fn, y, **hp):
    """`(x, p) -> fn(x, y, proxies=p, **hp)` under jit; labels traced: one compile per shape."""
    f = _compiled(fn, tuple(sorted(hp.items())))
    return lambda x, p: f(x, jnp.asarray(y), p)


@pytest.mark.parametrize("name,fn,ref,init", CASES, ids=IDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference(name, fn, ref, init, seed):
    x, y, p = _data(seed)
    if seed == 2:  # a zero embedding, a zero proxy and a duplicate
        x[0] = 0.0
        p[1] = 0.0
        x[2] = x[3]
    got = float(_jitted(fn, y)(x, p))
    np.testing.assert_allclose(got, ref(x, y, p), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,fn,ref,init", CASES, ids=IDS)
def test_non_default_hparams(name, fn, ref, init):
    x, y, p = _data(3)
    hp = {
        "proxy_anchor": {"margin": 0.3, "alpha": 8.0},
        "proxy_nca": {"softmax_scale": 3.0},
        "normalized_softmax": {"temperature": 0.5},
    }[name]
    got = float(_jitted(fn, y, **hp)(x, p))
    np.testing.assert_allclose(got, ref(x, y, p, **hp), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,fn,ref,init", CASES, ids=IDS)
def test_gradient_matches_reference_finite_differences(name, fn, ref, init):
    x, y, p = _data(4, b=5, d=3, c=3)
    gx, gp = jax.grad(lambda a, q: fn(a, jnp.asarray(y), proxies=q), argnums=(0, 1))(x, p)
    eps = 1e-6
    for arr, grad in ((x, gx), (p, gp)):
        num = np.zeros(arr.shape)
        for idx in np.ndindex(arr.shape):
            hi, lo = arr.astype(np.float64), arr.astype(np.float64)
            hi[idx] += eps
            lo[idx] -= eps
            args_hi = (hi, p) if arr is x else (x, hi)
            args_lo = (lo, p) if arr is x else (x, lo)
            num[idx] = (ref(args_hi[0], y, args_hi[1]) - ref(args_lo[0], y, args_lo[1])) / (2 * eps)
        np.testing.assert_allclose(np.asarray(grad), num, rtol=2e-3, atol=2e-4 * np.abs(num).max())


@pytest.mark.parametrize("name,fn,ref,init", CASES, ids=IDS)
def test_check_grads(name, fn, ref, init):
    x, y, p = _data(5, b=6, d=4, c=3)
    # Milder scales than the defaults keep float32 finite differences meaningful; the
    # defaults are covered by the float64 finite-difference test above.
    hp = {
        "proxy_anchor": {"alpha": 4.0},
        "proxy_nca": {},
        "normalized_softmax": {"temperature": 0.5},
    }[name]
    f = lambda a, q: fn(a, jnp.asarray(y), proxies=q, **hp)
    check_grads(f, (jnp.asarray(x), jnp.asarray(p)), order=1, modes=["rev"], eps=1e-2, rtol=2e-2)


# ----------------------------------------------------------------------------------------
# Edge cases: finite value and gradient for every legal input.


@functools.cache
def _compiled_grad(fn, hp):
    f = lambda x, y, p: fn(x, y, proxies=p, **dict(hp))
    return jax.jit(jax.value_and_grad(f, argnums=(0, 2)))


def _value_and_grads(fn, x, y, p, **hp):
    f = _compiled_grad(fn, tuple(sorted(hp.items())))
    v, (gx, gp) = f(jnp.asarray(x), jnp.asarray(y), jnp.asarray(p))
    return v, gx, gp


def _assert_finite(*arrays):
    for a in arrays:
        assert np.all(np.isfinite(np.asarray(a, np.float32)))


EDGE = {
    "one_class": lambda x, y, p: (x, np.zeros_like(y), p),
    "all_distinct": lambda x, y, p: (x[:4], np.arange(4, dtype=np.int32), p),
    "single_sample": lambda x, y, p: (x[:1], y[:1], p),
    "duplicates": lambda x, y, p: (np.repeat(x[:1], len(x), 0), y, p),
    "zero_vectors": lambda x, y, p: (np.zeros_like(x), y, np.zeros_like(p)),
    "one_proxy": lambda x, y, p: (x, np.zeros_like(y), p[:1]),
}


@pytest.mark.parametrize("name,fn,ref,init", CASES, ids=IDS)
@pytest.mark.parametrize("edge", sorted(EDGE))
def test_edge_cases_finite(name, fn, ref, init, edge):
    x, y, p = EDGE[edge](*_data(6))
    v, gx, gp = _value_and_grads(fn, x, y, p)
    _assert_finite(v, gx, gp)
    if edge != "zero_vectors":
        np.testing.assert_allclose(float(v), ref(x, y, p), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,fn,ref,init", CASES, ids=IDS)
def test_huge_logits_finite(name, fn, ref, init):
    x, y, p = _data(7)
    v, gx, gp = _value_and_grads(fn, x, y, p, **HUGE[name])
    _assert_finite(v, gx, gp)


@pytest.mark.parametrize("name,fn,ref,init", CASES, ids=IDS)
def test_bf16_inputs(name, fn, ref, init):
    x, y, p = _data(8)
    xb, pb = jnp.asarray(x, jnp.bfloat16), jnp.asarray(p, jnp.bfloat16)
    v, gx, gp = _value_and_grads(fn, xb, y, pb)
    assert v.dtype == jnp.float32 and gx.dtype == jnp.bfloat16
    _assert_finite(v, gx, gp)
    want = ref(np.asarray(xb, np.float32), y, np.asarray(pb, np.float32))
    np.testing.assert_allclose(float(v), want, rtol=1e-4)


@pytest.mark.parametrize("name,fn,ref,init", CASES, ids=IDS)
def test_views_are_flattened(name, fn, ref, init):
    rng = np.random.default_rng(9)
    x = rng.normal(size=(4, 3, 5)).astype(np.float32)
    y = np.array([0, 1, 1, 2], np.int32)
    p = rng.normal(size=(3, 5)).astype(np.float32)
    got = float(fn(x, y, proxies=p))
    np.testing.assert_allclose(got, ref(x.reshape(12, 5), np.repeat(y, 3), p), rtol=1e-5)


@pytest.mark.parametrize("name,fn,ref,init", CASES, ids=IDS)
def test_illegal_inputs_raise(name, fn, ref, init):
    x, y, p = _data(10)
    with pytest.raises(ValueError, match="proxies"):
        fn(x, y, proxies=p[:, :-1])
    with pytest.raises(ValueError, match="proxies"):
        fn(x, y, proxies=p[0])
    with pytest.raises(ValueError, match="proxies"):
        fn(x, y, proxies=p.astype(np.int32))
    with pytest.raises(ValueError, match="class indices"):
        fn(x, np.full_like(y, len(p)), proxies=p)
    with pytest.raises(ValueError, match="class indices"):
        fn(x, np.full_like(y, -1), proxies=p)
    with pytest.raises(ValueError, match="labels"):
        fn(x, y[:-1], proxies=p)
    with pytest.raises(ValueError, match="integers"):
        fn(x, y.astype(np.float32), proxies=p)
    with pytest.raises(ValueError, match="floating"):
        fn(x.astype(np.int32), y, proxies=p)


# ----------------------------------------------------------------------------------------
# Initialisation and registry.


def test_init_distributions():
    key = jax.random.key(0)
    pa = init_proxy_anchor(key, num_classes=50, embedding_dim=400)["proxies"]
    assert pa.shape == (50, 400) and pa.dtype == jnp.float32
    np.testing.assert_allclose(float(jnp.std(pa)), math.sqrt(2 / 50), rtol=0.03)
    for init in (init_proxy_nca, init_normalized_softmax):
        w = init(key, num_classes=50, embedding_dim=400)["proxies"]
        assert w.shape == (50, 400)
        np.testing.assert_allclose(float(jnp.std(w)), 1.0, rtol=0.03)
        assert abs(float(jnp.mean(w))) < 0.02


@pytest.mark.parametrize("name,fn,ref,init", CASES, ids=IDS)
def test_registry(name, fn, ref, init):
    info = loss_info(name)
    assert info.fn is fn and info.labels == "flat" and info.init_params is init
    assert "proxies" not in default_hparams(name)
    params = info.init_params(jax.random.key(1), num_classes=4, embedding_dim=6)
    x, y, _ = _data(11)
    assert np.isfinite(float(info.fn(x, y, **params, **default_hparams(name))))


def test_default_hparams_match_pml():
    assert default_hparams("proxy_anchor") == {"margin": 0.1, "alpha": 32.0}
    assert default_hparams("proxy_nca") == {"softmax_scale": 1.0}
    assert default_hparams("normalized_softmax") == {"temperature": 0.05}


# ----------------------------------------------------------------------------------------
# Properties.

_settings = settings(max_examples=8, deadline=None)


@st.composite
def _batches(draw):
    seed = draw(st.integers(0, 2**16))
    x, y, p = _data(seed, b=8, d=4, c=3)
    return x, y, p, seed


@pytest.mark.parametrize("name,fn,ref,init", CASES, ids=IDS)
@_settings
@given(batch=_batches())
def test_batch_permutation_invariance(name, fn, ref, init, batch):
    x, y, p, seed = batch
    perm = np.random.default_rng(seed).permutation(len(x))
    f = _jitted(fn, y)
    g = _jitted(fn, y[perm])
    np.testing.assert_allclose(float(g(x[perm], p)), float(f(x, p)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,fn,ref,init", CASES, ids=IDS)
@_settings
@given(batch=_batches())
def test_class_relabelling_with_permuted_proxies(name, fn, ref, init, batch):
    x, y, p, seed = batch
    perm = np.random.default_rng(seed + 1).permutation(len(p))  # class c -> perm[c]
    p_new = np.empty_like(p)
    p_new[perm] = p
    got = float(_jitted(fn, perm[y].astype(np.int32))(x, p_new))
    np.testing.assert_allclose(got, float(_jitted(fn, y)(x, p)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,fn,ref,init", CASES, ids=IDS)
@_settings
@given(batch=_batches(), scale=st.floats(0.01, 100.0), pscale=st.floats(0.01, 100.0))
def test_scale_invariance(name, fn, ref, init, batch, scale, pscale):
    x, y, p, _ = batch
    f = _jitted(fn, y)
    got = float(f(x * np.float32(scale), p * np.float32(pscale)))
    np.testing.assert_allclose(got, float(f(x, p)), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------
# Optional cross-check against pytorch-metric-learning itself.


@pytest.mark.parametrize("name,fn,ref,init", CASES, ids=IDS)
def test_matches_pml(name, fn, ref, init):
    torch = pytest.importorskip("torch")
    pml = pytest.importorskip("pytorch_metric_learning.losses")
    x, y, p = _data(12, b=16, d=8, c=5)
    x[0] = 0.0
    cls = {
        "proxy_anchor": pml.ProxyAnchorLoss,
        "proxy_nca": pml.ProxyNCALoss,
        "normalized_softmax": pml.NormalizedSoftmaxLoss,
    }[name]
    loss = cls(num_classes=5, embedding_size=8)
    weight = loss.proxies if name != "normalized_softmax" else loss.W
    with torch.no_grad():
        weight.copy_(torch.tensor(p if name != "normalized_softmax" else p.T))
    xt = torch.tensor(x, requires_grad=True)
    want = loss(xt, torch.tensor(y, dtype=torch.long))
    want.backward()
    got, gx, gp = _value_and_grads(fn, x, y, p)
    np.testing.assert_allclose(float(got), want.item(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(gx), xt.grad.numpy(), rtol=1e-4, atol=1e-6)
    want_gp = weight.grad.numpy() if name != "normalized_softmax" else weight.grad.numpy().T
    np.testing.assert_allclose(np.asarray(gp), want_gp, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name,fn,ref,init", CASES, ids=IDS)
def test_the_init_dict_given_as_proxies_is_refused_in_one_line(name, fn, ref, init):
    """`init_*` returns the variables `{"proxies": [C, D]}`, passed as `**variables`; the
    whole dict given as `proxies=` says so instead of NumPy's "entry not a 2- or 3- tuple"."""
    x, y, _ = _data(11)
    variables = init(jax.random.key(0), num_classes=4, embedding_dim=x.shape[1])
    assert set(variables) == {"proxies"} and variables["proxies"].shape == (4, x.shape[1])
    with pytest.raises(ValueError) as err:
        fn(x, y, proxies=variables)
    assert str(err.value) == (
        f"{name}: proxies= got a dict (keys ['proxies']), e.g. the variables from "
        f"init_{name}; pass it as **variables or proxies=variables['proxies']"
    )
    want = fn(x, y, proxies=variables["proxies"])
    np.testing.assert_array_equal(fn(x, y, **variables), want)

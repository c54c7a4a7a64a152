"""Library calls under jit cannot raise: out-of-range labels must poison the result
(issue 13), and a metric that clips an impossible K says so."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from himl.eval.retrieval import retrieval_metrics
from himl.losses import get_loss, loss_info

PROXY_LOSSES = ["proxy_anchor", "proxy_nca", "normalized_softmax"]


def _inputs(name, num_classes=3):
    info = loss_info(name)
    proxies = info.init_params(jax.random.key(0), num_classes=num_classes, embedding_dim=8)
    x = jax.random.normal(jax.random.key(1), (6, 8))
    return x, proxies


@pytest.mark.parametrize("name", PROXY_LOSSES)
@pytest.mark.parametrize("bad_label", [3, 7, -1])
def test_out_of_range_label_is_nan_under_jit_and_an_error_eagerly(name, bad_label):
    fn = get_loss(name)
    x, proxies = _inputs(name)
    good = jnp.array([0, 0, 1, 1, 2, 2])
    bad = good.at[4].set(bad_label)
    jitted = jax.jit(lambda x, y, p: fn(x, y, **p))
    assert np.isnan(float(jitted(x, bad, proxies)))
    # In range, jit and eager agree and are finite: the check does not change the value.
    assert float(jitted(x, good, proxies)) == pytest.approx(float(fn(x, good, **proxies)))
    assert np.isfinite(float(jitted(x, good, proxies)))
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 3\)"):
        fn(x, bad, **proxies)


@pytest.mark.parametrize("name", PROXY_LOSSES)
def test_in_range_gradient_is_unchanged_and_finite(name):
    fn = get_loss(name)
    x, proxies = _inputs(name)
    y = jnp.array([0, 0, 1, 1, 2, 2])
    grad = jax.jit(jax.grad(lambda x: fn(x, y, **proxies)))(x)
    assert np.all(np.isfinite(np.asarray(grad)))


def test_recall_at_an_impossible_k_warns_that_it_was_clipped():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(5, 4))
    labels = np.array([0, 0, 1, 1, 1])
    with pytest.warns(UserWarning, match=r"K in \[8\]: only 4 neighbours exist"):
        clipped = retrieval_metrics(emb, labels, ks=(1, 8))
    exact = retrieval_metrics(emb, labels, ks=(1, 4))
    assert clipped["recall@8"] == exact["recall@4"]


@pytest.mark.parametrize("bad_label", [3, -1])
def test_hist_out_of_range_label_is_nan_under_jit(bad_label):
    fn = get_loss("hist")
    variables = loss_info("hist").init(
        jax.random.key(0), num_classes=3, embedding_dim=8, hgnn_hidden=16
    )
    x = jax.random.normal(jax.random.key(1), (6, 8))
    good = jnp.array([0, 0, 1, 1, 2, 2])
    jitted = jax.jit(lambda x, y, v: fn(x, y, v)[0])
    assert np.isfinite(float(jitted(x, good, variables)))
    assert np.isnan(float(jitted(x, good.at[2].set(bad_label), variables)))

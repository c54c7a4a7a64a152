"""HIST against a plain-loop NumPy reference of the official semantics, gradients, edge cases."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from references.hist import ref_ce, ref_distances, ref_hgnn, ref_hist, ref_incidence, ref_laplacian

from himl.config_lib import loss_config
from himl.distances import l2_normalize, pairwise
from himl.losses import HistOutputs, get_loss, hist, hist_outputs, init_hist, loss_info
from himl.losses.hist import hist_distances, hypergraph_incidence, hypergraph_laplacian
from himl.models.hgnn import HGNN

C, D, HIDDEN = 5, 6, 4


# ---------------------------------------------------------------- fixtures
def _params(seed=0):
    v = init_hist(jax.random.key(seed), num_classes=C, embedding_dim=D, hgnn_hidden=HIDDEN)
    rng = np.random.default_rng(seed)
    p = jax.tree.map(np.asarray, v["params"])
    # log-variances spanning relu6's three regimes, away from its kinks at 0 and 6
    p["log_vars"] = rng.choice([-0.7, 0.4, 1.3, 2.5, 7.0], size=(C, D)).astype(np.float32)
    p["hgnn"]["bn1"]["scale"] = rng.uniform(0.5, 1.5, HIDDEN).astype(np.float32)
    p["hgnn"]["bn1"]["bias"] = rng.normal(0, 0.3, HIDDEN).astype(np.float32)
    return p


def _variables(p, mean=0.0, var=1.0):
    """`init_hist`'s layout around params `p`, with running statistics (mean, var)."""
    stats = {"bn1": {"mean": jnp.full(HIDDEN, mean), "var": jnp.full(HIDDEN, var)}}
    return {"params": p, "batch_stats": {"hgnn": stats}}


def _batch(labels, seed=1):
    x = np.random.default_rng(seed).normal(size=(len(labels), D)).astype(np.float32)
    return x, np.asarray(labels, np.int32)


LABELS = [0, 0, 2, 2, 2, 3, 4, 4]  # class 1 absent


def test_distances_match_reference():
    p = _params()
    x, _ = _batch(LABELS)
    got = hist_distances(jnp.asarray(x), p["means"], p["log_vars"])
    np.testing.assert_allclose(got, ref_distances(x, p["means"], p["log_vars"]), atol=1e-5)


def test_incidence_and_laplacian_match_reference():
    p = _params()
    x, y = _batch(LABELS)
    d2 = ref_distances(x, p["means"], p["log_vars"])
    h = np.asarray(hypergraph_incidence(jnp.asarray(d2, jnp.float32), jnp.asarray(y), alpha=1.1))
    want, present = ref_incidence(d2, y, 1.1)
    np.testing.assert_allclose(h[:, present], want, rtol=1e-5)
    absent = [c for c in range(C) if c not in present]
    assert absent == [1] and np.all(h[:, absent] == 0)
    g = hypergraph_laplacian(jnp.asarray(h))
    np.testing.assert_allclose(g, ref_laplacian(want), rtol=1e-5, atol=1e-6)


def test_distances_are_the_shared_mahalanobis():
    p = _params()
    x, _ = _batch(LABELS)
    s2 = jnp.exp(jax.nn.relu6(jnp.asarray(p["log_vars"])))
    want = pairwise("mahalanobis", l2_normalize(x), l2_normalize(p["means"]), s2=s2)
    np.testing.assert_array_equal(hist_distances(jnp.asarray(x), p["means"], p["log_vars"]), want)


@pytest.mark.parametrize("tau,alpha,lambda_s", [(32.0, 0.9, 1.0), (16.0, 2.0, 0.5)])
def test_loss_matches_reference(tau, alpha, lambda_s):
    p = _params()
    x, y = _batch(LABELS)
    want, want_d, mean, var = ref_hist(x, y, p, tau, alpha, lambda_s)
    kw = dict(tau=tau, alpha=alpha, lambda_s=lambda_s)
    out = hist_outputs(x, y, _variables(p), **kw)
    assert float(out.loss) == pytest.approx(want, rel=1e-4)
    assert float(out.distribution) == pytest.approx(want_d, rel=1e-4)
    # running statistics: momentum 0.1, unbiased variance (torch BatchNorm1d)
    stats = out.batch_stats["hgnn"]["bn1"]
    np.testing.assert_allclose(stats["mean"], 0.1 * np.array(mean), rtol=1e-4)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * np.array(var), rtol=1e-4)
    # hist, the registry entry and hist_outputs agree
    loss, new_stats = hist(x, y, _variables(p), **kw)
    assert float(loss) == float(out.loss)
    jax.tree.map(np.testing.assert_array_equal, new_stats, out.batch_stats)
    assert get_loss("hist") is hist
    got, _ = loss_info("hist").apply(_variables(p), x, y, train=True, hgnn_hidden=HIDDEN, **kw)
    assert float(got) == float(out.loss)


def test_outputs_for_inspection_match_reference():
    """Incidence, propagation matrix and logits, each against the plain-loop reference."""
    p = _params()
    x, y = _batch(LABELS)
    out = jax.jit(lambda x, y, v: hist_outputs(x, y, v, alpha=1.1))(x, y, _variables(p))
    assert isinstance(out, HistOutputs)
    d2 = ref_distances(x, p["means"], p["log_vars"])
    np.testing.assert_allclose(out.distances, d2, atol=1e-5)
    h, present = ref_incidence(d2, y, 1.1)
    assert out.incidence.shape == (len(y), C) and np.all(np.asarray(out.incidence)[:, 1] == 0)
    np.testing.assert_allclose(np.asarray(out.incidence)[:, present], h, rtol=1e-5)
    g = ref_laplacian(h)
    np.testing.assert_allclose(out.propagation, g, rtol=1e-5, atol=1e-6)
    logits, _, _ = ref_hgnn(x, g, p["hgnn"])
    np.testing.assert_allclose(out.logits, logits, rtol=1e-4, atol=1e-5)
    assert float(out.ce) == pytest.approx(ref_ce(logits, y), rel=1e-4)


def test_views_are_samples():
    p = _params()
    x, y = _batch([0, 0, 2, 2, 3, 3, 4, 4])
    views = jnp.asarray(x).reshape(4, 2, D)
    want, *_ = ref_hist(x, y, p, 32.0, 0.9, 1.0)
    got, _ = hist(views, jnp.asarray(y[::2]), _variables(p))
    assert np.allclose(y[::2].repeat(2), y)
    assert float(got) == pytest.approx(want, rel=1e-4)


def test_eval_mode_uses_running_statistics():
    p = _params()
    x, y = _batch(LABELS)
    v = _variables(p, mean=0.2, var=2.0)
    a, stats = hist(x, y, v, train=False)
    assert stats is v["batch_stats"]
    b, _ = hist(x, y, v, train=True)
    assert float(a) != pytest.approx(float(b))
    # train mode normalises with the batch's own statistics: the running ones do not matter
    c, _ = hist(x, y, _variables(p), train=True)
    assert float(c) == pytest.approx(float(b), rel=1e-6)


def test_gradients_float64():
    p = _params()
    x, y = _batch(LABELS)
    with jax.enable_x64(True):
        v64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), _variables(p))

        @jax.jit
        def f(x, means, log_vars, hgnn):
            params = {"means": means, "log_vars": log_vars, "hgnn": hgnn}
            return hist(x, jnp.asarray(y), {**v64, "params": params})[0]

        args = (jnp.asarray(x, jnp.float64), *(v64["params"][k] for k in ("means", "log_vars")))
        check_grads(f, (*args, v64["params"]["hgnn"]), order=1, modes=("rev",), atol=1e-4,
                    rtol=1e-4, eps=1e-5)  # fmt: skip


def test_incidence_is_not_detached():
    """The CE term reaches the distributions through H (and G), as in the official code."""
    p = _params()
    x, y = _batch(LABELS)

    @jax.jit
    def ce_only(means):
        v = _variables({**p, "means": means})
        return hist_outputs(x, y, v).ce

    assert float(jnp.abs(jax.jit(jax.grad(ce_only))(jnp.asarray(p["means"]))).max()) > 0


@pytest.mark.parametrize(
    "labels",
    [
        [0, 1, 2, 3, 4],  # every sample its own class (and every class present)
        [3, 3, 3, 3, 3, 3],  # one class fills the batch: a single hyperedge
        [0, 0, 1, 2, 2, 4],  # classes 1 and 4 appear once
        [2, 2],  # two samples (batch norm over two rows)
    ],
)
def test_edge_batches_are_finite(labels):
    p = _params()
    x, y = _batch(labels)
    loss, grads = jax.jit(
        jax.value_and_grad(lambda x, p: hist(x, y, _variables(p))[0], argnums=(0, 1))
    )(jnp.asarray(x), p)
    assert np.isfinite(float(loss))
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_jit_same_shapes_any_classes():
    p = _params()
    f = jax.jit(lambda x, y, v: hist(x, y, v)[0])
    for labels in ([0, 0, 1, 1], [4, 4, 4, 4], [0, 1, 2, 3]):
        x, y = _batch(labels)
        assert np.isfinite(float(f(x, y, _variables(p))))
    assert f._cache_size() == 1


def test_init_official_distributions():
    v = init_hist(jax.random.key(0), num_classes=400, embedding_dim=64, hgnn_hidden=32)
    assert set(v) == {"params", "batch_stats"}  # the checkpoint layout of HIST runs
    assert set(v["params"]) == {"means", "log_vars", "hgnn"} and set(v["batch_stats"]) == {"hgnn"}
    for name in ("means", "log_vars"):
        arr = np.asarray(v["params"][name])
        assert arr.shape == (400, 64)
        assert np.std(arr) == pytest.approx(math.sqrt(2 / 400), rel=0.05)  # fan_out = C
    bound = 1 / math.sqrt(64)  # torch.nn.Linear: U(+-1/sqrt(fan_in))
    assert np.abs(v["params"]["hgnn"]["theta1"]["kernel"]).max() <= bound
    assert np.abs(v["params"]["hgnn"]["theta1"]["bias"]).max() <= bound
    assert v["params"]["hgnn"]["theta2"]["kernel"].shape == (32, 400)
    np.testing.assert_array_equal(v["batch_stats"]["hgnn"]["bn1"]["var"], np.ones(32))
    assert HGNN(num_classes=3).hidden == 512  # official --hgnn-hidden default
    # the registry creates the same variables from the config's hyperparameters
    via = loss_info("hist").init(
        jax.random.key(0), num_classes=400, embedding_dim=64, hgnn_hidden=32, tau=16.0
    )
    jax.tree.map(np.testing.assert_array_equal, via, v)


def test_config_and_errors():
    cfg = loss_config("hist")
    assert dict(cfg.hist) == {"tau": 32.0, "alpha": 0.9, "lambda_s": 1.0, "hgnn_hidden": 512}
    p = _params()
    x, y = _batch(LABELS)
    with pytest.raises(ValueError, match="hist: hgnn_hidden must be a finite number > 0"):
        init_hist(jax.random.key(0), num_classes=C, embedding_dim=D, hgnn_hidden=0)
    with pytest.raises(ValueError, match="means and log_vars"):
        hist(x[:, :3], y, _variables(p))
    with pytest.raises(ValueError, match="variables must be init_hist's"):
        hist(x, y, p)  # the params alone
    with pytest.raises(ValueError, match=r"class indices in \[0, 5\), got labels in \[0, 5\]"):
        hist(x, np.where(y == 4, 5, y), _variables(p))
    with pytest.raises(ValueError, match="hist: tau must be a finite number > 0"):
        hist(x, y, _variables(p), tau=0.0)

"""Classic losses (contrastive, triplet, multi-similarity, NT-Xent, SupCon) against slow
NumPy references written from the definitions (PML semantics and reductions)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads
from references.pair import (
    ref_contrastive,
    ref_multi_similarity,
    ref_ntxent,
    ref_supcon,
    ref_triplet,
)

from himl.losses import (
    LOSSES,
    contrastive,
    get_loss,
    masked_supcon,
    multi_similarity,
    ntxent,
    supcon,
    triplet_margin,
)

REFS = {
    "contrastive": (contrastive, ref_contrastive),
    "triplet_margin": (triplet_margin, ref_triplet),
    "multi_similarity": (multi_similarity, ref_multi_similarity),
    "ntxent": (ntxent, ref_ntxent),
    "supcon": (supcon, ref_supcon),
}

CASES = [
    ("contrastive", {}),
    ("contrastive", {"distance": "squared_euclidean", "neg_margin": 0.9}),
    ("contrastive", {"distance": "cosine", "pos_margin": 0.8, "neg_margin": 0.2}),
    ("contrastive", {"distance": "dot", "pos_margin": 1.0, "neg_margin": 0.0}),
    ("triplet_margin", {}),
    ("triplet_margin", {"margin": 0.3, "mining": "semi_hard"}),
    ("triplet_margin", {"margin": 0.2, "mining": "batch_hard"}),
    ("triplet_margin", {"margin": 0.2, "swap": True}),
    ("triplet_margin", {"smooth_loss": True}),
    ("triplet_margin", {"margin": 0.2, "distance": "cosine"}),
    ("triplet_margin", {"margin": 0.2, "smooth_loss": True, "mining": "semi_hard"}),
    ("multi_similarity", {}),
    ("multi_similarity", {"alpha": 1.0, "beta": 20.0, "base": 0.3}),
    ("ntxent", {}),
    ("ntxent", {"temperature": 0.5}),
    ("supcon", {}),
    ("supcon", {"chunk_size": 5}),
]


def _batch(seed, b=12, d=6, classes=4):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(b, d)).astype(np.float32), rng.integers(0, classes, size=b)


@functools.cache
def _jitted(name, items):
    return jax.jit(functools.partial(REFS[name][0], **dict(items)))


def _run(name, hp, x, y):
    return _jitted(name, tuple(sorted(hp.items())))(jnp.asarray(x), jnp.asarray(y))


@pytest.mark.parametrize("name,hp", CASES)
def test_matches_numpy_reference(name, hp):
    ref = REFS[name][1]
    ref_hp = {k: v for k, v in hp.items() if k != "chunk_size"}
    for seed in range(3):
        x, y = _batch(seed)
        np.testing.assert_allclose(float(_run(name, hp, x, y)), ref(x, y, **ref_hp), rtol=1e-5)


@pytest.mark.parametrize(
    "name,hp",
    [
        ("multi_similarity", {}),
        ("ntxent", {"temperature": 0.5}),
        ("supcon", {"temperature": 0.5}),
        ("triplet_margin", {"smooth_loss": True}),
    ],
)
def test_check_grads_smooth_losses(name, hp):
    x, y = _batch(5, b=8, d=4)
    fn = jax.jit(functools.partial(REFS[name][0], labels=jnp.asarray(y), **hp))
    check_grads(fn, (jnp.asarray(x),), order=1, modes=["rev"], eps=1e-2, atol=2e-2, rtol=2e-2)


def _dense_triplet(x, y, margin, mining):
    """B^3 JAX triplet loss, the obvious way (the gradient reference for the fast paths)."""
    xn = x / jnp.linalg.norm(x, axis=1, keepdims=True)
    d = jnp.sqrt(jnp.sum((xn[:, None] - xn[None]) ** 2, -1) + jnp.eye(len(y)))
    same = y[:, None] == y[None]
    pos, neg = same & ~jnp.eye(len(y), dtype=bool), ~same
    keep = pos[:, :, None] & neg[:, None, :]
    if mining == "semi_hard":
        keep &= d[:, None, :] > d[:, :, None]
    loss = jnp.where(keep, jax.nn.relu(d[:, :, None] - d[:, None, :] + margin), 0.0)
    return jnp.sum(loss) / jnp.maximum(jnp.sum(loss > 0), 1)


@pytest.mark.parametrize("mining", ["all", "semi_hard"])
def test_triplet_gradient_matches_dense(mining):
    x, y = _batch(6)
    y = jnp.asarray(y)
    g_fast = jax.jit(jax.grad(lambda x: triplet_margin(x, y, margin=0.3, mining=mining)))(
        jnp.asarray(x)
    )
    g_dense = jax.jit(jax.grad(lambda x: _dense_triplet(x, y, 0.3, mining)))(jnp.asarray(x))
    np.testing.assert_allclose(g_fast, g_dense, rtol=1e-4, atol=1e-6)


def _dense_supcon(x, y, t):
    """SupCon the obvious way on `[N, N]` masks (autodiff is the gradient reference)."""
    xn = x / jnp.linalg.norm(x, axis=1, keepdims=True)
    not_self = ~jnp.eye(len(y), dtype=bool)
    same = y[:, None] == y[None, :]
    losses, has_pos = masked_supcon(xn @ xn.T / t, same & not_self, not_self)
    mean = jnp.sum(losses) / jnp.maximum(jnp.sum(has_pos), 1)
    return jnp.where(jnp.any(same & not_self) & jnp.any(~same), mean, 0.0)


@pytest.mark.parametrize(
    "b,chunk_size,t", [(23, None, 0.1), (23, 4, 0.1), (23, 4, 0.01), (600, None, 0.1)]
)
def test_supcon_value_and_grad_equal_the_dense_definition(b, chunk_size, t):
    """The log-sum-exp pass and group sums against autodiff of `[N, N]` masks: dense, in
    blocks of 4 (with padding), at t = 0.01 (its exact fallback), and B = 600 (the CPU's
    default blocks, two of 304)."""
    x, y = _batch(7, b=b, d=5, classes=max(4, b // 8))
    x, y = jnp.asarray(x), jnp.asarray(y)
    fn = functools.partial(supcon, labels=y, temperature=t, chunk_size=chunk_size)
    got_v, got_g = jax.jit(jax.value_and_grad(fn))(x)
    want_v, want_g = jax.jit(jax.value_and_grad(lambda x: _dense_supcon(x, y, t)))(x)
    np.testing.assert_allclose(got_v, want_v, rtol=1e-5)
    np.testing.assert_allclose(got_g, want_g, rtol=1e-4, atol=1e-6 / t)
    x3 = jnp.stack([x, x * 1.1 + 0.05], axis=1)
    chunked = jax.jit(lambda x: supcon(x, y, chunk_size=4 * b))(x3)  # c > N
    np.testing.assert_allclose(chunked, jax.jit(lambda x: supcon(x, y))(x3), rtol=1e-5)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(st.lists(st.integers(-(2**31), 2**31 - 1), min_size=4, max_size=4, unique=True))
def test_supcon_depends_on_which_labels_are_equal_only(names):
    """Any injective relabelling (negative, huge, reordered ids) gives the same loss."""
    x, y = _batch(8, b=16, classes=4)
    relabelled = np.asarray(names, np.int64)[y].astype(np.int32)
    got = jax.jit(supcon)(jnp.asarray(x), jnp.asarray(relabelled))
    np.testing.assert_allclose(got, jax.jit(supcon)(jnp.asarray(x), jnp.asarray(y)), rtol=1e-6)


ALL = list(REFS)


@pytest.mark.parametrize("name", ALL)
def test_views_equal_flattened(name):
    x, y = _batch(8, b=6)
    x3 = np.stack([x, x[::-1] + 0.1], axis=1)
    flat = REFS[name][0](x3.reshape(12, -1), np.repeat(y, 2))
    np.testing.assert_allclose(REFS[name][0](x3, y), flat, rtol=1e-6)


EDGE_LABELS = {
    "all_distinct": np.arange(8),
    "one_class": np.zeros(8, int),
    "pairs": np.repeat(np.arange(4), 2),
}


@functools.cache
def _value_and_grad(name):
    return jax.jit(jax.value_and_grad(REFS[name][0]))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("labels", list(EDGE_LABELS))
@pytest.mark.parametrize("inputs", ["random", "duplicates", "zeros", "bf16"])
def test_edge_cases_finite(name, labels, inputs):
    y = jnp.asarray(EDGE_LABELS[labels])
    x = jnp.asarray(_batch(9, b=8, d=4)[0])
    if inputs == "duplicates":
        x = jnp.tile(x[:2], (4, 1))
    elif inputs == "zeros":
        x = x.at[::2].set(0.0)
    elif inputs == "bf16":
        x = x.astype(jnp.bfloat16)
    v, g = _value_and_grad(name)(x, y)
    assert v.dtype == jnp.float32
    assert np.isfinite(float(v)) and np.all(np.isfinite(np.asarray(g, np.float32)))
    if labels == "all_distinct" and name in ("triplet_margin", "ntxent", "supcon"):
        assert float(v) == 0.0
    if labels == "one_class" and name in ("triplet_margin", "ntxent", "supcon"):
        assert float(v) == 0.0


@pytest.mark.parametrize("name", ["ntxent", "supcon"])
def test_low_temperature_finite(name):
    x, y = _batch(10)
    fn = functools.partial(REFS[name][0], labels=y, temperature=0.01)
    v, g = jax.jit(jax.value_and_grad(fn))(jnp.asarray(x))
    assert np.isfinite(float(v)) and np.all(np.isfinite(g))
    np.testing.assert_allclose(float(v), REFS[name][1](x, y, temperature=0.01), rtol=1e-4)


def test_bf16_close_to_float32():
    x, y = _batch(11)
    for name in ALL:
        fn = REFS[name][0]
        np.testing.assert_allclose(
            fn(jnp.asarray(x, jnp.bfloat16), y), fn(jnp.asarray(x), y), rtol=5e-2, atol=1e-2
        )


def test_illegal_inputs():
    x, y = _batch(12)
    for name in ALL:
        fn = REFS[name][0]
        with pytest.raises(ValueError, match=name):
            fn(x[0], y)
        with pytest.raises(ValueError, match=name):
            fn(x, y[:, None])
        with pytest.raises(ValueError, match=name):
            fn(x[:5], y)
        with pytest.raises(ValueError, match=name):
            fn(x.astype(np.int32), y)
        with pytest.raises(ValueError, match=name):
            fn(x, y.astype(np.float32))
    with pytest.raises(ValueError, match="mining"):
        triplet_margin(x, y, mining="hardest")
    with pytest.raises(ValueError, match="swap"):
        triplet_margin(x, y, mining="batch_hard", swap=True)
    for fn in (contrastive, triplet_margin, multi_similarity, ntxent):
        with pytest.raises(ValueError, match="distance"):
            fn(x, y, distance="manhattan")
    for fn in (ntxent, supcon):
        with pytest.raises(ValueError, match="temperature"):
            fn(x, y, temperature=0.0)
    with pytest.raises(ValueError, match="chunk_size"):
        supcon(x, y, chunk_size=0)


def test_registered():
    for name in ("contrastive", "triplet_margin", "ntxent", "multi_similarity"):
        assert LOSSES[name].fn is REFS[name][0] and LOSSES[name].labels == "flat"


# ---------------------------------------------------------------- properties

PROPERTY = settings(max_examples=4, deadline=None, derandomize=True)
PROPERTY_CASES = [
    ("contrastive", {}),
    ("triplet_margin", {}),
    ("triplet_margin", {"mining": "batch_hard", "margin": 0.2}),
    ("multi_similarity", {}),
    ("ntxent", {}),
    ("supcon", {}),
]


@pytest.mark.parametrize("name,hp", PROPERTY_CASES)
@PROPERTY
@given(seed=st.integers(0, 2**16))
def test_invariances(name, hp, seed):
    x, y = _batch(seed)
    rng = np.random.default_rng(seed + 1)
    base = float(_run(name, hp, x, y))
    perm = rng.permutation(len(y))
    np.testing.assert_allclose(float(_run(name, hp, x[perm], y[perm])), base, rtol=2e-5, atol=1e-6)
    relabel = rng.permutation(100)[:4] * 7 - 50
    np.testing.assert_allclose(float(_run(name, hp, x, relabel[y])), base, rtol=2e-5, atol=1e-6)
    scale = np.float32(rng.uniform(0.1, 10.0))
    np.testing.assert_allclose(float(_run(name, hp, x * scale, y)), base, rtol=2e-5, atol=1e-6)


# ---------------------------------------------------------------- optional PML cross-check


def test_matches_pytorch_metric_learning():
    torch = pytest.importorskip("torch")
    pml = pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning import distances, losses, miners

    pairs = [
        (losses.ContrastiveLoss(), contrastive, {}, None),
        (
            losses.ContrastiveLoss(distance=distances.LpDistance(power=2), neg_margin=0.8),
            contrastive,
            {"distance": "squared_euclidean", "neg_margin": 0.8},
            None,
        ),
        (losses.TripletMarginLoss(), triplet_margin, {}, None),
        (losses.TripletMarginLoss(swap=True), triplet_margin, {"swap": True}, None),
        (losses.TripletMarginLoss(smooth_loss=True), triplet_margin, {"smooth_loss": True}, None),
        (
            losses.TripletMarginLoss(margin=0.2),
            triplet_margin,
            {"margin": 0.2, "mining": "batch_hard"},
            miners.BatchHardMiner(),
        ),
        (
            losses.TripletMarginLoss(margin=0.2),
            triplet_margin,
            {"margin": 0.2, "mining": "semi_hard"},
            miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard"),
        ),
        (
            losses.TripletMarginLoss(margin=0.2, smooth_loss=True),
            triplet_margin,
            {"margin": 0.2, "smooth_loss": True, "mining": "semi_hard"},
            miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard"),
        ),
        (losses.MultiSimilarityLoss(), multi_similarity, {}, None),
        (losses.NTXentLoss(), ntxent, {}, None),
        (losses.SupConLoss(), supcon, {}, None),
    ]
    del pml
    for seed in range(2):
        x, y = _batch(seed, b=32, d=8, classes=6)
        for pml_loss, fn, hp, miner in pairs:
            xt = torch.tensor(x, requires_grad=True)
            yt = torch.tensor(y)
            want = pml_loss(xt, yt, miner(xt, yt) if miner is not None else None)
            want.backward()
            got, grad = jax.value_and_grad(lambda x, fn=fn, hp=hp, y=y: fn(x, y, **hp))(
                jnp.asarray(x)
            )
            np.testing.assert_allclose(float(got), want.item(), rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_registered_loss_is_nan_when_an_embedding_is(name):
    """A NaN (or inf) embedding gives a NaN loss, never a finite one over NaN gradients: a
    user's `isfinite(loss)` guard must see it. The pair losses read a NaN distance as 0
    (safe_sqrt) and dropped the pair before; PML's torch.sqrt(clamp) keeps the NaN."""
    info = LOSSES[name]
    hparams = info.hparams
    if name == "hist":
        hparams["hgnn_hidden"] = 8
    variables = info.init(jax.random.key(0), num_classes=3, embedding_dim=8, **hparams)
    flat = np.array([0, 0, 1, 1, 2, 2, 0, 1])
    y = flat if info.labels == "flat" else np.stack([flat // 2, flat, np.arange(8)], axis=1)
    for bad in (np.nan, np.inf):
        x = np.random.default_rng(0).normal(size=(8, 2, 8)).astype(np.float32)
        x[3, 0, 1] = bad
        loss, grad = jax.value_and_grad(lambda x: info.apply(variables, x, y, **hparams)[0])(x)
        if name == "npairs":  # it reads one pair per class: sample 3 is in none
            assert np.isfinite(float(loss)) and np.isfinite(grad).all() and not grad[3].any()
        else:
            assert np.isnan(float(loss)), (name, bad)


def test_labels_jax_would_change_are_refused():
    """int64 ids beyond int32 (0 and 2**32 would become one class in JAX's 32-bit
    integers) and class names are refused in one line; int64 ids that fit are taken."""
    x = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    with pytest.raises(ValueError, match=r"supcon: labels in \[0, 4294967297\] do not fit int32"):
        supcon(x, np.array([0, 2**32, 1, 2**32 + 1]))
    with pytest.raises(ValueError, match="himulcone: labels in .* do not fit int32, .* per column"):
        get_loss("himulcone")(x, np.array([[0, 0], [0, 2**40], [1, 2], [1, 2]]))
    with pytest.raises(ValueError, match="triplet_margin: labels must be integers, got <U1"):
        get_loss("triplet_margin")(x, np.array(["a", "b", "a", "b"]))
    ids = np.array([0, 2**31 - 1, 0, 2**31 - 1], np.int64)
    assert float(supcon(x, ids)) == pytest.approx(float(supcon(x, np.array([0, 1, 0, 1]))))


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("shape", [(0, 2, 8), (0, 8), (4, 0, 8)], ids=["B=0", "[0,D]", "V=0"])
def test_every_registered_loss_refuses_an_empty_batch(name, shape):
    """No loss is defined on 0 embeddings: every registered loss (plain, hierarchical,
    proxy, with state) says so in one line naming itself, eagerly and under jit (the shape
    is static), instead of a JAX traceback, 0.0 or NaN."""
    info = LOSSES[name]
    hparams = info.hparams
    if name == "hist":
        hparams["hgnn_hidden"] = 8
    variables = info.init(jax.random.key(0), num_classes=3, embedding_dim=8, **hparams)
    x = np.zeros(shape, np.float32)
    y = np.zeros((shape[0],) if info.labels == "flat" else (shape[0], 3), np.int32)
    expected = f"{name}: the batch is empty (0 embeddings, shape {shape})"
    apply = functools.partial(info.apply, **hparams)
    for call in (apply, jax.jit(apply)):
        with pytest.raises(ValueError) as err:
            call(variables, x, y)
        assert str(err.value) == expected, call

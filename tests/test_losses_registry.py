"""The loss table describes every loss (plain, with parameters, with state) one way, and the
train step uses only that description: a new loss with state trains without touching
`himl/train`, and HIST through `himl.losses` equals HIST through the objective."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from himl.data.sampling import make_batcher
from himl.losses import LOSSES, LossInfo, default_hparams, hist, init_hist, loss_info, supcon
from himl.train.experiment import build_experiment
from himl.train.loop import device_batch, make_mesh, make_step_fn
from himl.train.objective import class_index_table
from himl.train.state import embed

MOMENTUM = 0.1


# ---------------------------------------------------------------- a toy loss with state
def init_centred(rng, *, num_classes, embedding_dim):
    del rng, num_classes
    return {
        "params": {"bias": jnp.zeros(embedding_dim)},
        "batch_stats": {"mean": jnp.zeros(embedding_dim)},
    }


def centred_supcon(embeddings, labels, variables, *, train=True, temperature=0.1):
    """SupCon of `x - centre + bias`; the centre is the batch mean in training (and its
    running average, momentum 0.1, becomes the new state), the running mean otherwise."""
    mean = variables["batch_stats"]["mean"]
    if train:
        centre = jnp.mean(embeddings.reshape(-1, embeddings.shape[-1]), axis=0)
        stats = {"mean": (1 - MOMENTUM) * mean + MOMENTUM * jax.lax.stop_gradient(centre)}
    else:
        centre, stats = mean, variables["batch_stats"]
    x = embeddings - centre + variables["params"]["bias"]
    return supcon(x, labels, temperature=temperature), stats


@pytest.fixture
def centred_registered(monkeypatch):
    info = LossInfo(centred_supcon, "flat", init_variables=init_centred)
    monkeypatch.setitem(LOSSES, "centred_supcon", info)
    return info


def test_new_loss_with_state_trains_through_the_real_train_step(centred_registered):
    from himl.configs import tiny  # the config is built after the loss is registered

    config = tiny.get_config()
    config.loss.name = "centred_supcon"
    config.optimizer.warmup_steps = 0  # the warm-up starts at learning rate 0
    assert dict(config.loss.centred_supcon) == {"temperature": 0.1}
    exp = build_experiment(config)
    mesh = make_mesh()
    step_fn = make_step_fn(exp.model, exp.objective, exp.tx, mesh)
    state = jax.device_put(exp.initial_state(), NamedSharding(mesh, P()))
    assert jax.tree.map(jnp.shape, state.batch_stats["loss"]) == {"mean": (16,)}
    before = jax.device_get(state)  # the step donates its input
    batch = make_batcher(exp.config.data, exp.dataset, 0)(0)
    state, metrics = step_fn(state, device_batch(batch, mesh))

    # the embeddings the step saw, recomputed from the parameters before it
    images = batch["images"]
    b, v = images.shape[:2]
    flat, _ = embed(
        exp.model,
        before.params["model"],
        before.batch_stats["model"],
        images.reshape(b * v, *images.shape[2:]),
        train=True,
    )
    emb = np.asarray(flat).reshape(b, v, -1)
    np.testing.assert_allclose(
        state.batch_stats["loss"]["mean"], MOMENTUM * emb.reshape(b * v, -1).mean(0), atol=1e-5
    )
    labels = batch["labels"][:, exp.dataset.class_level]
    want = supcon(emb - emb.reshape(b * v, -1).mean(0), labels)
    assert float(metrics["loss"]) == pytest.approx(float(want), rel=1e-4)
    assert np.abs(np.asarray(state.params["loss"]["bias"])).max() > 0  # it learns

    # evaluation mode: the running mean is used and returned unchanged
    variables = {"params": state.params["loss"], "batch_stats": state.batch_stats["loss"]}
    loss, stats = exp.objective.apply(variables, emb, batch["labels"], train=False)
    assert stats is variables["batch_stats"]
    centred = emb - np.asarray(variables["batch_stats"]["mean"])
    want = supcon(centred + np.asarray(variables["params"]["bias"]), labels)
    assert float(loss) == pytest.approx(float(want), rel=1e-5)


# ---------------------------------------------------------------- HIST: API == objective
def test_hist_through_the_api_equals_the_objective(tiny_config):
    tiny_config.loss.name = "hist"
    tiny_config.loss.hist.hgnn_hidden = 16
    tiny_config.loss.hist.tau = 16.0
    exp = build_experiment(tiny_config)
    table = class_index_table(exp.dataset)
    num_classes, dim = int(table.max()) + 1, tiny_config.model.embedding_dim
    rng = jax.random.key(3)

    variables = init_hist(rng, num_classes=num_classes, embedding_dim=dim, hgnn_hidden=16)
    jax.tree.map(np.testing.assert_array_equal, exp.objective.init(rng, dim), variables)
    # the checkpoint layout of HIST runs
    state = exp.initial_state()
    assert set(state.params["loss"]) == {"means", "log_vars", "hgnn"}
    assert set(state.batch_stats["loss"]) == {"hgnn"}

    train_rows = exp.dataset.split("train").labels
    rows = train_rows[np.linspace(0, len(train_rows) - 1, 12).astype(int)]  # [12, L]
    emb = jax.random.normal(jax.random.key(4), (12, 2, dim))
    y = table[rows[:, exp.dataset.class_level]]
    for train in (True, False):
        got = exp.objective.apply(variables, emb, jnp.asarray(rows), train=train)
        want = hist(emb, y, variables, train=train, tau=16.0, alpha=0.9, lambda_s=1.0)
        assert float(got[0]) == float(want[0])
        jax.tree.map(np.testing.assert_array_equal, got[1], want[1])


# ---------------------------------------------------------------- one contract for all
def _inputs(info):
    x = jax.random.normal(jax.random.key(1), (6, 2, 8))
    flat = jnp.array([0, 0, 1, 1, 2, 2])
    rows = jnp.stack([flat // 2, flat, jnp.arange(6)], axis=1)
    return x, flat if info.labels == "flat" else rows


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_entry_inits_and_applies_the_same_way(name):
    info = loss_info(name)
    hparams = default_hparams(name)
    if name == "hist":
        hparams["hgnn_hidden"] = 8
    variables = info.init(jax.random.key(0), num_classes=3, embedding_dim=8, **hparams)
    assert set(variables) == {"params", "batch_stats"}
    assert (variables["params"] != {}) == (info.init_params is not None or info.has_state)
    assert (variables["batch_stats"] != {}) == info.has_state
    x, y = _inputs(info)
    step = jax.jit(lambda v, x, y: info.apply(v, x, y, train=True, **hparams))
    loss, stats = step(variables, x, y)
    assert loss.shape == () and np.isfinite(float(loss))
    assert jax.tree.structure(stats) == jax.tree.structure(variables["batch_stats"])
    eval_loss, _ = info.apply(variables, x, y, train=False, **hparams)
    if not info.has_state:  # the train flag only matters to a loss with state
        assert float(eval_loss) == pytest.approx(float(loss), rel=1e-6)
    with pytest.raises(TypeError, match="no_such_hparam"):
        info.apply(variables, x, y, no_such_hparam=1.0)
    takes = ", ".join(sorted(info.hparams)) or "none"
    with pytest.raises(TypeError, match=f"no hyperparameter 'no_such_hparam'; it takes {takes}$"):
        info.init(jax.random.key(0), num_classes=3, embedding_dim=8, no_such_hparam=1.0)


def test_hyperparameters_come_from_the_loss_and_its_initialiser():
    assert default_hparams("hist") == {"tau": 32.0, "alpha": 0.9, "lambda_s": 1.0,
                                       "hgnn_hidden": 512}  # fmt: skip
    assert "train" not in default_hparams("hist")  # a call argument, not a hyperparameter
    assert default_hparams("proxy_nca") == {"softmax_scale": 1.0}
    with pytest.raises(ValueError, match="not both"):
        LossInfo(hist, "flat", init_params=init_hist, init_variables=init_hist)


def test_the_train_step_names_no_loss():
    """`himl/train` binds losses only through the table: no string literal in the objective
    or the step names a registered loss (a new loss needs no edit there)."""
    import ast
    import pathlib

    import himl.train

    root = pathlib.Path(himl.train.__file__).parent
    for module in ("objective.py", "state.py", "loop.py"):
        tree = ast.parse((root / module).read_text())
        named = {
            node.value
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
        }
        assert not named & set(LOSSES), (module, named & set(LOSSES))


# ---------------------------------------------------------------- flat losses at a coarse level
def test_flat_level_trains_a_flat_loss_on_the_named_level(tiny_config):
    """`config.loss.flat_level="group"` gives SupCon the dense group indices: the value is
    SupCon of the group labels, which differs from SupCon of the class labels."""
    from himl.config_lib import validate_config
    from himl.errors import ConfigError

    tiny_config.loss.name = "supcon"
    rows = build_experiment(tiny_config).dataset.split("train").labels
    rows = rows[np.linspace(0, len(rows) - 1, 16).astype(int)]  # [16, L], several classes
    emb = jax.random.normal(jax.random.key(5), (16, 2, 8))
    losses = {}
    for level in ("", "group"):
        tiny_config.loss.flat_level = level
        exp = build_experiment(tiny_config)
        variables = exp.objective.init(jax.random.key(0), 8)
        losses[level] = float(exp.objective.apply(variables, emb, jnp.asarray(rows))[0])
    groups = np.unique(rows[:, 0], return_inverse=True)[1]
    classes = np.unique(rows[:, 1], return_inverse=True)[1]
    assert losses["group"] == pytest.approx(float(supcon(emb, jnp.asarray(groups))), rel=1e-6)
    assert losses[""] == pytest.approx(float(supcon(emb, jnp.asarray(classes))), rel=1e-6)
    assert abs(losses["group"] - losses[""]) > 1e-3

    tiny_config.loss.flat_level = "genus"
    with pytest.raises(ConfigError, match="unknown config.loss.flat_level 'genus'; valid: group"):
        build_experiment(tiny_config)
    tiny_config.loss.name, tiny_config.loss.flat_level = "himulcone", "group"
    with pytest.raises(ConfigError, match="himulcone takes the whole hierarchy"):
        validate_config(tiny_config)

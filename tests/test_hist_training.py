"""HIST end to end: training on the embedded default, checkpointed state, parameter groups."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from himl.config_lib import DATASETS, ConfigError, validate_config
from himl.configs import default, hist
from himl.data.sampling import make_batcher
from himl.models.cnn import SmallCNN
from himl.train.checkpoint import Checkpointer
from himl.train.experiment import build_experiment
from himl.train.loop import device_batch, make_mesh, make_step_fn, train_and_evaluate
from himl.train.optim import build_optimizer, param_labels


def _small_hist(steps=240):
    """configs/hist.py (embedded) at tiny-model size: a test-sized but real training run."""
    config = hist.get_config()
    config.model.widths = (8, 16)
    config.model.embedding_dim = 16
    config.loss.hist.hgnn_hidden = 32
    config.data.batch_size = 32
    config.data.samples_per_class = 8
    config.train.steps = steps
    config.optimizer.decay_every = steps // 2
    config.train.log_every = 40
    config.train.checkpoint_every = steps
    config.eval.splits = ("unseen",)
    return config


@pytest.mark.slow
def test_hist_trains_and_beats_untrained(tmp_path):
    config = _small_hist()
    summary = train_and_evaluate(config, tmp_path, progress=False)
    before = summary["untrained"]["unseen"]["class"]["recall@1"]
    after = summary["results"]["unseen"]["class"]["recall@1"]
    assert after > before + 0.01, (before, after)


def test_state_holds_distributions_hgnn_and_batch_stats(tmp_path):
    config = _small_hist(steps=3)
    exp = build_experiment(config)
    mesh = make_mesh()
    step_fn = make_step_fn(exp.model, exp.objective, exp.tx, mesh)
    state = exp.initial_state()
    num_classes = len(np.unique(exp.dataset.split("train").labels[:, 1]))
    assert state.params["loss"]["means"].shape == (num_classes, 16)
    assert state.params["loss"]["hgnn"]["theta2"]["kernel"].shape == (32, num_classes)
    stats0 = state.batch_stats["loss"]["hgnn"]["bn1"]
    np.testing.assert_array_equal(stats0["mean"], np.zeros(32))
    batcher = make_batcher(config.data, exp.dataset, config.seed)
    for s in range(3):
        state, metrics = step_fn(state, device_batch(batcher(s), mesh))
    assert np.isfinite(float(metrics["loss"]))
    stats = jax.device_get(state.batch_stats["loss"]["hgnn"]["bn1"])
    assert np.abs(stats["mean"]).max() > 0 and not np.allclose(stats["var"], 1.0)
    # the checkpoint round trip keeps the loss parameters and the HGNN batch statistics
    ckpt = Checkpointer(tmp_path / "ckpt", every=1, keep=2)
    ckpt.save(3, state, force=True)
    ckpt.close()
    ckpt = Checkpointer(tmp_path / "ckpt", every=1, keep=2)
    restored = ckpt.restore(exp.initial_state())
    ckpt.close()
    assert int(restored.step) == 3
    for a, b in zip(
        jax.tree.leaves((restored.params, restored.batch_stats, restored.opt_state)),
        jax.tree.leaves((state.params, state.batch_stats, state.opt_state)),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _params():
    model = SmallCNN(widths=(4,), embedding_dim=3, head="hist")
    model_params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
    loss = {"means": jnp.ones((2, 3)), "log_vars": jnp.ones((2, 3)), "hgnn": {"w": jnp.ones(2)}}
    return {"model": model_params, "loss": loss}


def test_groups_by_parameter_path():
    groups = {"model": 1.0, "model_embedding": 1.0, "loss": 1.0, "loss_means": 1.0,
              "loss_log_vars": 1.0, "loss_hgnn": 1.0}  # fmt: skip
    labels = param_labels(_params(), groups)

    def label(*path):  # labels form a prefix tree: shared subtrees have one label
        node = labels
        for key in path:
            node = node if isinstance(node, str) else node[key]
        return node

    assert label("model", "conv0", "kernel") == "model"
    assert label("model", "embedding", "kernel") == "model_embedding"
    assert label("loss", "means") == "loss_means"
    assert label("loss", "log_vars") == "loss_log_vars"
    assert label("loss", "hgnn", "w") == "loss_hgnn"
    assert param_labels(_params(), {"model": 1.0, "loss": 1.0}) == {
        "model": "model",
        "loss": "loss",
    }
    with pytest.raises(ValueError, match="loss_mean"):
        param_labels(_params(), {**groups, "loss_mean": 2.0})


def _opt_config(**kw):
    cfg = default.get_config().optimizer
    cfg.schedule, cfg.warmup_steps = "constant", 0
    cfg.name, cfg.weight_decay = "sgd", 0.0  # plain momentum SGD: the rates are what is tested
    for k, v in kw.items():
        cfg[k] = v
    return cfg


def test_group_rates_and_freeze():
    params = _params()
    grads = jax.tree.map(jnp.ones_like, params)
    cfg = _opt_config(
        lr_multipliers=ml_collections.ConfigDict(
            {"model": 1.0, "model_embedding": 1.0, "loss": 1.0, "loss_means": 10.0}
        ),
        freeze_steps=2,
        frozen_groups=("model",),
    )
    cfg.learning_rate = 0.1
    tx = build_optimizer(cfg, total_steps=10)
    state = tx.init(params)
    for step in range(3):
        updates, state = tx.update(grads, state, params)
        emb, conv = updates["model"]["embedding"]["kernel"], updates["model"]["conv0"]["kernel"]
        # SGD with momentum 0.9 from rest: -lr * (1 + 0.9 + ... + 0.9^step)
        np.testing.assert_allclose(emb, -0.1 * sum(0.9**k for k in range(step + 1)), rtol=1e-6)
        np.testing.assert_allclose(
            updates["loss"]["means"], -1.0 * sum(0.9**k for k in range(step + 1)), rtol=1e-6
        )
        # the backbone is frozen for two steps, then starts like a fresh optimiser
        np.testing.assert_allclose(conv, 0.0 if step < 2 else -0.1, rtol=1e-6)


def test_default_optimizer_unchanged():
    """The default groups build the optimiser of earlier versions: same state and updates."""
    params = _params()
    cfg = default.get_config().optimizer
    lr = optax.constant_schedule(1e-3)  # the old code always passed a schedule
    old_groups = {"model": optax.adamw(lr, weight_decay=cfg.weight_decay)}
    old_groups["loss"] = optax.adamw(lr, weight_decay=cfg.weight_decay)
    old = optax.multi_transform(old_groups, {"model": "model", "loss": "loss"})
    cfg.schedule, cfg.warmup_steps, cfg.learning_rate = "constant", 0, 1e-3
    new = build_optimizer(cfg, 100)
    s_old, s_new = old.init(params), new.init(params)
    assert jax.tree.structure(s_old) == jax.tree.structure(s_new)
    grads = jax.tree.map(lambda p: 0.5 * jnp.ones_like(p), params)
    u_old, _ = old.update(grads, s_old, params)
    u_new, _ = new.update(grads, s_new, params)
    for a, b in zip(jax.tree.leaves(u_old), jax.tree.leaves(u_new), strict=True):
        np.testing.assert_allclose(a, b)


def test_config_checks():
    config = hist.get_config()
    validate_config(config)
    config.optimizer.loss_lr_multiplier = 2.0
    with pytest.raises(ConfigError, match="lr_multipliers.loss"):
        validate_config(config)
    config = hist.get_config()
    config.optimizer.frozen_groups = ("backbone",)
    with pytest.raises(ConfigError, match="frozen_groups"):
        validate_config(config)
    config = hist.get_config()
    config.model.head = "mlp"
    with pytest.raises(ConfigError, match="config.model.head"):
        validate_config(config)


def test_hist_head_is_layer_normalised():
    model = SmallCNN(widths=(4, 8), embedding_dim=16, head="hist")
    images = jax.random.uniform(jax.random.key(1), (5, 12, 12, 1))
    variables = model.init(jax.random.key(0), images)
    assert "lnorm" not in variables["params"]  # LayerNorm without scale and offset
    out = model.apply(variables, images)
    np.testing.assert_allclose(out.mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.var(-1), 1.0, rtol=1e-3)  # not unit-norm: norm ~ sqrt(D)


@pytest.mark.parametrize(
    "arg,tau,alpha,lr,lr_ds,factor,wd,decay_epochs",
    [
        ("cub", 32.0, 1.1, 1.2e-4, 1e-1, 5.0, 5e-5, 5),
        ("cars", 32.0, 0.9, 1e-4, 1e-1, 10.0, 1e-4, 10),
        ("sop", 16.0, 2.0, 1e-4, 1e-2, 10.0, 1e-4, 10),
    ],
)
def test_official_dataset_settings(arg, tau, alpha, lr, lr_ds, factor, wd, decay_epochs):
    config = hist.get_config(arg)
    assert (config.loss.hist.tau, config.loss.hist.alpha) == (tau, alpha)
    opt = config.optimizer
    assert opt.learning_rate == lr and opt.weight_decay == wd and opt.name == "adam_l2"
    assert opt.lr_multipliers.loss_means * lr == pytest.approx(lr_ds)
    assert opt.lr_multipliers.loss_hgnn == factor
    steps_per_epoch = hist.OFFICIAL[arg]["steps_per_epoch"]
    assert opt.decay_every == decay_epochs * steps_per_epoch and opt.decay_factor == 0.5
    assert opt.freeze_steps == steps_per_epoch and opt.frozen_groups == ("model",)
    assert config.model.head == "hist" and config.model.embedding_dim == 512
    assert config.data.name == arg and config.data.num_views == 1
    if arg in DATASETS:  # registered by the dataset configs (configs/<arg>.py)
        config.data.manual_dir = "/path/to/files"
        validate_config(config)

"""Backbones: ResNet-50 matches torchvision's size; heads; batch statistics in training."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from himl.models.cnn import SmallCNN
from himl.models.registry import build_model
from himl.models.resnet import ResNet

# torchvision resnet50: 25,557,032 parameters, of which the 2048 -> 1000 fc has 2,049,000.
TORCHVISION_RESNET50_WITHOUT_FC = 25_557_032 - 2_049_000


def _count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("head,extra", [("linear", 2048 * 512 + 512), ("hist", 2048 * 512 + 512)])
def test_resnet50_has_torchvision_size(head, extra):
    config = ml_collections.ConfigDict(dict(name="resnet50", embedding_dim=512, head=head))
    model = build_model(config)
    variables = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False)
    )
    assert _count(variables["params"]) == TORCHVISION_RESNET50_WITHOUT_FC + extra
    assert "batch_stats" in variables


def test_small_resnet_trains_with_batch_statistics():
    model = ResNet(stage_sizes=(1, 1), width=4, embedding_dim=8)
    images = jax.random.uniform(jax.random.key(1), (6, 16, 16, 1))
    variables = model.init(jax.random.key(0), images, train=False)

    @jax.jit
    def loss_and_stats(params, stats):
        out, updates = model.apply(
            {"params": params, "batch_stats": stats}, images, train=True, mutable=["batch_stats"]
        )
        return jnp.sum(out[:, 0]), updates["batch_stats"]

    (loss, stats), grads = jax.value_and_grad(loss_and_stats, has_aux=True)(
        variables["params"], variables["batch_stats"]
    )
    assert np.isfinite(float(loss))
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    before = variables["batch_stats"]["stem_bn"]["mean"]
    assert not np.allclose(stats["stem_bn"]["mean"], before)  # running mean moved
    out = model.apply({"params": variables["params"], "batch_stats": stats}, images)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


def test_batchnorm_backbone_in_the_sharded_train_step(tiny_config):
    import dataclasses

    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from himl.data.sampling import make_batcher
    from himl.train.experiment import build_experiment
    from himl.train.loop import device_batch, make_mesh, make_step_fn

    tiny_config.optimizer.warmup_steps = 0
    exp = build_experiment(tiny_config)
    exp = dataclasses.replace(exp, model=ResNet(stage_sizes=(1, 1), width=4, embedding_dim=8))
    mesh = make_mesh()
    step_fn = make_step_fn(exp.model, exp.objective, exp.tx, mesh)
    state = jax.device_put(exp.initial_state(), NamedSharding(mesh, P()))
    before = np.asarray(state.batch_stats["model"]["stem_bn"]["var"])
    batcher = make_batcher(exp.config.data, exp.dataset, 0)
    for step in range(2):
        state, metrics = step_fn(state, device_batch(batcher(step), mesh))
    assert np.isfinite(float(metrics["loss"]))
    assert not np.allclose(np.asarray(state.batch_stats["model"]["stem_bn"]["var"]), before)


@pytest.mark.parametrize(
    "model",
    [
        ResNet(stage_sizes=(1, 1), width=4, embedding_dim=8),  # as the tests above
        SmallCNN(widths=(8, 16), embedding_dim=16),  # configs/tiny.py's
    ],
    ids=["small_resnet", "small_cnn"],
)
def test_initial_state_holds_the_variables_of_model_init(tiny_config, model):
    """`create_state` skips `init`'s forward pass: the values must be `init`'s bit for bit
    (every run and checkpoint since the first starts from them)."""
    import dataclasses

    from himl.train.experiment import build_experiment

    exp = dataclasses.replace(build_experiment(tiny_config), model=model)
    state = exp.initial_state()
    model_rng, _ = jax.random.split(jax.random.key(tiny_config.seed))
    image = jnp.zeros((1, *exp.dataset.split("train").images.shape[1:]))
    expected = model.init(model_rng, image, train=False)
    got = {"params": state.params["model"]}
    got |= {"batch_stats": state.batch_stats["model"]} if "batch_stats" in expected else {}
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)

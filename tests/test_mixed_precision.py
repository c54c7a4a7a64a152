"""Mixed precision (`config.model.dtype = "bfloat16"`): bf16 compute, float32 parameters,
optimizer state, losses and embeddings; a bf16 step is close to the float32 one; it learns."""

import json

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from himl.config_lib import ConfigError, validate_config
from himl.models.registry import build_model
from himl.models.resnet import ResNet
from himl.train.experiment import build_experiment
from himl.train.state import embed, train_step


def _small_models(dtype):
    """Every backbone x head, small enough for the CPU (ResNet: same code, fewer blocks)."""
    return {
        "cnn_linear": build_model(_model_cfg("small_cnn", "linear", dtype)),
        "cnn_hist": build_model(_model_cfg("small_cnn", "hist", dtype)),
        "resnet_linear": ResNet(stage_sizes=(1, 1), width=8, embedding_dim=16, dtype=dtype),
        "resnet_hist": ResNet(
            stage_sizes=(1, 1), width=8, embedding_dim=16, head="hist", dtype=dtype
        ),
    }


def _model_cfg(name, head, dtype):
    import ml_collections

    return ml_collections.ConfigDict(
        dict(name=name, widths=(8, 16), embedding_dim=16, head=head, dtype=jnp.dtype(dtype).name)
    )


def _conv_operand_dtypes(fn, *args):
    """The dtypes of every convolution / matrix product operand in the jaxpr of `fn`."""
    dtypes = set()

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
                dtypes.update(str(v.aval.dtype) for v in eqn.invars)
        for sub in jax.extend.core.subjaxprs(jaxpr):
            walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return dtypes


@pytest.mark.parametrize("name", ["cnn_linear", "cnn_hist", "resnet_linear", "resnet_hist"])
def test_bf16_model_computes_in_bf16_with_float32_params(name):
    images = jax.random.uniform(jax.random.key(1), (6, 28, 28, 1))
    m32, m16 = _small_models(jnp.float32)[name], _small_models(jnp.bfloat16)[name]
    v32 = m32.init(jax.random.key(0), images)
    v16 = m16.init(jax.random.key(0), images)
    # Same parameters, all float32 (dtype is the compute dtype, param_dtype stays float32).
    for a, b in zip(jax.tree.leaves(v32), jax.tree.leaves(v16), strict=True):
        assert b.dtype == jnp.float32
        np.testing.assert_array_equal(a, b)
    # The products really run in bf16 (and in float32 for the float32 model).
    assert _conv_operand_dtypes(lambda v: m16.apply(v, images), v16) == {"bfloat16"}
    assert _conv_operand_dtypes(lambda v: m32.apply(v, images), v32) == {"float32"}
    out32 = embed(m32, v32["params"], v32.get("batch_stats"), images, train=False)[0]
    out16 = embed(m16, v16["params"], v16.get("batch_stats"), images, train=False)[0]
    assert out16.dtype == jnp.float32  # evaluation embeddings are float32
    assert not np.array_equal(out16, out32)  # bf16 rounding happened ...
    np.testing.assert_allclose(out16, out32, atol=0.05)  # ... and stays small
    cos = np.sum(np.asarray(out16) * np.asarray(out32), 1) / (
        np.linalg.norm(out16, axis=1) * np.linalg.norm(out32, axis=1)
    )
    assert cos.min() > 0.995


def _experiment(tiny_config, dtype):
    cfg = tiny_config.copy_and_resolve_references()
    cfg.model.dtype = dtype
    cfg.optimizer.warmup_steps = 0
    return build_experiment(cfg)


def test_bf16_train_step_close_to_float32(tiny_config):
    from himl.data.sampling import make_batcher

    e32, e16 = _experiment(tiny_config, "float32"), _experiment(tiny_config, "bfloat16")
    batch = make_batcher(e32.config.data, e32.dataset, 0)(0)
    s32, s16 = e32.initial_state(), e16.initial_state()

    def step(exp, state):
        fn = jax.jit(
            lambda s, b: train_step(s, b, model=exp.model, objective=exp.objective, tx=exp.tx)
        )
        return fn(state, batch)

    n32, m32 = step(e32, s32)
    n16, m16 = step(e16, s16)
    # Parameters, optimizer state and batch statistics stay float32 under bf16 compute.
    for leaf in jax.tree.leaves((n16.params, n16.opt_state, n16.batch_stats)):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert leaf.dtype == jnp.float32, leaf.dtype
    assert m16["loss"].dtype == jnp.float32
    np.testing.assert_allclose(float(m16["loss"]), float(m32["loss"]), rtol=1e-2)
    np.testing.assert_allclose(float(m16["grad_norm"]), float(m32["grad_norm"]), rtol=5e-2)

    # The update directions agree: cosine of the per-step parameter changes.
    def change(new, old):
        leaves = zip(jax.tree.leaves(new.params), jax.tree.leaves(old.params), strict=True)
        return jnp.concatenate([(a - b).ravel() for a, b in leaves])

    d32, d16 = change(n32, s32), change(n16, s16)
    cos = float(jnp.dot(d32, d16) / (jnp.linalg.norm(d32) * jnp.linalg.norm(d16)))
    assert cos > 0.98, cos


def test_bf16_run_on_embedded_default_learns(tiny_config, tmp_path):
    from himl.train.loop import train_and_evaluate

    tiny_config.model.dtype = "bfloat16"
    tiny_config.train.steps = 40
    tiny_config.train.log_every = 5
    summary = train_and_evaluate(tiny_config, tmp_path, progress=False)
    before, after = summary["untrained"]["unseen"]["class"], summary["results"]["unseen"]["class"]
    assert after["map@r"] > before["map@r"] + 0.02, (before["map@r"], after["map@r"])
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 8 and np.mean(losses[-3:]) < losses[0], losses


def test_unknown_dtype_is_one_line_config_error(tiny_config):
    tiny_config.model.dtype = "float16"
    with pytest.raises(ConfigError, match="config.model.dtype 'float16'; valid: float32, bf"):
        validate_config(tiny_config)


def test_config_saved_without_dtype_builds_float32_model(tiny_config):
    cfg = tiny_config.model.to_dict()
    del cfg["dtype"]
    import ml_collections

    assert build_model(ml_collections.ConfigDict(cfg)).dtype == jnp.float32

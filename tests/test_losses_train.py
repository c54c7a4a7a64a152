"""Every registered loss trains through the real train step (`--config.loss.name=NAME`)."""

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from himl.data.sampling import make_batcher
from himl.losses import LOSSES
from himl.train.experiment import build_experiment
from himl.train.loop import device_batch, make_mesh, make_step_fn


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_trains_one_step(tiny_config, name):
    tiny_config.loss.name = name
    tiny_config.optimizer.warmup_steps = 0  # the warm-up starts at learning rate 0
    if name == "hist":
        tiny_config.loss.hist.hgnn_hidden = 16  # keep the test small
    exp = build_experiment(tiny_config)
    mesh = make_mesh()
    step_fn = make_step_fn(exp.model, exp.objective, exp.tx, mesh)
    state = jax.device_put(exp.initial_state(), NamedSharding(mesh, P()))
    batch = make_batcher(exp.config.data, exp.dataset, 0)(0)
    before = np.asarray(state.params["model"]["embedding"]["kernel"])
    state, metrics = step_fn(state, device_batch(batch, mesh))
    assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"]))
    after = np.asarray(state.params["model"]["embedding"]["kernel"])
    assert not np.array_equal(before, after), f"{name}: no update reached the model"

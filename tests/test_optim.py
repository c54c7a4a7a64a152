"""Optimisers and schedules from their tables, against the torch.optim update rules."""

import jax.numpy as jnp
import numpy as np
import pytest

from himl.configs import default
from himl.train.optim import OPTIMIZERS, SCHEDULES, build_optimizer


def _first_update(name, weight_decay, lr=0.1):
    config = default.get_config().optimizer
    config.name, config.weight_decay, config.learning_rate = name, weight_decay, lr
    config.schedule, config.warmup_steps = "constant", 0
    tx = build_optimizer(config, total_steps=10)
    params = {"model": {"w": jnp.array([1.0, -2.0])}, "loss": {}}
    grads = {"model": {"w": jnp.array([0.5, 0.25])}, "loss": {}}
    updates, _ = tx.update(grads, tx.init(params), params)
    return np.asarray(updates["model"]["w"]), np.array([1.0, -2.0]), np.array([0.5, 0.25])


def test_sgd_applies_weight_decay_as_torch_does():
    """torch.optim.SGD(momentum=0.9, weight_decay=wd), first step: -lr * (g + wd * p)."""
    update, p, g = _first_update("sgd", 1e-2)
    np.testing.assert_allclose(update, -0.1 * (g + 1e-2 * p), rtol=1e-6)
    update, p, g = _first_update("sgd", 0.0)
    np.testing.assert_allclose(update, -0.1 * g, rtol=1e-6)


def test_adam_l2_couples_and_adamw_decouples_the_decay():
    # Adam's first step is -lr * sign-like g / (|g| + eps): the coupled L2 changes g itself.
    coupled, p, g = _first_update("adam_l2", 1.0)
    np.testing.assert_allclose(coupled, -0.1 * np.sign(g + p), rtol=1e-5)
    decoupled, p, g = _first_update("adamw", 1.0)
    np.testing.assert_allclose(decoupled, -0.1 * (np.sign(g) + p), rtol=1e-5)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_every_schedule_warms_up_from_zero(name):
    from himl.train.optim import schedule

    config = default.get_config().optimizer
    config.schedule, config.warmup_steps, config.learning_rate = name, 4, 1.0
    fn = schedule(config, total_steps=20)
    assert float(fn(0)) == 0.0 and float(fn(4)) == pytest.approx(1.0)


def test_tables_are_what_the_config_accepts():
    from himl.config_lib import OPTIMIZERS as accepted
    from himl.config_lib import SCHEDULES as accepted_schedules

    assert accepted == tuple(OPTIMIZERS) and accepted_schedules == tuple(SCHEDULES)

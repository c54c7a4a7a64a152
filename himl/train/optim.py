"""The optax optimiser and learning-rate schedule of a config, with per-group rates.

Parameters are grouped by their top-level key: "model" (backbone and embedding) and "loss"
(proxies, class distributions); `optimizer.loss_lr_multiplier` scales the second group's
rate, as the proxy and HIST papers train their loss parameters faster.
"""

from __future__ import annotations

import optax


def schedule(opt_config, total_steps: int, scale: float = 1.0) -> optax.Schedule:
    lr = opt_config.learning_rate * scale
    warmup = min(opt_config.warmup_steps, max(total_steps - 1, 0))
    if opt_config.schedule == "constant":
        main = optax.constant_schedule(lr)
    elif opt_config.schedule == "cosine":
        main = optax.cosine_decay_schedule(lr, max(total_steps - warmup, 1))
    else:  # "step": the HIST schedule, multiply by decay_factor every decay_every steps
        every = opt_config.decay_every or max(total_steps, 1)
        main = optax.exponential_decay(lr, every, opt_config.decay_factor, staircase=True)
    if warmup == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def _optimizer(opt_config, learning_rate) -> optax.GradientTransformation:
    if opt_config.name == "adam":
        return optax.adam(learning_rate)
    if opt_config.name == "adamw":
        return optax.adamw(learning_rate, weight_decay=opt_config.weight_decay)
    return optax.sgd(learning_rate, momentum=0.9)


def build_optimizer(opt_config, total_steps: int) -> optax.GradientTransformation:
    """One optimiser over `{"model": ..., "loss": ...}` parameter trees."""
    groups = {
        "model": _optimizer(opt_config, schedule(opt_config, total_steps)),
        "loss": _optimizer(
            opt_config, schedule(opt_config, total_steps, opt_config.loss_lr_multiplier)
        ),
    }
    return optax.multi_transform(groups, {"model": "model", "loss": "loss"})

"""Non-finite detection without a host sync per step.

The jitted step updates a tiny on-device record, `{"first_bad_step", "cause"}`: the index
of the first step whose input batch, loss, gradient or updated parameters were not finite,
and which of those it was. The loop reads it only where it syncs anyway (logging,
checkpointing, the end), so a diverged run is caught exactly - the step is the first bad
one, not the one where it was noticed - and no non-finite state is ever saved.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from himl.errors import UserError

# Cause codes, checked in this order at the first bad step.
CAUSES = {
    1: "its input batch held NaN or Inf values (check the data)",
    2: "the loss was non-finite (a learning rate far too high (config.optimizer.learning_rate"
    "={lr}), a temperature or scale that overflows, or NaN input)",
    3: "the loss was finite but its gradient was not (a learning rate far too high "
    "(config.optimizer.learning_rate={lr}) or an overflow in the backward pass)",
    4: "the update made the parameters non-finite (the learning rate "
    "config.optimizer.learning_rate={lr} is far too high)",
}


class NonFiniteError(UserError, FloatingPointError):
    """Training produced a non-finite loss, gradient or state; nothing of it was saved."""


def healthy() -> dict:
    """The record of a run with no bad step so far."""
    return {"first_bad_step": jnp.array(-1, jnp.int32), "cause": jnp.array(0, jnp.int32)}


def update(health: dict, step, batch: dict, metrics: dict, new_params) -> dict:
    """`health` with step `step` recorded if it is the first bad one (traced, on device)."""
    input_ok = jnp.all(jnp.isfinite(batch["images"]))
    loss_ok = jnp.isfinite(metrics["loss"])
    grad_ok = jnp.isfinite(metrics["grad_norm"])
    params_ok = jnp.isfinite(optax.global_norm(new_params))
    cause = jnp.select([~input_ok, ~loss_ok, ~grad_ok, ~params_ok], [1, 2, 3, 4], 0).astype(
        jnp.int32
    )
    first = (health["first_bad_step"] < 0) & (cause > 0)
    return {
        "first_bad_step": jnp.where(first, step.astype(jnp.int32), health["first_bad_step"]),
        "cause": jnp.where(first, cause, health["cause"]),
    }


def raise_if_bad(health: dict, *, learning_rate, last_saved: int | None, directory) -> None:
    """Host sync: raises NonFiniteError naming the first bad step and its likely cause."""
    bad, cause = (int(v) for v in jax.device_get((health["first_bad_step"], health["cause"])))
    if bad < 0:
        return
    kept = (
        f"the last checkpoint, step {last_saved} in {directory}, is finite and was kept"
        if last_saved is not None
        else "no checkpoint was written"
    )
    raise NonFiniteError(
        f"training stopped: the update from step {bad} to {bad + 1} went non-finite: "
        f"{CAUSES[cause].format(lr=learning_rate)}; nothing non-finite was saved - {kept}"
    )

"""The training state and the module-level, pure train step."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from himl.train.objective import Objective


@struct.dataclass
class TrainState:
    """Everything a checkpoint holds.

    `params` and `batch_stats` are `{"model": ..., "loss": ...}`: the embedding network
    and the objective's own variables (proxies, HIST distributions and HGNN).
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


def _variables(params, batch_stats):
    return {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}


def embed(model: nn.Module, params, batch_stats, images, *, train: bool):
    """Embeddings `[N, D]` float32 of images `[N, H, W, C]` and the updated batch statistics.

    Whatever the model's compute dtype (bfloat16 under mixed precision), the embeddings are
    upcast to float32: losses and evaluation see float32.
    """
    variables = _variables(params, batch_stats)
    if train and batch_stats:
        out, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
        return out.astype(jnp.float32), updates["batch_stats"]
    return model.apply(variables, images, train=train).astype(jnp.float32), batch_stats


def create_state(
    rng, model: nn.Module, objective: Objective, tx: optax.GradientTransformation, image_shape
) -> TrainState:
    """Fresh parameters for `model` and `objective` (a function of `rng` only).

    The model's variables are those of `model.init` bit for bit, without its forward pass:
    `lazy_init` runs only the initialisers, op by op as `init` does (jitting them whole
    would let XLA fuse them and change the values in the last bit).
    """
    model_rng, loss_rng = jax.random.split(rng)
    dummy = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    model_vars = model.lazy_init(model_rng, dummy, train=False)
    embedding_dim = jax.eval_shape(model.apply, model_vars, dummy).shape[-1]
    loss_vars = objective.init(loss_rng, embedding_dim)
    params = {"model": model_vars["params"], "loss": loss_vars["params"]}
    batch_stats = {"model": model_vars.get("batch_stats", {}), "loss": loss_vars["batch_stats"]}
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
    )


def train_step(
    state: TrainState,
    batch: dict,
    *,
    model: nn.Module,
    objective: Objective,
    tx: optax.GradientTransformation,
) -> tuple[TrainState, dict]:
    """One optimisation step on a global batch.

    Args:
      state: the current TrainState.
      batch: {"images": [B, V, H, W, C] float32, "labels": [B, L] int32}; under jit over a
        mesh this is the global batch, sharded along B - the loss sees all of it.
      model, objective, tx: static (bound with functools.partial before jit).

    Returns:
      The new state and scalar metrics {"loss", "grad_norm"}.
    """
    images, labels = batch["images"], batch["labels"]
    b, v = images.shape[:2]

    def loss_fn(params):
        flat_images = images.reshape(b * v, *images.shape[2:])
        flat, model_stats = embed(
            model, params["model"], state.batch_stats["model"], flat_images, train=True
        )
        emb = flat.reshape(b, v, -1)
        loss_vars = {"params": params["loss"], "batch_stats": state.batch_stats["loss"]}
        loss, loss_stats = objective.apply(loss_vars, emb, labels, train=True)
        return loss, {"model": model_stats, "loss": loss_stats}

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        batch_stats=batch_stats,
        opt_state=opt_state,
    )
    return new_state, {"loss": loss, "grad_norm": optax.global_norm(grads)}

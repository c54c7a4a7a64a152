"""The optax optimiser and learning-rate schedule of a config, with per-group rates.

Parameter groups are assigned by parameter path. The train state's parameters are
`{"model": ..., "loss": ...}`; a key of `optimizer.lr_multipliers` names a path prefix with
its components joined by "_", and each parameter belongs to the *longest* key that prefixes
its path ("model" -> the embedding network, "model_embedding" -> its embedding layer,
"loss_means" -> HIST's class means, "loss_hgnn" -> HIST's HGNN...). Every parameter is in
some group: "model" and "loss" always exist (multiplier 1.0 unless given). A group's rate is
`learning_rate * multiplier` under the shared schedule. A key that matches no parameter is an
error (a typo would otherwise be silently ignored), except "model" and "loss".

`optimizer.frozen_groups` are not updated during the first `optimizer.freeze_steps` steps
(HIST's official warm-up epoch trains everything but the backbone); their optimiser state
(e.g. Adam's moments and step count) does not advance meanwhile, as in torch where the
frozen parameters have no gradient. The "step" schedule's clock starts after the freeze
(the official warm-up epoch runs before its `StepLR`).

The default (`lr_multipliers = {"model": 1.0, "loss": 1.0}`, nothing frozen) builds exactly
the optimiser of earlier versions (`optax.multi_transform` over the groups "model" and
"loss"), so old checkpoints restore.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

TOP_LEVEL_GROUPS = ("model", "loss")


def _step_decay(opt_config, lr, total_steps, begin):
    """The HIST schedule: multiply by decay_factor every decay_every steps."""
    every = opt_config.decay_every or max(total_steps, 1)
    return optax.exponential_decay(
        lr, every, opt_config.decay_factor, transition_begin=begin, staircase=True
    )


# name -> (opt_config, rate, steps after warm-up, total steps, begin) -> optax.Schedule
SCHEDULES = {
    "constant": lambda opt, lr, main_steps, total, begin: optax.constant_schedule(lr),
    "cosine": lambda opt, lr, main_steps, total, begin: optax.cosine_decay_schedule(lr, main_steps),
    "step": lambda opt, lr, main_steps, total, begin: _step_decay(opt, lr, total, begin),
}


def schedule(opt_config, total_steps: int, scale: float = 1.0, begin: int = 0) -> optax.Schedule:
    """The config's schedule at `scale` times its rate (after a linear warm-up from 0); the
    "step" schedule's decays start `begin` steps later."""
    lr = opt_config.learning_rate * scale
    warmup = min(opt_config.warmup_steps, max(total_steps - 1, 0))
    main_steps = max(total_steps - warmup, 1)
    main = SCHEDULES[opt_config.schedule](opt_config, lr, main_steps, total_steps, begin)
    if warmup == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def _coupled_l2(opt_config, transform):
    """torch.optim-style weight decay: `weight_decay * params` added to the gradient."""
    return optax.chain(optax.add_decayed_weights(opt_config.weight_decay), transform)


# name -> (opt_config, learning rate or schedule) -> optax.GradientTransformation
OPTIMIZERS = {
    "adam": lambda opt, lr: optax.adam(lr),
    "adam_l2": lambda opt, lr: _coupled_l2(opt, optax.adam(lr)),  # torch.optim.Adam
    "adamw": lambda opt, lr: optax.adamw(lr, weight_decay=opt.weight_decay),
    "sgd": lambda opt, lr: _coupled_l2(opt, optax.sgd(lr, momentum=0.9)),  # torch.optim.SGD
}


def _optimizer(opt_config, learning_rate) -> optax.GradientTransformation:
    return OPTIMIZERS[opt_config.name](opt_config, learning_rate)


class FrozenState(NamedTuple):
    count: jax.Array
    inner: Any


def frozen_for(tx: optax.GradientTransformation, steps: int) -> optax.GradientTransformation:
    """`tx`, but zero updates and an unchanged inner state for the first `steps` steps."""

    def init(params):
        return FrozenState(jnp.zeros((), jnp.int32), tx.init(params))

    def update(updates, state, params=None):
        new_updates, inner = tx.update(updates, state.inner, params)
        frozen = state.count < steps
        new_updates = jax.tree.map(lambda u: jnp.where(frozen, jnp.zeros_like(u), u), new_updates)
        inner = jax.tree.map(lambda old, new: jnp.where(frozen, old, new), state.inner, inner)
        return new_updates, FrozenState(state.count + 1, inner)

    return optax.GradientTransformation(init, update)


def lr_multipliers(opt_config) -> dict[str, float]:
    """`optimizer.lr_multipliers` with the top-level groups filled in (1.0)."""
    given = opt_config.get("lr_multipliers", None)
    out = {key: 1.0 for key in TOP_LEVEL_GROUPS}
    out.update({k: float(v) for k, v in (given.items() if given is not None else ())})
    return out


def _path_names(path) -> list[str]:
    names = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                names.append(str(getattr(key, attr)))
                break
        else:
            names.append(str(key))
    return names


def group_of(path_names, groups) -> str:
    """The longest key of `groups` that prefixes the "_"-joined parameter path."""
    best, joined = None, ""
    for i, name in enumerate(path_names):
        joined = name if i == 0 else f"{joined}_{name}"
        if joined in groups:
            best = joined
    if best is None:
        raise ValueError(
            f"parameter {'/'.join(path_names)} is in no optimizer group; groups: {sorted(groups)}"
        )
    return best


def param_labels(params, groups) -> Any:
    """The group name of every parameter leaf; ValueError for a group that matches nothing."""
    labels = jax.tree_util.tree_map_with_path(
        lambda path, _: group_of(_path_names(path), groups), params
    )
    used = set(jax.tree.leaves(labels))
    unused = sorted(set(groups) - used - set(TOP_LEVEL_GROUPS))
    if unused:
        raise ValueError(
            f"config.optimizer.lr_multipliers / frozen_groups name {unused}, which match no "
            "parameter of this model and loss (keys are parameter paths joined by '_', "
            "e.g. model_embedding, loss_means, loss_hgnn)"
        )
    # A subtree whose leaves share one group gets one label (a prefix of the parameter tree,
    # as multi_transform allows): the default groups give exactly the earlier optimiser state.
    return {top: _collapse(sub, top) for top, sub in labels.items()}


def _collapse(tree, empty_label: str):
    if not isinstance(tree, dict):
        return tree
    children = {k: _collapse(v, empty_label) for k, v in tree.items()}
    values = list(children.values())
    if not values:
        return empty_label
    if all(isinstance(v, str) for v in values) and len(set(values)) == 1:
        return values[0]
    return children


def build_optimizer(opt_config, total_steps: int) -> optax.GradientTransformation:
    """One optimiser over `{"model": ..., "loss": ...}` parameter trees, one group per
    `lr_multipliers` key."""
    multipliers = lr_multipliers(opt_config)
    frozen = set(opt_config.get("frozen_groups", ()) or ())
    freeze_steps = int(opt_config.get("freeze_steps", 0) or 0)
    unknown = sorted(frozen - set(multipliers))
    if unknown:
        raise ValueError(
            f"config.optimizer.frozen_groups {unknown} are not groups; "
            f"groups: {sorted(multipliers)}"
        )
    transforms = {}
    for group, scale in multipliers.items():
        if freeze_steps > 0 and group in frozen:
            # The frozen group's state (and so its schedule) only starts after the freeze.
            sched = schedule(opt_config, total_steps, scale, begin=0)
            transforms[group] = frozen_for(_optimizer(opt_config, sched), freeze_steps)
        else:
            sched = schedule(opt_config, total_steps, scale, begin=freeze_steps)
            transforms[group] = _optimizer(opt_config, sched)
    return optax.multi_transform(transforms, lambda params: param_labels(params, multipliers))

"""Everything a config builds before the first step, shared by `himl-train` and `himl-eval`."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from himl.config_lib import validate_config
from himl.data.dataset import Dataset
from himl.data.registry import load_dataset
from himl.models.pretrained import check_torchvision_resnet, load_torchvision_resnet
from himl.models.registry import build_model
from himl.models.weight_files import read_weights
from himl.train.objective import Objective, build_objective
from himl.train.optim import build_optimizer
from himl.train.state import TrainState, create_state


@dataclasses.dataclass(frozen=True)
class Experiment:
    config: Any
    dataset: Dataset
    model: nn.Module
    objective: Objective
    tx: optax.GradientTransformation
    # `{torchvision name: array}` of `config.model.pretrained`, checked against `model`.
    pretrained: dict[str, np.ndarray] | None = None

    def initial_state(self) -> TrainState:
        """The step-0 state: a pure function of `config.seed` and the pretrained file.

        With `pretrained`, the backbone's parameters and batch statistics are the file's;
        the embedding head and the objective's variables stay freshly initialised.
        """
        state = create_state(
            jax.random.key(self.config.seed), self.model, self.objective, self.tx, self._shape()
        )
        if self.pretrained is None:
            return state
        loaded = load_torchvision_resnet(
            {"params": state.params["model"], "batch_stats": state.batch_stats["model"]},
            self.pretrained,
            self.config.model.pretrained,
        )
        loaded = jax.tree.map(jnp.asarray, loaded)
        params = {**state.params, "model": loaded["params"]}
        batch_stats = {**state.batch_stats, "model": loaded["batch_stats"]}
        return state.replace(params=params, batch_stats=batch_stats, opt_state=self.tx.init(params))

    def abstract_state(self, sharding) -> TrainState:
        """The shapes and dtypes of `initial_state()`, placed with `sharding`, computing
        nothing: the template a checkpoint restores into. A resume then runs no
        initialisers and copies no pretrained weights (for ResNet-50 on a CPU, ~16 s of
        small compiles in a fresh process)."""
        return jax.tree.map(
            lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
            jax.eval_shape(self.initial_state),
        )

    def _shape(self) -> tuple[int, ...]:
        return self.dataset.split("train").images.shape[1:]


def build_experiment(config, *, pretrained: bool = True) -> Experiment:
    """Validates `config` (before touching any data), then loads data and builds the parts.

    `config.model.pretrained` is read before the data and checked against the model right
    after (a bad file fails before any training work); `pretrained=False` skips it, for
    callers that restore every variable from a checkpoint anyway.
    """
    validate_config(config, num_devices=jax.device_count())
    path = config.model.get("pretrained", "") if pretrained else ""
    weights = read_weights(path) if path else None
    dataset = load_dataset(config.data)
    model = build_model(config.model)
    if weights is not None:
        shape = (1, *dataset.split("train").images.shape[1:])
        variables = jax.eval_shape(
            lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False)
        )
        check_torchvision_resnet(variables, weights, path)
    return Experiment(
        config=config,
        dataset=dataset,
        model=model,
        objective=build_objective(config.loss, dataset),
        tx=build_optimizer(config.optimizer, config.train.steps),
        pretrained=weights,
    )

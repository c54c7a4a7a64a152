"""Everything a config builds before the first step, shared by `himl-train` and `himl-eval`."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import optax
from flax import linen as nn

from himl.data.dataset import Dataset
from himl.data.registry import load_dataset
from himl.models.registry import build_model
from himl.train.config_lib import validate_config
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

    def initial_state(self) -> TrainState:
        """The step-0 state: a pure function of `config.seed`."""
        image_shape = self.dataset.split("train").images.shape[1:]
        return create_state(
            jax.random.key(self.config.seed), self.model, self.objective, self.tx, image_shape
        )


def build_experiment(config) -> Experiment:
    """Validates `config` (before touching any data), then loads data and builds the parts."""
    validate_config(config, num_devices=jax.device_count())
    dataset = load_dataset(config.data)
    return Experiment(
        config=config,
        dataset=dataset,
        model=build_model(config.model),
        objective=build_objective(config.loss, dataset),
        tx=build_optimizer(config.optimizer, config.train.steps),
    )

"""An objective: a registered loss bound to its hyperparameters, labels and parameters.

The train step calls every objective the same way, whether it is a plain loss (SupCon,
HiMulConE), one with learnable parameters (proxies), or one with its own network and
batch statistics (HIST): `init` makes its variables, `apply` returns the loss and the new
batch statistics. The loss table (`himl.losses.registry`) says which kind a loss is; this
module only binds it to the config and the dataset's classes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from himl.data.dataset import Dataset
from himl.losses import loss_info


@dataclasses.dataclass(frozen=True)
class Objective:
    """`init(rng, embedding_dim) -> {"params": ..., "batch_stats": ...}` and
    `apply(variables, embeddings [B, V, D], labels [B, L], *, train) -> (loss, batch_stats)`.
    """

    name: str
    init: Callable[[jax.Array, int], dict]
    apply: Callable[..., tuple[jax.Array, Any]]


def class_index_table(dataset: Dataset) -> np.ndarray:
    """Maps the training split's class labels to dense indices 0..C-1 (others to -1)."""
    classes = np.unique(dataset.split("train").labels[:, dataset.class_level])
    table = np.full(classes.max() + 1, -1, np.int32)
    table[classes] = np.arange(len(classes), dtype=np.int32)
    return table


def build_objective(loss_config, dataset: Dataset) -> Objective:
    """The objective `loss_config.name` with hyperparameters `loss_config[name]`.

    Every registered loss is bound the same way (`LossInfo.init` / `LossInfo.apply`);
    losses with flat labels get the dense class indices of the training split's classes,
    so a loss with one parameter row per class (proxies, HIST) indexes its rows with them.
    """
    name = loss_config.name
    info = loss_info(name)
    hparams = dict(loss_config[name])
    table = class_index_table(dataset)
    num_classes = int(table.max()) + 1
    class_level = dataset.class_level

    def init(rng, embedding_dim):
        return info.init(rng, num_classes=num_classes, embedding_dim=embedding_dim, **hparams)

    def apply(variables, embeddings, labels, *, train=True):
        flat = info.labels == "flat"
        y = jnp.asarray(table)[labels[:, class_level]] if flat else labels
        return info.apply(variables, embeddings, y, train=train, **hparams)

    return Objective(name=name, init=init, apply=apply)

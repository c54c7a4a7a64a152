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
from himl.errors import check_choice
from himl.losses import loss_info


@dataclasses.dataclass(frozen=True)
class Objective:
    """`init(rng, embedding_dim) -> {"params": ..., "batch_stats": ...}` and
    `apply(variables, embeddings [B, V, D], labels [B, L], *, train) -> (loss, batch_stats)`.
    """

    name: str
    init: Callable[[jax.Array, int], dict]
    apply: Callable[..., tuple[jax.Array, Any]]


def flat_label_level(dataset: Dataset, level_name: str = "") -> int:
    """The label column a loss with flat labels trains on: the class level, or the level
    named `level_name` (`config.loss.flat_level`, e.g. "group" for a coarse-level SupCon)."""
    if not level_name:
        return dataset.class_level
    levels = dataset.eval_level_names
    check_choice(level_name, levels, "config.loss.flat_level", prefix=f"dataset {dataset.name!r}: ")
    return levels.index(level_name)


def class_index_table(dataset: Dataset, level: int | None = None) -> np.ndarray:
    """Maps the training split's labels at `level` (default: the class level) to dense
    indices 0..C-1 (labels the training split lacks to -1)."""
    level = dataset.class_level if level is None else level
    classes = np.unique(dataset.split("train").labels[:, level])
    table = np.full(classes.max() + 1, -1, np.int32)
    table[classes] = np.arange(len(classes), dtype=np.int32)
    return table


def build_objective(loss_config, dataset: Dataset) -> Objective:
    """The objective `loss_config.name` with hyperparameters `loss_config[name]`.

    Every registered loss is bound the same way (`LossInfo.init` / `LossInfo.apply`);
    losses with flat labels get the dense class indices of the training split's classes,
    so a loss with one parameter row per class (proxies, HIST) indexes its rows with them
    (the classes of level `loss_config.flat_level` when it names one).
    """
    name = loss_config.name
    info = loss_info(name)
    hparams = dict(loss_config[name])
    class_level = flat_label_level(dataset, loss_config.get("flat_level", ""))
    table = class_index_table(dataset, class_level)
    num_classes = int(table.max()) + 1

    def init(rng, embedding_dim):
        return info.init(rng, num_classes=num_classes, embedding_dim=embedding_dim, **hparams)

    def apply(variables, embeddings, labels, *, train=True):
        flat = info.labels == "flat"
        y = jnp.asarray(table)[labels[:, class_level]] if flat else labels
        return info.apply(variables, embeddings, y, train=train, **hparams)

    return Objective(name=name, init=init, apply=apply)

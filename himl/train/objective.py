"""An objective: a registered loss bound to its hyperparameters, labels and parameters.

The train step calls every objective the same way, whether it is a plain loss (SupCon,
HiMulConE), one with learnable parameters (proxies), or one with its own network and
batch statistics (HIST): `init` makes its variables, `apply` returns the loss.
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
from himl.losses.hist import hist_loss_and_aux, init_hist_variables


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
    """The objective `loss_config.name` with hyperparameters `loss_config[name]`."""
    name = loss_config.name
    info = loss_info(name)
    hparams = dict(loss_config[name])
    table = class_index_table(dataset)
    num_classes = int(table.max()) + 1
    class_level = dataset.class_level
    if name == "hist":
        return _hist_objective(hparams, table, num_classes, class_level)

    def init(rng, embedding_dim):
        params = {}
        if info.init_params is not None:
            params = info.init_params(rng, num_classes=num_classes, embedding_dim=embedding_dim)
        return {"params": params, "batch_stats": {}}

    def apply(variables, embeddings, labels, *, train=True):
        del train  # plain losses behave the same in training and evaluation
        # Flat losses get dense class indices: proxy losses index their [C, D] parameters.
        flat = info.labels == "flat"
        y = jnp.asarray(table)[labels[:, class_level]] if flat else labels
        return info.fn(embeddings, y, **variables["params"], **hparams), variables["batch_stats"]

    return Objective(name=name, init=init, apply=apply)


def _hist_objective(hparams: dict, table: np.ndarray, num_classes: int, class_level: int):
    """HIST: class distributions and an HGNN (with batch statistics) over the C training
    classes. `apply(train=True)` runs the HGNN's batch norm in train mode and returns its
    updated running statistics; `train=False` uses them and returns them unchanged."""

    def init(rng, embedding_dim):
        return init_hist_variables(
            rng,
            num_classes=num_classes,
            embedding_dim=embedding_dim,
            hgnn_hidden=hparams["hgnn_hidden"],
        )

    def apply(variables, embeddings, labels, *, train=True):
        params, stats = variables["params"], variables["batch_stats"]
        y = jnp.asarray(table)[labels[:, class_level]]
        loss, aux = hist_loss_and_aux(
            embeddings,
            y,
            params["means"],
            params["log_vars"],
            params["hgnn"],
            stats["hgnn"],
            train=train,
            **hparams,
        )
        return loss, {"hgnn": aux["batch_stats"]}

    return Objective(name="hist", init=init, apply=apply)

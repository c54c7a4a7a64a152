"""The explicit name -> loss table behind `get_loss` and `--config.loss.name`.

Each entry says what labels the loss takes ("flat" `[B]` class labels or "hierarchical"
`[B, L]` label rows) and, for losses with learnable parameters (proxies), how to create
them. Keyword-only arguments with defaults are the loss's hyperparameters; the training
config gets them (and their defaults) from the signature, so a config can never name a
hyperparameter the function does not take.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any, Literal

from himl.losses.hierarchical import hicone, himulcon, himulcone
from himl.losses.hist import hist_loss, init_hist
from himl.losses.pair import contrastive, multi_similarity, triplet_margin
from himl.losses.proxy import (
    init_normalized_softmax,
    init_proxy_anchor,
    init_proxy_nca,
    normalized_softmax,
    proxy_anchor,
    proxy_nca,
)
from himl.losses.supcon import ntxent, supcon
from himl.losses.tuple import lifted_structure, npairs


@dataclasses.dataclass(frozen=True)
class LossInfo:
    """How the training loop calls a loss.

    Attributes:
      fn: `fn(embeddings, labels, **params, **hparams) -> scalar`.
      labels: "flat" for `[B]` class labels, "hierarchical" for `[B, L]` label rows.
      init_params: for losses with learnable parameters,
        `init_params(rng, *, num_classes, embedding_dim) -> dict` of arrays passed to `fn`
        as keyword arguments (e.g. `{"proxies": [C, D]}`); None otherwise.
      needs_positives: whether the loss is constant (zero gradient) on a batch where no
        sample has a positive, i.e. another sample (or view) of its class. Proxy losses
        pair samples with proxies and need none.
    """

    fn: Callable[..., Any]
    labels: Literal["flat", "hierarchical"]
    init_params: Callable[..., dict] | None = None
    needs_positives: bool = True


LOSSES: dict[str, LossInfo] = {
    "supcon": LossInfo(supcon, "flat"),
    "himulcon": LossInfo(himulcon, "hierarchical"),
    "hicone": LossInfo(hicone, "hierarchical"),
    "himulcone": LossInfo(himulcone, "hierarchical"),
    "contrastive": LossInfo(contrastive, "flat"),
    "triplet_margin": LossInfo(triplet_margin, "flat"),
    "ntxent": LossInfo(ntxent, "flat"),
    "multi_similarity": LossInfo(multi_similarity, "flat"),
    "proxy_anchor": LossInfo(proxy_anchor, "flat", init_proxy_anchor, needs_positives=False),
    "proxy_nca": LossInfo(proxy_nca, "flat", init_proxy_nca, needs_positives=False),
    "normalized_softmax": LossInfo(
        normalized_softmax, "flat", init_normalized_softmax, needs_positives=False
    ),
    "npairs": LossInfo(npairs, "flat"),
    "lifted_structure": LossInfo(lifted_structure, "flat"),
    # HIST also has HGNN batch statistics: the train objective is built in himl.train.objective.
    "hist": LossInfo(hist_loss, "flat", init_hist, needs_positives=False),
}


def _unknown(name: str) -> ValueError:
    return ValueError(f"unknown loss {name!r}; valid names: {', '.join(sorted(LOSSES))}")


def loss_info(name: str) -> LossInfo:
    """The registry entry for `name`; ValueError listing the valid names otherwise."""
    if name not in LOSSES:
        raise _unknown(name)
    return LOSSES[name]


def get_loss(name: str) -> Callable[..., Any]:
    """The loss function registered as `name` (ValueError listing valid names otherwise)."""
    return loss_info(name).fn


def default_hparams(name: str) -> dict[str, Any]:
    """The keyword-only hyperparameters of loss `name` with their default values."""
    params = inspect.signature(loss_info(name).fn).parameters.values()
    return {
        p.name: p.default
        for p in params
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty
    }


def check_hparams(name: str, hparams: dict, *, embedding_dim: int = 8, num_views: int = 2):
    """Runs loss `name`'s own argument checks on `hparams` without computing anything.

    Traces the loss abstractly (`jax.eval_shape`) on a dummy batch `[4, num_views, D]`
    with 2 classes, so every check a loss makes at trace time (a temperature of 0, an
    unknown mode) fires here, before any data is loaded. Raises the loss's ValueError.
    """
    import jax
    import jax.numpy as jnp

    info = loss_info(name)
    emb = jax.ShapeDtypeStruct((4, num_views, embedding_dim), jnp.float32)
    label_shape = (4,) if info.labels == "flat" else (4, 3)
    labels = jax.ShapeDtypeStruct(label_shape, jnp.int32)
    params = {}
    if info.init_params is not None:
        init = functools.partial(info.init_params, num_classes=2, embedding_dim=embedding_dim)
        init_kwargs = {k: v for k, v in hparams.items() if k in _keyword_names(info.init_params)}
        try:
            params = jax.eval_shape(lambda: init(jax.random.key(0), **init_kwargs))
        except Exception as err:  # an initialiser's own arithmetic, e.g. a width of 0
            raise ValueError(
                f"{name}: cannot create its parameters with {init_kwargs} "
                f"({type(err).__name__}: {err})"
            ) from err
    jax.eval_shape(lambda e, y, p: info.fn(e, y, **p, **hparams), emb, labels, params)


def _keyword_names(fn) -> set[str]:
    return set(inspect.signature(fn).parameters)

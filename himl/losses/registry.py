"""The explicit name -> loss table behind `get_loss` and `--config.loss.name`.

Each entry says what labels the loss takes ("flat" `[B]` class labels or "hierarchical"
`[B, L]` label rows) and how to create its variables, if it has any. Three kinds of loss,
all called the same way through `LossInfo.init` and `LossInfo.apply`:

- plain (SupCon, HiMulConE, triplet, ...): no variables;
- with parameters (the proxy losses): `init_params` creates arrays the loss learns;
- with parameters and state (HIST): `init_variables` creates `{"params", "batch_stats"}`
  and the loss returns its new batch statistics, with a `train` flag.

Keyword-only arguments with defaults of the loss (and of its initialiser) are its
hyperparameters; the training config gets them (and their defaults) from the signatures,
so a config can never name a hyperparameter the loss does not take.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any, Literal

from himl.losses.hierarchical import hicone, himulcon, himulcone
from himl.losses.hist import hist, init_hist
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

# Keyword arguments of a loss that are call arguments, not hyperparameters.
_CALL_ARGUMENTS = frozenset({"train"})


@dataclasses.dataclass(frozen=True)
class LossInfo:
    """A registered loss: how to create its variables and how to call it.

    Attributes:
      fn: the loss as users call it, by kind:
        plain: `fn(embeddings, labels, **hparams) -> scalar`;
        with `init_params`: `fn(embeddings, labels, **params, **hparams) -> scalar`;
        with `init_variables`: `fn(embeddings, labels, variables, *, train, **hparams)
        -> (scalar, batch_stats)`.
      labels: "flat" for `[B]` class labels, "hierarchical" for `[B, L]` label rows.
        Losses with variables take flat class indices `0..C-1`.
      init_params: `init_params(rng, *, num_classes, embedding_dim, **hparams) -> dict` of
        learnable arrays passed to `fn` as keyword arguments (e.g. `{"proxies": [C, D]}`).
      init_variables: `init_variables(rng, *, num_classes, embedding_dim, **hparams) ->
        {"params": ..., "batch_stats": ...}` for a loss with state, passed to `fn` whole.
      needs_positives: whether the loss is constant (zero gradient) on a batch where no
        sample has a positive, i.e. another sample (or view) of its class. Proxy losses
        pair samples with proxies and need none.
    """

    fn: Callable[..., Any]
    labels: Literal["flat", "hierarchical"]
    init_params: Callable[..., dict] | None = None
    init_variables: Callable[..., dict] | None = None
    needs_positives: bool = True

    def __post_init__(self):
        if self.init_params is not None and self.init_variables is not None:
            raise ValueError("LossInfo: give init_params or init_variables, not both")

    @property
    def has_state(self) -> bool:
        """True for a loss with batch statistics (`init_variables`)."""
        return self.init_variables is not None

    @property
    def _initializer(self) -> Callable[..., dict] | None:
        return self.init_variables if self.has_state else self.init_params

    @property
    def _init_keywords(self) -> set[str]:
        return set() if self._initializer is None else _keywords(self._initializer)

    @property
    def hparams(self) -> dict[str, Any]:
        """The hyperparameters (of the loss and of its initialiser) and their defaults."""
        found = _keyword_defaults(self.fn)
        if self._initializer is not None:
            found.update(_keyword_defaults(self._initializer))
        return found

    def _split(self, hparams: dict) -> tuple[dict, dict]:
        """`hparams` -> (those for the initialiser, those for `fn`). A name the
        initialiser takes goes to it (and to `fn` too if `fn` takes it); every other
        name goes to `fn`, which rejects one it does not know."""
        init_names, fn_names = self._init_keywords, _keywords(self.fn)
        init_kw = {k: v for k, v in hparams.items() if k in init_names}
        fn_kw = {k: v for k, v in hparams.items() if k not in init_names or k in fn_names}
        return init_kw, fn_kw

    def init(self, rng, *, num_classes: int, embedding_dim: int, **hparams) -> dict:
        """`{"params": ..., "batch_stats": ...}` of this loss (both `{}` for a plain loss)
        for `num_classes` classes and `embedding_dim`-dimensional embeddings. `hparams` may
        hold all of the loss's hyperparameters: the initialiser gets the ones it takes; a
        name neither takes is a TypeError (as `apply` gives), not silently dropped."""
        unknown = sorted(set(hparams) - _keywords(self.fn) - self._init_keywords)
        if unknown:
            raise TypeError(
                f"{self.fn.__name__}: no hyperparameter {unknown[0]!r}; it takes "
                f"{', '.join(sorted(self.hparams)) or 'none'}"
            )
        init_kw, _ = self._split(hparams)
        size = {"num_classes": num_classes, "embedding_dim": embedding_dim}
        if self.has_state:
            return self.init_variables(rng, **size, **init_kw)
        if self.init_params is not None:
            return {"params": self.init_params(rng, **size, **init_kw), "batch_stats": {}}
        return {"params": {}, "batch_stats": {}}

    def apply(self, variables: dict, embeddings, labels, *, train: bool = True, **hparams):
        """`(loss, new batch_stats)` of `embeddings` and `labels` given `init`'s variables.

        `train` selects the training behaviour of a loss with state (its batch norm);
        losses without state behave the same either way and return `batch_stats` unchanged.
        """
        _, fn_kw = self._split(hparams)
        if self.has_state:
            return self.fn(embeddings, labels, variables, train=train, **fn_kw)
        loss = self.fn(embeddings, labels, **variables.get("params", {}), **fn_kw)
        return loss, variables.get("batch_stats", {})


def _keywords(fn) -> set[str]:
    return {
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def _keyword_defaults(fn) -> dict[str, Any]:
    return {
        p.name: p.default
        for p in inspect.signature(fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
        and p.default is not inspect.Parameter.empty
        and p.name not in _CALL_ARGUMENTS
    }


LOSSES: dict[str, LossInfo] = {
    "supcon": LossInfo(supcon, "flat"),
    "himulcon": LossInfo(himulcon, "hierarchical"),
    "hicone": LossInfo(hicone, "hierarchical"),
    "himulcone": LossInfo(himulcone, "hierarchical"),
    "contrastive": LossInfo(contrastive, "flat"),
    "triplet_margin": LossInfo(triplet_margin, "flat"),
    "ntxent": LossInfo(ntxent, "flat"),
    "multi_similarity": LossInfo(multi_similarity, "flat"),
    "proxy_anchor": LossInfo(
        proxy_anchor, "flat", init_params=init_proxy_anchor, needs_positives=False
    ),
    "proxy_nca": LossInfo(proxy_nca, "flat", init_params=init_proxy_nca, needs_positives=False),
    "normalized_softmax": LossInfo(
        normalized_softmax, "flat", init_params=init_normalized_softmax, needs_positives=False
    ),
    "npairs": LossInfo(npairs, "flat"),
    "lifted_structure": LossInfo(lifted_structure, "flat"),
    "hist": LossInfo(hist, "flat", init_variables=init_hist, needs_positives=False),
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
    """The hyperparameters of loss `name` (keyword-only arguments of the loss and of its
    initialiser, e.g. HIST's `hgnn_hidden`) with their default values."""
    return loss_info(name).hparams


def check_hparams(name: str, hparams: dict, *, embedding_dim: int = 8, num_views: int = 2):
    """Runs loss `name`'s own argument checks on `hparams` without computing anything.

    Traces the initialiser and the loss abstractly (`jax.eval_shape`) on a dummy batch
    `[4, num_views, D]` with 2 classes, so every check a loss makes at trace time (a
    temperature of 0, an unknown mode, a width of 0) fires here, before any data is loaded.
    Raises the loss's ValueError.
    """
    import jax
    import jax.numpy as jnp

    from himl.losses.checks import check_finite

    check_finite(name, **hparams)  # every numeric hyperparameter: NaN would train on NaN
    info = loss_info(name)
    emb = jax.ShapeDtypeStruct((4, num_views, embedding_dim), jnp.float32)
    label_shape = (4,) if info.labels == "flat" else (4, 3)
    labels = jax.ShapeDtypeStruct(label_shape, jnp.int32)
    try:
        variables = jax.eval_shape(
            lambda: info.init(
                jax.random.key(0), num_classes=2, embedding_dim=embedding_dim, **hparams
            )
        )
    except ValueError:
        raise
    except Exception as err:  # an initialiser's own arithmetic
        raise ValueError(
            f"{name}: cannot create its variables with {hparams} ({type(err).__name__}: {err})"
        ) from err
    jax.eval_shape(
        lambda v, e, y: info.apply(v, e, y, train=True, **hparams), variables, emb, labels
    )

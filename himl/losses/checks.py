"""Shape and dtype checks shared by the losses; they run at trace time (static shapes)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def check_embeddings_and_labels(embeddings, labels, loss_name: str, *, label_rank: int = 1):
    """Raises ValueError naming the loss when the shapes or dtypes cannot go together."""
    if embeddings.ndim not in (2, 3):
        raise ValueError(
            f"{loss_name}: embeddings must be [B, D] or [B, V, D], got shape {embeddings.shape}"
        )
    if not jnp.issubdtype(embeddings.dtype, jnp.floating):
        raise ValueError(f"{loss_name}: embeddings must be floating point, got {embeddings.dtype}")
    if labels.ndim != label_rank:
        want = "[B]" if label_rank == 1 else "[B, L]"
        raise ValueError(f"{loss_name}: labels must be {want}, got shape {labels.shape}")
    if labels.shape[0] != embeddings.shape[0]:
        raise ValueError(
            f"{loss_name}: {embeddings.shape[0]} embeddings but {labels.shape[0]} labels"
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"{loss_name}: labels must be integers, got {labels.dtype}")


def flatten_views(embeddings, labels, loss_name: str) -> tuple[jax.Array, jax.Array]:
    """Checks flat-label inputs and turns `[B, V, D]` into `[B*V, D]` with labels repeated."""
    embeddings, labels = jnp.asarray(embeddings), jnp.asarray(labels)
    check_embeddings_and_labels(embeddings, labels, loss_name)
    if embeddings.ndim == 3:
        b, v, d = embeddings.shape
        return embeddings.reshape(b * v, d), jnp.repeat(labels, v)
    return embeddings, labels


def check_positive(loss_name: str, **hparams) -> None:
    """Raises ValueError naming the first hyperparameter (a scale, temperature, width) that
    is not > 0; traced values are skipped (checked where they are Python numbers)."""
    for name, value in hparams.items():
        if isinstance(value, int | float) and not value > 0:
            raise ValueError(f"{loss_name}: {name} must be > 0, got {value}")

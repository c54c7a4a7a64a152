"""Argument checks shared by the losses, with one wording for each kind of mistake.

They run at trace time (static shapes, Python hyperparameters), so a bad argument raises
one ValueError naming the loss and the argument before anything is computed.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from himl import errors
from himl.distances import LOSS_MEASURES


def check_embeddings_and_labels(embeddings, labels, loss_name: str, *, label_rank: int = 1):
    """Raises ValueError naming the loss when the shapes or dtypes cannot go together, or
    when the batch is empty (B = 0 or V = 0: no loss is defined on it). Every loss calls
    this (directly or through `flatten_views`); shapes are static, so it raises under
    `jit` too."""
    if embeddings.ndim not in (2, 3):
        raise ValueError(
            f"{loss_name}: embeddings must be [B, D] or [B, V, D], got shape {embeddings.shape}"
        )
    if math.prod(embeddings.shape[:-1]) == 0:
        raise ValueError(
            f"{loss_name}: the batch is empty (0 embeddings, shape {embeddings.shape})"
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


def as_labels(labels, loss_name: str) -> jax.Array:
    """`labels` as a JAX array, refusing what the conversion would change: class names
    (strings), and integers beyond the 32 bits JAX computes in by default (int64 ids such
    as 0 and 2**32 would become one class). A JAX array (or tracer) is taken as it is."""
    if isinstance(labels, jax.Array):
        return labels
    values = np.asarray(labels)
    if values.dtype.kind in "USO":
        raise ValueError(
            f"{loss_name}: labels must be integers, got {values.dtype} (names? encode them, "
            "e.g. np.unique(labels, return_inverse=True)[1])"
        )
    computed = jax.dtypes.canonicalize_dtype(values.dtype)
    if values.dtype.kind in "iu" and computed != values.dtype and values.size:
        lo, hi, fits = values.min(), values.max(), np.iinfo(computed)
        if lo < fits.min or hi > fits.max:
            raise ValueError(
                f"{loss_name}: labels in [{lo}, {hi}] do not fit {computed}, the integers JAX "
                "computes in: relabel them, e.g. np.unique(labels, return_inverse=True)[1] "
                "(for [B, L] labels, per column)"
            )
    return jnp.asarray(values)


def flatten_views(embeddings, labels, loss_name: str) -> tuple[jax.Array, jax.Array]:
    """Checks flat-label inputs and turns `[B, V, D]` into `[B*V, D]` with labels repeated."""
    embeddings, labels = jnp.asarray(embeddings), as_labels(labels, loss_name)
    check_embeddings_and_labels(embeddings, labels, loss_name)
    if embeddings.ndim == 3:
        b, v, d = embeddings.shape
        return embeddings.reshape(b * v, d), jnp.repeat(labels, v)
    return embeddings, labels


def check_positive(loss_name: str, **hparams) -> None:
    """Raises ValueError naming the first hyperparameter (a scale, temperature, width) that
    is not a finite number > 0 (an infinite temperature gives a constant loss, zero
    gradients); traced values are skipped (checked where they are Python numbers)."""
    for name, value in hparams.items():
        if isinstance(value, int | float) and not 0 < value < math.inf:
            raise ValueError(f"{loss_name}: {name} must be a finite number > 0, got {value}")


def check_non_negative(loss_name: str, **hparams) -> None:
    """Raises ValueError naming the first hyperparameter (a weight) that is not a finite
    number >= 0; traced values are skipped."""
    for name, value in hparams.items():
        if isinstance(value, int | float) and not 0 <= value < math.inf:
            raise ValueError(f"{loss_name}: {name} must be a finite number >= 0, got {value}")


def check_finite(loss_name: str, **hparams) -> None:
    """Raises ValueError naming the first numeric hyperparameter (a margin, a base) that is
    NaN or infinite; other values (names, flags, None) are not numbers and are skipped."""
    for name, value in hparams.items():
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if number and not math.isfinite(value):
            raise ValueError(f"{loss_name}: {name} must be a finite number, got {value}")


def check_choice(loss_name: str, what: str, value, valid) -> None:
    """Raises ValueError `"<loss>: unknown <what> <value>; valid: ..."` unless `value` is
    one of `valid` (a mining scheme, a distance name, a mode)."""
    errors.check_choice(value, valid, what, error=ValueError, prefix=f"{loss_name}: ")


def check_distance(loss_name: str, distance: str) -> None:
    """A loss's `distance=` must name a measure of `himl.distances` that needs no learned
    metric (`LOSS_MEASURES`)."""
    check_choice(loss_name, "distance", distance, LOSS_MEASURES)


def check_chunk_size(loss_name: str, chunk_size) -> None:
    """`chunk_size` (rows computed at a time) must be a positive int, or None (dense)."""
    if chunk_size is not None and (
        not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1
    ):
        raise ValueError(
            f"{loss_name}: chunk_size must be a positive int or None, got {chunk_size!r}"
        )


def check_class_labels(labels: jax.Array, num_classes: int, loss_name: str) -> None:
    """Raises ValueError if concrete `labels` are not class indices in `[0, num_classes)`
    (a loss with one parameter row per class would silently pick a wrong or clipped row).
    Traced labels cannot be checked here: see `nan_unless_class_labels`."""
    concrete = not isinstance(labels, jax.core.Tracer) and getattr(
        labels, "is_fully_addressable", True
    )
    if concrete and labels.size:
        values = np.asarray(labels)
        lo, hi = int(values.min()), int(values.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"{loss_name}: labels must be class indices in [0, {num_classes}), "
                f"got labels in [{lo}, {hi}]"
            )


def nan_unless_class_labels(loss: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
    """`loss`, or NaN if any label is outside `[0, num_classes)`: under jit such a label
    cannot raise, and one-hot / take would otherwise give a finite, wrong loss."""
    in_range = jnp.all((labels >= 0) & (labels < num_classes))
    return jnp.where(in_range, loss, jnp.nan)

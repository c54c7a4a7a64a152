"""Label trees: validation and prefix groupings of hierarchical label matrices.

A hierarchical label matrix `labels [N, L]` holds one row per sample, column 0 the
coarsest level and column L-1 the finest (often an instance id). The rows form a tree when
a label at a finer level determines every coarser label (Zhang et al., "Use All The Labels",
CVPR 2022, Sec. 3). These checks run on the host, before any training, so a malformed
dataset fails with a message that names the offending label.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from himl.errors import UserError


class HierarchyError(UserError, ValueError):
    """Labels that do not form a tree (or are not a valid label matrix)."""


def as_label_matrix(labels, *, name: str = "labels") -> np.ndarray:
    """Returns `labels` as an int64 array `[N, L]`, raising a clear error otherwise. Class
    names (strings) become the ids of their sorted order, level by level."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        labels = labels[:, None]
    if labels.ndim != 2:
        raise HierarchyError(f"{name} must have shape [N] or [N, L], got {labels.shape}")
    if are_names(labels):
        columns = [np.unique(c.astype(str), return_inverse=True)[1] for c in labels.T]
        return np.array(columns, dtype=np.int64).T.reshape(labels.shape)
    if not np.issubdtype(labels.dtype, np.integer):
        raise HierarchyError(
            f"{name} must be integers or class names (strings), got dtype {labels.dtype}"
        )
    return labels.astype(np.int64)


def are_names(labels: np.ndarray) -> bool:
    """Whether `labels` holds class names (strings) rather than ids."""
    if labels.dtype.kind in "US":
        return True
    return labels.dtype == object and all(isinstance(x, str) for x in labels.ravel())


def validate_tree(labels, level_names: Sequence[str] | None = None) -> np.ndarray:
    """Checks that each finer label determines all coarser ones.

    Args:
      labels: `[N, L]` integer labels, column 0 coarsest.
      level_names: optional names of the L levels, used in error messages.

    Returns:
      The labels as an int64 `[N, L]` array.

    Raises:
      HierarchyError: naming the first label that has two different parents, e.g.
        "label 7 at level 2 ('class') has 2 different parents at level 1 ('group'):
        3 (row 0) and 4 (row 12)".
    """
    labels = as_label_matrix(labels)
    num_levels = labels.shape[1]
    names = list(level_names) if level_names is not None else [None] * num_levels
    if len(names) != num_levels:
        raise HierarchyError(f"got {len(names)} level names for {num_levels} label columns")

    def describe(level):
        return f"level {level}" + (f" ({names[level]!r})" if names[level] else "")

    for level in range(1, num_levels):
        child, parent = labels[:, level], labels[:, level - 1]
        order = np.lexsort((parent, child))
        child_sorted, parent_sorted = child[order], parent[order]
        clash = (child_sorted[1:] == child_sorted[:-1]) & (parent_sorted[1:] != parent_sorted[:-1])
        if clash.any():
            k = int(np.argmax(clash))
            row_a, row_b = int(order[k]), int(order[k + 1])
            parents = np.unique(parent[child == child_sorted[k]])
            raise HierarchyError(
                f"labels do not form a tree: label {child_sorted[k]} at {describe(level)} has "
                f"{len(parents)} different parents at {describe(level - 1)}: "
                f"{parent[row_a]} (row {row_a}) and {parent[row_b]} (row {row_b})"
            )
    return labels


def prefix_ids(labels, length: int) -> np.ndarray:
    """Dense ids `[N]` of the label prefixes `labels[:, :length]` (equal prefix = equal id)."""
    labels = as_label_matrix(labels)
    if not 1 <= length <= labels.shape[1]:
        raise HierarchyError(f"prefix length must be in 1..{labels.shape[1]}, got {length}")
    _, ids = np.unique(labels[:, :length], axis=0, return_inverse=True)
    return ids.reshape(-1)


def lca_height(a, b) -> np.ndarray:
    """Height of the lowest common ancestor of label rows `a [..., L]` and `b [..., L]`.

    0 when the rows are equal at the finest level, L when they differ already at the
    coarsest level (their only common ancestor is the root). Used by mistake-severity
    metrics (Bertinetto et al., CVPR 2020).
    """
    a, b = np.asarray(a), np.asarray(b)
    differs = a != b
    num_levels = a.shape[-1]
    # The first differing level d means the common prefix has length d -> height L - d.
    first_diff = np.where(differs.any(-1), np.argmax(differs, axis=-1), num_levels)
    return num_levels - first_diff

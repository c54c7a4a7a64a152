"""Exact k-nearest-neighbour search by blocked matrix products with a running top-k.

The search never materialises the `[Q, G]` similarity matrix: queries are processed in
blocks of at most `block_size` rows, and for each query block a `lax.scan` walks the gallery
in blocks of at most `block_size` rows, keeping the best `k` (score, index) pairs seen so
far. Peak extra memory is `O(block_size * (block_size + k))` floats, independent of N, so a
1,000,000 x 512 gallery fits on one accelerator (see docs/spec evaluation.md, "Scale").

Leave-one-out searches (`gallery=None`) with `N * k <= SYMMETRIC_MAX_ENTRIES` use the
symmetry of the similarity: each block product is computed once and serves both blocks
(half the FLOPs; the results `[N, k]` then stay on the device until the end). Each block's
top-k is a two-stage selection (best column groups, then best entries within them), exact.

Ordering is deterministic: by score (best first), then by smaller gallery index. This relies
on `jax.lax.top_k` returning the lower index first among equal values, and on merging the
running top-k (earlier, smaller gallery indices) in front of each new block's candidates.
Sharded search (`mesh=`, e.g. `search_mesh()`: every device of every process): the
gallery is split row-wise over the mesh, each device runs the same blocked scan over its
shard (extra memory per device still `O(block_size * (block_size + k))`), and the per-device
top-k lists are all-gathered in device order (= gallery index order) and merged by one more
top-k, so the result, ties included, is exactly the one-device result.

Note: on GPUs JAX may run float32 matrix products in TF32 by default; set
`jax.config.update("jax_default_matmul_precision", "highest")` for bit-faithful rankings.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from himl.distances import l2_normalize
from himl.errors import UserError

METRICS = ("cosine", "euclidean")
GROUP = 16  # widest column group of the two-stage block top-k
# Leave-one-out searches keep all N x k results on the device and compute each block
# product once (`_search_symmetric`) when N * k is at most this; else they stream.
SYMMETRIC_MAX_ENTRIES = 1 << 26
MESH_AXIS = "gallery"


class EvalInputError(UserError, ValueError):
    """Embeddings that cannot be evaluated (empty, NaN or inf rows): a user-facing error."""


def as_embeddings(x, *, name: str = "embeddings") -> jax.Array:
    """Checks `x` is a finite, non-empty `[N, D]` float array; returns it as float32 JAX array.

    Raises:
      ValueError: wrong rank or dimension 0 (a programming error).
      EvalInputError: empty split, or the count of NaN / inf rows (a data/model problem).
    """
    _check_shape(x, name)
    x = jnp.asarray(x, dtype=jnp.float32)
    _check_finite(jnp, x, name)
    return x


def as_host_embeddings(x, *, name: str = "embeddings") -> np.ndarray:
    """`as_embeddings` that keeps the array in host memory (NumPy float32): what the
    sharded search slices onto the devices, without a full copy on any one device."""
    _check_shape(x, name)
    x = np.asarray(x, dtype=np.float32)
    _check_finite(np, x, name)
    return x


def _check_shape(x, name: str) -> None:
    if x is None:
        raise ValueError(f"{name} is None")
    shape = np.shape(x)
    if len(shape) != 2:
        raise ValueError(f"{name} must have shape [N, D], got {tuple(shape)}")
    if shape[0] == 0:
        raise EvalInputError(f"{name} is empty (0 rows): nothing to evaluate")
    if shape[1] == 0:
        raise ValueError(f"{name} has dimension 0")


def _check_finite(xp, x, name: str) -> None:
    nan_rows = int(xp.sum(xp.any(xp.isnan(x), axis=1)))
    if nan_rows:
        raise EvalInputError(f"{name} has {nan_rows} of {x.shape[0]} rows containing NaN")
    inf_rows = int(xp.sum(xp.any(xp.isinf(x), axis=1)))
    if inf_rows:
        raise EvalInputError(f"{name} has {inf_rows} of {x.shape[0]} rows containing inf")


def search_mesh(devices=None) -> Mesh | None:
    """A 1-D mesh over `devices` (default: every device of every process) for a sharded
    search, or None when there is only one device (the plain search is then used)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.array(devices), (MESH_AXIS,)) if len(devices) > 1 else None


def _block_rows(n: int, block_size: int) -> tuple[int, int]:
    """(rows per block, number of blocks) splitting n rows evenly into <= block_size blocks."""
    num_blocks = math.ceil(n / block_size)
    rows = math.ceil(n / num_blocks)
    if rows > GROUP:  # a multiple of GROUP (fast block top-k), unless block_size is smaller
        rows = max(min(block_size, GROUP * math.ceil(rows / GROUP)), rows)
    return rows, math.ceil(n / rows)


def _pad_rows(x: jax.Array, rows: int) -> jax.Array:
    return x if x.shape[0] == rows else jnp.pad(x, ((0, rows - x.shape[0]), (0, 0)))


def _group_width(cols: int, k: int) -> int:
    """Power of two in [2, GROUP] near sqrt(cols / k), minimising cols / g + k * g."""
    return int(2 ** np.clip(np.round(0.5 * np.log2(max(cols / k, 1.0))), 1, np.log2(GROUP)))


def _block_top_k(s: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """Exact `lax.top_k(s, k)` (same tie rule) via a pre-selection of column groups.

    The k best entries of a row lie in the k column groups (of `group` columns) with the
    largest maxima, ties going to the lower group: any element outside them is preceded by
    those k maxima. Selecting groups first shrinks the sort from `bg` to `bg / group + k *
    group` elements; the chosen groups are re-sorted by index so ties keep lower indices.
    """
    rows, cols = s.shape
    group = _group_width(cols, k)
    num_groups = cols // group
    if cols % group or num_groups <= 2 * k:
        return jax.lax.top_k(s, k)
    s3 = s.reshape(rows, num_groups, group)
    _, gid = jax.lax.top_k(jnp.max(s3, axis=2), k)
    gid = jnp.sort(gid, axis=1)
    cand = jnp.take_along_axis(s3, gid[:, :, None], axis=1).reshape(rows, k * group)
    vals, pos = jax.lax.top_k(cand, k)
    return vals, jnp.take_along_axis(gid, pos // group, axis=1) * group + pos % group


def _merge(best_s, best_i, s, start, kb):
    """Merges the block scores `s [b, bg]` (columns `start + j`) into the running top-k.

    The running entries must come from smaller gallery indices than the block's: they go
    first, so on equal scores top_k keeps the smaller index.
    """
    blk_s, blk_i = _block_top_k(s, kb)
    cat_s = jnp.concatenate([best_s, blk_s], axis=1)
    cat_i = jnp.concatenate([best_i, blk_i + start], axis=1)
    new_s, pos = jax.lax.top_k(cat_s, best_s.shape[1])
    return new_s, jnp.take_along_axis(cat_i, pos, axis=1)


@functools.partial(jax.jit, static_argnames=("k", "euclidean", "num_valid"))
def _search_symmetric(x, x_sq, *, k, euclidean, num_valid):
    """Leave-one-out top-k of all rows of `x [nb, b, D]` against each other.

    Each block product `S_ij = X_i X_j^T` (i <= j) is computed once and used twice: its
    rows update block i, its columns (`S_ij^T`) block j. Pairs run row-major, so every
    block receives candidate columns in increasing gallery index, as `_merge` needs. Half
    the matrix products of the one-sided search; memory `O(N k + b^2)`.
    """
    nb, b, _ = x.shape
    kb = min(k, b)
    pairs = np.array([(i, j) for i in range(nb) for j in range(i, nb)], dtype=np.int32)
    local = jnp.arange(b, dtype=jnp.int32)

    def scores(dot, col_block):  # larger is better; padded and self columns -> -inf
        s = 2.0 * dot - x_sq[col_block][None, :] if euclidean else dot
        return jnp.where((col_block * b + local >= num_valid)[None, :], -jnp.inf, s)

    def step(carry, ij):
        best_s, best_i = carry
        i, j = ij[0], ij[1]
        dot = jnp.einsum("qd,gd->qg", x[i], x[j], preferred_element_type=jnp.float32)
        s_rows = scores(dot, j)
        s_rows = jnp.where((i == j) & (local[:, None] == local[None, :]), -jnp.inf, s_rows)
        new_i = _merge(best_s[i], best_i[i], s_rows, j * b, kb)
        best_s, best_i = best_s.at[i].set(new_i[0]), best_i.at[i].set(new_i[1])

        def update_j(state):
            bs, bi = state
            new_j = _merge(bs[j], bi[j], scores(dot.T, i), i * b, kb)
            return bs.at[j].set(new_j[0]), bi.at[j].set(new_j[1])

        return jax.lax.cond(i != j, update_j, lambda st: st, (best_s, best_i)), None

    init = (
        jnp.full((nb, b, k), -jnp.inf, dtype=jnp.float32),
        jnp.full((nb, b, k), -1, dtype=jnp.int32),
    )
    (best_s, best_i), _ = jax.lax.scan(step, init, jnp.asarray(pairs))
    return best_s.reshape(nb * b, k), best_i.reshape(nb * b, k)


def _scan_gallery(q, q_idx, gallery, gallery_sq, first, *, k, euclidean, exclude_self, num_gallery):
    """Running top-k of `q [bq, D]` (global indices `q_idx [bq]`) over `gallery [nb, bg, D]`,
    whose first row has global index `first` (a shard of a larger gallery, or 0).

    Returns `(scores [bq, k], indices [bq, k])` (global indices); scores are "larger is
    better": the dot product for cosine (inputs pre-normalised) and `2 q.g - |g|^2` for
    Euclidean. Padding rows (global index >= `num_gallery`) score -inf.
    """
    bq = q.shape[0]
    num_blocks, bg, _ = gallery.shape
    kb = min(k, bg)

    def step(carry, xs):
        best_s, best_i = carry
        g, g_sq, start = xs
        s = jnp.einsum("qd,gd->qg", q, g, preferred_element_type=jnp.float32)
        if euclidean:
            s = 2.0 * s - g_sq[None, :]
        col = start + jnp.arange(bg, dtype=jnp.int32)
        invalid = (col >= num_gallery)[None, :]
        if exclude_self:
            invalid = invalid | (col[None, :] == q_idx[:, None])
        s = jnp.where(invalid, -jnp.inf, s)
        return _merge(best_s, best_i, s, start, kb), None

    init = (
        jnp.full((bq, k), -jnp.inf, dtype=jnp.float32),
        jnp.full((bq, k), -1, dtype=jnp.int32),
    )
    starts = first + jnp.arange(num_blocks, dtype=jnp.int32) * bg
    (best_s, best_i), _ = jax.lax.scan(step, init, (gallery, gallery_sq, starts))
    return best_s, best_i


@functools.partial(jax.jit, static_argnames=("k", "euclidean", "exclude_self", "num_gallery"))
def _search_block(q, q_start, gallery, gallery_sq, *, k, euclidean, exclude_self, num_gallery):
    """Top-k of one query block `q [bq, D]` against `gallery [nb, bg, D]` (padded), see
    `_scan_gallery`; queries have global indices `q_start + arange(bq)`."""
    q_idx = q_start + jnp.arange(q.shape[0], dtype=jnp.int32)
    return _scan_gallery(
        q,
        q_idx,
        gallery,
        gallery_sq,
        jnp.int32(0),
        k=k,
        euclidean=euclidean,
        exclude_self=exclude_self,
        num_gallery=num_gallery,
    )


def _exact_distances(q, gallery, idx):
    """Euclidean distances `[b, k]` between `q [b, D]` and `gallery[idx]`."""
    diff = q[:, None, :] - gallery[idx]
    return jnp.sqrt(jnp.sum(jnp.square(diff), axis=-1))


_distances = jax.jit(_exact_distances)


@jax.jit
def _prepare_rows(x):
    """(L2-normalised rows, their squared norms): row-wise, so a sharded input stays sharded
    and every row gets the bits it gets on one device."""
    return l2_normalize(x), jnp.sum(jnp.square(x), axis=-1)


@functools.lru_cache(maxsize=16)
def _sharded_search_fn(mesh: Mesh, *, k, euclidean, exclude_self, num_gallery):
    """`jit(shard_map(...))`: `(q [bq, D] replicated, q_start, gallery [nb, bg, D] and its
    squared norms sharded along nb) -> (indices [bq, k], scores [bq, k])`, replicated.

    Each device scans its shard (global indices offset by its position on the mesh), turns
    its k winners' scores into the reported ones (exact distances for Euclidean, from its own
    rows), and the k-lists of all devices are merged by one top-k. The all-gather concatenates
    them in device order, i.e. increasing gallery index, and each list is ordered by (score,
    index), so `top_k` (lower position first among equals) keeps the one-device tie rule.
    """
    axis = mesh.axis_names[0]

    def local(q, q_start, gallery, gallery_sq):
        nb, bg, d = gallery.shape
        first = jax.lax.axis_index(axis).astype(jnp.int32) * (nb * bg)
        q_idx = q_start + jnp.arange(q.shape[0], dtype=jnp.int32)
        kw = dict(k=k, euclidean=euclidean, exclude_self=exclude_self, num_gallery=num_gallery)
        s, i = _scan_gallery(q, q_idx, gallery, gallery_sq, first, **kw)
        reported = s
        if euclidean:  # exact |q - g| (the expansion cancels badly); -1 slots never win
            rows = jnp.clip(i - first, 0, nb * bg - 1)
            reported = _exact_distances(q, gallery.reshape(nb * bg, d), rows)
        all_s, all_i, all_r = (
            jax.lax.all_gather(a, axis, axis=1, tiled=True) for a in (s, i, reported)
        )
        _, pos = jax.lax.top_k(all_s, k)
        return jnp.take_along_axis(all_i, pos, axis=1), jnp.take_along_axis(all_r, pos, axis=1)

    fn = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(P(), P(), P(axis), P(axis)),
        out_specs=(P(), P()),
        check_vma=False,
    )
    return jax.jit(fn)


def _iter_sharded(queries, gallery, *, k, euclidean, exclude_self, block_size, mesh):
    """`iter_knn` over a gallery sharded row-wise over `mesh` (host arrays in, host out).

    Every process passes the same full host arrays; each one places only the rows of its
    own devices. Per device: `ceil(G / devices)` gallery rows plus the scan's blocks.
    """
    num_q, num_g = queries.shape[0], gallery.shape[0]
    ndev = mesh.size
    bg, nb_local = _block_rows(math.ceil(num_g / ndev), block_size)
    padded = np.zeros((ndev * nb_local * bg, gallery.shape[1]), np.float32)
    padded[:num_g] = gallery
    padded = padded.reshape(ndev * nb_local, bg, -1)

    def put(host, spec):
        sharding = NamedSharding(mesh, spec)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    g = put(padded, P(mesh.axis_names[0]))
    normalized, g_sq = _prepare_rows(g)
    if not euclidean:
        g = normalized
    search = _sharded_search_fn(
        mesh, k=k, euclidean=euclidean, exclude_self=exclude_self, num_gallery=num_g
    )
    bq, nq = _block_rows(num_q, block_size)

    def finish(start, i, s):
        n = min(bq, num_q - start)
        i, s = (np.asarray(a.addressable_data(0))[:n] for a in (i, s))
        return start, i.astype(np.int32), s.astype(np.float32)

    pending = None  # dispatch block b+1 before fetching block b
    for b in range(nq):
        start = b * bq
        q = np.zeros((bq, queries.shape[1]), np.float32)
        q[: min(bq, num_q - start)] = queries[start : start + bq]
        q = put(q, P())
        if not euclidean:
            q = _prepare_rows(q)[0]
        out = search(q, put(np.asarray(start, np.int32), P()), g, g_sq)
        if pending is not None:
            yield finish(*pending)
        pending = (start, *out)
    yield finish(*pending)


def iter_knn(
    queries,
    gallery=None,
    *,
    k: int,
    metric: str = "cosine",
    block_size: int = 4096,
    exclude_self: bool | None = None,
    mesh: Mesh | None = None,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Streams `knn` one query block at a time: yields `(start, indices [b, k], scores [b, k])`.

    Host memory stays `O(block_size * k)` (plus a host copy of the gallery when sharded);
    the metrics consume this to avoid a `[Q, k]` array when k is large. Arguments as in
    `knn`.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    sharded = mesh is not None and mesh.size > 1
    check = as_host_embeddings if sharded else as_embeddings
    queries = check(queries, name="queries")
    same = gallery is None
    gallery = queries if same else check(gallery, name="gallery")
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"queries have dimension {queries.shape[1]} but gallery has {gallery.shape[1]}"
        )
    exclude_self = same if exclude_self is None else bool(exclude_self)
    num_q, num_g = queries.shape[0], gallery.shape[0]
    if exclude_self and num_q > num_g:
        raise ValueError(f"exclude_self needs queries ({num_q}) <= gallery ({num_g})")
    available = num_g - (1 if exclude_self else 0)
    if not 1 <= k <= available:
        raise ValueError(
            f"k must be in 1..{available} (gallery of {num_g}"
            f"{', self excluded' if exclude_self else ''}), got {k}"
        )

    euclidean = metric == "euclidean"
    if sharded:
        yield from _iter_sharded(
            queries,
            gallery,
            k=k,
            euclidean=euclidean,
            exclude_self=exclude_self,
            block_size=block_size,
            mesh=mesh,
        )
        return
    if not euclidean:
        queries = l2_normalize(queries)
        gallery = queries if same else l2_normalize(gallery)
    bg, nb = _block_rows(num_g, block_size)
    g = _pad_rows(gallery, bg * nb)
    g_sq = jnp.sum(jnp.square(g), axis=1).reshape(nb, bg)
    g = g.reshape(nb, bg, -1)
    bq, nq = _block_rows(num_q, block_size)

    search = functools.partial(
        _search_block, k=k, euclidean=euclidean, exclude_self=exclude_self, num_gallery=num_g
    )

    def finish(start, s, i):
        n = min(bq, num_q - start)
        s, i = s[:n], i[:n]
        if euclidean:  # exact |q - g| for the k winners (the expansion cancels badly)
            s = _distances(queries[start : start + n], gallery, i)
        return start, np.asarray(i, dtype=np.int32), np.asarray(s, dtype=np.float32)

    if same and exclude_self and nb > 1 and num_q * k <= SYMMETRIC_MAX_ENTRIES:
        best_s, best_i = _search_symmetric(g, g_sq, k=k, euclidean=euclidean, num_valid=num_q)
        for start in range(0, num_q, bq):
            yield finish(start, best_s[start : start + bq], best_i[start : start + bq])
        return

    pending = None  # dispatch block b+1 before fetching block b (overlaps host and device)
    for b in range(nq):
        start = b * bq
        q = _pad_rows(queries[start : start + bq], bq)
        out = search(q, jnp.int32(start), g, g_sq)
        if pending is not None:
            yield finish(*pending)
        pending = (start, *out)
    yield finish(*pending)


def knn(
    queries,
    gallery=None,
    *,
    k: int,
    metric: str = "cosine",
    block_size: int = 4096,
    exclude_self: bool | None = None,
    mesh: Mesh | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours of each query in the gallery.

    Args:
      queries: `[Q, D]` float embeddings (NumPy or JAX).
      gallery: `[G, D]` float embeddings, or None to search the queries themselves.
      k: number of neighbours, `1 <= k <= G` (`G - 1` when the self-match is excluded).
      metric: "cosine" (dot product of L2-normalised rows) or "euclidean".
      block_size: rows per query block and per gallery block; bounds memory to
        `O(block_size * (block_size + k))`.
      exclude_self: drop gallery index i from query i's candidates (by index, not distance,
        so duplicates of the query are still found). Default: True iff `gallery is None`.
      mesh: a 1-D device mesh (`search_mesh()`) to shard the gallery over; None or one
        device: the one-device search. Same results either way. Every process of a
        multi-process mesh must call this with the same arrays.

    Returns:
      `(indices [Q, k] int32, scores [Q, k] float32)`, best first. Scores are cosine
      similarities (descending) for "cosine" and Euclidean distances (ascending) for
      "euclidean". Equal scores are ordered by smaller gallery index.
    """
    idx_parts, score_parts = [], []
    for _, idx, scores in iter_knn(
        queries,
        gallery,
        k=k,
        metric=metric,
        block_size=block_size,
        exclude_self=exclude_self,
        mesh=mesh,
    ):
        idx_parts.append(idx)
        score_parts.append(scores)
    return np.concatenate(idx_parts), np.concatenate(score_parts)

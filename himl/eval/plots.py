"""PNG plots of an evaluation (matplotlib `Figure`s drawn off-screen: no pyplot state and
no global backend switch, so importing this module changes nothing in a notebook).

- `plot_recall_at_k`: Recall@K against K (log2 axis), one curve per run or level.
- `plot_embedding_2d`: a 2-D projection (PCA, or t-SNE) coloured by coarse and fine labels.
- `plot_retrieval_grid`: query images with their top retrieved images, framed green when
  the label matches the query's and red otherwise.

Every `plot_*(..., path)` writes a PNG at `path` (parent folders created) and returns it.
"""

from __future__ import annotations

import os
import re

import numpy as np
from matplotlib.figure import Figure

_RECALL = re.compile(r"^recall@(\d+)$")


# Longer label names are shortened on the plots (the retrieval grid's cells are ~1.4 in),
# to their end: the finer part of a name like "Greek/character05".
MAX_NAME = 16


def _short(text) -> str:
    text = str(text)
    return text if len(text) <= MAX_NAME else "\u2026" + text[1 - MAX_NAME :]


def _save(fig, path) -> str:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def plot_recall_at_k(results: dict, path, *, title: str = "Recall@K") -> str:
    """Recall@K curve(s).

    Args:
      results: a metrics dict with "recall@K" keys, or `{name: metrics dict}` for several
        curves (e.g. one per hierarchy level or per method).
      path: output PNG.
    """
    if any(_RECALL.match(str(k)) for k in results):
        results = {"": results}
    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    for name, res in results.items():
        if not isinstance(res, dict):
            continue
        pts = sorted(
            (int(m.group(1)), float(v))
            for k, v in res.items()
            if (m := _RECALL.match(k)) and v is not None  # None: nothing to find at that level
        )
        if not pts:
            continue
        ks, vals = zip(*pts, strict=True)
        ax.plot(ks, vals, marker="o", label=name or None)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    if any(results):
        ax.legend(fontsize=8)
    return _save(fig, path)


def project_2d(embeddings, *, method: str = "pca", seed: int = 0) -> np.ndarray:
    """`[N, 2]` projection of `[N, D]` embeddings by PCA (SVD) or t-SNE (scikit-learn)."""
    x = np.asarray(embeddings, dtype=np.float64)
    x = x - x.mean(axis=0)
    if method == "pca":
        if x.shape[1] < 2:
            return np.pad(x, ((0, 0), (0, 2 - x.shape[1])))
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        return x @ vt[:2].T
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = min(30.0, max(2.0, (x.shape[0] - 1) / 3))
        return TSNE(2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(x)
    raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")


def plot_embedding_2d(
    embeddings,
    coarse_labels,
    fine_labels,
    path,
    *,
    method: str = "pca",
    max_points: int = 5000,
    seed: int = 0,
    title: str = "",
    coarse_name=None,
) -> str:
    """Two scatter panels of a 2-D projection, coloured by coarse and by fine labels.

    Args:
      embeddings: `[N, D]`. coarse_labels, fine_labels: `[N]` ints (pass the same array
        twice for flat labels). At most `max_points` random points are drawn.
      coarse_name: `label -> str`: with it, the coarse panel has a legend of the names of
        its classes (when there are at most 20, the colours of its palette).
    """
    x = np.asarray(embeddings)
    coarse, fine = np.asarray(coarse_labels).ravel(), np.asarray(fine_labels).ravel()
    if not (len(x) == len(coarse) == len(fine)):
        raise ValueError(f"got {len(x)} embeddings, {len(coarse)} coarse, {len(fine)} fine labels")
    if len(x) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(x), max_points, replace=False))
        x, coarse, fine = x[keep], coarse[keep], fine[keep]
    xy = project_2d(x, method=method, seed=seed)
    fig = Figure(figsize=(10, 4.5))
    axes = fig.subplots(1, 2)
    for ax, labels, name in ((axes[0], coarse, "coarse"), (axes[1], fine, "fine")):
        values, ids = np.unique(labels, return_inverse=True)
        points = ax.scatter(xy[:, 0], xy[:, 1], c=ids, cmap="tab20", s=4, linewidths=0)
        ax.set_title(f"{method.upper()} by {name} label ({ids.max() + 1} classes)")
        if name == "coarse" and coarse_name is not None and 1 < len(values) <= 20:
            handles = points.legend_elements(num=None)[0]  # one per class, in id order
            names = [_short(coarse_name(v)) for v in values]
            ax.legend(handles, names, fontsize=7, loc="best", markerscale=0.6)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _as_image(img: np.ndarray) -> tuple[np.ndarray, str | None]:
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = np.moveaxis(img, 0, -1)  # CHW -> HWC
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    img = img.astype(np.float64)
    lo, hi = img.min(), img.max()
    img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    return img, ("gray" if img.ndim == 2 else None)


def plot_retrieval_grid(
    query_images,
    query_labels,
    gallery_images,
    gallery_labels,
    knn_indices,
    path,
    *,
    query_ids=None,
    num_queries: int = 8,
    top: int = 5,
    seed: int = 0,
    label_name=None,
    scores=None,
    query_titles=None,
) -> str:
    """A grid: one row per query (first column), then its `top` retrieved gallery images.

    Args:
      query_images: `[Q, H, W]`, `[Q, H, W, C]` or `[Q, C, H, W]` (any range; each image is
        min-max scaled). gallery_images likewise; pass the query arrays again for
        leave-one-out retrieval. knn_indices: `[Q, >=top]` gallery indices (`knn` output).
      query_labels, gallery_labels: labels (ids or names) shown above the images; frames
        are green where they match the query's. Gallery labels only (new query images):
        shown, in black frames. Both None: no labels, black frames.
      query_ids: which queries to show (default: `num_queries` random ones).
      label_name: `label -> str`, the text shown for a label (default: the label itself);
        frames still compare the labels, so two classes of the same name stay apart.
      scores: optional `[Q, >=top]` similarity of each retrieved image, shown under its label.
      query_titles: optional `[Q]` text naming each query (e.g. its file name), shown with it.
    """
    shown = (lambda label: str(label)) if label_name is None else label_name
    idx = np.asarray(knn_indices)
    known = query_labels is not None and gallery_labels is not None
    q_lab = np.asarray(query_labels if known else [""] * len(idx)).ravel()
    g_lab = None if gallery_labels is None else np.asarray(gallery_labels).ravel()
    top = min(top, idx.shape[1])
    if query_ids is None:
        rng = np.random.default_rng(seed)
        query_ids = rng.choice(len(q_lab), min(num_queries, len(q_lab)), replace=False)
    query_ids = np.asarray(query_ids).ravel()
    fig = Figure(figsize=(1.4 * (top + 1), 1.5 * len(query_ids)))
    axes = fig.subplots(len(query_ids), top + 1, squeeze=False)
    for row, q in enumerate(query_ids):
        title = _short(query_titles[q]) if query_titles is not None else ""
        title = title or (_short(shown(q_lab[q])) if known else "")
        cells = [(query_images[q], "black", f"query {title}".strip())]
        for rank, j in enumerate(idx[q, :top]):
            text = "" if g_lab is None else _short(shown(g_lab[j]))
            if scores is not None:
                text = f"{text}\n{float(scores[q][rank]):.3f}".strip()
            colour = "black" if not known else "green" if g_lab[j] == q_lab[q] else "red"
            cells.append((gallery_images[j], colour, text))
        for ax, (img, colour, text) in zip(axes[row], cells, strict=True):
            img, cmap = _as_image(img)
            ax.imshow(img, cmap=cmap)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(3)
            ax.set_title(text, fontsize=7, color=colour)
    return _save(fig, path)


def show(path):
    """Displays a written PNG inline in a notebook (IPython), or prints its path elsewhere."""
    try:
        from IPython.display import Image, display
    except ImportError:  # a plain Python session: nothing to draw on
        print(path)
        return
    display(Image(filename=os.fspath(path)))

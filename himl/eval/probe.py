"""Linear probe: a multinomial logistic regression on frozen embeddings.

The usual representation-quality check (e.g. Chen et al., SimCLR, ICML 2020; Zhang et al.,
"Use All The Labels", CVPR 2022 report it per level). For *unseen* classes the probe is
trained on part of those classes' samples and tested on the rest: `stratified_split`.
scikit-learn's L-BFGS solver is deterministic, so the result depends only on the data.
"""

from __future__ import annotations

import warnings

import numpy as np

from himl.eval.knn import as_embeddings
from himl.eval.retrieval import as_label_vectors


def _prepare(x, normalize: bool) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def linear_probe(
    train_emb,
    train_labels,
    test_emb,
    test_labels,
    *,
    seed: int = 0,
    c: float = 1.0,
    max_iter: int = 200,
    normalize: bool = True,
) -> dict:
    """Top-1 accuracy of a logistic-regression probe trained on frozen embeddings.

    Args:
      train_emb `[N, D]`, train_labels `[N]`, test_emb `[M, D]`, test_labels `[M]`.
      seed: passed to the solver (L-BFGS is deterministic anyway).
      c: inverse L2 regularisation strength. max_iter: L-BFGS iterations.
      normalize: L2-normalise the embeddings first (cosine geometry), then scale by
        sqrt(D) so features have unit variance on average.

    Returns:
      {"accuracy", "train_accuracy", "num_train", "num_test", "num_classes",
       "num_test_unseen", "converged"} (test samples whose class has no training sample
       count as errors; "converged" is False when L-BFGS stopped at `max_iter`, reported
       here rather than as a scikit-learn warning).
    """
    tr = as_embeddings(train_emb, name="train_emb")
    te = as_embeddings(test_emb, name="test_emb")
    if tr.shape[1] != te.shape[1]:
        raise ValueError(f"train_emb has dimension {tr.shape[1]} but test_emb {te.shape[1]}")
    y_tr, y_te = as_label_vectors(
        (train_labels, tr.shape[0], "train_labels"), (test_labels, te.shape[0], "test_labels")
    )
    classes = np.unique(y_tr)
    scale = np.sqrt(tr.shape[1]) if normalize else 1.0
    x_tr, x_te = _prepare(tr, normalize) * scale, _prepare(te, normalize) * scale
    converged = True
    if len(classes) == 1:
        pred_tr = np.full(len(y_tr), classes[0])
        pred_te = np.full(len(y_te), classes[0])
    else:
        # scikit-learn imported here, not with the module: ~2 s that a command pays before
        # it can even report a config mistake.
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=c, max_iter=max_iter, random_state=seed)
        with warnings.catch_warnings(record=True) as caught:  # reported in the result instead
            warnings.simplefilter("always", ConvergenceWarning)
            clf.fit(x_tr, y_tr)
        converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        pred_tr, pred_te = clf.predict(x_tr), clf.predict(x_te)
    return {
        "converged": converged,
        "accuracy": float(np.mean(pred_te == y_te)),
        "train_accuracy": float(np.mean(pred_tr == y_tr)),
        "num_train": int(len(y_tr)),
        "num_test": int(len(y_te)),
        "num_classes": int(len(classes)),
        "num_test_unseen": int((~np.isin(y_te, classes)).sum()),
    }


def stratified_split(labels, *, train_fraction: float = 0.5, seed: int = 0):
    """Boolean train mask `[N]`: per class, a `train_fraction` share (at least one sample
    for the training side, and one for the test side when the class has >= 2 samples)."""
    labels = np.asarray(labels).reshape(-1)
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_train = int(round(train_fraction * len(members)))
        n_train = min(max(n_train, 1), max(len(members) - 1, 1))
        mask[members[:n_train]] = True
    return mask

"""Evaluation plots: each writes a non-empty PNG."""

import numpy as np
import pytest

from himl.eval.knn import knn
from himl.eval.plots import (
    plot_embedding_2d,
    plot_recall_at_k,
    plot_retrieval_grid,
    project_2d,
)

PNG_MAGIC = b"\x89PNG"


def assert_png(path):
    data = path.read_bytes()
    assert len(data) > 1000 and data[:4] == PNG_MAGIC


def test_recall_curve_single_and_multi(tmp_path):
    res = {"recall@1": 0.5, "recall@2": 0.6, "recall@4": 0.8, "map@r": 0.2, "num_queries": 9}
    plot_recall_at_k(res, tmp_path / "r.png")
    assert_png(tmp_path / "r.png")
    many = {"coarse": res, "fine": {"recall@1": 0.3, "recall@8": 0.9}, "k": 8}
    out = plot_recall_at_k(many, tmp_path / "sub" / "levels.png")
    assert_png(tmp_path / "sub" / "levels.png")
    assert out.endswith("levels.png")


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_embedding_projection(tmp_path, method):
    rng = np.random.default_rng(0)
    fine = rng.integers(0, 6, 90)
    x = rng.normal(size=(6, 16))[fine] + 0.1 * rng.normal(size=(90, 16))
    plot_embedding_2d(x, fine // 3, fine, tmp_path / "p.png", method=method, max_points=60)
    assert_png(tmp_path / "p.png")


def test_pca_projection_keeps_main_axis():
    rng = np.random.default_rng(1)
    x = np.outer(np.linspace(-5, 5, 50), [1.0, 0.0, 0.0]) + 0.01 * rng.normal(size=(50, 3))
    xy = project_2d(x)
    assert xy.shape == (50, 2) and np.var(xy[:, 0]) > 100 * np.var(xy[:, 1])


@pytest.mark.parametrize("shape", [(12, 12), (12, 12, 3), (3, 12, 12)])
def test_retrieval_grid(tmp_path, shape):
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, 20)
    images = rng.random((20, *shape))
    idx, _ = knn(images.reshape(20, -1), k=4)
    plot_retrieval_grid(images, labels, images, labels, idx, tmp_path / "g.png", num_queries=3)
    assert_png(tmp_path / "g.png")


def _drawn(monkeypatch):
    """The figures the plot functions draw, kept instead of written."""
    import himl.eval.plots as plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or str(path))
    return figures


def test_retrieval_grid_shows_names_and_frames_by_label(monkeypatch):
    """Names are shown (long ones by their end), frames compare the labels: two classes
    named alike stay apart."""
    figures = _drawn(monkeypatch)
    images = np.random.default_rng(3).random((4, 8, 8))
    labels = np.array([0, 1, 2, 0])
    names = {0: "Greek/character05", 1: "Greek/character05", 2: "x"}
    idx = np.array([[3, 1, 2], [2, 0, 3], [0, 1, 3], [0, 2, 1]])
    plot_retrieval_grid(
        images, labels, images, labels, idx, "g.png", query_ids=[0], top=3,
        label_name=names.get,
    )  # fmt: skip
    axes = figures[0].axes
    short = "\u2026eek/character05"
    assert [ax.get_title() for ax in axes] == [f"query {short}", short, short, "x"]
    assert [ax.spines["top"].get_edgecolor()[:3] for ax in axes[1:]] == [
        (0.0, 0.5019607843137255, 0.0), (1.0, 0.0, 0.0), (1.0, 0.0, 0.0)
    ]  # fmt: skip


def test_embedding_plot_names_the_coarse_classes(monkeypatch):
    figures = _drawn(monkeypatch)
    rng = np.random.default_rng(0)
    fine = rng.integers(0, 6, 40)
    x = rng.normal(size=(40, 8))
    plot_embedding_2d(x, fine // 3 * 7, fine, "p.png", coarse_name={0: "tops", 7: "shoes"}.get)
    legend = figures[0].axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["tops", "shoes"]
    assert figures[0].axes[1].get_legend() is None


def test_retrieval_grid_of_unlabelled_queries_shows_the_gallery_labels(monkeypatch):
    """New query images (himl-embed --query) have no labels: the gallery's are shown, in
    black frames (nothing to match)."""
    figures = _drawn(monkeypatch)
    images = np.random.default_rng(4).random((3, 8, 8))
    idx = np.array([[2, 0], [0, 2], [1, 0]])
    gallery = ["Greek/alpha", "Greek/beta", "Latin/a"]
    plot_retrieval_grid(images, None, images, gallery, idx, "g.png", query_ids=[0], top=2)
    axes = figures[0].axes
    assert [ax.get_title() for ax in axes] == ["query", "Latin/a", "Greek/alpha"]
    assert {ax.spines["top"].get_edgecolor()[:3] for ax in axes} == {(0.0, 0.0, 0.0)}
    # himl-embed --plot: each query named by its file, each neighbour's score under it.
    scores = np.array([[0.9, 0.8], [0.7, 0.6], [0.5, 0.25]])
    plot_retrieval_grid(
        images, None, images, gallery, idx, "g.png", query_ids=[2], top=2, scores=scores,
        query_titles=["a.png", "b.png", "c.png"],
    )  # fmt: skip
    assert [ax.get_title() for ax in figures[1].axes] == [
        "query c.png", "Greek/beta\n0.500", "Greek/alpha\n0.250"
    ]  # fmt: skip

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

"""Evaluation: exact blocked kNN, retrieval / clustering / hierarchical metrics, probes, plots.

Core API (plain Python numbers out, NumPy or JAX arrays in):

- `knn(queries, gallery=None, *, k, metric, block_size, exclude_self, mesh)` -> (indices,
  scores); `mesh=search_mesh()` shards the gallery over every device and process
- `retrieval_metrics(embeddings, labels, *, ks, metric, block_size)` -> dict
- `query_gallery_retrieval_metrics(query_emb, query_labels, gallery_emb, gallery_labels, ...)`
- `clustering_metrics(embeddings, labels, *, seed, n_init, average)` -> dict
- `hierarchical_metrics(embeddings, labels_2d, *, ks, level_names, seed, metric)` -> dict
- `linear_probe(train_emb, train_labels, test_emb, test_labels, *, seed)` -> dict
- `evaluate_embeddings(npz_path, *, config, splits, out_dir, plots)` -> dict: embeddings made
  anywhere through the evaluators of `himl-eval` (`himl.eval.embeddings_file`)

Plots live in `himl.eval.plots` (imported on demand: it loads matplotlib).
"""

from himl.eval.clustering import clustering_metrics
from himl.eval.hierarchical import hierarchical_metrics
from himl.eval.knn import iter_knn, knn, search_mesh
from himl.eval.probe import linear_probe, stratified_split
from himl.eval.retrieval import query_gallery_retrieval_metrics, retrieval_metrics

__all__ = [
    "clustering_metrics",
    "evaluate_embeddings",
    "hierarchical_metrics",
    "iter_knn",
    "knn",
    "linear_probe",
    "query_gallery_retrieval_metrics",
    "retrieval_metrics",
    "search_mesh",
    "stratified_split",
]


def __getattr__(name: str):
    if name == "evaluate_embeddings":  # lazily: it loads the configs and the plots
        from himl.eval.embeddings_file import evaluate_embeddings

        return evaluate_embeddings
    raise AttributeError(f"module 'himl.eval' has no attribute {name!r}")

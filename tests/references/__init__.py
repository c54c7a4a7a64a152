"""Slow NumPy references written from the definitions (plain float64 loops), one module per
family as in `himl/losses`. The tests compare himl against them; the benchmarks in
`experiments/` time them (`experiments/repo_paths.py` puts `tests/` on `sys.path`).

A package rather than one module: the references are ~500 lines over six unrelated
families, and each test reads only its own.

    pair          contrastive, triplet, multi-similarity, NT-Xent, SupCon (CLASSIC_REFS)
    tuples        N-pairs, lifted structure
    proxy         Proxy-Anchor, Proxy-NCA, Normalized-Softmax
    hist          HIST: distances, hypergraph, HGNN, loss
    hierarchical  HiMulCon / HiConE / HiMulConE (official algorithm and paper equations)
    reductions    masked log-sum-exp and its gradient, per-class log-sum-exp
    retrieval     Recall@K / P@1 / R-Precision / MAP@R per query, majority vote
"""

"""Benchmark: himl's blocked exact kNN (+ retrieval metrics) against CPU references.

For each N x D, the same float32 data (clustered, about 10 samples per class) is searched
for its k nearest neighbours (self excluded, cosine) by

- himl `knn` (blocked matmul + running top-k, JAX) and himl `retrieval_metrics`
  (kNN with k = max class size - 1, then Recall@K / P@1 / R-Precision / MAP@R);
- scikit-learn `NearestNeighbors(algorithm="brute")` on the L2-normalised data
  (Euclidean on unit vectors = cosine ranking; sklearn's own chunked distances + argpartition);
- NumPy: the same blocked computation (matmul, `argpartition`, sort of the k winners);
- faiss-cpu `IndexFlatIP` (exact), when importable.

Times are steady-state medians after one warm-up call (whose time, compile included, is
reported separately); ratios are reference time / himl time (> 1: himl is faster), all
measured in the same process. Results: a printed table and a JSON file.

  python experiments/bench_knn.py --quick                  # N=10k, D=128
  python experiments/bench_knn.py --n 10000 60000 --d 128
  python experiments/bench_knn.py --n 200000 --d 128 --methods himl   # memory check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
from pathlib import Path

import jax
import numpy as np

from himl.benchmarking import median_time
from himl.eval import knn, retrieval_metrics

METHODS = ("himl", "himl_metrics", "sklearn", "numpy", "faiss")


def make_data(n: int, d: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, max(1, n // 10), n)
    centers = rng.normal(size=(labels.max() + 1, d)).astype(np.float32)
    x = centers[labels] + 1.5 * rng.normal(size=(n, d)).astype(np.float32)
    return x, labels


def numpy_knn(xn: np.ndarray, k: int, block: int = 4096) -> np.ndarray:
    out = np.empty((len(xn), k), np.int64)
    for s in range(0, len(xn), block):
        sim = xn[s : s + block] @ xn.T
        sim[np.arange(sim.shape[0]), s + np.arange(sim.shape[0])] = -np.inf
        part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sim, part, axis=1), axis=1, kind="stable")
        out[s : s + block] = np.take_along_axis(part, order, axis=1)
    return out


def make_runners(x, labels, k, block_size, methods):
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    runners = {}
    if "himl" in methods:
        runners["himl"] = lambda: knn(x, k=k, block_size=block_size)[0]
    if "himl_metrics" in methods:
        runners["himl_metrics"] = lambda: retrieval_metrics(x, labels, block_size=block_size)
    if "sklearn" in methods:
        from sklearn.neighbors import NearestNeighbors

        def sk():
            nn = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(xn)
            return nn.kneighbors(xn, return_distance=False)[:, 1:]

        runners["sklearn"] = sk
    if "numpy" in methods:
        runners["numpy"] = lambda: numpy_knn(xn, k)
    if "faiss" in methods:
        try:
            import faiss
        except ImportError:
            faiss = None
        if faiss is not None:

            def fa():
                index = faiss.IndexFlatIP(xn.shape[1])
                index.add(xn)
                return index.search(xn, k + 1)[1][:, 1:]

            runners["faiss"] = fa
    return runners


def time_call(fn, repeats: int):
    """(first-call seconds, median seconds, result) of `fn()`."""
    out = []
    median, _, first = median_time(
        lambda: out.append(jax.block_until_ready(fn())), repeats, budget_s=float("inf")
    )
    return first, median, out[0]


def recall_at_1(idx, labels):
    return float(np.mean(labels[np.asarray(idx)[:, 0]] == labels))


def run(n, d, args):
    x, labels = make_data(n, d, seed=args.seed)
    repeats = args.repeats if args.repeats is not None else (10 if n <= 20000 else 3)
    runners = make_runners(x, labels, args.k, args.block_size, args.methods)
    row = {"n": n, "d": d, "k": args.k, "repeats": repeats, "methods": {}}
    for name, fn in runners.items():
        first, median, out = time_call(fn, repeats)
        entry = {"first_s": first, "median_s": median}
        if isinstance(out, dict):
            entry["recall@1"] = out["recall@1"]
            entry["map@r"] = out["map@r"]
            entry["metrics_k"] = out["k"]
        else:
            entry["recall@1"] = recall_at_1(out, labels)
        row["methods"][name] = entry
        print(f"  N={n} D={d} {name:13s} first {first:8.3f}s  median {median:8.3f}s", flush=True)
    base = row["methods"].get("himl")
    if base:
        for entry in row["methods"].values():
            entry["ratio_vs_himl"] = entry["median_s"] / base["median_s"]
    row["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return row


def print_table(rows):
    names = [m for m in METHODS if any(m in r["methods"] for r in rows)]
    header = f"{'N':>8} {'D':>4} " + " ".join(f"{m:>22}" for m in names) + "  peak RSS"
    print("\nmedian seconds (ratio = time / himl knn time; > 1 means himl is faster)")
    print(header)
    print("-" * len(header))
    for r in rows:
        cells = []
        for m in names:
            e = r["methods"].get(m)
            cells.append(f"{e['median_s']:9.3f}s ({e['ratio_vs_himl']:6.2f}x)" if e else "-")
        line = f"{r['n']:>8} {r['d']:>4} " + " ".join(f"{c:>22}" for c in cells)
        print(f"{line}  {r['peak_rss_mib']:.0f} MiB")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[10000, 60000, 200000])
    p.add_argument("--d", type=int, nargs="+", default=[128, 512])
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--block-size", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=None, help="default 10 (N<=20k) or 3")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="N=10k, D=128, 3 repeats")
    # The checkout's results folder, whatever folder the script runs in.
    p.add_argument(
        "--json", default=str(Path(__file__).resolve().parent / "results" / "bench_knn.json")
    )
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.d, args.repeats = [10000], [128], args.repeats or 3
    print(f"JAX {jax.__version__} on {jax.devices()[0].device_kind}; {os.cpu_count()} CPUs")
    rows = [run(n, d, args) for n in args.n for d in args.d]
    print_table(rows)
    meta = {
        "jax": jax.__version__,
        "device": str(jax.devices()[0]),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "args": vars(args),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=2)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

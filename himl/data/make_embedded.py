"""Rebuilds the embedded default dataset from the Fashion-MNIST IDX files.

    python -m himl.data.make_embedded ../shared/data/fashion-mnist

Keeps the first `--per_class_train` images of each class from the official train file and
the first `--per_class_test` from the test file (file order, so the subset is reproducible),
and writes `himl/data/embedded/fashion_mnist_subset.npz` next to the MIT license notice.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from himl.data import fashion_mnist

OUT = Path(__file__).parent / "embedded" / "fashion_mnist_subset.npz"


def first_per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of the first `per_class` samples of every class, in file order."""
    picks = [np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--per_class_train", type=int, default=500)
    parser.add_argument("--per_class_test", type=int, default=200)
    args = parser.parse_args()
    parts = {}
    for split, per_class in (("train", args.per_class_train), ("test", args.per_class_test)):
        images, labels = fashion_mnist.load_idx_split(args.folder, split)
        keep = first_per_class(labels, per_class)
        parts[split] = (images[keep], labels[keep], keep)
    np.savez_compressed(
        OUT,
        **{
            f"{split}_{field}": arr
            for split, arrs in parts.items()
            for field, arr in zip(("images", "classes", "source_index"), arrs, strict=True)
        },
    )
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()

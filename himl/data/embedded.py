"""The embedded default dataset: a class-balanced Fashion-MNIST subset shipped in the package.

7,000 real Fashion-MNIST images (MIT, Zalando SE; notice in `embedded/LICENSE-fashion-mnist`):
the first 500 of each class from the official train file and the first 200 from the test
file (rebuilt by `python -m himl.data.make_embedded FOLDER`). Labels are
`[group, class, instance]` (see `himl.data.fashion_mnist`). Splits, class-disjoint:

- "train": the 7 seen classes, train-file images (3,500) - the only split training sees;
- "seen_test": the seen classes, test-file images (1,400);
- "unseen": the 3 unseen classes (Pullover, Shirt, Ankle boot), all 2,100 images - the
  default retrieval split, classes never seen in training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from himl.data import fashion_mnist as fm
from himl.data.dataset import Dataset, Split

PATH = Path(__file__).parent / "embedded" / "fashion_mnist_subset.npz"
# Instance ids: the image's index in the official files, test images offset by 60,000.
TEST_ID_OFFSET = 60_000


def _select(images, labels, classes) -> Split:
    keep = np.isin(labels[:, 1], classes)
    return Split(images=images[keep], labels=labels[keep])


def hierarchical_splits(parts: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict:
    """Seen/unseen splits from {"train"|"test": (images, classes, instance ids)}."""
    full = {}
    for part, (images, classes, ids) in parts.items():
        full[part] = (images[..., None], fm.label_matrix(classes, ids))
    unseen_images = np.concatenate([full["train"][0], full["test"][0]])
    unseen_labels = np.concatenate([full["train"][1], full["test"][1]])
    return {
        "train": _select(*full["train"], fm.SEEN_CLASSES),
        "seen_test": _select(*full["test"], fm.SEEN_CLASSES),
        "unseen": _select(unseen_images, unseen_labels, fm.UNSEEN_CLASSES),
    }


def _dataset(name: str, splits: dict) -> Dataset:
    return Dataset(
        name=name,
        level_names=fm.LEVEL_NAMES,
        class_level=1,
        class_names=dict(enumerate(fm.CLASS_NAMES)),
        splits=splits,
        label_names=(tuple(fm.GROUP_NAMES), tuple(fm.CLASS_NAMES)),
    )


def load_embedded() -> Dataset:
    """The embedded default (no files needed)."""
    with np.load(PATH) as z:
        parts = {
            "train": (z["train_images"], z["train_classes"], z["train_source_index"]),
            "test": (z["test_images"], z["test_classes"], z["test_source_index"] + TEST_ID_OFFSET),
        }
    return _dataset("embedded", hierarchical_splits(parts))


def load_fashion_mnist(folder) -> Dataset:
    """Full Fashion-MNIST (70,000 images) from its IDX files, same splits as the default."""
    parts = {}
    for part, offset in (("train", 0), ("test", TEST_ID_OFFSET)):
        images, classes = fm.load_idx_split(folder, part)
        parts[part] = (images, classes, np.arange(len(classes)) + offset)
    return _dataset("fashion_mnist", hierarchical_splits(parts))

"""Write a `Dataset` split out as an image-folder tree or a manifest: the layouts that
`himl.data.custom` reads, e.g. to start your own data from a built-in one."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from himl.data.custom import SPLIT_VALUES
from himl.data.dataset import Dataset
from himl.data.images import LazyImages

# Splits that are the union of others: "train" of "train_no_val" + "val" (carved from it
# for model selection), In-Shop's "test" of "query" + "gallery".
UNIONS = {"train": ("train_no_val", "val"), "test": ("query", "gallery")}


def _rows(dataset: Dataset, split: str, per_class: int | None) -> np.ndarray:
    labels = dataset.split(split).labels
    rows = np.arange(len(labels))
    if per_class is None:
        return rows
    classes = labels[:, dataset.class_level]
    return np.concatenate([rows[classes == c][:per_class] for c in np.unique(classes)])


def _is_union(dataset: Dataset, whole: str, parts) -> bool:
    """Whether split `whole` holds the label rows of `parts` together (the same images)."""
    if not all(s in dataset.splits for s in (whole, *parts)):
        return False
    a = dataset.split(whole).labels
    b = np.concatenate([dataset.split(s).labels for s in parts])
    return a.shape == b.shape and bool((a[np.lexsort(a.T)] == b[np.lexsort(b.T)]).all())


def default_splits(dataset: Dataset) -> list[str]:
    """The splits to export by default, in the dataset's order: those `load_custom` reads
    (SPLIT_VALUES), each image once: "train" rather than "train_no_val" + "val" carved from
    it, "query" + "gallery" rather than "test" made of them."""
    skip = set()
    if _is_union(dataset, "train", UNIONS["train"]):
        skip |= set(UNIONS["train"])
    if _is_union(dataset, "test", UNIONS["test"]):
        skip.add("test")
    return [s for s in dataset.splits if s in SPLIT_VALUES and s not in skip]


def _check_splits(dataset: Dataset, splits) -> list[str]:
    for s in splits:
        dataset.split(s)  # UnknownSplitError naming the dataset's splits
        if s not in SPLIT_VALUES:
            raise ValueError(
                f"split {s!r} cannot be read back by himl.data.custom, which reads "
                f"{', '.join(SPLIT_VALUES)}; choose among those"
            )
    return list(splits)


def _write_image(images, row: int, stem: Path) -> Path:
    """Writes image `row` of a split's `images` at `stem` + its suffix; returns the path.

    A lazily decoded image is its source file's bytes, copied: read back with the same
    `image_size` and `eval_crop`, it decodes to the same pixels (its decoded pixels are
    already resized and cropped, and would be cropped again). In-memory pixels: a PNG."""
    if isinstance(images, LazyImages):
        j = int(images.indices[row])
        name = images.source.files[j]
        path = stem.with_suffix(Path(name.partition("::")[2] or name).suffix.lower())
        path.write_bytes(images.source[j])
        return path
    array = np.asarray(images[row])
    path = stem.with_suffix(".png")
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(path)
    return path


def write_image_tree(
    dataset: Dataset, root, *, split: str = "train", per_class: int | None = None
) -> list[Path]:
    """Image files `root/<level 0 name>/.../<class name>/<record>.<suffix>` of one split
    (`_write_image`: the source files of lazily decoded images, PNGs of in-memory ones).

    Args:
      dataset: any `Dataset`; the levels down to `class_level` become folders, named by
        `Dataset.label_name` ("/" in a name becomes "_").
      root: the folder to write (created).
      split: which split; per_class: at most this many images of each class (first ones).

    Returns:
      The written paths, in record order.
    """
    root = Path(root)
    data = dataset.split(split)
    paths = []
    for row in _rows(dataset, split, per_class):
        names = [
            dataset.label_name(level, int(data.labels[row, level])).replace("/", "_")
            for level in range(dataset.class_level + 1)
        ]
        stem = root.joinpath(*names, str(int(data.labels[row, -1])))
        stem.parent.mkdir(parents=True, exist_ok=True)
        paths.append(_write_image(data.images, int(row), stem))
    return paths


def write_manifest(dataset: Dataset, path, *, splits=("train",), per_class=None) -> Path:
    """A CSV manifest (`path`, one column per level, `split`) with the images beside it in
    `images/` (`_write_image`; folders created); the split column keeps the dataset's own
    split names, which must be ones `himl.data.custom` reads (SPLIT_VALUES)."""
    path = Path(path)
    splits = _check_splits(dataset, splits)
    path.parent.mkdir(parents=True, exist_ok=True)
    levels = dataset.eval_level_names
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", *levels, "split"])
        for split in splits:
            data = dataset.split(split)
            for row in _rows(dataset, split, per_class):
                stem = path.parent / "images" / split / str(int(data.labels[row, -1]))
                stem.parent.mkdir(parents=True, exist_ok=True)
                file = _write_image(data.images, int(row), stem).relative_to(path.parent)
                names = [
                    dataset.label_name(lv, int(data.labels[row, lv])) for lv in range(len(levels))
                ]
                writer.writerow([file.as_posix(), *names, split])
    return path


def write_npz(dataset: Dataset, path, *, splits=None) -> Path:
    """One `.npz` of in-memory arrays that `himl.data.custom` reads (`configs/custom.py`
    with `--config.data.custom.source=PATH`): e.g. a lazily decoded image dataset, decoded
    once at the size it was loaded with, to train in memory without image files.

    Writes `images [N, H, W, C]` uint8, `labels [N, class_level + 1]` (the dataset's ids,
    coarse to fine), `level_names`, `class_names` (indexed by class id) and `split` (the
    dataset's split names) for `splits` (default: `default_splits`, so that every image is
    written once and `load_custom` reads the file back with the dataset's splits).
    """
    path = Path(path)
    splits = default_splits(dataset) if splits is None else _check_splits(dataset, splits)
    levels = dataset.class_level + 1
    parts = [dataset.split(s) for s in splits]
    labels = np.concatenate([p.labels[:, :levels] for p in parts])
    num_classes = int(labels[:, -1].max()) + 1
    class_names = [dataset.label_name(dataset.class_level, c) for c in range(num_classes)]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        images=np.concatenate([np.asarray(p.images[:], np.uint8) for p in parts]),
        labels=labels,
        level_names=np.array(dataset.eval_level_names),
        class_names=np.array(class_names),
        split=np.array([s for s, p in zip(splits, parts, strict=True) for _ in range(len(p))]),
    )
    return path

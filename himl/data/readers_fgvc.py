"""Readers for the three standard DML benchmarks, from their official files (no download).

Class-disjoint protocol (Oh Song et al., CVPR 2016, "Deep metric learning via lifted
structured feature embedding"): the first half of the classes trains, the second half tests.
Splits: "train" (all training classes), "test", and for model selection "val" (the last
`val_fraction` of the training classes) with "train_no_val" (the rest). The finest level is
the image (an instance id), so several augmented views of one image are positives.

- CUB-200-2011 (Wah et al. 2011): classes 1-100 / 101-200; levels (class, image).
- Cars196 (Krause et al. 2013): classes 1-98 / 99-196; levels (make, model, image), the
  make parsed from the class name ("BMW M3 Coupe 2012" -> "BMW").
- Stanford Online Products (Oh Song et al. 2016): Ebay_train.txt / Ebay_test.txt;
  levels (super_class, class, image).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

from himl.data.records import (
    MalformedDataError,
    Records,
    carve_val,
    dataset_root,
    encode,
    ordered,
    part_range,
    read_rows,
    require,
)

CUB_WHERE = (
    "Get CUB_200_2011.tgz from https://www.vision.caltech.edu/datasets/cub_200_2011/ and "
    "extract it; pass the CUB_200_2011 folder (with images.txt and images/)."
)
CARS_WHERE = (
    "Get Cars196 (car_ims/ + cars_annos.mat, or the devkit's cars_meta.mat, "
    "cars_train_annos.mat, cars_test_annos_withlabels.mat with cars_train/ and cars_test/) "
    "from https://ai.stanford.edu/~jkrause/cars/car_dataset.html (mirrors exist)."
)
SOP_WHERE = (
    "Get Stanford_Online_Products.zip from https://cvgl.stanford.edu/projects/lifted_struct/ "
    "and pass the extracted folder (with Ebay_train.txt, Ebay_test.txt)."
)
# Cars196 makes of more than one word; every other make is the first word of the class name.
MULTI_WORD_MAKES = ("AM General", "Aston Martin", "Land Rover")


def _split_train_test(
    name, root, files, labels, is_test, level_names, class_level, class_names, val_fraction
):
    fields = ordered(files, labels, np.where(is_test, "test", "train"), ("train", "test"))
    train = part_range(fields["parts"], "train")
    train_no_val, val = carve_val(fields["labels"], train, class_level, val_fraction)
    return Records(
        name=name,
        root=root,
        files=fields["files"],
        labels=fields["labels"],
        level_names=level_names,
        class_level=class_level,
        class_names=class_names,
        parts=fields["parts"],
        splits={
            "train": train,
            "train_no_val": train_no_val,
            "val": val,
            "test": part_range(fields["parts"], "test"),
        },
    )


def read_cub(manual_dir, *, val_fraction: float = 0.2) -> Records:
    """CUB-200-2011: 11,788 images of 200 bird species; labels (class, image)."""
    root = dataset_root(manual_dir, "images.txt", "CUB_200_2011")
    images, labels, classes = require(
        root,
        "images.txt",
        "image_class_labels.txt",
        "classes.txt",
        dataset="CUB-200-2011",
        where=CUB_WHERE,
    )
    require(root, "images", dataset="CUB-200-2011", where=CUB_WHERE)
    paths = {int(i): p for i, p in read_rows(images, 2)}
    class_of = {int(i): int(c) for i, c in read_rows(labels, 2)}
    names = {}
    for row in read_rows(classes, 2):
        names[int(row[0]) - 1] = row[1].split(".", 1)[-1].replace("_", " ")
    if set(paths) != set(class_of):
        raise MalformedDataError(f"{images} and {labels} list different image ids")
    ids = sorted(paths)
    label_matrix = np.array([[class_of[i] - 1, i] for i in ids], np.int64)
    return _split_train_test(
        "cub",
        root,
        [f"images/{paths[i]}" for i in ids],
        label_matrix,
        label_matrix[:, 0] >= 100,
        ("class", "image"),
        0,
        names,
        val_fraction,
    )


def cars_make(class_name: str) -> str:
    """The make of a Cars196 class name ("Aston Martin V8 Vantage Coupe 2012" -> "Aston Martin")."""
    for make in MULTI_WORD_MAKES:
        if class_name.startswith(make + " "):
            return make
    return class_name.split()[0]


def _mat_strings(x) -> list[str]:
    return [str(s) for s in np.atleast_1d(x).ravel()]


def _cars_annotations(root: Path):
    """(file names, 1-based classes, class names) from either official annotation layout."""
    if (root / "cars_annos.mat").exists():
        mat = scipy.io.loadmat(root / "cars_annos.mat", squeeze_me=True)
        ann = np.atleast_1d(mat["annotations"])
        files = _mat_strings(ann["relative_im_path"])
        return files, np.asarray(ann["class"], np.int64).ravel(), _mat_strings(mat["class_names"])
    meta, train, test = require(
        root,
        "cars_meta.mat",
        "cars_train_annos.mat",
        "cars_test_annos_withlabels.mat",
        dataset="Cars196",
        where=CARS_WHERE,
    )
    names = _mat_strings(scipy.io.loadmat(meta, squeeze_me=True)["class_names"])
    files, classes = [], []
    for path, folder in ((train, "cars_train"), (test, "cars_test")):
        ann = np.atleast_1d(scipy.io.loadmat(path, squeeze_me=True)["annotations"])
        if "class" not in ann.dtype.names:
            raise MalformedDataError(f"{path} has no 'class' field (use the *_withlabels file)")
        files += [f"{folder}/{f}" for f in _mat_strings(ann["fname"])]
        classes += np.asarray(ann["class"], np.int64).ravel().tolist()
    return files, np.asarray(classes), names


def read_cars(manual_dir, *, val_fraction: float = 0.2) -> Records:
    """Cars196: 16,185 images of 196 car models; labels (make, model, image)."""
    root = dataset_root(manual_dir, "cars_annos.mat", "stanford_cars", "cars196")
    if not (root / "cars_annos.mat").exists():
        root = dataset_root(manual_dir, "cars_meta.mat", "devkit", "stanford_cars")
    files, classes, names = _cars_annotations(root)
    if len(names) != 196 or classes.min() < 1 or classes.max() > 196:
        raise MalformedDataError(
            f"Cars196 in {root}: expected 196 class names and classes 1..196, got "
            f"{len(names)} names and classes {classes.min()}..{classes.max()}"
        )
    makes, _ = encode([cars_make(n) for n in names])
    model = classes - 1
    label_matrix = np.stack([makes[model], model, np.arange(len(files))], axis=1)
    return _split_train_test(
        "cars",
        root,
        files,
        label_matrix,
        model >= 98,
        ("make", "model", "image"),
        1,
        dict(enumerate(names)),
        val_fraction,
    )


def read_sop(manual_dir, *, val_fraction: float = 0.2) -> Records:
    """Stanford Online Products: 120,053 images of 22,634 products in 12 super-classes."""
    root = dataset_root(manual_dir, "Ebay_train.txt", "Stanford_Online_Products")
    paths = require(root, "Ebay_train.txt", "Ebay_test.txt", dataset="SOP", where=SOP_WHERE)
    files, rows, is_test = [], [], []
    for k, path in enumerate(paths):
        for image_id, class_id, super_id, file in read_rows(path, 4, skip=1):
            files.append(file)
            rows.append((int(super_id) - 1, int(class_id) - 1, int(image_id)))
            is_test.append(k == 1)
    label_matrix = np.array(rows, np.int64)
    super_names = {}
    for (s, _, _), f in zip(rows, files, strict=True):
        super_names.setdefault(s, f.split("/")[0].removesuffix("_final"))
    class_names = {int(c): f"{super_names[s]} {c + 1}" for s, c, _ in rows}
    return _split_train_test(
        "sop",
        root,
        files,
        label_matrix,
        np.array(is_test),
        ("super_class", "class", "image"),
        1,
        class_names,
        val_fraction,
    )

"""Readers for the three standard DML benchmarks, from their official files (no download).

Class-disjoint protocol (Oh Song et al., CVPR 2016, "Deep metric learning via lifted
structured feature embedding"): the first half of the classes trains, the second half tests.
Splits: "train" (all training classes), "test", and for model selection "val" (the last
`val_fraction` of the training classes) with "train_no_val" (the rest). The finest level is
the image (an instance id), so several augmented views of one image are positives.

- CUB-200-2011 (Wah et al. 2011, tech. report CNS-TR-2011-001 and the archive's
  README): `images.txt` (`<image_id> <path>`), `image_class_labels.txt`
  (`<image_id> <class_id>`), `classes.txt` (200 rows `<class_id> <name>`), `images/`.
  Classes 1-100 / 101-200; levels (class, image).
- Cars196 (Krause et al. 2013; the devkit's README, torchvision's `StanfordCars`, TFDS
  `cars196`): either `cars_annos.mat` + `car_ims/` (all 16,185 images), or the devkit as
  distributed: `devkit/` (`cars_meta.mat`, `cars_train_annos.mat`, `cars_test_annos.mat`)
  beside `cars_train/` and `cars_test/`, with the separately published
  `cars_test_annos_withlabels.mat` beside `devkit/` or inside it (8,144 + 8,041 images).
  Classes 1-98 / 99-196; levels (make, model, image), the make parsed from the class name
  ("BMW M3 Coupe 2012" -> "BMW").
- Stanford Online Products (Oh Song et al. 2016; the archive's README): `Ebay_train.txt`
  / `Ebay_test.txt` with header `image_id class_id super_class_id path`;
  levels (super_class, class, image).

Every reader checks the files against these layouts (field counts, integer ids, headers,
id ranges), that no image file is listed twice (`require_unique_files`) and that every
listed image exists (`require_images`) before returning, so a malformed or partial
download ends in one line naming the file and row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from himl.data.records import (
    MalformedDataError,
    MissingDataError,
    Records,
    carve_val,
    dataset_root,
    encode,
    load_mat,
    mat_fields,
    ordered,
    part_range,
    read_table,
    require,
    require_images,
    require_unique_files,
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
# The folder names a Cars196 download is unpacked as (a `manual_dir` above one is found).
CARS_FOLDERS = ("stanford_cars", "cars196")
# Cars196 makes of more than one word; every other make is the first word of the class name.
MULTI_WORD_MAKES = ("AM General", "Aston Martin", "Land Rover")


def _split_train_test(
    name, root, files, labels, is_test, level_names, class_level, class_names, val_fraction
):
    fields = ordered(files, labels, np.where(is_test, "test", "train"), ("train", "test"))
    train = part_range(fields["parts"], "train")
    train_no_val, val = carve_val(fields["labels"], train, class_level, val_fraction)
    splits = {
        "train": train,
        "train_no_val": train_no_val,
        "val": val,
        "test": part_range(fields["parts"], "test"),
    }
    return Records.from_fields(
        name, root, fields, level_names=level_names, class_level=class_level,
        class_names=class_names, splits=splits,
    )  # fmt: skip


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
    image_table, label_table = read_table(images, 2), read_table(labels, 2)
    paths = _unique_ids(image_table, "image id")
    require_unique_files([r[1] for r in image_table.rows], image_table.where)
    class_of = dict(
        zip(
            _unique_ids(label_table, "image id"),
            label_table.ints(1, "class id").tolist(),
            strict=True,
        )
    )
    path_of = dict(zip(paths, (r[1] for r in image_table.rows), strict=True))
    class_table = read_table(classes, 2)
    class_ids = _unique_ids(class_table, "class id")
    if sorted(class_ids) != list(range(1, 201)):
        raise MalformedDataError(
            f"{classes}: lists {len(class_ids)} class ids, the published file has 1..200"
        )
    names = {
        c - 1: r[1].split(".", 1)[-1].replace("_", " ")
        for c, r in zip(class_ids, class_table.rows, strict=True)
    }
    if set(paths) != set(class_of):
        only = sorted(set(paths) ^ set(class_of))[0]
        raise MalformedDataError(
            f"{images} and {labels} list different image ids (e.g. {only}; truncated?)"
        )
    bad = [k for k, c in enumerate(label_table.ints(1, "class id")) if not 1 <= c <= 200]
    if bad:
        raise MalformedDataError(f"{label_table.where(bad[0])}: class id outside 1..200")
    ids = sorted(paths)
    label_matrix = np.array([[class_of[i] - 1, i] for i in ids], np.int64)
    files = [f"images/{path_of[i]}" for i in ids]
    require_images(root, files, dataset="CUB-200-2011")
    return _split_train_test(
        "cub",
        root,
        files,
        label_matrix,
        label_matrix[:, 0] >= 100,
        ("class", "image"),
        0,
        names,
        val_fraction,
    )


def _unique_ids(table, what: str) -> list[int]:
    """The integer ids in column 0 of `table`; a repeated id names its line."""
    ids = table.ints(0, what).tolist()
    seen = set()
    for k, i in enumerate(ids):
        if i in seen:
            raise MalformedDataError(f"{table.where(k)}: {what} {i} repeated")
        seen.add(i)
    return ids


def cars_make(class_name: str) -> str:
    """The make of a Cars196 class name ("Aston Martin V8 Vantage Coupe 2012" -> "Aston Martin")."""
    for make in MULTI_WORD_MAKES:
        if class_name.startswith(make + " "):
            return make
    return class_name.split()[0]


def _mat_strings(x) -> list[str]:
    return [str(s) for s in np.atleast_1d(x).ravel()]


def _mat_ints(path, values, what: str) -> np.ndarray:
    """`[N]` int64 of one field of a MATLAB struct array (the bad entry named)."""
    out = []
    for k, v in enumerate(np.atleast_1d(values).ravel()):
        value = np.asarray(v).ravel()
        if value.size != 1 or not np.issubdtype(value.dtype, np.number) or value[0] % 1:
            raise MalformedDataError(f"{path}: annotation {k + 1} has {what} {v!r}, not an integer")
        out.append(int(value[0]))
    return np.array(out, np.int64)


def _cars_combined(root: Path):
    """(file names, 1-based classes, class names, is_test) of `cars_annos.mat` + `car_ims/`."""
    path = root / "cars_annos.mat"
    mat = load_mat(path, "annotations", "class_names")
    ann = np.atleast_1d(mat["annotations"])
    mat_fields(path, ann, "relative_im_path", "class", "test")
    test = _mat_ints(path, ann["test"], "test flag")
    if not set(test.tolist()) <= {0, 1}:
        raise MalformedDataError(f"{path}: 'test' flags must be 0 or 1, got {sorted(set(test))}")
    files = _mat_strings(ann["relative_im_path"])
    require_unique_files(files, lambda k: f"{path}: annotation {k + 1}")
    return (
        files,
        _mat_ints(path, ann["class"], "class"),
        _mat_strings(mat["class_names"]),
        test == 1,
    )


def cars_devkit_files(manual_dir) -> tuple[Path, Path, Path]:
    """(images root, devkit folder, labelled test annotations) of the devkit layout.

    `manual_dir` is the folder holding `devkit/`, `cars_train/` and `cars_test/` (or the
    devkit folder itself); `cars_test_annos_withlabels.mat` may sit beside `devkit/` or in it.
    """
    given = Path(manual_dir).expanduser()
    root = dataset_root(given, "devkit/cars_meta.mat", *CARS_FOLDERS)
    if not (root / "devkit" / "cars_meta.mat").exists() and (given / "cars_meta.mat").exists():
        root = given.parent  # the devkit folder itself was passed
    devkit = root / "devkit"
    require(devkit, "cars_meta.mat", "cars_train_annos.mat", dataset="Cars196", where=CARS_WHERE)
    labelled = "cars_test_annos_withlabels.mat"
    for candidate in (root / labelled, devkit / labelled):
        if candidate.exists():
            return root, devkit, candidate
    unlabelled = (
        " (cars_test_annos.mat there has no classes)" * (devkit / "cars_test_annos.mat").exists()
    )
    raise MissingDataError(
        f"Cars196: {labelled} not found beside or in {devkit}{unlabelled}. {CARS_WHERE}"
    )


def _check_cars_layout(manual_dir) -> None:
    """MissingDataError unless `manual_dir` holds one of the two layouts (the devkit folder
    itself counts), naming its parent when that is the folder to pass (one level too deep,
    e.g. `car_ims/` or `cars_train/`)."""
    given = Path(manual_dir).expanduser()
    markers = ("cars_annos.mat", "devkit/cars_meta.mat", "cars_meta.mat")
    folders = (given, *(given / n for n in CARS_FOLDERS))
    if any((folder / m).exists() for folder in folders for m in markers):
        return
    parent = any((given.parent / m).exists() for m in markers[:2])
    raise MissingDataError(
        f"Cars196: neither cars_annos.mat nor devkit/cars_meta.mat in {given}"
        + (f"; its parent {given.parent} has them: pass that folder" if parent else "")
        + f". {CARS_WHERE}"
    )


def _cars_devkit(manual_dir):
    """(images root, file names, 1-based classes, class names, is_test) of the devkit."""
    root, devkit, labelled = cars_devkit_files(manual_dir)
    names = _mat_strings(load_mat(devkit / "cars_meta.mat", "class_names")["class_names"])
    files, classes, is_test, places = [], [], [], []
    for path, folder in ((devkit / "cars_train_annos.mat", "cars_train"), (labelled, "cars_test")):
        ann = np.atleast_1d(load_mat(path, "annotations")["annotations"])
        mat_fields(path, ann, "fname", "class")
        require(root, folder, dataset="Cars196", where=CARS_WHERE)
        files += [f"{folder}/{f}" for f in _mat_strings(ann["fname"])]
        classes += _mat_ints(path, ann["class"], "class").tolist()
        is_test += [folder == "cars_test"] * len(ann)
        places += [f"{path}: annotation {k + 1}" for k in range(len(ann))]
    require_unique_files(files, places.__getitem__)
    return root, files, np.array(classes, np.int64), names, np.array(is_test)


def read_cars(manual_dir, *, val_fraction: float = 0.2) -> Records:
    """Cars196: 16,185 images of 196 car models; labels (make, model, image).

    The protocol splits by class (1-98 train, 99-196 test), so the devkit's own
    train/test halves are merged; each record keeps its file under cars_train/ or cars_test/.
    """
    root = dataset_root(manual_dir, "cars_annos.mat", *CARS_FOLDERS)
    if (root / "cars_annos.mat").exists():
        files, classes, names, _ = _cars_combined(root)
        require(root, "car_ims", dataset="Cars196", where=CARS_WHERE)
    else:
        _check_cars_layout(manual_dir)
        root, files, classes, names, _ = _cars_devkit(manual_dir)
    if len(names) != 196 or classes.min() < 1 or classes.max() > 196:
        raise MalformedDataError(
            f"Cars196 in {root}: expected 196 class names and classes 1..196, got "
            f"{len(names)} names and classes {classes.min()}..{classes.max()}"
        )
    require_images(root, files, dataset="Cars196")
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


SOP_HEADER = ("image_id", "class_id", "super_class_id", "path")


def read_sop(manual_dir, *, val_fraction: float = 0.2) -> Records:
    """Stanford Online Products: 120,053 images of 22,634 products in 12 super-classes."""
    root = dataset_root(manual_dir, "Ebay_train.txt", "Stanford_Online_Products")
    paths = require(root, "Ebay_train.txt", "Ebay_test.txt", dataset="SOP", where=SOP_WHERE)
    files, rows, is_test, places = [], [], [], []
    for k, path in enumerate(paths):
        table = read_table(path, 4, header=SOP_HEADER)
        places += [table.where(j) for j in range(len(table.rows))]
        image_id = _unique_ids(table, "image_id")
        class_id, super_id = table.ints(1, "class_id"), table.ints(2, "super_class_id")
        for j, (c, s) in enumerate(zip(class_id, super_id, strict=True)):
            if c < 1 or s < 1:
                raise MalformedDataError(f"{table.where(j)}: ids start at 1, got {c} {s}")
        files += [r[3] for r in table.rows]
        rows += [
            (int(s) - 1, int(c) - 1, i)
            for i, c, s in zip(image_id, class_id, super_id, strict=True)
        ]
        is_test += [k == 1] * len(table.rows)
    require_unique_files(files, places.__getitem__)  # also across Ebay_train and Ebay_test
    require_images(root, files, dataset="SOP")
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

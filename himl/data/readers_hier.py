"""Readers for the hierarchical datasets of seed 000 (Zhang et al., CVPR 2022), no download.

- DeepFashion In-Shop (Liu et al. 2016): `list_eval_partition.txt` (train / query /
  gallery); levels (category, item, image), the category ("WOMEN/Dresses") read from the
  image path `img/<GENDER>/<Category>/id_xxx/...`. Splits: train, train_no_val, val,
  query, gallery, test (= query + gallery, for the single-split evaluator).
- ImageNet-1k (ILSVRC 2012) with WordNet super-classes (`imagenet_superclasses.json`,
  built by `himl.data.make_imagenet_hierarchy`): `train/<wnid>/*.JPEG` and
  `val/<wnid>/*.JPEG` (or a flat `val/` read with tensorflow-datasets' validation
  labels); levels (superclass, class, image). Seen/unseen: in every super-class, every
  fifth class (in WordNet-id order) is unseen. Splits: train (seen classes, train
  images), seen_test (seen, val images), unseen (unseen, val images), unseen_train.
- Omniglot (Lake et al. 2015), the published `images_background_small{1,2}.zip`; levels
  (alphabet, character, image). The sets share Greek and Latin (same files: kept once).
  Seen/unseen: the last quarter of each alphabet's characters is unseen. Splits: train
  (seen characters, drawers 1-15), seen_test (seen, drawers 16-20), unseen.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np

from himl.data.records import (
    MalformedDataError,
    MissingDataError,
    Records,
    carve_val,
    dataset_root,
    encode,
    ordered,
    part_range,
    read_rows,
    require,
)

INSHOP_WHERE = (
    "Get the DeepFashion In-shop Clothes Retrieval benchmark (img.zip and "
    "Eval/list_eval_partition.txt) from https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion.html "
    "and pass the folder holding img/."
)
IMAGENET_WHERE = (
    "Get ILSVRC2012 from https://image-net.org (train/<wnid>/*.JPEG, val/ as "
    "val/<wnid>/*.JPEG or the flat ILSVRC2012_val_*.JPEG files) and pass that folder."
)
OMNIGLOT_WHERE = (
    "Get images_background_small1.zip and images_background_small2.zip from "
    "https://github.com/brendenlake/omniglot (python/) and pass their folder."
)
SUPERCLASSES = Path(__file__).parent / "imagenet_superclasses.json"
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


def _records(name, root, fields, level_names, class_level, class_names, splits) -> Records:
    return Records(
        name=name, root=root, files=fields["files"], labels=fields["labels"],
        level_names=level_names, class_level=class_level, class_names=class_names,
        parts=fields["parts"], splits=splits,
    )  # fmt: skip


def read_inshop(manual_dir, *, val_fraction: float = 0.2) -> Records:
    """DeepFashion In-Shop: 52,712 images of 7,982 items; labels (category, item, image)."""
    root = Path(manual_dir).expanduser()
    name = "list_eval_partition.txt"
    partition = root / "Eval" / name if (root / "Eval" / name).exists() else root / name
    require(root, partition.relative_to(root).as_posix(), "img", dataset="In-Shop",
            where=INSHOP_WHERE)  # fmt: skip
    rows = read_rows(partition, 3, skip=2)
    files = [r[0] for r in rows]
    bad = [f for f in files if len(f.split("/")) < 5 or f.split("/")[0] != "img"]
    if bad:
        raise MalformedDataError(f"{partition}: image path {bad[0]!r} is not img/<G>/<C>/id/x")
    categories = ["/".join(f.split("/")[1:3]) for f in files]
    category, category_names = encode(categories)
    item, items = encode(list(zip(categories, (r[1] for r in rows), strict=True)))
    labels = np.stack([category, item, np.arange(len(files))], axis=1)
    fields = ordered(files, labels, [r[2] for r in rows], ("train", "query", "gallery"))
    parts = fields["parts"]
    train = part_range(parts, "train")
    train_no_val, val = carve_val(fields["labels"], train, 1, val_fraction)
    splits = {
        "train": train, "train_no_val": train_no_val, "val": val,
        "query": part_range(parts, "query"), "gallery": part_range(parts, "gallery"),
        "test": part_range(parts, "query", "gallery"),
    }  # fmt: skip
    class_names = {i: f"{c}/{item_id}" for i, (c, item_id) in enumerate(items)}
    return _records("inshop", root, fields, ("category", "item", "image"), 1, class_names,
                    splits)  # fmt: skip


def _image_files(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.name.lower().endswith(IMAGE_SUFFIXES))


def _imagenet_val(root: Path, wnids: list[str]) -> tuple[list[str], list[str]]:
    """(files, wnids) of the validation images, per-class folders or the flat layout."""
    val = root / "val"
    if (val / wnids[0]).is_dir():
        pairs = [(f"val/{w}/{f}", w) for w in wnids for f in _image_files(val / w)]
        return [p[0] for p in pairs], [p[1] for p in pairs]
    import tensorflow_datasets as tfds  # ships the official validation ground truth

    labels_file = Path(tfds.__file__).parent / "datasets" / "imagenet2012" / "validation_labels.txt"
    truth = labels_file.read_text().split()
    files = _image_files(val)
    if len(files) != len(truth):
        raise MalformedDataError(
            f"{val}: {len(files)} flat validation images, the official set has {len(truth)}; "
            "use val/<wnid>/ folders or the complete flat ILSVRC2012_val_*.JPEG set"
        )
    return [f"val/{f}" for f in files], truth


def read_imagenet(manual_dir, *, val_fraction: float = 0.0) -> Records:
    """ImageNet-1k with WordNet super-classes; labels (superclass, class, image)."""
    root = Path(manual_dir).expanduser()
    require(root, "train", "val", dataset="ImageNet", where=IMAGENET_WHERE)
    mapping = json.loads(SUPERCLASSES.read_text())
    wnids = sorted(mapping)
    missing = [w for w in wnids if not (root / "train" / w).is_dir()]
    if missing:
        raise MissingDataError(
            f"ImageNet: {len(missing)} class folders missing in {root / 'train'}, e.g. "
            f"{missing[0]}. {IMAGENET_WHERE}"
        )
    train_files = [f"train/{w}/{f}" for w in wnids for f in _image_files(root / "train" / w)]
    train_wnids = [f.split("/")[1] for f in train_files]
    val_files, val_wnids = _imagenet_val(root, wnids)
    class_of = {w: i for i, w in enumerate(wnids)}
    super_of, super_ids = encode([mapping[w]["superclass"] for w in wnids])
    classes = np.array([class_of[w] for w in train_wnids + val_wnids], np.int64)
    labels = np.stack([super_of[classes], classes, np.arange(len(classes))], axis=1)
    part_of = ["train"] * len(train_files) + ["validation"] * len(val_files)
    fields = ordered(train_files + val_files, labels, part_of, ("train", "validation"))
    unseen_classes = np.array(
        [c for s in range(len(super_ids)) for c in np.flatnonzero(super_of == s)[4::5]]
    )
    unseen = np.isin(fields["labels"][:, 1], unseen_classes)
    train, test = part_range(fields["parts"], "train"), part_range(fields["parts"], "validation")
    train_seen = train[~unseen[train]]
    train_no_val, val = carve_val(fields["labels"], train_seen, 1, val_fraction)
    splits = {
        "train": train_seen, "train_no_val": train_no_val, "val": val,
        "seen_test": test[~unseen[test]], "unseen": test[unseen[test]],
        "unseen_train": train[unseen[train]],
    }  # fmt: skip
    names = {class_of[w]: mapping[w]["name"] for w in wnids}
    return _records("imagenet", root, fields, ("superclass", "class", "image"), 1, names, splits)


def read_omniglot(manual_dir, *, val_fraction: float = 0.0) -> Records:
    """Omniglot small background sets: 4,840 images of 242 characters in 8 alphabets."""
    del val_fraction  # the seen/unseen protocol has no carve
    root = dataset_root(manual_dir, "images_background_small1.zip", "omniglot")
    zips = ("images_background_small1.zip", "images_background_small2.zip")
    require(root, *zips, dataset="Omniglot", where=OMNIGLOT_WHERE)
    files, keys = [], {}
    for name in zips:
        with zipfile.ZipFile(root / name) as archive:
            for member in sorted(archive.namelist()):
                parts = member.split("/")
                if len(parts) != 4 or not parts[3].endswith(".png"):
                    continue
                key = tuple(parts[1:])  # (alphabet, character, file): shared sets overlap
                if key not in keys:
                    keys[key] = len(files)
                    files.append(f"{name}::{member}")
    if not files:
        raise MalformedDataError(f"Omniglot zips in {root} hold no <alphabet>/<char>/*.png")
    key_list = list(keys)
    alphabet, alphabets = encode([k[0] for k in key_list])
    character, characters = encode([k[:2] for k in key_list])
    drawer = np.array([int(Path(k[2]).stem.split("_")[-1]) for k in key_list])
    labels = np.stack([alphabet, character, np.arange(len(files))], axis=1)
    unseen_chars = []
    for a in range(len(alphabets)):
        chars = np.unique(character[alphabet == a])
        unseen_chars += chars[len(chars) - len(chars) // 4 :].tolist()
    unseen = np.isin(character, unseen_chars)
    part_of = np.where(unseen, "unseen", np.where(drawer <= 15, "train", "seen_test"))
    fields = ordered(files, labels, part_of, ("train", "seen_test", "unseen"))
    splits = {p: part_range(fields["parts"], p) for p in fields["parts"]}
    names = {i: f"{a}/{c}" for i, (a, c) in enumerate(characters)}
    return _records("omniglot", root, fields, ("alphabet", "character", "image"), 1, names,
                    splits)  # fmt: skip

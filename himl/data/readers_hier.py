"""Readers for the hierarchical datasets of seed 000 (Zhang et al., CVPR 2022), no download.

- DeepFashion In-Shop (Liu et al. 2016; the benchmark's README): `Eval/
  list_eval_partition.txt` (train / query / gallery) and `Img/img.zip` (or extracted
  `img/`). Label layout "official" (the seed paper's code): levels (category, item,
  variation, image), category = garment category from the path `img/<GENDER>/
  <Category>/id_xxx/<variation>_<image>_<view>.jpg`; layout "gender": (category, item,
  image), category = `<GENDER>/<Category>`. Splits: train, train_no_val, val, query,
  gallery, test (= query + gallery, for the single-split evaluator). Protocol
  "held_out_categories": every 4th category in name order unseen (unseen_train,
  unseen_query, unseen_gallery, unseen); the splits above keep the seen categories.
- ImageNet-1k (ILSVRC 2012) with WordNet super-classes (`imagenet_superclasses.json`,
  built by `himl.data.make_imagenet_hierarchy`): `train/<wnid>/*.JPEG` and
  `val/<wnid>/*.JPEG` (or a flat `val/` read with tensorflow-datasets' validation
  labels); levels (superclass, class, image). Seen/unseen: in every super-class, every
  fifth class (in WordNet-id order) is unseen. Splits: train (seen classes, train
  images), seen_test (seen, val images), unseen (unseen, val images), unseen_train.
  `class_list`: a file of WordNet ids, one a line, reads those classes alone (a subset
  such as ImageNet-100; the other class folders may be absent), split by the same rule
  among them: every fifth listed class of each super-class is unseen (not the full set's
  unseen classes, which a subset may hold few of).
- Omniglot (Lake et al. 2015; github.com/brendenlake/omniglot): `images_background`
  (or its subsets `images_background_small{1,2}`) and `images_evaluation`, zipped or
  extracted; levels (alphabet, character, image). Protocols: "characters" (the last
  quarter of each alphabet's characters unseen) or "alphabets" (the evaluation alphabets
  unseen). Splits: train (seen, drawers 1-15), seen_test (seen, drawers 16-20), unseen.

Every reader checks its files against the published layout, that no image file is listed
twice and that every listed image exists before returning; ImageNet's and Omniglot's files
are listed from their folders or archives, so they exist and are distinct.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import numpy as np

from himl.data.records import (
    MalformedDataError,
    MissingDataError,
    Records,
    UnknownOptionError,
    carve_val,
    dataset_root,
    encode,
    open_zip,
    ordered,
    part_range,
    read_table,
    require,
    require_images,
    require_unique_files,
)
from himl.errors import check_choice

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
    "Get images_background.zip and images_evaluation.zip (or the small sets "
    "images_background_small1.zip, images_background_small2.zip) from "
    "https://github.com/brendenlake/omniglot (python/) and pass their folder."
)
SUPERCLASSES = Path(__file__).parent / "imagenet_superclasses.json"
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


INSHOP_HEADER = ("image_name", "item_id", "evaluation_status")
INSHOP_STATUSES = ("train", "query", "gallery")
# img/<GENDER>/<Category>/id_<8 digits>/<variation>_<image>_<view>.jpg
INSHOP_NAME = re.compile(r"img/([^/]+)/([^/]+)/(id_\d+)/(\d+)_(\d+)_[^/]+\.jpg")
INSHOP_LAYOUTS = {
    # The seed paper's code (salesforce/hierarchicalContrastiveLearning): [category,
    # product, variation, image], category = the garment category (17, gender dropped).
    "official": ("category", "item", "variation", "image"),
    # himl's earlier layout: category = <GENDER>/<Category>, no variation level.
    "gender": ("category", "item", "image"),
}
# Split protocols: "official" (list_eval_partition.txt as published) or
# "held_out_categories" (whole categories unseen, for HiMulConE's seen/unseen experiment).
INSHOP_PROTOCOLS = ("official", "held_out_categories")
# held_out_categories: every 4th category in name order is unseen. The paper's own lists are
# not published (its README links Google-Drive files); with the 17 garment categories this
# holds out 4: Dresses, Leggings, Shorts, Sweatshirts_Hoodies.
INSHOP_HELD_OUT_EVERY = 4
INSHOP_UNSEEN_SPLITS = {  # held_out_categories: split -> the published parts it draws on
    "unseen_train": ("train",),
    "unseen_query": ("query",),
    "unseen_gallery": ("gallery",),
    "unseen": ("query", "gallery"),
}


def _inshop_images(root: Path) -> tuple[Path, str]:
    """(records root, file prefix): `img/` under root or root/Img, else `img.zip` (members)."""
    for folder in (root, root / "Img"):
        if (folder / "img").is_dir():
            return folder, ""
    for archive in (root / "Img" / "img.zip", root / "img.zip"):
        if archive.is_file():
            return root, f"{archive.relative_to(root).as_posix()}::"
    raise MissingDataError(
        f"In-Shop: no img/ folder or img.zip in {root} or {root / 'Img'}. {INSHOP_WHERE}"
    )


def _majority(categories: list[str], items: list[str]) -> tuple[dict[str, str], int]:
    """({item: the category holding most of its images (ties: first by name)}, #items with
    images under more than one category)."""
    counts: dict[str, dict[str, int]] = {}
    for c, i in zip(categories, items, strict=True):
        counts.setdefault(i, {}).setdefault(c, 0)
        counts[i][c] += 1
    chosen = {i: min(cs, key=lambda c: (-cs[c], c)) for i, cs in counts.items()}
    return chosen, sum(len(cs) > 1 for cs in counts.values())


def _inshop_unseen(category: np.ndarray, names: list[str], protocol: str) -> np.ndarray:
    """`[N]` bool: the rows whose category is unseen under `protocol`. `category` holds
    codes in name order (`encode`), so "held_out_categories" picks every
    `INSHOP_HELD_OUT_EVERY`-th name of the sorted category list (the 4th, 8th, ...)."""
    if protocol == "official":
        return np.zeros(len(category), bool)
    k = INSHOP_HELD_OUT_EVERY
    if len(names) < k:
        raise MalformedDataError(
            f"In-Shop: protocol {protocol!r} holds out every {k}th category in name order, "
            f"but the partition file has {len(names)} categories ({', '.join(names)})"
        )
    return category % k == k - 1


def read_inshop(
    manual_dir, *, val_fraction: float = 0.2, layout: str = "official", protocol: str = "official"
) -> Records:
    """DeepFashion In-Shop: 52,712 images of 7,982 items (Liu et al. 2016).

    Reads `Eval/list_eval_partition.txt` (count line, header `image_name item_id
    evaluation_status`, rows `<img/...jpg> <id_...> <train|query|gallery>`, per the
    benchmark's README) and the images from `img/`, `Img/img/` or `Img/img.zip`.

    Layouts (`layout`):
      "official": levels (category, item, variation, image), the seed paper's code
        layout: category = garment category (third path component, 17), item = item id,
        variation = the file name's first number within the item, image = the image.
      "gender": levels (category, item, image), category = `<GENDER>/<Category>`.

    An item id whose images sit under two category folders stays one item - the
    retrieval protocol matches by item id - and all its images take the category holding
    most of them (ties: first by name); a warning gives the number of such items. (The
    seed paper's code instead drops the ids of a "repeating product ids" list.)
    Class level: item.

    Split protocols (`protocol`, `config.data.split_protocol`):
      "official": the published partition. Splits: train, train_no_val, val (the last
        `val_fraction` of the train items), query, gallery, test (= query + gallery).
      "held_out_categories": whole categories unseen, as HiMulConE's seen / unseen
        experiment (Zhang et al. 2022; its category lists are not published). The
        categories of the layout's category level, sorted by name, that are every 4th
        (`INSHOP_HELD_OUT_EVERY`: the 4th, 8th, ...) are unseen - with the 17 garment
        categories of "official": Dresses, Leggings, Shorts, Sweatshirts_Hoodies. An item
        belongs to its (majority) category, so no item is both seen and unseen. The splits
        above keep the published partition restricted to the seen categories; added:
        unseen_train, unseen_query, unseen_gallery (the unseen categories' images of each
        published part) and unseen (= unseen_query + unseen_gallery). The stored parts
        (train, query, gallery) are those of "official", so a prepared `data_dir` serves
        both protocols.
    """
    check_choice(layout, INSHOP_LAYOUTS, "label layout", error=UnknownOptionError,
                 prefix="In-Shop: ")  # fmt: skip
    check_choice(protocol, INSHOP_PROTOCOLS, "split protocol", error=UnknownOptionError,
                 prefix="In-Shop: ")  # fmt: skip
    root = dataset_root(
        manual_dir, "Eval/list_eval_partition.txt", "In-shop Clothes Retrieval Benchmark"
    )
    name = "list_eval_partition.txt"
    partition = root / "Eval" / name if (root / "Eval" / name).exists() else root / name
    require(root, partition.relative_to(root).as_posix(), dataset="In-Shop", where=INSHOP_WHERE)
    table = read_table(partition, 3, count_line=True, header=INSHOP_HEADER)
    parsed = []
    for k, (file, item_id, status) in enumerate(table.rows):
        match = INSHOP_NAME.fullmatch(file)
        if not match:
            raise MalformedDataError(
                f"{table.where(k)}: image name {file!r} is not "
                "img/<GENDER>/<Category>/id_<item>/<variation>_<image>_<view>.jpg"
            )
        if match[3] != item_id:
            raise MalformedDataError(
                f"{table.where(k)}: item_id {item_id} but the image is in folder {match[3]}"
            )
        if status not in INSHOP_STATUSES:
            raise MalformedDataError(
                f"{table.where(k)}: evaluation status {status!r}; the "
                f"format has {', '.join(INSHOP_STATUSES)}"
            )
        parsed.append(match.groups())
    statuses = [r[2] for r in table.rows]
    train_items = {p[2] for p, s in zip(parsed, statuses, strict=True) if s == "train"}
    shared = [
        k
        for k, (p, s) in enumerate(zip(parsed, statuses, strict=True))
        if s != "train" and p[2] in train_items
    ]
    if shared:
        raise MalformedDataError(
            f"{table.where(shared[0])}: item {parsed[shared[0]][2]} is "
            "in train and in query/gallery"
        )
    # An image listed twice (e.g. as query and as gallery) would be its own match at rank 1.
    require_unique_files([r[0] for r in table.rows], table.where)
    gender_category = ["/".join(p[:2]) for p in parsed]
    category_names = [p[1] for p in parsed] if layout == "official" else gender_category
    items = [p[2] for p in parsed]
    category_of, shared_items = _majority(category_names, items)
    if shared_items:
        logging.warning(
            "In-Shop: %d item ids appear under two categories; each keeps the "
            "category of most of its images (one item per id, as retrieval matches by id)",
            shared_items,
        )
    category, categories = encode([category_of[i] for i in items])
    unseen = _inshop_unseen(category, categories, protocol)  # before the image check
    images_root, prefix = _inshop_images(root)
    files = [prefix + r[0] for r in table.rows]
    require_images(images_root, files, dataset="In-Shop")
    item, item_ids = encode(items)
    columns = [category, item]
    if layout == "official":
        columns.append(encode([(p[2], int(p[3])) for p in parsed])[0])
    labels = np.stack([*columns, np.arange(len(files))], axis=1)
    fields = ordered(files, labels, statuses, INSHOP_STATUSES)
    parts, unseen = fields["parts"], unseen[fields["index"]]

    def seen_in(*names):
        rows = part_range(parts, *names)
        return rows[~unseen[rows]]

    train = seen_in("train")
    train_no_val, val = carve_val(fields["labels"], train, 1, val_fraction)
    splits = {
        "train": train,
        "train_no_val": train_no_val,
        "val": val,
        "query": seen_in("query"),
        "gallery": seen_in("gallery"),
        "test": seen_in("query", "gallery"),
    }
    if protocol == "held_out_categories":
        for name, published in INSHOP_UNSEEN_SPLITS.items():
            rows = part_range(parts, *published)
            splits[name] = rows[unseen[rows]]
    class_names = {k: f"{category_of[i]}/{i}" for k, i in enumerate(item_ids)}
    return Records.from_fields(
        "inshop", images_root, fields, level_names=INSHOP_LAYOUTS[layout], class_level=1,
        class_names=class_names, splits=splits,
    )  # fmt: skip


def _image_files(folder: Path) -> list[str]:
    """The image files directly in `folder`; none (e.g. nested a level deeper) is an error."""
    files = sorted(e.name for e in os.scandir(folder) if e.name.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise MalformedDataError(
            f"ImageNet: {folder} holds no .JPEG files (nested one level deeper or emptied?)"
        )
    return files


def _imagenet_val(root: Path, wnids: list[str]) -> tuple[list[str], list[str]]:
    """(files, wnids) of the validation images, per-class folders or the flat layout."""
    val = root / "val"
    if (val / wnids[0]).is_dir():
        missing = [w for w in wnids if not (val / w).is_dir()]
        if missing:
            raise MissingDataError(
                f"ImageNet: {len(missing)} class folders missing in {val}, e.g. {missing[0]}"
            )
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
    read = set(wnids)  # a class_list's classes
    pairs = [(f"val/{f}", w) for f, w in zip(files, truth, strict=True) if w in read]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def listed_classes(path, known) -> list[str]:
    """The WordNet ids `path` lists (the first word of each line; blank lines and `#`
    comments skipped), sorted; each one of `known`, none twice."""
    path = Path(path).expanduser()
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # a BOM (Notepad) dropped
    except (OSError, UnicodeDecodeError) as e:
        raise MissingDataError(f"config.data.class_list: cannot read {path} ({e})") from None
    first_line = {}
    for number, line in enumerate(lines, 1):
        words = line.split("#")[0].split()
        if not words:
            continue
        wnid = words[0]
        if wnid not in known:
            raise MalformedDataError(
                f"{path}:{number}: {wnid!r} is not an ImageNet-1k class (a WordNet id such as "
                "n01440764)"
            )
        if wnid in first_line:
            raise MalformedDataError(
                f"{path}:{number}: {wnid} is listed twice (first on line {first_line[wnid]})"
            )
        first_line[wnid] = number
    if not first_line:
        raise MalformedDataError(f"{path} lists no class (one WordNet id a line)")
    return sorted(first_line)


def read_imagenet(manual_dir, *, val_fraction: float = 0.0, class_list: str = "") -> Records:
    """ImageNet-1k with WordNet super-classes; labels (superclass, class, image). With
    `class_list` (a file of WordNet ids), those classes alone."""
    root = Path(manual_dir).expanduser()
    require(root, "train", "val", dataset="ImageNet", where=IMAGENET_WHERE)
    mapping = json.loads(SUPERCLASSES.read_text())
    wnids = listed_classes(class_list, mapping) if class_list else sorted(mapping)
    missing = [w for w in wnids if not (root / "train" / w).is_dir()]
    if missing:
        subset = (
            f"listed in {class_list}" if class_list
            else "(for a subset such as ImageNet-100, list its classes in a file: "
            "--config.data.class_list=FILE)"
        )  # fmt: skip
        raise MissingDataError(
            f"ImageNet: {len(missing)} class folders missing in {root / 'train'}, e.g. "
            f"{missing[0]} {subset}. {IMAGENET_WHERE}"
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
        "train": train_seen,
        "train_no_val": train_no_val,
        "val": val,
        "seen_test": test[~unseen[test]],
        "unseen": test[unseen[test]],
        "unseen_train": train[unseen[train]],
    }
    names = {class_of[w]: mapping[w]["name"] for w in wnids}
    return Records.from_fields(
        "imagenet", root, fields, level_names=("superclass", "class", "image"), class_level=1,
        class_names=names, splits=splits,
    )  # fmt: skip


OMNIGLOT_BACKGROUND = ("images_background",)  # 30 alphabets, 964 characters
OMNIGLOT_SMALL = ("images_background_small1", "images_background_small2")  # its subsets
OMNIGLOT_EVALUATION = "images_evaluation"  # 20 further alphabets, 659 characters
OMNIGLOT_PROTOCOLS = ("characters", "alphabets", "held_out_alphabets")
HELD_OUT_EVERY = 4  # held_out_alphabets: every 4th background alphabet (name order) is unseen
OMNIGLOT_DRAWERS = 20  # every character is drawn once by each of 20 people
IGNORED = ("__MACOSX",)  # archive tool debris; hidden files (".DS_Store") are skipped too


def _omniglot_set(root: Path, name: str) -> list[tuple[str, str]]:
    """[(record file name, member path `<set>/<alphabet>/<character>/<file>.png`)] of one
    published set, from `<name>.zip` (preferred) or the extracted `<name>/` folder."""
    archive = root / f"{name}.zip"
    if archive.is_file():
        with open_zip(archive) as z:
            members = sorted(m for m in z.namelist() if not m.endswith("/"))
        where, files = archive, [f"{archive.name}::{m}" for m in members]
    else:
        folder = root / name
        members = sorted(
            Path(d, f).relative_to(root).as_posix() for d, _, fs in os.walk(folder) for f in fs
        )
        where, files = folder, members
    out = []
    for file, member in zip(files, members, strict=True):
        parts = member.split("/")
        if any(p.startswith(".") or p in IGNORED for p in parts):
            continue
        if len(parts) != 4 or parts[0] != name or not parts[3].endswith(".png"):
            raise MalformedDataError(
                f"{where}: {member!r} is not {name}/<alphabet>/<character>/<id>_<drawer>.png "
                "(folders nested deeper or shallower than the published archive?)"
            )
        out.append((file, member))
    if not out:
        raise MalformedDataError(f"{where} holds no {name}/<alphabet>/<character>/*.png")
    return out


def _omniglot_found(root: Path, name: str) -> bool:
    return (root / f"{name}.zip").is_file() or (root / name).is_dir()


def _drawer(member: str, where: Path) -> int:
    stem = Path(member).stem.split("_")
    if len(stem) != 2 or not all(s.isdigit() for s in stem) or not 1 <= int(stem[1]) <= 20:
        raise MalformedDataError(
            f"{where}: {member!r}: the file name is not <character id>_<drawer 01-20>.png"
        )
    return int(stem[1])


def read_omniglot(
    manual_dir, *, val_fraction: float = 0.0, protocol: str = "characters"
) -> Records:
    """Omniglot (Lake et al. 2015, github.com/brendenlake/omniglot); labels (alphabet,
    character, image).

    Reads the published sets, each as its zip or extracted folder `<set>/<alphabet>/
    <character>/<id>_<drawer>.png`: `images_background` (30 alphabets, 964 characters,
    19,280 images) or, without it, the small subsets `images_background_small{1,2}`
    (8 alphabets, 242 characters, 4,840 images; both hold Greek and Latin, kept once), plus
    `images_evaluation` (20 alphabets, 659 characters, 13,180 images) when present.
    Every character must have its 20 drawers.

    Protocols (`protocol`):
      "characters": unseen characters within seen alphabets - the last quarter of each
        alphabet's characters is "unseen"; the rest train on drawers 1-15 ("train") and
        test on drawers 16-20 ("seen_test").
      "alphabets": unseen alphabets - Lake et al.'s background / evaluation split: the
        evaluation alphabets are "unseen"; the background ones give "train" (drawers
        1-15) and "seen_test" (drawers 16-20). Needs `images_evaluation`.
      "held_out_alphabets": unseen alphabets from the background set alone, for when
        `images_evaluation` is not at hand: every 4th background alphabet in name order
        (the 4th, 8th, ...) is "unseen", the others split by drawer as above; the
        evaluation set, if present, is not read.
    """
    del val_fraction  # the seen/unseen protocols have no carve
    check_choice(protocol, OMNIGLOT_PROTOCOLS, "protocol", error=UnknownOptionError,
                 prefix="Omniglot: ")  # fmt: skip
    given = Path(manual_dir).expanduser()
    sets = (*OMNIGLOT_BACKGROUND, *OMNIGLOT_SMALL, OMNIGLOT_EVALUATION)
    root = next(
        (
            r
            for r in (given, given / "omniglot", given / "python")
            if any(_omniglot_found(r, n) for n in sets)
        ),
        given,
    )
    background = [n for n in OMNIGLOT_BACKGROUND if _omniglot_found(root, n)] or [
        n for n in OMNIGLOT_SMALL if _omniglot_found(root, n)
    ]
    if not background:
        raise MissingDataError(
            f"Omniglot: no images_background(.zip) or "
            f"images_background_small1/2(.zip) in {root}. {OMNIGLOT_WHERE}"
        )
    has_evaluation = _omniglot_found(root, OMNIGLOT_EVALUATION)
    if protocol == "alphabets" and not has_evaluation:
        raise MissingDataError(
            f"Omniglot: protocol 'alphabets' needs {OMNIGLOT_EVALUATION}.zip "
            f"(the 20 evaluation alphabets) in {root}. {OMNIGLOT_WHERE}"
        )
    files, keys, drawers, evaluation = [], {}, [], []
    read_evaluation = has_evaluation and protocol != "held_out_alphabets"
    for name in background + [OMNIGLOT_EVALUATION] * read_evaluation:
        for file, member in _omniglot_set(root, name):
            key = tuple(member.split("/")[1:])  # (alphabet, character, file)
            if key not in keys:  # the small sets share Greek and Latin
                keys[key] = len(files)
                files.append(file)
                drawers.append(_drawer(member, root / name))
                evaluation.append(name == OMNIGLOT_EVALUATION)
    key_list = list(keys)
    alphabet, alphabets = encode([k[0] for k in key_list])
    character, characters = encode([k[:2] for k in key_list])
    drawer = np.array(drawers)
    for c in range(len(characters)):
        got = sorted(drawer[character == c].tolist())
        if got != list(range(1, OMNIGLOT_DRAWERS + 1)):
            raise MalformedDataError(
                f"Omniglot in {root}: {'/'.join(characters[c])} has drawers {got[:25]}, the "
                f"published sets have 1..{OMNIGLOT_DRAWERS} (partly extracted or edited?)"
            )
    require_images(root, files, dataset="Omniglot")
    labels = np.stack([alphabet, character, np.arange(len(files))], axis=1)
    if protocol == "alphabets":
        unseen = np.array(evaluation)
    elif protocol == "held_out_alphabets":  # `encode` numbers alphabets in name order
        unseen = alphabet % HELD_OUT_EVERY == HELD_OUT_EVERY - 1
    else:
        unseen_chars = []
        for a in range(len(alphabets)):
            chars = np.unique(character[alphabet == a])
            unseen_chars += chars[len(chars) - len(chars) // 4 :].tolist()
        unseen = np.isin(character, unseen_chars)
    part_of = np.where(unseen, "unseen", np.where(drawer <= 15, "train", "seen_test"))
    fields = ordered(files, labels, part_of, ("train", "seen_test", "unseen"))
    splits = {p: part_range(fields["parts"], p) for p in fields["parts"]}
    names = {i: f"{a}/{c}" for i, (a, c) in enumerate(characters)}
    return Records.from_fields(
        "omniglot", root, fields, level_names=("alphabet", "character", "image"), class_level=1,
        class_names=names, splits=splits,
    )  # fmt: skip

"""Your own hierarchical dataset, no code: a manifest, an image-folder tree or an `.npz`.

    himl-train --config=configs/custom.py --config.data.custom.source=PATH
    dataset = himl.data.custom.load_custom("products.csv")          # from Python

Sources (`config.data.custom.source`):

- a manifest: `.csv` / `.tsv` with a header, or `.jsonl` (one JSON object per line). One row
  per image: a path column (`path_column`; relative to the manifest's folder, or absolute)
  and one column per label level, coarse to fine (`levels`; default every other column in
  the header's order). Values may be strings or integers. An optional split column
  (`split_column`) with values train / val / test / query / gallery (or the seen/unseen
  protocol's train / seen_test / unseen) is used when present. The file is UTF-8 (a
  byte-order mark is fine); every JSON-lines record has the keys of the first. Each image
  is listed once (by its resolved path): a second row for it is an error naming both.
- an image-folder tree `ROOT/<level 0>/.../<level L-1>/<image file>`: every image at the
  same depth; the folder names are the labels (`levels` names the levels). Links to
  folders are followed (a folder reached twice, e.g. by a link cycle, is an error).
- an `.npz` of in-memory arrays: `images [N, H, W(, C)] uint8` (C = 1 or 3), `labels
  [N, L]` integers, optional `level_names [L]`, `class_names` (distinct names of the
  finest level's values, indexed by value) and `split [N]`.

Image files are decoded as RGB (`channels=3`) or grayscale (`channels=1`); 16-bit and
float grayscale images are mapped to 8 bits (`himl.data.images.to_8bit`). The options are
checked (`check_custom_config`, also run by `himl.config_lib.validate_config`) before any
data is read.

Labels become dense ids per level, sorted by name (integers such as "-3" or "007" first,
by value, then by text; then the other names); the names are kept (`Dataset.label_names`,
`Dataset.class_names`). An "image" column (the record's index) is appended, so the
hierarchical losses see the instance level as the official code does (Zhang et al., "Use
All The Labels", CVPR 2022).
The rows must form a tree: a label under two parents is an error naming the label, both
parents and a row of each, unless `unique_labels=True` makes labels unique within their
parent ("tops/other" and "shoes/other" become two labels).

Splits, when the source has none, are class-disjoint and seeded (`split_seed`), and printed:

- `protocol="dml"` (the deep-metric-learning protocol, e.g. CUB's first/second 100
  classes): the classes of `split_level` are divided into "train" and "test"
  (`test_fraction` of them);
- `protocol="seen_unseen"` (Zhang et al. 2022, Sec. 5): in every group of the level above
  the class level, `test_fraction` of its classes become "unseen" (each group keeps at least
  one seen class); the seen classes' images are divided into "train" and "seen_test"
  (`seen_test_fraction` of each class).

With `config.data.val_fraction > 0`, "train_no_val" and "val" are carved from "train" by
class, as for the benchmark datasets. Bad input is one line naming the file and the row: a
missing image (every listed image is checked before any training work), a row with the
wrong number of columns, an empty label, a label under two parents, a training class with
fewer than 2 images (no positive pair for any sampler).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import io
import json
import os
import re
import sys
import zipfile
from pathlib import Path

import numpy as np

from himl.data.dataset import Dataset, Split
from himl.data.images import FileSource, LazyImages
from himl.data.records import MalformedDataError, MissingDataError, carve_val
from himl.errors import ConfigError, check_choice

CHANNELS = (1, 3)  # grayscale, RGB
SPLIT_VALUES = ("train", "val", "test", "query", "gallery", "seen_test", "unseen")
PROTOCOLS = ("dml", "seen_unseen")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif",
                  ".tiff")  # fmt: skip
# Image formats a folder may hold that Pillow does not decode: skipped, with a note.
UNREAD_IMAGE_SUFFIXES = (".heic", ".heif", ".avif", ".jxl", ".svg", ".psd", ".raw", ".cr2",
                         ".nef", ".arw", ".dng")  # fmt: skip
MANIFEST_DELIMITERS = {".csv": ",", ".tsv": "\t"}
INSTANCE_LEVEL = "image"


@dataclasses.dataclass(frozen=True)
class LabelTable:
    """What a source holds before encoding: one record per image.

    Attributes:
      source: the file or folder, for messages.
      level_names: `[L]` label levels, coarse to fine.
      values: `[N]` tuples of `L` label names.
      where: `[N]` location of each record for messages ("file.csv:12", a path).
      files: `[N]` image paths (absolute, or relative to `root`); None for arrays.
      root: the folder relative paths are under.
      images: `[N, H, W, C]` uint8 for an `.npz`, else None.
      split: `[N]` split names when the source has them, else None.
    """

    source: str
    level_names: tuple[str, ...]
    values: list[tuple[str, ...]]
    where: list[str]
    files: list[str] | None = None
    root: Path | None = None
    images: np.ndarray | None = None
    split: list[str] | None = None


def _options(custom) -> dict:
    """The `config.data.custom` fields as a dict (a ConfigDict or a plain mapping)."""
    return dict(custom.to_dict() if hasattr(custom, "to_dict") else custom)


def check_custom_config(custom) -> None:
    """Raises ConfigError, one line naming the key, for a `config.data.custom` value (or a
    `load_custom` option) that cannot work; reads no data. `split_level` given by name is
    checked against `levels` when those are set, else once the source's levels are known."""
    from himl.data.defaults import custom_data_config

    options, key = _options(custom), "config.data.custom."
    fields = custom_data_config()
    unknown = sorted(set(options) - set(fields.keys()))
    if unknown:
        raise ConfigError(f"{key}{unknown[0]} is not a field; fields: {', '.join(fields.keys())}")
    get = lambda name: options.get(name, fields[name])
    check_choice(get("protocol"), PROTOCOLS, f"{key}protocol")
    for name in ("test_fraction", "seen_test_fraction"):
        value = get(name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
            raise ConfigError(f"{key}{name} must be a number in (0, 1), got {value!r}")
    channels = get("channels")
    if isinstance(channels, bool) or channels not in CHANNELS:
        raise ConfigError(f"{key}channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    seed = get("split_seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"{key}split_seed must be an int >= 0, got {seed!r}")
    if not isinstance(get("unique_labels"), bool):
        raise ConfigError(f"{key}unique_labels must be True or False, got {get('unique_labels')!r}")
    levels = tuple(get("levels") or ())
    if not all(isinstance(v, str) and v for v in levels) or len(set(levels)) != len(levels):
        raise ConfigError(f"{key}levels must be distinct non-empty names, got {levels!r}")
    for name in ("path_column", "split_column"):
        if not isinstance(get(name), str) or not get(name):
            raise ConfigError(f"{key}{name} must be a column name, got {get(name)!r}")
    level = get("split_level")
    if isinstance(level, bool) or not isinstance(level, int | str):
        raise ConfigError(f"{key}split_level must be a level index or name, got {level!r}")
    if levels:
        try:
            _level_index(level, levels, f"{key}split_level")
        except MalformedDataError as e:
            raise ConfigError(str(e)) from None


# --- readers -----------------------------------------------------------------------------


def _check_split_value(value: str, where: str) -> str:
    if value not in SPLIT_VALUES:
        raise MalformedDataError(
            f"{where}: split {value!r} is not one of {', '.join(SPLIT_VALUES)}"
        )
    return value


def _delimiter_hint(header, source) -> str:
    """A hint when the header is one column holding another delimiter (a ';' CSV from a
    spreadsheet in a comma-decimal locale, a tab-separated file named .csv)."""
    if len(header) != 1:
        return ""
    found = next((d for d in (";", "\t", "|", ",") if d in header[0]), None)
    if found is None:
        return ""
    reads = MANIFEST_DELIMITERS.get(Path(source).suffix.lower(), ",")
    return (
        f"; the header looks {found!r}-separated but {Path(source).suffix} is read with "
        f"{reads!r}: save it with {reads!r}" + (" or as .tsv" if found == "\t" else "")
    )


def _label_columns(header, path_column, split_column, levels, source) -> tuple[str, ...]:
    if path_column not in header:
        raise MalformedDataError(
            f"{source}: no path column {path_column!r} in the header {list(header)} "
            f"(set config.data.custom.path_column){_delimiter_hint(header, source)}"
        )
    if levels:
        absent = [c for c in levels if c not in header]
        if absent:
            raise MalformedDataError(
                f"{source}: label column {absent[0]!r} (config.data.custom.levels) is not in "
                f"the header {list(header)}"
            )
        return tuple(levels)
    columns = tuple(c for c in header if c not in (path_column, split_column))
    if not columns:
        raise MalformedDataError(f"{source}: the header {list(header)} has no label column")
    return columns


def _manifest_text(path: Path) -> str:
    """The manifest's text (UTF-8, with or without a byte-order mark)."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise MalformedDataError(
            f"{path}:{line}: not UTF-8 (byte 0x{raw[e.start]:02x}); save the manifest as UTF-8 "
            "(e.g. Excel's 'CSV UTF-8')"
        ) from None


def manifest_records(path: Path):
    """`(header, [(line number, {column: value})])` of a CSV/TSV or JSON-lines manifest.

    Every JSON-lines record must have the keys of the first one (a key missing from some
    records would otherwise be ignored, or read as empty, without a word)."""
    text = _manifest_text(path)
    if path.suffix.lower() in MANIFEST_DELIMITERS:
        with io.StringIO(text, newline="") as f:
            reader = csv.reader(f, delimiter=MANIFEST_DELIMITERS[path.suffix.lower()])
            header = [c.strip() for c in next(reader, [])]
            if not any(header):
                raise MalformedDataError(f"{path}: empty file (a header row is required)")
            if len(set(header)) != len(header):
                raise MalformedDataError(f"{path}:1: repeated column names in {header}")
            records = []
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue  # blank line
                if len(row) != len(header):
                    raise MalformedDataError(
                        f"{path}:{reader.line_num}: {len(row)} columns, the header has "
                        f"{len(header)} ({', '.join(header)})"
                    )
                records.append((reader.line_num, dict(zip(header, row, strict=True))))
        return header, records
    header, records = None, []
    with io.StringIO(text) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise MalformedDataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
            if not isinstance(record, dict):
                raise MalformedDataError(f"{path}:{lineno}: expected a JSON object per line")
            if header is None:
                header, first = list(record), lineno
            elif set(record) != set(header):
                raise MalformedDataError(
                    f"{path}:{lineno}: keys {sorted(record)} differ from those of line {first} "
                    f"{sorted(header)}; every record needs the same keys"
                )
            records.append((lineno, record))
    if header is None:
        raise MalformedDataError(f"{path}: empty file")
    return header, records


def label_value(value, column: str, where: str) -> str:
    """A manifest cell as a label name (a string or an integer; `where` names the row)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise MalformedDataError(
            f"{where}: label column {column!r} holds {value!r}; labels are strings or integers"
        )
    text = str(value).strip()
    if not text:
        raise MalformedDataError(f"{where}: empty value in label column {column!r}")
    return text


def read_manifest(path, *, path_column="path", split_column="split", levels=()) -> LabelTable:
    """A CSV/TSV/JSON-lines manifest (see the module docstring)."""
    path = Path(path).expanduser()
    header, records = manifest_records(path)
    columns = _label_columns(header, path_column, split_column, levels, path)
    has_split = split_column in header
    values, where, files, split = [], [], [], []
    for lineno, record in records:
        here = f"{path}:{lineno}"
        missing = [c for c in (path_column, *columns) if c not in record]
        if missing:
            raise MalformedDataError(f"{here}: no value for column {missing[0]!r}")
        file = str(record[path_column]).strip()
        if not file:
            raise MalformedDataError(f"{here}: empty image path (column {path_column!r})")
        values.append(tuple(label_value(record[c], c, here) for c in columns))
        files.append(file)
        where.append(here)
        if has_split:
            split.append(_check_split_value(str(record.get(split_column, "")).strip(), here))
    if not records:
        raise MalformedDataError(f"{path}: no rows after the header")
    return LabelTable(
        source=str(path), level_names=columns, values=values, where=where, files=files,
        root=path.parent, split=split if has_split else None,
    )  # fmt: skip


def _unreadable(error: OSError):
    raise MissingDataError(f"{error.filename}: cannot read the folder ({error.strerror})")


def find_images(root) -> list[str]:
    """Paths (relative to `root`, sorted) of every image file below it; hidden ones skipped.

    Links to folders are followed; a folder reached twice (a link to a folder already in
    the tree, or a link cycle) and a folder that cannot be read are errors naming it.
    """
    root = Path(root).expanduser()
    files, unread, seen = [], [], {}  # seen: real path -> the folder first reached there
    for folder, dirs, names in os.walk(root, onerror=_unreadable, followlinks=True):
        first = seen.setdefault(os.path.realpath(folder), folder)
        if first != folder:
            raise MalformedDataError(
                f"{folder}: the same folder as {first} (through a link); every folder can "
                "appear once in the tree"
            )
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = Path(folder).relative_to(root)
        visible = [n for n in sorted(names) if not n.startswith(".")]
        files += [(rel / n).as_posix() for n in visible if n.lower().endswith(IMAGE_SUFFIXES)]
        unread += [n for n in visible if n.lower().endswith(UNREAD_IMAGE_SUFFIXES)]
    if unread:
        counts = collections.Counter(Path(n).suffix.lower() for n in unread)
        print(
            f"note: {root}: {len(unread)} image{'s' * (len(unread) != 1)} of formats himl "
            "does not read left out "
            f"({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))}); convert them to "
            ".jpg or .png to use them",
            file=sys.stderr,
        )
    if not files:
        raise MissingDataError(
            f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)}) in the folder tree"
        )
    return files


def read_folder(root, *, levels=()) -> LabelTable:
    """An image-folder tree `ROOT/<level 0>/.../<image>` (see the module docstring)."""
    root = Path(root).expanduser()
    files = find_images(root)
    depth = len(Path(files[0]).parts) - 1
    for file in files:
        if len(Path(file).parts) - 1 != depth:
            raise MalformedDataError(
                f"{root}: images at different depths: {files[0]} ({depth} label folders) and "
                f"{file} ({len(Path(file).parts) - 1}); every image must be "
                "ROOT/<level 0>/.../<level L-1>/<image>"
            )
    if depth == 0:
        raise MalformedDataError(
            f"{root}: images lie directly in the folder; put them in label folders "
            "ROOT/<level 0>/.../<image>"
        )
    if levels and len(levels) != depth:
        raise MalformedDataError(
            f"{root}: images are {depth} label folders deep, config.data.custom.levels names "
            f"{len(levels)} levels ({', '.join(levels)})"
        )
    names = tuple(levels) if levels else tuple(f"level{i}" for i in range(depth))
    return LabelTable(
        source=str(root), level_names=names, values=[tuple(Path(f).parts[:-1]) for f in files],
        where=[str(root / f) for f in files], files=files, root=root,
    )  # fmt: skip


def npz_arrays(path: Path, required) -> dict[str, np.ndarray]:
    """Every array of an `.npz` (no pickled objects), MalformedDataError naming the file
    when it is unreadable or lacks one of `required`."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        hint = (  # e.g. labels from a pandas column
            ": save names as strings, np.asarray(labels).astype(str)"
            if "Object arr" in str(e)
            else ""
        )
        raise MalformedDataError(f"{path}: not a readable .npz ({e}){hint}") from e
    for key in required:
        if key not in arrays:
            raise MalformedDataError(f"{path}: no array {key!r} (has {sorted(arrays)})")
    return arrays


def read_npz(path, *, levels=()) -> LabelTable:
    """An `.npz` of in-memory arrays (see the module docstring)."""
    path = Path(path).expanduser()
    arrays = npz_arrays(path, ("images", "labels"))
    images, labels = arrays["images"], arrays["labels"]
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise MalformedDataError(
            f"{path}: images must be uint8 [N, H, W(, C)], got {images.dtype} {images.shape}"
        )
    images = images[..., None] if images.ndim == 3 else images
    if images.shape[-1] not in CHANNELS:
        raise MalformedDataError(
            f"{path}: images have {images.shape[-1]} channels ({images.shape}); 1 (grayscale) "
            "or 3 (RGB) are supported"
        )
    labels = labels[:, None] if labels.ndim == 1 else labels
    if (
        labels.ndim != 2
        or len(labels) != len(images)
        or not np.issubdtype(labels.dtype, np.integer)
    ):
        raise MalformedDataError(
            f"{path}: labels must be integers [N] or [N, L] with N = {len(images)}, got "
            f"{labels.dtype} {labels.shape}"
        )
    num_levels = labels.shape[1]
    names = tuple(str(n) for n in arrays.get("level_names", levels or ()))
    names = names or tuple(f"level{i}" for i in range(num_levels))
    if len(names) != num_levels:
        raise MalformedDataError(f"{path}: {len(names)} level names for {num_levels} label columns")
    columns = [[str(v) for v in labels[:, i]] for i in range(num_levels)]
    if "class_names" in arrays:
        class_names = [str(n) for n in arrays["class_names"]]
        first = {}
        for i, name in enumerate(class_names):
            j = first.setdefault(name, i)
            if j != i:
                raise MalformedDataError(
                    f"{path}: class_names gives ids {j} and {i} the same name {name!r}; "
                    "every class needs its own name"
                )
        finest = labels[:, -1]
        if finest.min() < 0 or finest.max() >= len(class_names):
            raise MalformedDataError(
                f"{path}: labels of the finest level run {finest.min()}..{finest.max()}, "
                f"class_names has {len(class_names)} names"
            )
        columns[-1] = [class_names[v] for v in finest]
    split = None
    if "split" in arrays:
        split = [
            _check_split_value(str(s), f"{path} (split[{i}])")
            for i, s in enumerate(arrays["split"])
        ]
        if len(split) != len(images):
            raise MalformedDataError(f"{path}: split has {len(split)} entries for {len(images)}")
    return LabelTable(
        source=str(path), level_names=names, values=list(zip(*columns, strict=True)),
        where=[f"{path} (row {i})" for i in range(len(images))], images=images, split=split,
    )  # fmt: skip


def read_source(source, options: dict) -> LabelTable:
    """The `LabelTable` of a manifest, a folder tree or an `.npz`, by what `source` is."""
    path = Path(source).expanduser()
    if not str(source):
        raise MissingDataError(
            "config.data.custom.source is empty: pass a manifest (.csv/.tsv/.jsonl), an image "
            "folder tree or an .npz with --config.data.custom.source=PATH"
        )
    if not path.exists():
        raise MissingDataError(
            f"config.data.custom.source: {path} does not exist (moved? give the new place "
            "with --config.data.custom.source=PATH)"
        )
    levels = tuple(options.get("levels", ()) or ())
    if path.is_dir():
        return read_folder(path, levels=levels)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return read_npz(path, levels=levels)
    if suffix in (*MANIFEST_DELIMITERS, ".jsonl"):
        return read_manifest(
            path,
            path_column=options.get("path_column", "path"),
            split_column=options.get("split_column", "split"),
            levels=levels,
        )
    raise MalformedDataError(
        f"config.data.custom.source: {path} is not a folder, .csv, .tsv, .jsonl or .npz"
    )


# --- labels ------------------------------------------------------------------------------


def _name_order(name: str):
    """Integers first, by value (ties such as "1", "01" by text), then other names."""
    return (0, int(name), name) if re.fullmatch(r"-?[0-9]+", name) else (1, 0, name)


def _label_order(key):
    """Sort key of a label (a name, or a path of names with `unique_labels`)."""
    return tuple(_name_order(p) for p in (key if isinstance(key, tuple) else (key,)))


def encode_levels(table: LabelTable, *, unique_labels: bool = False):
    """Dense ids `[N, L]` per level and the names `[L][num labels]`, checking the tree.

    A label's identity is its name (or, with `unique_labels`, its whole path from the
    root); ids follow the sorted names (numeric order when every name is an integer).

    Raises:
      MalformedDataError: a label (by name) under two different parents, naming both and
        a row of each.
    """
    n, num_levels = len(table.values), len(table.level_names)
    ids = np.empty((n, num_levels), np.int64)
    names = []
    for level in range(num_levels):
        if unique_labels:
            keys = [v[: level + 1] for v in table.values]
            display = {k: "/".join(k) for k in set(keys)}
        else:
            keys = [v[level] for v in table.values]
            display = {k: k for k in set(keys)}
            if level:
                _check_one_parent(table, level)
        distinct = sorted(display, key=_label_order)
        index = {k: i for i, k in enumerate(distinct)}
        ids[:, level] = [index[k] for k in keys]
        names.append(tuple(display[k] for k in distinct))
    return ids, tuple(names)


def _check_one_parent(table: LabelTable, level: int) -> None:
    first = {}  # label -> (parent, row)
    for row, values in enumerate(table.values):
        label, parent = values[level], values[level - 1]
        seen = first.setdefault(label, (parent, row))
        if seen[0] != parent:
            name = table.level_names[level]
            raise MalformedDataError(
                f"{table.source}: label {label!r} (level {name!r}) is under two parents: "
                f"{seen[0]!r} ({table.where[seen[1]]}) and {parent!r} ({table.where[row]}); "
                "rename one, or set config.data.custom.unique_labels=True to make labels "
                "unique within their parent"
            )


# --- splits ------------------------------------------------------------------------------


def _level_index(level, level_names, key: str) -> int:
    num = len(level_names)
    if isinstance(level, str):
        if level not in level_names:
            raise MalformedDataError(f"{key} = {level!r} is not a level of {list(level_names)}")
        return level_names.index(level)
    if not -num <= level < num:
        raise MalformedDataError(f"{key} = {level} is not a level index of {list(level_names)}")
    return level % num


def dml_split(ids: np.ndarray, level: int, test_fraction: float, seed: int) -> dict:
    """Classes of `level` divided into train / test (`test_fraction` of them, seeded)."""
    classes = np.unique(ids[:, level])
    if len(classes) < 2:
        raise MalformedDataError(f"a class-disjoint split needs >= 2 classes, got {len(classes)}")
    num_test = min(max(int(round(test_fraction * len(classes))), 1), len(classes) - 1)
    test = np.random.default_rng(seed).permutation(classes)[:num_test]
    in_test = np.isin(ids[:, level], test)
    return {"train": np.flatnonzero(~in_test), "test": np.flatnonzero(in_test)}


def seen_unseen_split(
    ids: np.ndarray, level: int, unseen_fraction: float, seen_test_fraction: float, seed: int
) -> dict:
    """Unseen classes of `level` under seen groups of `level - 1`; seen images divided.

    In every group, `unseen_fraction` of its classes (rounded down, leaving at least one
    seen class) are unseen; each seen class's images are divided `1 - seen_test_fraction`
    train, the rest "seen_test" (at least one train image per class).
    """
    if level < 1:
        raise MalformedDataError("the seen_unseen protocol needs a coarser level above the class")
    rng = np.random.default_rng(seed)
    unseen = []
    for group in np.unique(ids[:, level - 1]):
        classes = np.unique(ids[ids[:, level - 1] == group, level])
        num = min(int(unseen_fraction * len(classes)), len(classes) - 1)
        unseen += rng.permutation(classes)[:num].tolist()
    if not unseen:
        raise MalformedDataError(
            "the seen_unseen protocol found no group with enough classes to hold some out "
            f"(test_fraction {unseen_fraction}); use protocol 'dml'"
        )
    is_unseen = np.isin(ids[:, level], unseen)
    train, seen_test = [], []
    for c in np.unique(ids[~is_unseen, level]):
        rows = rng.permutation(np.flatnonzero(ids[:, level] == c))
        num_test = min(int(round(seen_test_fraction * len(rows))), len(rows) - 1)
        seen_test += rows[:num_test].tolist()
        train += rows[num_test:].tolist()
    return {
        "train": np.sort(np.array(train, np.int64)),
        "seen_test": np.sort(np.array(seen_test, np.int64)),
        "unseen": np.flatnonzero(is_unseen),
    }


def make_splits(table: LabelTable, ids: np.ndarray, options: dict, class_level: int) -> dict:
    """Split name -> record indices: the source's own split column, or a protocol's."""
    if table.split is not None:
        split = np.asarray(table.split)
        splits = {s: np.flatnonzero(split == s) for s in SPLIT_VALUES if (split == s).any()}
        if "train" not in splits:
            raise MalformedDataError(f"{table.source}: no rows with split 'train'")
        return splits
    protocol = options.get("protocol", "dml")  # the values: see check_custom_config
    seed, fraction = int(options.get("split_seed", 0)), float(options.get("test_fraction", 0.5))
    level = _level_index(
        options.get("split_level", -1), table.level_names, "config.data.custom.split_level"
    )
    if len(np.unique(ids[:, level])) < 2:
        raise MalformedDataError(
            f"{table.source}: a class-disjoint split needs >= 2 labels at level "
            f"{table.level_names[level]!r} (config.data.custom.split_level), it has 1 "
            f"({table.values[0][level]!r}); add classes, or give the rows a split column"
        )
    if protocol == "dml":
        return dml_split(ids, level, fraction, seed)
    seen_test = float(options.get("seen_test_fraction", 0.2))
    return seen_unseen_split(ids, level, fraction, seen_test, seed)


def describe_splits(splits: dict, labels: np.ndarray, class_level: int) -> str:
    return ", ".join(
        f"{name} {len(idx):,} images / {len(np.unique(labels[idx, class_level])):,} classes"
        for name, idx in splits.items()
    )


# --- checks and assembly -----------------------------------------------------------------


def check_unique_images(table: LabelTable) -> None:
    """Every image file is listed once (by its resolved path): a second listing, with the
    same labels or others, would leak between splits and match itself in retrieval."""
    if table.files is None:
        return
    first, folders = {}, {}  # resolved path -> record; folder -> resolved folder
    for i, file in enumerate(table.files):
        path = os.path.join(table.root, file)  # one realpath per folder, not per image
        folder, name = os.path.split(path)
        if folder not in folders:
            folders[folder] = os.path.realpath(folder)
        key = (
            os.path.realpath(path) if os.path.islink(path) else os.path.join(folders[folder], name)
        )
        j = first.setdefault(key, i)
        if j != i:
            raise MalformedDataError(
                f"{table.where[i]}: image {file} is already listed at {table.where[j]} (as "
                f"{'/'.join(table.values[j])!r}, here as {'/'.join(table.values[i])!r}); list "
                "each image once"
            )


def check_training_classes(table, ids, names, train: np.ndarray, class_level: int) -> None:
    """Every training class has >= 2 images: one image gives no positive pair to sample."""
    counts = np.bincount(ids[train, class_level], minlength=len(names[class_level]))
    present = np.unique(ids[train, class_level])
    lonely = present[counts[present] < 2]
    if len(lonely):
        c = int(lonely[0])
        row = int(train[np.argmax(ids[train, class_level] == c)])
        raise MalformedDataError(
            f"{table.source}: class {names[class_level][c]!r} (level "
            f"{table.level_names[class_level]!r}) has 1 training image ({table.where[row]}); "
            f"every training class needs >= 2 for a positive pair ({len(lonely)} such classes) "
            "- add images or remove the class"
        )


def build_dataset(
    table: LabelTable, options: dict, *, image_size: int = 224, eval_crop: float = 0.875,
    val_fraction: float = 0.0, verbose: bool = True,
) -> Dataset:  # fmt: skip
    """The `Dataset` of a `LabelTable`: labels encoded, splits made. Its files are checked
    when it is opened or first read (`FileSource.open`), so a run makes every check that
    reads no file first (`himl.train.loop`)."""
    check_custom_config(options)
    check_unique_images(table)
    ids, names = encode_levels(table, unique_labels=bool(options.get("unique_labels", False)))
    class_level = len(table.level_names) - 1
    labels = np.concatenate([ids, np.arange(len(ids))[:, None]], axis=1)
    splits = make_splits(table, ids, options, class_level)
    if val_fraction and "val" not in splits:
        splits["train_no_val"], splits["val"] = carve_val(
            labels, splits["train"], class_level, val_fraction
        )
    check_training_classes(table, ids, names, splits["train"], class_level)
    if verbose:
        how = "the source's split column" if table.split is not None else (
            f"protocol {options.get('protocol', 'dml')!r}, seed {options.get('split_seed', 0)}"
        )  # fmt: skip
        print(f"custom data {table.source}: {describe_splits(splits, labels, class_level)} ({how})")
    if table.images is not None:
        images_of = lambda idx: table.images[idx]
    else:
        channels = int(options.get("channels", 3))
        source = FileSource(table.root, table.files, where=table.where, listed_in=table.source)
        images_of = lambda idx: LazyImages(
            source, idx, size=image_size, channels=channels, crop_fraction=eval_crop
        )
    return Dataset(
        name="custom",
        level_names=(*table.level_names, INSTANCE_LEVEL),
        class_level=class_level,
        class_names=dict(enumerate(names[class_level])),
        splits={s: Split(images=images_of(idx), labels=labels[idx]) for s, idx in splits.items()},
        label_names=names,
    )


def load_custom(source, *, image_size=224, eval_crop=0.875, val_fraction=0.0, verbose=True,
                **options) -> Dataset:  # fmt: skip
    """A `Dataset` from a manifest, a folder tree or an `.npz` (one line from Python).

    `options` are the fields of `config.data.custom` (protocol, split_level,
    test_fraction, seen_test_fraction, split_seed, levels, path_column, split_column,
    unique_labels, channels).
    """
    check_custom_config(options)
    table = read_source(source, options)
    dataset = build_dataset(
        table, options, image_size=image_size, eval_crop=eval_crop,
        val_fraction=val_fraction, verbose=verbose,
    )  # fmt: skip
    dataset.open()  # every listed file exists and is an image (a header read each)
    return dataset


def load_from_config(data_config) -> Dataset:
    """The `Dataset` of `config.data` (name "custom"), its files checked when it is opened
    or first read: a run opens it after its other checks (`himl.train.loop`)."""
    options = _options(data_config.custom)
    source = options.pop("source", "")
    check_custom_config(options)
    return build_dataset(
        read_source(source, options), options,
        image_size=data_config.image_size, eval_crop=data_config.eval_crop,
        val_fraction=data_config.val_fraction,
    )  # fmt: skip


def input_shape(data_config) -> tuple[int, int, int]:
    """`(H, W, C)` the model sees for `config.data.custom`, without decoding any image."""
    options = _options(data_config.custom)
    source = Path(options.get("source", "")).expanduser()
    if source.suffix.lower() == ".npz":  # read the array header only
        with zipfile.ZipFile(source) as archive, archive.open("images.npy") as f:
            major, _ = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else (
                np.lib.format.read_array_header_2_0
            )  # fmt: skip
            shape = read_header(f)[0]
        return (*shape[1:3], shape[3] if len(shape) == 4 else 1)
    size = data_config.image_size
    return (size, size, int(options.get("channels", 3)))

"""The images a folder, a manifest or one file lists, labelled or not: what `himl-embed
--images` and `Embedder.embed` / `gallery` take.

A manifest is read with the run's `config.data.custom` column options (`listing_options`);
its label columns are optional (new images need no labels): a `path`-only manifest lists
unlabelled images, and a row with empty (or, in JSON lines, null) labels is an image of
unknown labels (""). A folder whose images are all at one depth is labelled by its folder
names.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NamedTuple

from himl.data import custom
from himl.data.images import check_image_files
from himl.errors import UserError

# The `config.data.custom` options that say how a manifest is read.
LISTING_OPTIONS = ("path_column", "split_column", "levels")


def listing_options(config) -> dict:
    """The run's manifest options (`LISTING_OPTIONS`) when it trained on its own data."""
    if config is None or config.data.name != "custom":
        return {}
    return {k: config.data.custom[k] for k in LISTING_OPTIONS if k in config.data.custom}


class Listing(NamedTuple):
    """The images `--images` lists: their paths, level names and labels (None: unlabelled),
    and the manifest's split of each image (None: it has no split column)."""

    paths: list[Path]
    level_names: tuple[str, ...]
    labels: list[tuple[str, ...]] | None
    split: list[str] | None = None


def read_listing(source, options: dict | None = None) -> Listing:
    """`(paths, level_names, labels or None)` of a folder, manifest or single image.

    `options`: the run's manifest options (`listing_options`). A folder's levels are
    named by `levels` when the depths agree."""
    options = options or {}
    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() in (*custom.MANIFEST_DELIMITERS, ".jsonl"):
        return read_manifest_listing(path, **options)
    if path.is_file():
        return Listing([path], (), None)
    if not path.exists():
        raise custom.MissingDataError(f"{path} does not exist")
    if not path.is_dir():
        raise custom.MalformedDataError(
            f"{path} is not a folder, a manifest (.csv, .tsv, .jsonl) or an image"
        )
    try:
        table = custom.read_folder(path)
    except UserError as error:  # images in the folder itself, or not all at one depth
        images = custom.find_images(path)
        if any(len(Path(f).parts) > 1 for f in images):  # label folders, but not one tree
            print(f"note: {error}; the {len(images)} images are read without labels",
                  file=sys.stderr)  # fmt: skip
        return Listing([path / f for f in images], (), None)
    levels = tuple(options.get("levels") or ())
    names = levels if len(levels) == len(table.level_names) else table.level_names
    return Listing([table.root / f for f in table.files], names, table.values)


def read_manifest_listing(path: Path, *, path_column="path", split_column="split",
                          levels=()) -> Listing:  # fmt: skip
    """A manifest's images, labelled or not (see the module docstring).

    The label columns are `levels` (all in the header, or none of them: no labels), else
    every column but the path and split columns."""
    header, records = custom.manifest_records(path)
    if path_column not in header:
        raise custom.MalformedDataError(
            f"{path}: no path column {path_column!r} (the run's config.data.custom.path_column) "
            f"in the header {list(header)}"
        )
    levels = tuple(levels or ())
    present = [c for c in levels if c in header]
    if levels and present and len(present) != len(levels):
        absent = next(c for c in levels if c not in header)
        raise custom.MalformedDataError(
            f"{path}: label column {absent!r} (the run's config.data.custom.levels) is not in "
            f"the header {list(header)}; give all of {list(levels)}, or none"
        )
    if levels:
        columns = levels if present else ()
        others = [c for c in header if c not in (path_column, split_column)]
        if not present and others:
            print(f"note: {path}: none of the run's label columns {list(levels)} (its "
                  f"config.data.custom.levels) is in the header, which has {others}: the images "
                  "are read without labels (name the columns as the run did to label them)",
                  file=sys.stderr)  # fmt: skip
    else:
        columns = tuple(c for c in header if c not in (path_column, split_column))
    paths, labels, split = [], [], []
    for lineno, record in records:
        here = f"{path}:{lineno}"
        file = str(record.get(path_column) or "").strip()
        if not file:
            raise custom.MalformedDataError(f"{here}: empty image path (column {path_column!r})")
        paths.append(path.parent / file)  # an absolute path stays absolute
        labels.append(tuple(_label(record.get(c), c, here) for c in columns))
        split.append(str(record.get(split_column) or "").strip())
    if not records:
        raise custom.MalformedDataError(f"{path}: no rows after the header")
    check_image_files(path, paths, [f"{path}:{line}" for line, _ in records])
    if split_column not in header:
        split = None
    elif not all(split):
        row = records[split.index("")][0]
        print(f"note: {path}:{row}: no {split_column!r} value ({split.count('')} such rows): "
              "the splits are left out", file=sys.stderr)  # fmt: skip
        split = None
    if not columns or not any(any(row) for row in labels):
        return Listing(paths, (), None, split)
    return Listing(paths, columns, labels, split)


def _label(value, column: str, where: str) -> str:
    """A label's text; "" when unknown (empty, or null in JSON lines)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return ""
    return custom.label_value(value, column, where)

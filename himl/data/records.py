"""What a dataset reader returns: image files, a label matrix, names and split indices.

Every reader in `himl.data.readers_*` parses one dataset's official annotation files into
`Records` (no image is decoded): `files[i]` is the i-th image (relative to `root`, or a
`zip::member` name), `labels[i]` its `[L]` label row (coarse -> fine) and `splits` maps a
split name to indices into the records. `parts` is the partition of the records into the
dataset's official, disjoint subsets (e.g. CUB "train"/"test"), in record order; the
tensorflow-datasets builder stores one array_record split per part.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from himl.errors import UserError


class MissingDataError(UserError, FileNotFoundError):
    """A file or folder of a user-downloaded dataset is missing (names it and its source)."""


class MalformedDataError(UserError, ValueError):
    """An annotation file exists but does not have the official layout."""


@dataclasses.dataclass(frozen=True)
class Records:
    """A dataset's image files and labels, before any image is decoded.

    Attributes:
      name: dataset name (`config.data.name`).
      root: folder the files are relative to.
      files: `[N]` image file names (relative to `root`).
      labels: `[N, L]` int64 labels, column 0 coarsest; the class column is `class_level`.
      level_names: names of the L columns.
      class_level: the column holding the class (evaluation levels stop there).
      class_names: `{class label: name}`.
      parts: `{part: (start, stop)}` contiguous disjoint ranges covering all records.
      splits: `{split: int64 indices}` (may overlap, e.g. "val" is inside "train").
    """

    name: str
    root: Path
    files: tuple[str, ...]
    labels: np.ndarray
    level_names: tuple[str, ...]
    class_level: int
    class_names: dict[int, str]
    parts: dict[str, tuple[int, int]]
    splits: dict[str, np.ndarray]

    def __post_init__(self):
        if self.labels.shape != (len(self.files), len(self.level_names)):
            raise MalformedDataError(
                f"{self.name}: labels {self.labels.shape} for {len(self.files)} files and "
                f"levels {self.level_names}"
            )


def require(root: Path, *names: str, dataset: str, where: str) -> list[Path]:
    """Paths `root/name`, raising `MissingDataError` naming the first missing one."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MissingDataError(
            f"{dataset}: folder {root} does not exist (config.data.manual_dir). {where}"
        )
    paths = [root / n for n in names]
    for path in paths:
        if not path.exists():
            raise MissingDataError(f"{dataset}: {path.name} not found in {root}. {where}")
    return paths


def read_rows(path: Path, num_fields: int, *, skip: int = 0) -> list[list[str]]:
    """Whitespace-separated rows of a text annotation file, checking the field count."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if lineno <= skip or not line.strip():
                continue
            fields = line.split()
            if len(fields) != num_fields:
                raise MalformedDataError(
                    f"{path}:{lineno}: expected {num_fields} fields, got {len(fields)}: "
                    f"{line.strip()[:80]!r}"
                )
            rows.append(fields)
    if not rows:
        raise MalformedDataError(f"{path} has no rows")
    return rows


def encode(values) -> tuple[np.ndarray, list]:
    """Integer codes `[N]` of hashable values, in sorted order of the distinct values."""
    distinct = sorted(set(values))
    index = {v: i for i, v in enumerate(distinct)}
    return np.array([index[v] for v in values], np.int64), distinct


def carve_val(labels: np.ndarray, train: np.ndarray, class_level: int, fraction: float):
    """(train_no_val, val) indices: the last `fraction` of the train classes become "val".

    Classes are taken in label order, so the carve is deterministic and class-disjoint
    (model selection never looks at test classes).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction}")
    classes = np.unique(labels[train, class_level])
    num_val = int(round(fraction * len(classes)))
    val_classes = classes[len(classes) - num_val :] if num_val else classes[:0]
    in_val = np.isin(labels[train, class_level], val_classes)
    return train[~in_val], train[in_val]


def ordered(files, labels, part_of, part_names, **kwargs) -> dict:
    """Records fields with rows regrouped part by part (stable), plus the part ranges.

    Args:
      files: `[N]` file names; labels: `[N, L]`; part_of: `[N]` part name of each row.
      part_names: the parts in storage order.

    Returns:
      dict with "files", "labels", "parts" and "index" (new row -> old row).
    """
    part_of = np.asarray(part_of)
    index = np.concatenate([np.flatnonzero(part_of == p) for p in part_names])
    if len(index) != len(files):
        unknown = sorted(set(part_of.tolist()) - set(part_names))
        raise MalformedDataError(f"unknown parts {unknown}; expected {part_names}")
    starts = np.cumsum([0] + [int(np.sum(part_of == p)) for p in part_names])
    return {
        "files": tuple(files[i] for i in index),
        "labels": np.asarray(labels, np.int64)[index],
        "parts": {p: (int(starts[k]), int(starts[k + 1])) for k, p in enumerate(part_names)},
        "index": index,
        **kwargs,
    }


def part_range(parts: dict, *names: str) -> np.ndarray:
    """Indices of the records in the named parts."""
    return np.concatenate([np.arange(*parts[n]) for n in names]).astype(np.int64)


def dataset_root(root, marker: str, *names: str) -> Path:
    """`root`, or the one of `root/names` that holds `marker` (users pass either folder)."""
    root = Path(root).expanduser()
    for candidate in (root, *(root / n for n in names)):
        if (candidate / marker).exists():
            return candidate
    return root


def require_images(root, files, *, dataset: str, show: int = 3) -> None:
    """Raises `MissingDataError` unless every listed image file exists (one fast pass).

    Run at load time, before any training work, so a missing image is reported with the
    count of missing files and the first few paths - never when a worker first decodes it.
    Names of the form `"<zip>::<member>"` are checked by their archive only.

    Args:
      root: folder the relative names are under (absolute names are used as they are).
      files: `[N]` image file names.
      dataset: what to call the data in the message.
    """
    root = Path(root).expanduser()
    seen_archives: dict[str, bool] = {}
    missing = []
    for name in files:
        path = name.split("::", 1)[0]
        if path not in seen_archives:
            seen_archives[path] = (root / path).is_file()  # also right for absolute paths
        if not seen_archives[path]:
            missing.append(str(root / path))
    if missing:
        first = ", ".join(missing[:show])
        raise MissingDataError(
            f"{dataset}: {len(missing)} of {len(files)} listed images are missing, e.g. {first}"
        )

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
import zipfile
from pathlib import Path

import numpy as np

from himl.errors import UserError


class MissingDataError(UserError, FileNotFoundError):
    """A file or folder of a user-downloaded dataset is missing (names it and its source)."""


class MalformedDataError(UserError, ValueError):
    """An annotation file exists but does not have the official layout."""


class UnknownOptionError(UserError, ValueError):
    """A reader option (label layout, split protocol) the dataset does not have."""


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

    @classmethod
    def from_fields(cls, name, root, fields, *, level_names, class_level, class_names, splits):
        """`Records` from the "files", "labels" and "parts" of `fields` (what `ordered`
        returns) and the remaining attributes."""
        return cls(
            name=name,
            root=root,
            files=fields["files"],
            labels=fields["labels"],
            level_names=level_names,
            class_level=class_level,
            class_names=class_names,
            parts=fields["parts"],
            splits=splits,
        )

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
            f"{dataset}: folder {root} does not exist (config.data.manual_dir: moved? give the "
            f"new place with --config.data.manual_dir=DIR). {where}"
        )
    paths = [root / n for n in names]
    for path in paths:
        if not path.exists():
            raise MissingDataError(f"{dataset}: {path.name} not found in {root}. {where}")
    return paths


def read_rows(path: Path, num_fields: int, *, skip: int = 0) -> list[list[str]]:
    """Whitespace-separated rows of a text annotation file, checking the field count."""
    return read_table(path, num_fields, skip=skip).rows


@dataclasses.dataclass(frozen=True)
class Table:
    """The rows of a text annotation file with their line numbers (for error messages)."""

    path: Path
    rows: list[list[str]]
    lines: list[int]

    def where(self, k: int) -> str:
        """`file:line` of row `k`."""
        return f"{self.path}:{self.lines[k]}"

    def ints(self, column: int, what: str) -> np.ndarray:
        """`[N]` int64 of one column; a non-integer names its file and line."""
        return np.array(
            [parse_int(r[column], self.where(k), what) for k, r in enumerate(self.rows)], np.int64
        )


def parse_int(text: str, where: str, what: str) -> int:
    """`int(text)`, or a `MalformedDataError` naming `where` (file:line or entry)."""
    try:
        return int(text)
    except ValueError:
        raise MalformedDataError(f"{where}: {what} {text!r} is not an integer") from None


def read_table(
    path: Path,
    num_fields: int,
    *,
    skip: int = 0,
    count_line: bool = False,
    header: tuple[str, ...] | None = None,
) -> Table:
    """Rows of a whitespace-separated annotation file, checked against its published layout.

    Args:
      path: the file.
      num_fields: fields every row must have.
      skip: leading lines to ignore (after the count line and header, when given).
      count_line: the first line states the number of rows (DeepFashion's lists); it
        must be an integer equal to the rows present (a truncated file fails here).
      header: the exact column names of the line after the count line (or the first).

    The file is UTF-8, with or without a byte-order mark (Windows editors add one).

    Raises:
      MalformedDataError: naming the file and line of the first row that breaks the layout.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise MalformedDataError(f"{path}: not a text annotation file ({e.reason})") from None
    start, stated = 0, None
    if count_line:
        first = lines[0].strip() if lines else ""
        stated = parse_int(first, f"{path}:1", "the row count")
        start = 1
    if header is not None:
        got = tuple(lines[start].split()) if len(lines) > start else ()
        if got != header:
            raise MalformedDataError(
                f"{path}:{start + 1}: header {' '.join(got)!r}, expected {' '.join(header)!r}"
            )
        start += 1
    rows, numbers = [], []
    for lineno in range(start + skip + 1, len(lines) + 1):
        fields = lines[lineno - 1].split()
        if not fields:
            continue
        if len(fields) != num_fields:
            raise MalformedDataError(
                f"{path}:{lineno}: expected {num_fields} fields, got {len(fields)}: "
                f"{lines[lineno - 1].strip()[:80]!r}"
            )
        rows.append(fields)
        numbers.append(lineno)
    if not rows:
        raise MalformedDataError(f"{path} has no rows")
    if stated is not None and stated != len(rows):
        raise MalformedDataError(
            f"{path}:1: states {stated} rows, the file has {len(rows)} (truncated or edited?)"
        )
    return Table(Path(path), rows, numbers)


def require_unique_files(files, where) -> None:
    """Raises `MalformedDataError` if an image file is listed twice, naming the file, the
    place of the repeat and the place it first appeared (`where(k)`: file:line of entry k).

    Every reader of annotation files calls it: a repeated image would be a sample twice
    (and, in a query / gallery benchmark, its own match at rank 1).
    """
    first: dict[str, int] = {}
    for k, name in enumerate(files):
        if name in first:
            raise MalformedDataError(
                f"{where(k)}: image {name!r} is listed again (first at {where(first[name])})"
            )
        first[name] = k


def load_mat(path: Path, *variables: str) -> dict:
    """A MATLAB file's variables (`scipy.io.loadmat`, squeezed), checking they exist.

    A truncated or corrupt file, or one without a named variable, raises a one-line
    `MalformedDataError` naming the file.
    """
    import scipy.io

    try:
        mat = scipy.io.loadmat(path, squeeze_me=True)
    except Exception as e:  # scipy raises ValueError, TypeError, OSError... for bad files
        raise MalformedDataError(f"{path}: not a readable MATLAB file ({e})") from None
    missing = [v for v in variables if v not in mat]
    if missing:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise MalformedDataError(f"{path}: no variable {missing[0]!r} (has {found})")
    return mat


def mat_fields(path: Path, struct, *names: str) -> None:
    """Checks a MATLAB struct array has the named fields (one line naming file and field)."""
    have = struct.dtype.names or ()
    for name in names:
        if name not in have:
            raise MalformedDataError(f"{path}: annotations have no field {name!r} (have {have})")


def open_zip(path: Path) -> zipfile.ZipFile:
    """A zip archive, or a one-line `MalformedDataError` when it is truncated or corrupt."""
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise MalformedDataError(f"{path}: not a readable zip archive ({e})") from None


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
    Names of the form `"<zip>::<member>"` are checked against the archive's member list
    (read once per archive); a truncated or corrupt archive raises `MalformedDataError`.

    Args:
      root: folder the relative names are under (absolute names are used as they are).
      files: `[N]` image file names.
      dataset: what to call the data in the message.
    """
    root = Path(root).expanduser()
    present: dict[str, bool] = {}  # file -> exists
    members: dict[str, frozenset | None] = {}  # archive -> member names (None: missing)
    missing = []
    for name in files:
        path, _, member = name.partition("::")
        if not member:
            if path not in present:
                present[path] = (root / path).is_file()  # also right for absolute paths
            if not present[path]:
                missing.append(str(root / path))
            continue
        if path not in members:
            archive = root / path
            if archive.is_file():
                with open_zip(archive) as z:
                    members[path] = frozenset(z.namelist())
            else:
                members[path] = None
        if members[path] is None or member not in members[path]:
            missing.append(str(root / name))
    if missing:
        first = ", ".join(missing[:show])
        raise MissingDataError(
            f"{dataset}: {len(missing)} of {len(files)} listed images are missing, e.g. {first}"
        )

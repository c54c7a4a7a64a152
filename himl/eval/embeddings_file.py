"""Embeddings made anywhere, measured as himl measures its own runs.

    himl-eval --embeddings=baseline.npz                  # table, metrics.json, plots
    summary = himl.eval.evaluate_embeddings("baseline.npz")

The `.npz` holds
- `embeddings [N, D]`: float (`himl-embed --out` writes this file; so can a PyTorch model);
- `labels [N]` or `[N, L]`: integers or names, column 0 coarsest; a label is its path from
  the root (the same name under two parents is two labels);
- optional `level_names [L]`, `split [N]` (split names; without it every row is in split
  "all") and `paths [N]` (image files, absolute or relative to the folder you run in or to
  the .npz's folder: only the retrieval-grid plot reads them).

The evaluators (`config.eval`: retrieval per level with Recall@K, MAP@R, NMI/AMI and
mistake severity, query -> gallery when `eval.query_gallery` names two splits, linear
probe), the table and `metrics.json` are those of `himl-eval` on a checkpoint, so a model
trained with pytorch-metric-learning or the papers' official code is measured exactly as
himl's runs are. The file is checked whole (shapes, finite values, labels) before
any metric is computed; a mistake is one line naming the key and row. The linear probe's
random halves follow the class ids (the sorted label paths), so the same images under other
ids give another probe accuracy (retrieval and clustering do not depend on the ids).
"""

from __future__ import annotations

import sys
from pathlib import Path

import ml_collections
import numpy as np

from himl.data.custom import LabelTable, encode_levels, npz_arrays
from himl.data.dataset import Dataset, Split
from himl.data.images import FileSource, LazyImages
from himl.data.records import MalformedDataError
from himl.eval.evaluators import build_evaluators, check_eval_config, run_evaluators

ALL_ROWS = "all"  # the split of a file without a `split` array
PLOT_IMAGE_SIZE = 96  # pixels per image in the retrieval grid


def _embeddings(path: Path, array: np.ndarray) -> np.ndarray:
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.floating) or len(array) < 2:
        raise MalformedDataError(
            f"{path}: embeddings must be float [N, D] with N >= 2, got {array.dtype} {array.shape}"
        )
    bad = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if len(bad):
        raise MalformedDataError(
            f"{path}: embeddings row {bad[0]} is not finite ({len(bad)} such rows)"
        )
    return array.astype(np.float32)


def _label_values(path: Path, labels: np.ndarray, n: int) -> list[tuple[str, ...]]:
    """`[N]` tuples of label names, checked: integers or non-empty names, N rows."""
    labels = labels[:, None] if labels.ndim == 1 else labels
    if labels.ndim != 2 or len(labels) != n or labels.dtype.kind not in "iuU":
        raise MalformedDataError(
            f"{path}: labels must be integers or names [N] or [N, L] with N = {n} (the "
            f"embeddings' rows), got {labels.dtype} {labels.shape}"
        )
    text = np.char.strip(labels.astype(str))
    empty = np.argwhere(text == "")
    if len(empty):
        row, column = empty[0]
        raise MalformedDataError(
            f"{path}: labels row {row} column {column} is empty (an image of unknown labels; "
            f"{len(np.unique(empty[:, 0]))} such rows): evaluate labelled images only"
        )
    return [tuple(row) for row in text.tolist()]


def _row_strings(path: Path, arrays: dict, key: str, n: int, per: str) -> list[str] | None:
    """Array `key` as `n` names (one `per` row or label column), or None when absent."""
    if key not in arrays:
        return None
    values = arrays[key]
    if values.shape != (n,) or values.dtype.kind not in "iuU":
        raise MalformedDataError(
            f"{path}: {key} must be {n} names (one per {per}), got {values.dtype} {values.shape}"
        )
    return [str(v) for v in values]


def _image_files(path: Path, paths: list[str]) -> list[Path] | None:
    """The files of `paths` (as given, from the folder you run in, or from the .npz's
    folder); None, with a note, when some are missing (the retrieval grid is left out)."""
    found, missing = [], []
    for i, p in enumerate(paths):
        candidates = [Path(p).expanduser(), path.parent / p]
        match = next((c.resolve() for c in candidates if c.is_file()), None)
        (found if match else missing).append(match or i)
    if missing:
        print(
            f"note: {path}: {len(missing)} of {len(paths)} paths are not files here (e.g. row "
            f"{missing[0]}: {paths[missing[0]]}); the retrieval grid plots are left out",
            file=sys.stderr,
        )
        return None
    return found


def read_embeddings(path) -> tuple[Dataset, dict[str, np.ndarray]]:
    """The labels of an embeddings file as a `Dataset` (its splits' images are the
    `paths` files when there are, else none) and the embeddings `[n, D]` of each split."""
    path = Path(path).expanduser()
    arrays = npz_arrays(path, ("embeddings", "labels"))
    embeddings = _embeddings(path, arrays["embeddings"])
    n = len(embeddings)
    values = _label_values(path, arrays["labels"], n)
    num_levels = len(values[0])
    level_names = _row_strings(path, arrays, "level_names", num_levels, "label column")
    level_names = tuple(level_names or (f"level{i}" for i in range(num_levels)))
    split = _row_strings(path, arrays, "split", n, "row") or [ALL_ROWS] * n
    table = LabelTable(
        source=str(path), level_names=level_names, values=values,
        where=[f"{path} (row {i})" for i in range(n)],
    )  # fmt: skip
    # A label is its path from the root: a name under two parents is two labels, so the
    # rows always form a tree (as Omniglot's "character01" of every alphabet).
    ids, names = encode_levels(table, unique_labels=True)
    paths = _row_strings(path, arrays, "paths", n, "row")
    files = _image_files(path, paths) if paths is not None else None
    if files is not None:
        source = FileSource(Path("/"), [str(f) for f in files], where=table.where)
        images_of = lambda idx: LazyImages(
            source, idx, size=PLOT_IMAGE_SIZE, channels=3, crop_fraction=1.0
        )
    else:  # no pixels: [n, 0, 0, 0], nothing allocated
        images_of = lambda idx: np.broadcast_to(
            np.zeros((1, 0, 0, 0), np.uint8), (len(idx), 0, 0, 0)
        )
    rows = {}
    for i, name in enumerate(split):
        rows.setdefault(name, []).append(i)
    splits = {name: np.asarray(idx) for name, idx in rows.items()}
    dataset = Dataset(
        name=path.stem,
        level_names=level_names,
        class_level=num_levels - 1,
        class_names=dict(enumerate(names[-1])),
        splits={s: Split(images=images_of(idx), labels=ids[idx]) for s, idx in splits.items()},
        label_names=names,
    )
    return dataset, {s: embeddings[idx] for s, idx in splits.items()}


def evaluate_embeddings(path, *, config=None, splits=None, out_dir=None, plots=True) -> dict:
    """Runs `config.eval`'s evaluators on an embeddings file; writes metrics.json and plots.

    Args:
      path: the `.npz` (see the module docstring).
      config: a himl config, of which only `eval` and `seed` are read (default:
        `configs/default.py`'s); its `eval.splits` is replaced by `splits`.
      splits: the file's splits to evaluate (default: all of them).
      out_dir: where results go (default: `<file stem>_eval/` beside the file); the plots
        of the evaluation whose metrics.json is replaced there are removed.

    Returns:
      The dict written to `<out_dir>/metrics.json`.
    """
    from himl.eval.run import check_writable_dir, write_report
    from himl.runs import default_config

    path = Path(path).expanduser()
    config = default_config() if config is None else config
    check_eval_config(config.eval)
    if splits is not None and not splits:
        raise MalformedDataError("--splits is empty: name the splits to evaluate, or leave it out")
    out = Path(out_dir).expanduser() if out_dir else path.with_name(f"{path.stem}_eval")
    check_writable_dir(out, "--out")
    dataset, embeddings = read_embeddings(path)
    used = ml_collections.ConfigDict({"eval": config.eval.to_dict(), "seed": config.seed})
    used.eval.splits = tuple(splits or dataset.splits)
    evaluators = build_evaluators(used.eval, dataset, seed=used.seed, splits=splits)
    results = run_evaluators(evaluators, embeddings.__getitem__)
    about = {"embeddings": str(path.resolve()), "step": None, "dataset": dataset.name}
    return write_report(
        out, about, dataset, evaluators, results, embeddings, used, model=path.stem, plots=plots
    )

"""`himl-embed` (also `python -m himl.embed_main`): a trained embedding on new images.

    himl-embed --workdir=runs/default --images=photos/ --out=photos.npz
    himl-embed --workdir=W --images=catalogue.csv --query=q1.jpg,q2.jpg --k=5 --plot=top5.png

`--images` is a folder (every image below it; labels from the folder names when every
image is at the same depth), a manifest (.csv/.tsv/.jsonl as `configs/custom.py` reads it)
or one image file. `--out` writes an .npz with `embeddings [N, D]` float32, `paths [N]`,
and, when known, `labels [N, L]` (names) and `level_names [L]`. `--query` searches the
embedded images (exact kNN, the run's metric) and prints the top `--k` for each query;
`--plot` also draws them as a grid.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from absl import app, flags, logging

from himl.cli import exit_on_user_error, flags_parser

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "himl-train work directory, or <workdir>/checkpoints/<step>.", required=True
)
_IMAGES = flags.DEFINE_string(
    "images", None, "Folder, manifest (.csv/.tsv/.jsonl) or image file to embed.", required=True
)
_OUT = flags.DEFINE_string("out", None, "Write the embeddings here (.npz).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_QUERY = flags.DEFINE_list("query", None, "Query image files or folders to search for.")
_K = flags.DEFINE_integer("k", 5, "Neighbours to show per query.", lower_bound=1)
_PLOT = flags.DEFINE_string("plot", None, "With --query: write a retrieval grid PNG here.")
_BATCH = flags.DEFINE_integer("batch_size", 128, "Images per batch.", lower_bound=1)
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")


def read_listing(source) -> tuple[list[Path], tuple[str, ...], list[tuple[str, ...]] | None]:
    """`(paths, level_names, labels or None)` of a folder, manifest or single image."""
    from himl.data import custom
    from himl.errors import UserError

    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() not in (*custom.MANIFEST_DELIMITERS, ".jsonl"):
        return [path], (), None
    try:
        table = custom.read_source(path, {})
    except UserError:
        if not path.is_dir():
            raise
        table = None  # a folder whose images are not all at one depth: no labels
    if table is None or table.files is None:
        from himl.embedder import list_images

        return list_images(path), (), None
    custom.check_images_exist(table)
    return [table.root / f for f in table.files], table.level_names, table.values


def write_embeddings(out, embeddings, paths, level_names, labels) -> Path:
    """The .npz `himl-embed --out` writes (see the module docstring)."""
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"embeddings": embeddings, "paths": np.array([str(p) for p in paths])}
    if labels is not None:
        arrays["labels"] = np.array(labels, dtype=str)
        arrays["level_names"] = np.array(level_names, dtype=str)
    np.savez(out, **arrays)
    return out


def _label_text(labels, i) -> str:
    return "/".join(labels[i]) if labels is not None else ""


def query_files(queries) -> list[Path]:
    """The query image files (folders expanded), each checked to exist."""
    from himl.embedder import EmbedderError, list_images

    paths = []
    for q in queries:
        q = Path(q).expanduser()
        if not q.exists():
            raise EmbedderError(f"query image {q} does not exist")
        paths += list_images(q) if q.is_dir() else [q]
    return paths


def search_and_report(embedder, gallery, queries, *, k, plot=None, labels=None) -> None:
    """Prints the top-k gallery images of each query (and draws them when `plot`)."""
    query_paths = queries
    indices, scores = gallery.search(query_paths, k=k)
    for q, (row, score) in enumerate(zip(indices, scores, strict=True)):
        print(f"query {query_paths[q]}")
        for rank, (j, s) in enumerate(zip(row, score, strict=True), start=1):
            label = _label_text(labels, j)
            print(f"  {rank:>3}. {s:8.4f}  {gallery.items[j]}" + (f"  [{label}]" if label else ""))
    if plot:
        from himl.eval.plots import plot_retrieval_grid

        class Lazy:  # decodes only the images the grid shows
            def __init__(self, paths):
                self.paths = paths

            def __getitem__(self, i):
                return embedder.load_image(self.paths[i])

        path = plot_retrieval_grid(
            Lazy(query_paths), None, Lazy(gallery.items), None, indices, plot,
            query_ids=np.arange(len(query_paths)), top=k,
        )  # fmt: skip
        print(f"wrote {path}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)
    with exit_on_user_error("himl-embed"):
        if not _OUT.value and not _QUERY.value:
            from himl.embedder import EmbedderError

            raise EmbedderError("nothing to do: pass --out=FILE.npz and/or --query=IMAGES")
        # Every file is checked before the model loads.
        paths, level_names, labels = read_listing(_IMAGES.value)
        queries = query_files(_QUERY.value or [])
        from himl.embedder import Gallery, load_embedder

        embedder = load_embedder(_WORKDIR.value, _STEP.value, batch_size=_BATCH.value)
        print(
            f"himl-embed: step {embedder.step} of {_WORKDIR.value}, {len(paths)} images",
            file=sys.stderr,
        )
        embeddings = embedder.embed(paths, progress=_PROGRESS.value)
        if _OUT.value:
            out = write_embeddings(_OUT.value, embeddings, paths, level_names, labels)
            print(f"wrote {out}: {embeddings.shape[0]} x {embeddings.shape[1]} embeddings")
        if _QUERY.value:
            gallery = Gallery(embedder, embeddings, items=paths, labels=labels)
            search_and_report(
                embedder, gallery, queries, k=min(_K.value, len(paths)), plot=_PLOT.value,
                labels=labels,
            )  # fmt: skip


def run():
    """Console-script entry point."""
    app.run(main, flags_parser=flags_parser("himl-embed"))


if __name__ == "__main__":
    run()

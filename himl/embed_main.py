"""`himl-embed` (also `python -m himl.embed_main`): a trained embedding on new images.

    himl-embed --workdir=runs/default --images=photos/ --out=photos.npz
    himl-embed --workdir=W --images=catalogue.csv --query=q1.jpg,q2.jpg --k=5 --plot=top5.png

`--images` is a folder (every image below it; labels from the folder names when every
image is at the same depth), a manifest (.csv/.tsv/.jsonl as `configs/custom.py` reads it,
with the run's `config.data.custom` path_column, split_column and levels) or one image
file. A manifest's label columns are optional: a `path`-only manifest lists unlabelled
images, and a row with empty (or, in JSON lines, null) labels is an image of unknown labels
(written as "" in `labels`). `--out` writes an .npz with `embeddings [N, D]` float32,
`paths [N]` (absolute), and, when known, `labels [N, L]` (names), `level_names [L]` and
`split [N]` (a manifest's split column; `himl-eval --embeddings` evaluates each split). `--query`
searches the embedded images (exact kNN, the run's metric) and prints the top `--k` for
each query; `--plot` also draws them as a grid. `--input_shape=H,W,C` is needed only for a
run made before himl-train recorded its input (`input.json`) and trained on an `.npz` that is
no longer at its saved path (see `himl.embedder`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from absl import app, flags, logging

from himl.cli import exit_on_user_error, help_from, run_quietly
from himl.data.listing import listing_options, read_listing

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
_INPUT_SHAPE = flags.DEFINE_list(
    "input_shape",
    None,
    "H,W,C the run was trained on: only for an older .npz run (no input.json) whose .npz moved.",
)


def write_embeddings(out, embeddings, paths, level_names, labels, split=None) -> Path:
    """The .npz `himl-embed --out` writes (see the module docstring); its paths absolute, so
    the file is read the same from any folder (e.g. for `himl-eval --embeddings`' grid)."""
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"embeddings": embeddings, "paths": np.array([str(Path(p).absolute()) for p in paths])}
    if labels is not None:
        arrays["labels"] = np.array(labels, dtype=str)
        arrays["level_names"] = np.array(level_names, dtype=str)
    if split is not None:
        arrays["split"] = np.array(split, dtype=str)
    np.savez(out, **arrays)
    return out


def _label_text(labels, i) -> str:
    return "/".join(labels[i]) if labels is not None else ""


def query_files(queries) -> list[Path]:
    """The query image files (folders and manifests expanded), each checked to exist."""
    from himl.embedder import EmbedderError

    paths = []
    for q in queries:
        if not Path(q).expanduser().exists():
            raise EmbedderError(f"query image {q} does not exist")
        paths += read_listing(q).paths
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

        names = None if labels is None else [_label_text(labels, j) for j in range(len(labels))]
        path = plot_retrieval_grid(
            Lazy(query_paths), None, Lazy(gallery.items), names, indices, plot,
            query_ids=np.arange(len(query_paths)), top=k, scores=scores,
            query_titles=[Path(p).name for p in query_paths],
        )  # fmt: skip
        print(f"wrote {path}")


PLOT_SUFFIXES = (".png", ".pdf", ".svg", ".jpg")  # formats matplotlib writes by name


def check_outputs(out, plot, query) -> None:
    """EmbedderError, before any image is embedded, for an output that would be written
    elsewhere than named (numpy adds `.npz`, matplotlib `.png`) or not at all."""
    from himl.embedder import EmbedderError

    if not out and not query:
        raise EmbedderError("nothing to do: pass --out=FILE.npz and/or --query=IMAGES")
    if plot and not query:
        raise EmbedderError(f"--plot={plot} draws the neighbours of queries: add --query=IMAGES")
    for flag, value, suffixes in (("--out", out, (".npz",)), ("--plot", plot, PLOT_SUFFIXES)):
        if not value:
            continue
        path = Path(value).expanduser()
        if path.is_dir():
            raise EmbedderError(f"{flag}={value} is a directory: name a file in it")
        if path.suffix.lower() not in suffixes:
            raise EmbedderError(
                f"{flag}={value} must end in {' or '.join(suffixes)} (it would be written as "
                f"{path.name}{suffixes[0]})"
            )
        parent = next((p for p in path.absolute().parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise EmbedderError(f"{flag}={value}: {parent} is a file, not a directory")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)
    with exit_on_user_error("himl-embed"):
        check_outputs(_OUT.value, _PLOT.value, _QUERY.value)
        from himl.embedder import EmbedderError, Gallery, load_embedder
        from himl.runs import load_run_config, split_checkpoint_path

        input_shape = None
        if _INPUT_SHAPE.value is not None:
            try:
                input_shape = tuple(int(n) for n in _INPUT_SHAPE.value)
            except ValueError:
                raise EmbedderError(
                    f"--input_shape must be H,W,C integers, got {','.join(_INPUT_SHAPE.value)}"
                ) from None
        # Every file is checked before the model loads (the run's config is read first: it
        # says how its manifests are read).
        workdir, _ = split_checkpoint_path(_WORKDIR.value, _STEP.value)
        config = load_run_config(workdir) if workdir.is_dir() else None
        paths, level_names, labels, split = read_listing(_IMAGES.value, listing_options(config))
        queries = query_files(_QUERY.value or [])
        embedder = load_embedder(
            _WORKDIR.value, _STEP.value, batch_size=_BATCH.value, input_shape=input_shape
        )
        print(
            f"himl-embed: step {embedder.step} of {_WORKDIR.value}, {len(paths)} "
            f"image{'s' if len(paths) != 1 else ''}",
            file=sys.stderr,
        )
        embeddings = embedder.embed(paths, progress=_PROGRESS.value)
        if _OUT.value:
            out = write_embeddings(_OUT.value, embeddings, paths, level_names, labels, split)
            print(f"wrote {out}: {embeddings.shape[0]} x {embeddings.shape[1]} embeddings")
        if _QUERY.value:
            if _K.value > len(paths):
                print(f"note: --k={_K.value} > the {len(paths)} images: showing all of them",
                      file=sys.stderr)  # fmt: skip
            gallery = Gallery(embedder, embeddings, items=paths, labels=labels)
            search_and_report(
                embedder, gallery, queries, k=min(_K.value, len(paths)), plot=_PLOT.value,
                labels=labels,
            )  # fmt: skip


def run():
    """Console-script entry point."""
    help_from(__name__)
    run_quietly(main, "himl-embed")


if __name__ == "__main__":
    run()

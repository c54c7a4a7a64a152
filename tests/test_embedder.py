"""`himl.load_embedder` and `himl-embed` on a trained work directory."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import himl
from himl.data.embedded import load_embedded
from himl.data.export import write_image_tree
from himl.embedder import EmbedderError, Gallery
from himl.errors import UserError
from himl.models.inference import EmbeddingFunction
from himl.models.registry import build_model
from himl.runs import restore_model_variables

REPO = Path(__file__).parents[1]


@pytest.fixture
def run(tiny_run):
    """The shared tiny trained run (conftest.py)."""
    return tiny_run


@pytest.fixture(scope="module")
def unseen():
    return load_embedded().split("unseen")


def _reference_embeddings(config, workdir, split, step=None):
    # The evaluator's path: the model's variables of the checkpoint, the shared embedding fn.
    model = build_model(config.model)
    variables, _ = restore_model_variables(model, split.images.shape[1:], workdir, step)
    return EmbeddingFunction(model, batch_size=100)(variables, split.images)


def test_embed_arrays_equals_the_evaluator(run, unseen):
    workdir, config = run
    embedder = himl.load_embedder(workdir, batch_size=24)
    assert embedder.step == 8 and embedder.input_shape == (28, 28, 1)
    assert embedder.batch_size % 8 == 0  # split over the 8 test devices
    got = embedder.embed(unseen.images[:150])
    np.testing.assert_allclose(got, _reference_embeddings(config, workdir, unseen)[:150], atol=1e-5)


def test_step_and_checkpoint_path(run, unseen):
    workdir, config = run
    by_step = himl.load_embedder(workdir, step=4).embed(unseen.images[:20])
    by_path = himl.load_embedder(workdir / "checkpoints" / "4").embed(unseen.images[:20])
    np.testing.assert_array_equal(by_step, by_path)
    expected = _reference_embeddings(config, workdir, unseen, step=4)[:20]
    np.testing.assert_allclose(by_step, expected, atol=1e-5)
    assert not np.allclose(by_step, himl.load_embedder(workdir).embed(unseen.images[:20]))


def test_a_relative_work_directory_reads(run, unseen, monkeypatch):
    """As the README writes them (`--workdir=runs/photos`): orbax reads only absolute
    paths, and a relative one had been reported as a corrupt checkpoint."""
    workdir, _ = run
    expected = himl.load_embedder(workdir, step=4).embed(unseen.images[:20])
    monkeypatch.chdir(workdir.parent)
    relative = Path(workdir.name)
    for where, step in [(relative, 4), (relative / "checkpoints" / "4", None)]:
        got = himl.load_embedder(where, step=step).embed(unseen.images[:20])
        np.testing.assert_array_equal(got, expected)


def test_files_folders_and_resizing(run, unseen, tmp_path):
    workdir, _ = run
    embedder = himl.load_embedder(workdir)
    from himl.data.dataset import Dataset, Split

    small = Dataset("x", ("group", "class", "image"), 1, {0: "a", 1: "b"},
                    {"train": Split(unseen.images[:12], unseen.labels[:12])})  # fmt: skip
    paths = write_image_tree(small, tmp_path / "tree")
    from_files = embedder.embed(paths)
    np.testing.assert_allclose(from_files, embedder.embed(unseen.images[:12]), atol=1e-6)
    from_folder = embedder.embed(tmp_path / "tree")  # sorted paths below the folder
    order = np.argsort([str(p) for p in paths])
    np.testing.assert_allclose(from_folder, from_files[order], atol=1e-6)
    # Larger RGB images are converted and resized (shorter side) + centre-cropped.
    big = np.repeat(np.repeat(unseen.images[:4], 2, axis=1), 2, axis=2).repeat(3, axis=-1)
    assert embedder.embed(big).shape == (4, 16)


def test_a_dataset_loaded_at_another_size_embeds_as_its_files(run, unseen, tmp_path):
    """`load_custom`'s defaults decode at 224 px (crop 0.875); the embedder decodes those
    files again as the run's images (28 px here), not resizes the 224 px crops."""
    from himl.data.custom import load_custom
    from himl.data.dataset import Dataset, Split
    from himl.data.export import write_manifest

    workdir, _ = run
    embedder = himl.load_embedder(workdir)
    small = Dataset("x", ("group", "class", "image"), 1, {0: "a", 1: "b"},
                    {"train": Split(unseen.images[:40], unseen.labels[:40])})  # fmt: skip
    manifest = write_manifest(small, tmp_path / "m.csv")
    loaded = load_custom(manifest, verbose=False, test_fraction=0.5)
    split = next(iter(loaded.splits.values()))
    assert split.images.shape[1:] == (224, 224, 3)
    files = [split.images.source.root / split.images.source.files[i] for i in split.images.indices]
    np.testing.assert_allclose(embedder.embed(split.images), embedder.embed(files), atol=1e-6)


def test_a_manifest_is_a_gallery_and_a_query_from_python(run, unseen, tmp_path):
    """`gallery` / `embed` / `search` take a manifest as himl-embed --images does: its
    images, and its label columns as the gallery's labels (it was read as one image)."""
    from himl.data.dataset import Dataset, Split
    from himl.data.export import write_manifest

    workdir, _ = run
    embedder = himl.load_embedder(workdir)
    small = Dataset("x", ("group", "class", "image"), 1, {0: "a", 1: "b"},
                    {"train": Split(unseen.images[:10], unseen.labels[:10])})  # fmt: skip
    manifest = write_manifest(small, tmp_path / "m.csv")
    rows = [line.split(",") for line in manifest.read_text().splitlines()[1:]]
    files = [tmp_path / r[0] for r in rows]
    gallery = embedder.gallery(manifest)
    assert gallery.items == files
    assert gallery.labels.tolist() == [r[1:3] for r in rows]
    np.testing.assert_allclose(gallery.embeddings, embedder.embed(files), atol=1e-6)
    only_paths = tmp_path / "q.csv"
    only_paths.write_text("path\n" + "".join(f"{r[0]}\n" for r in rows[:3]))
    indices, _ = gallery.search(only_paths, k=1)
    assert indices[:, 0].tolist() == [0, 1, 2]


def test_gallery_search_is_exact(run, unseen):
    workdir, _ = run
    embedder = himl.load_embedder(workdir)
    gallery = embedder.gallery(unseen.images[:300])
    queries = unseen.images[300:320]
    indices, scores = gallery.search(queries, k=5)
    q = embedder.embed(queries)
    g = gallery.embeddings
    cos = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (
        g / np.linalg.norm(g, axis=1, keepdims=True)
    ).T
    for i in range(len(q)):  # brute force, ties to the smaller index
        best = sorted(range(len(g)), key=lambda j: (-cos[i, j], j))[:5]
        np.testing.assert_allclose(scores[i], cos[i, best], atol=1e-5)
        assert set(indices[i]) == set(best) or np.allclose(cos[i, indices[i]], cos[i, best])
    # Embeddings are accepted as queries too.
    np.testing.assert_array_equal(gallery.search(q, k=5)[0], indices)
    # Ties: every gallery row twice, the copies shuffled into other gallery blocks, so the
    # neighbours come in pairs of equal scores. Documented order (himl.eval.knn): by score,
    # then the smaller gallery index.
    perm = np.random.default_rng(0).permutation(len(g))
    source = np.concatenate([np.arange(len(g)), perm])  # the row of g each row copies
    doubled = Gallery(embedder, g[source])
    got, got_scores = doubled.search(q, k=6, block_size=128)
    for i in range(len(q)):
        want = sorted(range(len(source)), key=lambda j: (-cos[i, source[j]], j))[:6]
        np.testing.assert_array_equal(got[i], want)
        assert got_scores[i, 0] == got_scores[i, 1]  # the best score is a tie


def test_errors_are_one_line(run, tmp_path):
    workdir, _ = run
    with pytest.raises(EmbedderError, match="does not exist"):
        himl.load_embedder(tmp_path / "nothing")
    with pytest.raises(UserError, match=r"no checkpoint for step 5 .* have \[4, 8\]"):
        himl.load_embedder(workdir, step=5)
    embedder = himl.load_embedder(workdir)
    with pytest.raises(EmbedderError, match="cannot read image .*missing.png"):
        embedder.embed([tmp_path / "missing.png"])
    with pytest.raises(EmbedderError, match="images must be"):
        embedder.embed(np.zeros((2, 3), np.uint8))


@pytest.mark.slow
def test_himl_embed_command(run, unseen, tmp_path):
    workdir, _ = run
    small_ds = load_embedded()
    paths = write_image_tree(small_ds, tmp_path / "tree", split="unseen", per_class=5)

    def embed(*args):
        return subprocess.run(
            [sys.executable, "-m", "himl.embed_main", "--noprogress", f"--workdir={workdir}",
             *args],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    out = tmp_path / "e.npz"
    result = embed(f"--images={tmp_path / 'tree'}", f"--out={out}", f"--query={paths[0]}",
                   "--k=3", f"--plot={tmp_path / 'grid.png'}")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    z = np.load(out)
    assert z["embeddings"].shape == (15, 16)
    assert list(z["level_names"]) == ["level0", "level1"]
    assert {tuple(r) for r in z["labels"]} == {
        ("tops", "Pullover"), ("tops", "Shirt"), ("footwear", "Ankle boot")
    }  # fmt: skip
    expected = himl.load_embedder(workdir).embed([Path(p) for p in z["paths"]])
    np.testing.assert_allclose(z["embeddings"], expected, atol=1e-6)
    lines = result.stdout.splitlines()
    first = lines.index(f"query {paths[0]}")
    assert str(paths[0]) in lines[first + 1]  # the query itself is in the gallery: rank 1
    assert (tmp_path / "grid.png").stat().st_size > 0

    result = embed(f"--images={tmp_path / 'tree'}", f"--query={tmp_path / 'nope.png'}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"himl-embed: error: query image {tmp_path / 'nope.png'} does not exist"
    )


@pytest.mark.parametrize(
    "out,plot,query,message",
    [
        (None, None, None, "nothing to do: pass --out=FILE.npz and/or --query=IMAGES"),
        ("e.npz", "top.png", None, "--plot=top.png draws the neighbours of queries: add --query"),
        ("e.csv", None, None, "--out=e.csv must end in .npz (it would be written as e.csv.npz)"),
        ("dir", None, None, "--out=dir is a directory: name a file in it"),
        (None, "grid", ["q.png"], "--plot=grid must end in .png or .pdf or .svg or .jpg"),
        ("notes.txt/e.npz", None, None, "notes.txt is a file, not a directory"),
    ],
)
def test_himl_embed_outputs_are_checked_before_any_work(out, plot, query, message, tmp_path,
                                                        monkeypatch):  # fmt: skip
    """Each output is written where it is named, or refused before anything is embedded
    (numpy and matplotlib would append their suffix, and --plot alone drew nothing)."""
    from himl.embed_main import check_outputs
    from himl.embedder import EmbedderError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "dir").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(EmbedderError) as error:
        check_outputs(out, plot, query)
    assert message in str(error.value)
    check_outputs("new/e.NPZ", "new/top5.pdf", ["q.png"])  # fine

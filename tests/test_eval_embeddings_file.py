"""`himl-eval --embeddings` / `himl.eval.evaluate_embeddings`: embeddings made anywhere,
measured by the evaluators of a checkpoint evaluation (checked against the per-query
definitions, and against `himl-eval` on the same checkpoint)."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from himl.data.records import MalformedDataError
from himl.eval import evaluate_embeddings
from himl.eval.knn import EvalInputError
from tests.references.retrieval import reference_metrics

REPO = pathlib.Path(__file__).parents[1]
KS = (1, 2, 4)


def _labelled(rng, n=60):
    """Two levels of names; "other" is a class name under both groups (two classes)."""
    groups = rng.choice(["tops", "shoes"], size=n)
    fine = rng.choice(["a", "b", "other"], size=n)
    classes = np.char.add(np.char.add(groups, "/"), fine)  # the class identities
    centres = {c: rng.normal(size=8) for c in np.unique(classes)}
    emb = np.stack([centres[c] for c in classes]) + rng.normal(scale=1.5, size=(n, 8))
    return emb.astype(np.float32), np.stack([groups, fine], axis=1), classes


def test_an_embeddings_file_is_measured_from_the_definitions(tmp_path):
    rng = np.random.default_rng(0)
    emb, labels, classes = _labelled(rng, 80)
    split = np.where(np.arange(80) % 4 == 0, "query", "test")
    path = tmp_path / "baseline.npz"
    np.savez(path, embeddings=emb, labels=labels, level_names=["group", "item"], split=split)
    from himl.configs import default

    config = default.get_config()
    config.eval.ks = KS
    summary = evaluate_embeddings(path, config=config, out_dir=tmp_path / "out", plots=False)
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert written["results"] == json.loads(json.dumps(summary["results"]))
    assert written["level_names"] == ["group", "item"] and written["config"]["eval"]["ks"] == [
        1,
        2,
        4,
    ]
    for name in ("query", "test"):
        rows = split == name
        for level, ids in (("group", labels[rows, 0]), ("item", classes[rows])):
            e = emb[rows]
            expected = reference_metrics(e, ids, e, ids, KS, exclude_self=True)
            got = summary["results"][name][level]
            for key in ("recall@1", "recall@2", "recall@4", "map@r", "r_precision"):
                np.testing.assert_allclose(got[key], expected[key], rtol=1e-6, err_msg=key)
        assert got["num_classes"] == len(np.unique(classes[rows]))  # "other" twice
        assert 0 <= summary["results"][name]["linear_probe"]["accuracy"] <= 1

    # Integer labels of the same partition give the same numbers.
    as_ints = np.stack([np.unique(labels[:, 0], return_inverse=True)[1] * 7,
                        np.unique(classes, return_inverse=True)[1] + 100], axis=1)  # fmt: skip
    np.savez(path, embeddings=emb.astype(np.float64), labels=as_ints, split=split)
    again = evaluate_embeddings(path, config=config, out_dir=tmp_path / "ints", plots=False)
    for name in ("query", "test"):
        for a, b in zip(("group", "item"), ("level0", "level1"), strict=True):
            assert again["results"][name][b]["map@r"] == summary["results"][name][a]["map@r"]


def test_the_file_of_himl_embed_gives_the_numbers_of_himl_eval(tiny_run, tmp_path):
    """The same checkpoint's embeddings of 'unseen', written as himl-embed writes them
    (label names, level names, paths), evaluate exactly as `evaluate_checkpoint` does."""
    from himl.data.registry import load_dataset
    from himl.embed_main import write_embeddings
    from himl.eval.run import evaluate_checkpoint
    from himl.models.inference import EmbeddingFunction
    from himl.models.registry import build_model
    from himl.runs import restore_model_variables

    workdir, config = tiny_run
    checkpoint = evaluate_checkpoint(
        workdir, splits=["unseen"], out_dir=tmp_path / "ckpt", plots=False, progress=False
    )
    dataset = load_dataset(config.data)
    split = dataset.split("unseen")
    model = build_model(config.model)
    variables, _ = restore_model_variables(model, split.images.shape[1:], workdir)
    emb = EmbeddingFunction(model, batch_size=config.eval.batch_size)(variables, split.images)
    levels = dataset.eval_level_names
    names = [[dataset.label_name(j, int(v)) for j, v in enumerate(row[: len(levels)])]
             for row in split.labels]  # fmt: skip
    files = []
    for i in range(len(emb)):
        files.append(tmp_path / "img" / f"{i}.png")
        files[-1].parent.mkdir(exist_ok=True)
        Image.fromarray(np.asarray(split.images[i])[..., 0]).save(files[-1])
    path = write_embeddings(tmp_path / "unseen.npz", np.asarray(emb), files, levels, names)

    ours = evaluate_embeddings(path, out_dir=tmp_path / "file", plots=True)
    assert ours["level_names"] == list(levels)
    got, expected = ours["results"]["all"], checkpoint["results"]["unseen"]
    for level in levels:
        for key in ("recall@1", "recall@8", "map@r", "nmi", "ami"):
            np.testing.assert_allclose(got[level][key], expected[level][key], rtol=1e-6)
    assert got["mean_lca_height@1"] == expected["mean_lca_height@1"]
    for plot in ("all_recall_at_k.png", "all_embedding_2d.png", "all_retrievals.png"):
        assert (tmp_path / "file" / plot).stat().st_size > 1000
    # The probe's random halves follow the class ids (names sort in another order than the
    # dataset's ids): the dataset's own ids give its exact accuracy.
    np.savez(path, embeddings=emb, labels=split.labels[:, : len(levels)])
    ids = evaluate_embeddings(path, out_dir=tmp_path / "ids", plots=False)
    assert ids["results"]["all"]["linear_probe"] == expected["linear_probe"]


def _file(tmp_path, **arrays):
    rng = np.random.default_rng(1)
    emb, labels, _ = _labelled(rng, 12)
    path = tmp_path / "e.npz"
    np.savez(path, **{"embeddings": emb, "labels": labels, **arrays})
    return path


@pytest.mark.parametrize(
    "arrays,message",
    [
        ({"embeddings": None}, "no array 'embeddings' (has ['labels'])"),
        ({"embeddings": np.ones((12, 4), np.int32)}, "embeddings must be float [N, D]"),
        ({"embeddings": np.where(np.eye(12, 4) > 0, np.nan, 1.0)}, "row 0 is not finite (4 such"),
        ({"labels": np.array(["a"] * 11)}, "names [N] or [N, L] with N = 12"),
        ({"labels": np.array([["g", "a"]] * 11 + [["g", " "]])}, "labels row 11 column 1 is empty"),
        ({"labels": np.ones((12, 2), np.float32)}, "labels must be integers or names"),
        # names in an object array (a pandas column): np.load refuses pickles; say the fix
        ({"labels": np.array([["g", "a"]] * 12, object)}, "np.asarray(labels).astype(str)"),
        ({"split": np.array(["test"] * 11)}, "split must be 12 names (one per row)"),
        ({"level_names": np.array(["one"])}, "level_names must be 2 names (one per label column)"),
    ],
)  # fmt: skip
def test_a_bad_embeddings_file_is_one_line_naming_the_key(arrays, message, tmp_path):
    drop = [k for k, v in arrays.items() if v is None]
    path = _file(tmp_path, **{k: v for k, v in arrays.items() if v is not None})
    if drop:
        with np.load(path) as z:
            np.savez(path, **{k: z[k] for k in z.files if k not in drop})
    with pytest.raises(MalformedDataError) as error:
        evaluate_embeddings(path, out_dir=tmp_path / "out")
    assert message in str(error.value) and str(path) in str(error.value)
    assert not (tmp_path / "out").exists()  # nothing written


def test_splits_and_missing_images(tmp_path, capsys):
    path = _file(tmp_path, split=np.array(["test", "query"] * 6), paths=np.array(["gone.png"] * 12))
    with pytest.raises(
        EvalInputError, match=r"no split 'val' \(named by --splits\).*--splits=query,test"
    ):
        evaluate_embeddings(path, splits=["val"], out_dir=tmp_path / "out")
    summary = evaluate_embeddings(path, splits=["test"], out_dir=tmp_path / "out")
    assert list(summary["results"]) == ["test"]
    assert "12 of 12 paths are not files here (e.g. row 0: gone.png); the retrieval grid" in (
        capsys.readouterr().err
    )
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == [
        "test_embedding_2d.png", "test_recall_at_k.png"
    ]  # fmt: skip


def _eval(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "himl.eval", "--noprogress", *args],
        cwd=cwd, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_himl_eval_embeddings_command(tmp_path):
    path = _file(tmp_path)
    result = _eval("--embeddings=e.npz", "--config.eval.ks=1,3", "--noplots", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    written = json.loads((tmp_path / "e_eval" / "metrics.json").read_text())
    assert written["embeddings"] == str(path) and written["config"]["eval"]["ks"] == [1, 3]
    assert written["step"] is None  # the key a checkpoint's metrics.json has, read alike
    assert "R@3" in result.stdout and "linear probe on 'all' (e)" in result.stdout
    for args, message in [
        (["--embeddings=e.npz", "--step=3"], "--step does not apply to --embeddings, which"),
        (["--embeddings=e.npz", "--config.model.name=x"], "--config.model.name does not apply"),
        (["--embeddings=e.npz", "--config.eval.ks=1", "--config.eval.splits="],
         "--config.eval.splits does not apply to --embeddings: name the file's splits with "
         "--splits"),
        (["--embeddings=e.npz", "--workdir=runs/x"], "give --workdir (a himl-train run) or"),
        (["--embeddings=nothing.npz"], "nothing.npz: not a readable .npz"),
    ]:  # fmt: skip
        result = _eval(*args, cwd=tmp_path)
        assert result.returncode in (1, 2) and message in result.stderr, (
            args,
            result.stderr[-2000:],
        )
        # One line, not the usage text (46 lines) under it.
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr[-2000:]

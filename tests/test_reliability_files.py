"""Catalogue of damaged input files and eval requests (issue 13): one error naming the
file (or split), raised before any expensive work."""

import gzip
import pathlib
import shutil

import numpy as np
import pytest

from himl.data import fashion_mnist as fm
from himl.data.fashion_mnist import IDXFileError, load_idx_split, read_idx
from himl.errors import UserError

FMNIST = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"


def _idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file written from its definition: 0, 0, type 0x08, ndim, big-endian dims."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture
def idx_folder(tmp_path):
    """A tiny valid Fashion-MNIST folder (plain IDX files, 6 images per part)."""
    rng = np.random.default_rng(0)
    for part in ("train", "test"):
        images, labels = fm.IDX_FILES[part]
        (tmp_path / images).write_bytes(_idx_bytes(rng.integers(0, 255, (6, 28, 28))))
        (tmp_path / labels).write_bytes(_idx_bytes(np.arange(6)))
    return tmp_path


def test_valid_tiny_folder_reads(idx_folder):
    images, labels = load_idx_split(idx_folder, "train")
    assert images.shape == (6, 28, 28) and labels.tolist() == list(range(6))


def _damage(idx_folder, how):
    path = idx_folder / fm.IDX_FILES["train"][0]
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[:-100])
    elif how == "header_only":
        path.write_bytes(data[:6])
    elif how == "bad_magic":
        path.write_bytes(b"\x1f\x8b" + data[2:])
    elif how == "not_gzip":
        path.unlink()
        path = path.with_name(path.name + ".gz")
        path.write_bytes(data)
    elif how == "truncated_gzip":
        path.unlink()
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data)[:-200])
    elif how == "gzip_cut_in_array":
        path.unlink()
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data[:-50]))
    return path


@pytest.mark.parametrize(
    "how,expected",
    [
        ("truncated", "is truncated or corrupt"),
        ("header_only", "is truncated"),
        ("bad_magic", "bad magic number"),
        ("not_gzip", "is not a gzip file"),
        ("truncated_gzip", "is truncated or corrupt (gzip stream"),
        ("gzip_cut_in_array", "is truncated or corrupt"),
    ],
)
def test_damaged_idx_file_is_named_in_one_line(idx_folder, how, expected):
    path = _damage(idx_folder, how)
    with pytest.raises(IDXFileError) as err:
        load_idx_split(idx_folder, "train")
    assert str(path) in str(err.value) and expected in str(err.value)
    assert "\n" not in str(err.value) and isinstance(err.value, UserError)


def test_label_outside_the_ten_classes_names_file_and_row(idx_folder):
    labels = idx_folder / fm.IDX_FILES["train"][1]
    labels.write_bytes(_idx_bytes(np.array([0, 1, 2, 12, 4, 5])))
    with pytest.raises(IDXFileError, match=r"train-labels-idx1-ubyte: row 3 has label 12"):
        load_idx_split(idx_folder, "train")


@pytest.mark.skipif(not FMNIST.is_dir(), reason="shared Fashion-MNIST files not present")
def test_real_truncated_gzip_is_named(tmp_path):
    for path in FMNIST.glob("t10k-labels*"):
        shutil.copy(path, tmp_path / path.name)
    victim = tmp_path / "t10k-labels-idx1-ubyte.gz"
    victim.write_bytes(victim.read_bytes()[:1000])
    with pytest.raises(IDXFileError, match="t10k-labels-idx1-ubyte.gz is truncated"):
        read_idx(victim)


# --- himl-eval ----------------------------------------------------------------------------


@pytest.fixture
def trained_workdir(tiny_run):
    """The shared tiny trained run (conftest.py)."""
    return tiny_run[0]


def test_eval_checks_every_split_before_embedding_any(trained_workdir, monkeypatch):
    from himl.eval.knn import EvalInputError
    from himl.eval.run import evaluate_checkpoint
    from himl.models.inference import EmbeddingFunction

    def no_embedding(*args, **kwargs):
        raise AssertionError("a split was embedded")

    monkeypatch.setattr(EmbeddingFunction, "__call__", no_embedding)
    with pytest.raises(EvalInputError, match="has no split 'nope' \\(named by --splits\\)"):
        evaluate_checkpoint(trained_workdir, splits=["unseen", "nope"], plots=False)


def test_eval_names_a_garbled_config_json(trained_workdir, tmp_path):
    from himl.eval.run import evaluate_checkpoint
    from himl.train.workdir import WorkdirError

    shutil.copytree(trained_workdir, tmp_path / "run")
    (tmp_path / "run" / "config.json").write_bytes(b"\x00\xff garbage")
    with pytest.raises(WorkdirError, match="config.json is not valid JSON"):
        evaluate_checkpoint(tmp_path / "run", plots=False)

"""The tensorflow-datasets store of a downloaded dataset (`himl.data.tfds_builders`): one
store per file list, shared by label layouts; a store of its own when the annotations list
other files or order them otherwise; written once by runs that start together; and only
after a run's checks have passed."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_data_omniglot import write_set
from test_data_readers import write_cub, write_inshop

from himl.data.images import FileSource
from himl.data.readers_fgvc import read_cub
from himl.data.readers_hier import read_inshop, read_omniglot
from himl.data.real import image_source, to_dataset
from himl.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def stores(data_dir: Path) -> list[Path]:
    return sorted(data_dir.glob("himl_*/2.0.0"))


def assert_store_holds_the_files(records, data_dir):
    """Every record's bytes from the store equal the file the annotations name."""
    source, files = image_source(records, data_dir), FileSource(records.root, records.files)
    for i in range(len(records.files)):
        assert source[i] == files[i], records.files[i]


def test_one_store_serves_every_label_layout(tmp_path):
    root, data_dir = write_inshop(tmp_path / "inshop"), tmp_path / "tfds"
    datasets = {}
    for layout in ("official", "gender"):  # the second crashed on the first one's labels
        records = read_inshop(root, layout=layout)
        source = image_source(records, data_dir)
        datasets[layout] = to_dataset(records, source, image_size=8, crop_fraction=1.0)
        datasets[layout].open()
    assert len(stores(data_dir)) == 1
    official, gender = (datasets[k].split("train") for k in ("official", "gender"))
    assert official.labels.shape[1] == 4 and gender.labels.shape[1] == 3
    np.testing.assert_array_equal(official.images[:], gender.images[:])


def test_annotations_naming_other_files_get_their_own_store(tmp_path):
    root, data_dir = write_cub(tmp_path / "data"), tmp_path / "tfds"
    assert_store_holds_the_files(read_cub(root), data_dir)
    # Two middle rows exchange their files (same class): the first and last records, and
    # the counts, stay as they were - the old store would serve their old bytes.
    lines = (root / "images.txt").read_text().splitlines()
    (a, first), (b, second) = (line.split() for line in lines[3:5])
    lines[3:5] = [f"{a} {second}", f"{b} {first}"]
    (root / "images.txt").write_text("\n".join(lines) + "\n")
    assert_store_holds_the_files(read_cub(root), data_dir)
    assert len(stores(data_dir)) == 2


def test_split_protocols_that_order_the_files_otherwise_share_a_data_dir(tmp_path):
    root, data_dir = tmp_path / "omniglot", tmp_path / "tfds"
    write_set(root, "images_background", {"Alpha": 4, "Beta": 4, "Gamma": 4, "Delta": 4})
    write_set(root, "images_evaluation", {"Eps": 4})
    for protocol in ("characters", "alphabets"):  # the second was refused
        assert_store_holds_the_files(read_omniglot(root, protocol=protocol), data_dir)
    assert len(stores(data_dir)) == 2


PREPARE_WHEN_TOLD = """
import sys, time
from pathlib import Path
from himl.data.readers_fgvc import read_cub
from himl.data.tfds_builders import prepare
records = read_cub(sys.argv[1])
while not Path(sys.argv[3]).exists():  # both processes start preparing together
    time.sleep(0.01)
prepare(records, sys.argv[2])
"""


def write_cub_copies(root: Path, copies: int) -> Path:
    """`write_cub` with every image listed `copies` times under other names (a dataset
    large enough for two preparations to overlap)."""
    root = write_cub(root)
    tables = {n: (root / n).read_text().split() for n in ("images.txt", "image_class_labels.txt",
                                                          "train_test_split.txt")}  # fmt: skip
    num = len(tables["images.txt"]) // 2
    for copy in range(1, copies):
        for name, cells in tables.items():
            rows = [
                f"{int(i) + copy * num} {v}" for i, v in zip(cells[::2], cells[1::2], strict=True)
            ]
            if name == "images.txt":
                rows = [row.replace(".jpg", f"_{copy}.jpg") for row in rows]
                for path in cells[1::2]:
                    image = root / "images" / path
                    image.with_name(f"{image.stem}_{copy}.jpg").write_bytes(image.read_bytes())
            with open(root / name, "a") as f:
                f.write("\n".join(rows) + "\n")
    return root


@pytest.mark.slow
def test_runs_started_together_write_the_store_once(tmp_path):
    root, data_dir, go = write_cub_copies(tmp_path / "data", 20), tmp_path / "tfds", tmp_path / "go"
    command = [sys.executable, "-c", PREPARE_WHEN_TOLD, str(root), str(data_dir), str(go)]
    runs = [subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True)]
    runs.append(subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True))
    go.touch()
    errors = [run.communicate(timeout=300)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], errors  # one had a FileExistsError
    assert len(stores(data_dir)) == 1 and not list(data_dir.glob("*/incomplete*"))
    assert_store_holds_the_files(read_cub(root), data_dir)


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"eval.splits": ("tset",)}, "has no split 'tset'"),
        ({"data.batch_size": 16, "data.samples_per_class": 4}, "needs 4 classes"),
    ],
)
def test_a_run_checks_everything_before_writing_the_store(tmp_path, overrides, message):
    from configs.cub import get_config
    from himl.train.loop import train_and_evaluate

    config = get_config("tiny")
    config.data.manual_dir = str(write_cub(tmp_path / "data"))
    config.data.data_dir = str(tmp_path / "tfds")
    config.data.val_fraction = 0.0
    for key, value in overrides.items():
        section, name = key.split(".")
        config[section][name] = value
    with pytest.raises(UserError, match=message):
        train_and_evaluate(config, tmp_path / "run", progress=False)
    assert not stores(tmp_path / "tfds")  # it was written before the error


def test_an_image_bad_in_the_store_names_the_store_to_delete(tmp_path):
    """A JPEG cut near its end has a whole header: it is copied into the store and fails
    when decoded. Replacing the file is not enough (the store keeps its bytes): the error
    names the store folder to delete."""
    root, data_dir = write_cub(tmp_path / "data"), tmp_path / "tfds"
    records = read_cub(root)
    path = root / records.files[4]
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) * 4 // 5])
    dataset = to_dataset(records, image_source(records, data_dir), image_size=8, crop_fraction=1.0)
    dataset.open()
    (store,) = stores(data_dir)
    split, row = next(
        (s, int(np.flatnonzero(s.images.indices == 4)[0]))
        for s in dataset.splits.values()
        if 4 in s.images.indices
    )
    with pytest.raises(UserError) as error:
        split.images[row]
    assert f"{path} (read from its copy in the store {store.parent}: after replacing the " in str(
        error.value
    )
    assert str(error.value).count(str(store.parent)) == 1

"""Users' own hierarchical data (`himl.data.custom`): manifests, folder trees, .npz, splits,
and one clear line for each kind of bad input."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from himl.data import custom
from himl.data.custom import load_custom
from himl.data.defaults import custom_data_config
from himl.data.embedded import load_embedded
from himl.data.export import write_image_tree, write_manifest, write_npz
from himl.data.images import CorruptImageError
from himl.data.records import MalformedDataError, MissingDataError
from himl.errors import UserError

REPO = Path(__file__).parents[1]
GRAY_28 = {"image_size": 28, "eval_crop": 1.0, "channels": 1, "verbose": False}


@pytest.fixture(scope="module")
def embedded():
    return load_embedded()


@pytest.fixture(scope="module")
def tree(embedded, tmp_path_factory):
    """A folder tree group/class/<id>.png: 10 images of each of the 7 seen classes."""
    root = tmp_path_factory.mktemp("tree")
    write_image_tree(embedded, root, split="train", per_class=10)
    return root


def _write_csv(path, header, rows, delimiter=","):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _tree_rows(root):
    """(path relative to root, group, class) of every PNG of the tree."""
    return [(p.relative_to(root).as_posix(), *p.relative_to(root).parts[:2])
            for p in sorted(root.rglob("*.png"))]  # fmt: skip


# --- the three sources give the same dataset ---------------------------------------------


def test_folder_tree_labels_names_and_pixels(tree, embedded):
    ds = load_custom(tree, levels=("group", "class"), **GRAY_28)
    assert ds.level_names == ("group", "class", "image")
    assert ds.class_level == 1
    assert ds.label_names[0] == ("bags", "bottoms", "dresses", "footwear", "tops")
    assert set(ds.class_names.values()) == {
        "Bag", "Coat", "Dress", "Sandal", "Sneaker", "T-shirt_top", "Trouser"
    }  # fmt: skip
    everything = np.concatenate([s.labels for s in ds.splits.values()])
    assert len(everything) == 70
    assert sorted(everything[:, 2]) == list(range(70))  # the instance column: one per image
    # Every image decodes to the pixels it was written from (PNG is lossless).
    train = ds.split("train")
    source_train = embedded.split("train")
    for i in range(0, len(train), 7):
        path = Path(train.images.source.name(int(train.images.indices[i])))
        original = source_train.images[
            np.flatnonzero(source_train.labels[:, 2] == int(path.stem))[0]
        ]
        np.testing.assert_array_equal(train.images[i], original)
        group, cls = (ds.label_names[lvl][train.labels[i, lvl]] for lvl in range(2))
        assert path.parent.name == cls and path.parent.parent.name == group


def test_manifest_csv_tsv_jsonl_equal_folder_tree(tree, tmp_path):
    rows = _tree_rows(tree)
    by_folder = load_custom(tree, levels=("group", "class"), **GRAY_28)
    abs_rows = [(str(tree / r[0]), *r[1:]) for r in rows]  # absolute paths work too
    csv_path = _write_csv(tmp_path / "m.csv", ["path", "group", "class"], abs_rows)
    tsv_path = _write_csv(tmp_path / "m.tsv", ["class_name", "path", "group", "class"],
                          [(r[2], *r) for r in abs_rows], delimiter="\t")  # fmt: skip
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text("".join(json.dumps({"path": p, "group": g, "class": c}) + "\n"
                             for p, g, c in abs_rows))  # fmt: skip
    for source, options in ((csv_path, {}), (tsv_path, {"levels": ("group", "class")}),
                            (jsonl, {})):  # fmt: skip
        ds = load_custom(source, **options, **GRAY_28)
        assert ds.level_names == ("group", "class", "image")
        for name in ("train", "test"):
            np.testing.assert_array_equal(ds.split(name).labels, by_folder.split(name).labels)
            np.testing.assert_array_equal(
                ds.split(name).images[:5], by_folder.split(name).images[:5]
            )


def test_npz_in_memory_with_names(embedded, tmp_path):
    train = embedded.split("train")
    labels = train.labels[:, :2]
    path = tmp_path / "d.npz"
    np.savez(path, images=train.images[..., 0], labels=labels,
             level_names=np.array(["group", "class"]), class_names=np.array(
                 ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                  "Sneaker", "Bag", "Ankle boot"]))  # fmt: skip
    ds = load_custom(path, verbose=False)
    assert isinstance(ds.split("train").images, np.ndarray)
    assert ds.split("train").images.shape[1:] == (28, 28, 1)
    assert "Trouser" in ds.class_names.values()
    total = sum(len(s) for s in ds.splits.values())
    assert total == len(train)
    # Dense ids that keep the tree: every class id has one group id.
    for split in ds.splits.values():
        for c in np.unique(split.labels[:, 1]):
            assert len(np.unique(split.labels[split.labels[:, 1] == c, 0])) == 1


def test_integer_labels_sort_numerically(tmp_path):
    rows = [(f"{i}.png", "g", str(c)) for i, c in enumerate([10, 2, 2, 10, 33, 33])]
    for r in rows:
        (tmp_path / r[0]).write_bytes(b"")
    table = custom.read_manifest(_write_csv(tmp_path / "m.csv", ["path", "g", "c"], rows))
    ids, names = custom.encode_levels(table)
    assert names[1] == ("2", "10", "33")
    assert ids[:, 1].tolist() == [1, 0, 0, 1, 2, 2]


# --- splits ------------------------------------------------------------------------------


def test_dml_split_is_class_disjoint_seeded_and_complete(tree):
    a = load_custom(tree, split_seed=3, **GRAY_28)
    b = load_custom(tree, split_seed=3, **GRAY_28)
    c = load_custom(tree, split_seed=4, test_fraction=0.3, **GRAY_28)
    train, test = a.split("train").labels, a.split("test").labels
    assert not set(train[:, 1]) & set(test[:, 1])
    assert len(np.unique(test[:, 1])) == 4  # round(0.5 * 7)
    assert len(train) + len(test) == 70
    np.testing.assert_array_equal(train, b.split("train").labels)
    assert len(np.unique(c.split("test").labels[:, 1])) == 2  # round(0.3 * 7)


def test_dml_split_at_a_coarse_level(tree):
    ds = load_custom(tree, split_level="level0", **GRAY_28)
    assert not set(ds.split("train").labels[:, 0]) & set(ds.split("test").labels[:, 0])


def test_seen_unseen_protocol(tree):
    ds = load_custom(tree, protocol="seen_unseen", test_fraction=0.5, seen_test_fraction=0.2,
                     **GRAY_28)  # fmt: skip
    train, seen_test, unseen = (ds.split(s).labels for s in ("train", "seen_test", "unseen"))
    # tops has 2 seen classes (T-shirt, Coat), footwear 2 (Sandal, Sneaker): one of each
    # group is unseen; groups with one class keep it.
    assert len(np.unique(unseen[:, 1])) == 2
    assert set(unseen[:, 0]) <= set(train[:, 0])  # unseen classes under seen groups
    assert not set(unseen[:, 1]) & set(train[:, 1])
    assert set(seen_test[:, 1]) == set(train[:, 1])  # the same seen classes, other images
    assert not set(seen_test[:, 2]) & set(train[:, 2])
    assert len(seen_test) == 2 * len(np.unique(train[:, 1]))  # round(0.2 * 10) per class


def test_split_column_is_used(tree, tmp_path):
    rows = [
        (str(tree / p), g, c, "test" if c == "Bag" else "train") for p, g, c in _tree_rows(tree)
    ]
    ds = load_custom(_write_csv(tmp_path / "m.csv", ["path", "group", "class", "split"], rows),
                     **GRAY_28)  # fmt: skip
    assert sorted(ds.splits) == ["test", "train"]
    assert {ds.class_names[c] for c in ds.split("test").labels[:, 1]} == {"Bag"}


def test_val_fraction_carves_classes(tree):
    ds = load_custom(tree, val_fraction=0.3, **GRAY_28)
    assert not set(ds.split("val").labels[:, 1]) & set(ds.split("train_no_val").labels[:, 1])


def test_written_manifest_round_trips(embedded, tmp_path):
    path = write_manifest(embedded, tmp_path / "m.csv", splits=("train", "unseen"), per_class=3)
    ds = load_custom(path, **GRAY_28)
    assert sorted(ds.splits) == ["train", "unseen"]
    assert len(ds.split("unseen")) == 9


def test_a_lazily_decoded_dataset_written_out_reads_back_the_same(tree, tmp_path):
    """Its files are copied, not its decoded pixels: those are already resized and
    centre-cropped, and were cropped again when read back (11% of pixels changed)."""
    options = {"image_size": 20, "eval_crop": 0.75, "channels": 1, "verbose": False}
    source = load_custom(tree, **options)
    path = write_manifest(source, tmp_path / "m.csv", splits=["train", "test"])
    back = load_custom(path, **options)
    for split in ("train", "test"):  # the manifest keeps the rows' order
        np.testing.assert_array_equal(back.split(split).images[:], source.split(split).images[:])
    test = source.split("test").images
    written = write_image_tree(source, tmp_path / "t", split="test")
    for row, file in enumerate(written):
        original = test.source.files[test.indices[row]]
        assert file.suffix == ".png" and file.read_bytes() == (tree / original).read_bytes()


def test_written_npz_round_trips_every_split(embedded, tmp_path):
    """`write_npz` keeps every split, its pixels in order, and each image's class name and
    coarse label; `himl.data.custom` reads it back with the dataset's own splits."""
    ds = load_custom(write_npz(embedded, tmp_path / "e.npz"), verbose=False)
    assert sorted(ds.splits) == sorted(embedded.splits)
    assert ds.level_names[: ds.class_level + 1] == embedded.eval_level_names
    for name, want in embedded.splits.items():
        got = ds.split(name)
        np.testing.assert_array_equal(got.images, want.images)
        c, g = ds.class_level, ds.class_level - 1
        got_names = [ds.label_name(c, int(v)) for v in got.labels[:, c]]
        want_names = [embedded.label_name(c, int(v)) for v in want.labels[:, c]]
        assert got_names == want_names
        assert [ds.label_name(g, int(v)) for v in got.labels[:, g]] == [
            str(v) for v in want.labels[:, g]
        ]


# --- bad input: one line naming the file and the row -------------------------------------


def _manifest(tmp_path, text):
    path = tmp_path / "m.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, expected",
    [
        ("path,group,class\na.png,g,c\nb.png,g\n", r"m.csv:3: 2 columns, the header has 3"),
        ("path,group,class\na.png,g,c\nb.png,,c\n", r"m.csv:3: empty value in label column 'gr"),
        ("file,group\na.png,g\n", r"no path column 'path'"),
        ("path,group,split\na.png,g,training\n", r"m.csv:2: split 'training' is not one of"),
        ("path,group\n", r"no rows after the header"),
        ("", r"empty file"),
        ("path,group,class\na.png,tops,x\nb.png,shoes,x\n",
         r"label 'x' \(level 'class'\) is under two parents: 'tops' \(.*m.csv:2\) and 'shoes' "
         r"\(.*m.csv:3\)"),
    ],
)  # fmt: skip
def test_malformed_manifest_is_one_line(tmp_path, text, expected):
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(MalformedDataError, match=expected) as info:
        load_custom(_manifest(tmp_path, text), **GRAY_28)
    assert "\n" not in str(info.value)


def test_unique_labels_option_separates_same_names(tree, tmp_path):
    rows = [
        (str(tree / p), g, "other" if c in ("Coat", "Sandal") else c)
        for p, g, c in _tree_rows(tree)
    ]
    path = _write_csv(tmp_path / "m.csv", ["path", "group", "class"], rows)
    with pytest.raises(MalformedDataError, match="'other'.*two parents"):
        load_custom(path, **GRAY_28)
    ds = load_custom(path, unique_labels=True, **GRAY_28)
    assert {"tops/other", "footwear/other"} <= set(ds.label_names[1])


def test_missing_images_counted_with_rows(tree, tmp_path):
    rows = [(str(tree / p), g, c) for p, g, c in _tree_rows(tree)]
    rows[5] = (str(tmp_path / "gone.png"), *rows[5][1:])
    rows[9] = (str(tmp_path / "gone2.png"), *rows[9][1:])
    path = _write_csv(tmp_path / "m.csv", ["path", "group", "class"], rows)
    with pytest.raises(
        MissingDataError, match=r"2 of 70 listed images are missing, e.g. .*m.csv:7: .*gone.png"
    ):
        load_custom(path, **GRAY_28)


def test_files_that_are_not_images_are_named_before_any_work(tree, tmp_path):
    """An empty file, text saved as .jpg and a PNG cut inside its header are each named
    with their row when the data is read; a file cut after its header is found when
    decoded (training then saves first: tests/test_resume_rules.py)."""
    rows = [(str(tree / p), g, c) for p, g, c in _tree_rows(tree)]
    png = Path(rows[0][0]).read_bytes()
    broken = {3: ("empty.jpg", b""), 8: ("text.jpg", b"not an image"), 12: ("cut.png", png[:20])}
    for i, (name, data) in broken.items():
        (tmp_path / name).write_bytes(data)
        rows[i] = (str(tmp_path / name), *rows[i][1:])
    path = _write_csv(tmp_path / "m.csv", ["path", "group", "class"], rows)
    with pytest.raises(CorruptImageError) as error:
        load_custom(path, **GRAY_28)
    message = str(error.value)
    assert message.startswith(f"{path}: 3 of 70 listed images cannot be read as images, e.g. ")
    assert f"m.csv:5: {tmp_path / 'empty.jpg'} (empty file)" in message
    assert f"m.csv:10: {tmp_path / 'text.jpg'} (cannot identify image file)" in message
    assert f"m.csv:14: {tmp_path / 'cut.png'} (" in message
    (tmp_path / "cut.png").write_bytes(png[: len(png) // 2])  # the header is whole
    original = [(str(tree / p), g, c) for p, g, c in _tree_rows(tree)]
    rows[3], rows[8] = original[3], original[8]
    load_custom(_write_csv(path, ["path", "group", "class"], rows), **GRAY_28)


def test_class_with_one_training_image(tree, tmp_path):
    rows = [(str(tree / p), g, c) for p, g, c in _tree_rows(tree)]
    wallet = tmp_path / "wallet.png"  # another file: an image listed twice is refused
    wallet.write_bytes(Path(rows[0][0]).read_bytes())
    rows.append((str(wallet), "bags", "Wallet"))
    rows[5] = (str(tmp_path / "gone.png"), *rows[5][1:])  # named by the later file pass
    rows = [(*r, "train") for r in rows]
    path = _write_csv(tmp_path / "m.csv", ["path", "group", "class", "split"], rows)
    # The label checks come first: the pass over every file's header is the slow one.
    with pytest.raises(MalformedDataError, match=r"class 'Wallet' .* 1 training image .*m.csv:72"):
        load_custom(path, **GRAY_28)


def test_folder_tree_errors(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x.png").write_bytes(b"")
    (tmp_path / "a" / "y.png").write_bytes(b"")
    with pytest.raises(MalformedDataError, match="different depths"):
        load_custom(tmp_path, **GRAY_28)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingDataError, match="no image files"):
        load_custom(tmp_path / "empty", **GRAY_28)
    with pytest.raises(MalformedDataError, match="directly in the folder"):
        load_custom(tmp_path / "a" / "b", **GRAY_28)
    (tmp_path / "a" / "y.png").unlink()
    with pytest.raises(MalformedDataError, match="2 label folders deep, .* names 1 level"):
        load_custom(tmp_path, levels=("x",), **GRAY_28)
    with pytest.raises(MissingDataError, match="does not exist"):
        load_custom(tmp_path / "nope", **GRAY_28)


def test_undecodable_image_names_the_file(tree, tmp_path):
    rows = [(str(tree / p), g, c) for p, g, c in _tree_rows(tree)]
    bad = tmp_path / "bad.png"  # its header is whole (the check when read passes it)
    png = Path(rows[0][0]).read_bytes()
    bad.write_bytes(png[: len(png) // 2])
    rows[0] = (str(bad), *rows[0][1:])
    ds = load_custom(_write_csv(tmp_path / "m.csv", ["path", "group", "class"], rows), **GRAY_28)
    split = next(s for s in ds.splits.values()
                 if str(bad) in [str(s.images.source.root / s.images.source.files[int(i)])
                                 for i in s.images.indices])  # fmt: skip
    # The file and the manifest row that lists it.
    with pytest.raises(UserError, match=f"cannot decode image {bad} \\(.*m.csv:2\\)"):
        split.images[: len(split)]


def test_npz_errors(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, images=np.zeros((4, 8, 8), np.float32), labels=np.zeros(4, np.int64))
    with pytest.raises(MalformedDataError, match="images must be uint8"):
        load_custom(path, verbose=False)
    np.savez(path, pictures=np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(MalformedDataError, match="no array 'images'"):
        load_custom(path, verbose=False)
    np.savez(path, images=np.zeros((4, 8, 8), np.uint8), labels=np.zeros(3, np.int64))
    with pytest.raises(MalformedDataError, match="labels must be integers"):
        load_custom(path, verbose=False)


# --- through the config and the command line ---------------------------------------------


def test_config_and_training_batches(tree):
    from himl.configs import custom as custom_config
    from himl.data.registry import input_spec, load_dataset
    from himl.data.sampling import make_batcher

    config = custom_config.get_config("small")
    config.data.custom.source = str(tree)
    config.data.custom.channels = 1
    config.data.batch_size, config.data.samples_per_class = 6, 2
    ds = load_dataset(config.data)
    assert input_spec(config.data) == ((32, 32, 1), 1.0)
    batch = make_batcher(config.data, ds, seed=0)(0)
    assert batch["images"].shape == (6, 2, 32, 32, 1)
    assert batch["labels"].shape == (6, 3)


def test_config_rejects_unknown_arg():
    from himl.configs import custom as custom_config

    with pytest.raises(ValueError, match="unknown arg 'smal'"):
        custom_config.get_config("smal")


@pytest.mark.slow
def test_himl_train_on_a_folder_tree_and_a_bad_manifest(tree, tmp_path):
    def train(*args):
        return subprocess.run(
            [sys.executable, "-m", "himl.train", "--noprogress", "--config=configs/custom.py:small",
             f"--workdir={tmp_path / 'run'}", "--config.data.custom.channels=1",
             "--config.data.batch_size=8", "--config.data.samples_per_class=2",
             "--config.data.custom.test_fraction=0.3",
             "--config.train.steps=3", "--config.train.log_every=1", *args],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    result = train(f"--config.data.custom.source={tree}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "split 'test'" in result.stdout
    rows = [(str(tree / p), g, c) for p, g, c in _tree_rows(tree)]
    rows[4] = ("nope.png", *rows[4][1:])
    bad = _write_csv(tmp_path / "m.csv", ["path", "group", "class"], rows)
    result = train(f"--config.data.custom.source={bad}", f"--workdir={tmp_path / 'run2'}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("himl-train: error: ")
    assert "1 of 70 listed images are missing, e.g. " in result.stderr
    assert not (tmp_path / "run2").exists()


def test_a_run_reads_no_image_file_before_its_other_checks(tree, tmp_path):
    """The pass over every image file's header is a run's slowest check (a minute for a
    million files): a config mistake that needs only the labels is named before it, and
    a bad file is named after the label checks, before the work directory is written."""
    from himl.configs import custom as custom_config
    from himl.errors import ConfigError
    from himl.train.loop import train_and_evaluate

    rows = [(str(tree / p), g, c) for p, g, c in _tree_rows(tree)]
    (tmp_path / "text.png").write_text("not an image")
    rows[6] = (str(tmp_path / "text.png"), *rows[6][1:])
    config = custom_config.get_config("small")
    config.data.custom.source = str(_write_csv(tmp_path / "m.csv", ["path", "g", "c"], rows))
    config.data.custom.channels = 1
    config.data.batch_size, config.data.samples_per_class = 8, 4
    config.loss.name, config.loss.flat_level = "supcon", "gruop"
    with pytest.raises(ConfigError, match="unknown config.loss.flat_level 'gruop'"):
        train_and_evaluate(config, tmp_path / "run", progress=False)
    config.loss.flat_level = "g"
    with pytest.raises(
        CorruptImageError, match=r"1 of 70 listed images cannot be read .*m.csv:8: .*text.png"
    ):
        train_and_evaluate(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_one_call_from_python(tree):
    import himl.data

    ds = himl.data.load("custom", source=str(tree), channels=1, image_size=28, val_fraction=0.0)
    assert sorted(ds.splits) == ["test", "train"]
    with pytest.raises(UserError, match="no field 'sauce'"):
        himl.data.load("custom", sauce=str(tree))


# --- review fixes: duplicates, label order, links, config checks, encodings, export ------


def _pngs(root, folders, n=3):
    """`root/<folder>/img<i>.png`: small distinct RGB images; the paths, sorted."""
    paths = []
    for k, folder in enumerate(folders):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = np.random.default_rng(100 * k + i).integers(0, 256, (12, 12, 3), np.uint8)
            paths.append(root / folder / f"img{i}.png")
            Image.fromarray(pixels).save(paths[-1])
    return sorted(paths)


SMALL = {"image_size": 8, "eval_crop": 1.0, "verbose": False}


@pytest.mark.parametrize("relabel", [False, True])
def test_image_listed_twice_is_refused(tmp_path, relabel):
    """The same file twice (other labels, or the same; by another spelling of its path)
    is one line naming both rows: a copy would be its own nearest neighbour."""
    _pngs(tmp_path, ["a/x", "a/y", "b/z", "b/w"])
    rows = [(p.relative_to(tmp_path).as_posix(), *p.relative_to(tmp_path).parts[:2])
            for p in sorted(tmp_path.rglob("*.png"))]  # fmt: skip
    again = (f"./{rows[0][0]}", "a", "y" if relabel else "x")  # resolves to the row-2 file
    path = _write_csv(tmp_path / "m.csv", ["path", "group", "class"], [*rows, again])
    with pytest.raises(MalformedDataError) as info:
        load_custom(path, **SMALL)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:14: image ./a/x/img0.png is already listed at {path}:2")
    assert f"here as 'a/{again[2]}'" in message


def test_image_linked_twice_into_a_tree_is_refused(tmp_path):
    _pngs(tmp_path, ["g/a", "g/b"])
    (tmp_path / "g" / "b" / "z.png").symlink_to(tmp_path / "g" / "a" / "img1.png")
    with pytest.raises(MalformedDataError, match=r"g/b/z.png is already listed at .*g/a/img1.png"):
        load_custom(tmp_path, **SMALL)


def test_label_ids_do_not_depend_on_the_hash_seed():
    """Integer-like labels that tie by value ("1", "01") are ordered by text, so ids (and
    the seeded split) are the same in every process; texts like "--5" or "²" are names."""
    code = (
        "from himl.data.custom import LabelTable, encode_levels\n"
        "names = ['2', '01', '1', '--5', '002', '²', '001', '02', '-3', '+4']\n"
        "t = LabelTable('x', ('c',), [(n,) for n in names], [''] * len(names))\n"
        "print(encode_levels(t)[1][0])"
    )
    outputs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={"PYTHONHASHSEED": str(seed), "PATH": ""}).stdout.strip()
        for seed in range(6)
    }  # fmt: skip
    assert outputs == {str(("-3", "001", "01", "1", "002", "02", "2", "+4", "--5", "²"))}


def test_linked_class_folders_are_followed(tmp_path):
    _pngs(tmp_path / "s", ["g/a", "g/b"])
    _pngs(tmp_path / "elsewhere", ["c"])
    (tmp_path / "s" / "g" / "c").symlink_to(tmp_path / "elsewhere" / "c")
    ds = load_custom(tmp_path / "s", **SMALL)
    assert ds.label_names == (("g",), ("a", "b", "c"))
    assert sum(len(s) for s in ds.splits.values()) == 9
    # A link back up the tree (a cycle) is one line, not an endless walk.
    (tmp_path / "s" / "g" / "a" / "loop").symlink_to(tmp_path / "s" / "g")
    with pytest.raises(MalformedDataError, match=r"g/a/loop: the same folder as .*s/g "):
        load_custom(tmp_path / "s", **SMALL)


def test_unreadable_folder_is_named(tmp_path, monkeypatch):
    import os

    _pngs(tmp_path, ["g/a", "g/b"])
    scandir = os.scandir

    def denied(path="."):
        if str(path).endswith("b"):
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", denied)
    with pytest.raises(MissingDataError, match=r"g/b: cannot read the folder \(Permission denied"):
        custom.find_images(tmp_path)


@pytest.mark.parametrize(
    "option, expected",
    [
        ({"protocol": "seenunseen"}, r"unknown config.data.custom.protocol 'seenunseen'"),
        ({"test_fraction": 2}, r"config.data.custom.test_fraction must be a number in \(0, 1\)"),
        ({"seen_test_fraction": 0.0}, r"config.data.custom.seen_test_fraction must be"),
        ({"channels": 4}, r"config.data.custom.channels must be 1 \(grayscale\) or 3"),
        ({"channels": 0}, r"config.data.custom.channels must be"),
        ({"split_level": 1.5}, r"config.data.custom.split_level must be a level index or name"),
        ({"split_level": "kind", "levels": ("group", "class")},
         r"config.data.custom.split_level = 'kind' is not a level of \['group', 'class'\]"),
        ({"split_seed": -1}, r"config.data.custom.split_seed must be an int >= 0"),
        ({"chanels": 1}, r"config.data.custom.chanels is not a field"),
    ],
)  # fmt: skip
def test_custom_config_is_checked_before_reading(tmp_path, option, expected):
    from himl.config_lib import validate_config
    from himl.configs import custom as custom_config
    from himl.errors import ConfigError

    # The source does not exist: the config is refused before anything is read.
    with pytest.raises(ConfigError, match=expected):
        load_custom(tmp_path / "nothing_here.csv", **option)
    if "chanels" not in option and not isinstance(option.get("split_level", 0), float | str):
        config = custom_config.get_config("small")
        config.data.custom.source = str(tmp_path / "nothing_here.csv")
        config.data.custom.update(option)
        with pytest.raises(ConfigError, match=expected):
            validate_config(config)


def test_npz_channels_and_repeated_class_names(tmp_path):
    path = tmp_path / "d.npz"
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    np.savez(path, images=np.zeros((8, 4, 4, 4), np.uint8), labels=labels)
    with pytest.raises(MalformedDataError, match=r"d.npz: images have 4 channels .* 1 .* or 3"):
        load_custom(path, verbose=False)
    np.savez(path, images=np.zeros((8, 4, 4, 3), np.uint8), labels=labels,
             class_names=np.array(["cat", "dog", "cat", "dog"]))  # fmt: skip
    with pytest.raises(MalformedDataError, match=r"ids 0 and 2 the same name 'cat'"):
        load_custom(path, verbose=False)


def test_jsonl_records_need_the_keys_of_the_first(tmp_path):
    files = _pngs(tmp_path, ["a", "b"])
    records = [{"path": p.name, "class": p.parent.name, "split": "train"} for p in files]
    for p, r in zip(files, records, strict=True):
        r["path"] = str(p)
    del records[0]["split"]  # the split values of the other lines would be ignored
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(MalformedDataError, match=r"m.jsonl:2: keys \['class', 'path', 'split'\] "
                       r"differ from those of line 1 \['class', 'path'\]"):  # fmt: skip
        load_custom(path, **SMALL)
    # A byte-order mark is accepted, as for .csv.
    path.write_text("\ufeff" + "".join(json.dumps(r) + "\n" for r in records[1:]))
    assert sorted(load_custom(path, **SMALL).splits) == ["train"]


def test_manifest_not_utf8_names_the_line(tmp_path):
    _pngs(tmp_path, ["caf\u00e9"])
    text = "path,class\n" + "".join(f"caf\u00e9/img{i}.png,caf\u00e9\n" for i in range(3))
    path = tmp_path / "m.csv"
    path.write_bytes(text.replace("\u00e9", "e").encode() + text.splitlines()[2].encode("cp1252"))
    with pytest.raises(MalformedDataError, match=r"m.csv:5: not UTF-8 \(byte 0xe9\); save the "
                       "manifest as UTF-8"):  # fmt: skip
        load_custom(path, **SMALL)


def test_default_npz_export_round_trips(tree, tmp_path):
    """`write_npz` with its default splits writes each image once, and `load_custom` reads
    it back with the same train / test splits and pixels (train_no_val / val, carved
    from train, are carved again on loading)."""
    import himl.data

    ds = himl.data.load("custom", source=str(tree), channels=1, image_size=28, eval_crop=1.0,
                        val_fraction=0.3)  # fmt: skip
    assert sorted(ds.splits) == ["test", "train", "train_no_val", "val"]
    back = load_custom(write_npz(ds, tmp_path / "e.npz"), verbose=False)
    assert sorted(back.splits) == ["test", "train"]
    assert sum(len(s) for s in back.splits.values()) == 70  # every image of the tree, once
    for name in ("train", "test"):
        np.testing.assert_array_equal(back.split(name).images, ds.split(name).images[:])
        assert [back.class_names[c] for c in back.split(name).labels[:, 1]] == [
            ds.class_names[c] for c in ds.split(name).labels[:, 1]
        ]


def test_default_npz_export_writes_query_gallery_not_their_union(tmp_path):
    from himl.data.dataset import Dataset, Split

    def split(rows, items):  # In-Shop-like: an item's images in query and in gallery
        rows, items = np.asarray(rows), np.asarray(items)
        return Split(images=np.full((len(rows), 2, 2, 1), rows[:, None, None, None], np.uint8),
                     labels=np.stack([items // 2, items], 1))  # fmt: skip

    splits = {"train": split([0, 1, 2, 3], [0, 0, 1, 1]), "query": split([4, 5], [2, 3]),
              "gallery": split([6, 7], [2, 3])}  # fmt: skip
    splits["test"] = split([4, 5, 6, 7], [2, 3, 2, 3])
    ds = Dataset("shop", ("group", "item"), 1, {i: f"i{i}" for i in range(4)}, splits)
    back = load_custom(write_npz(ds, tmp_path / "e.npz"), verbose=False)
    assert sorted(back.splits) == ["gallery", "query", "train"]
    for name in back.splits:  # every image once, in its own split
        np.testing.assert_array_equal(back.split(name).images, ds.split(name).images)
    with pytest.raises(ValueError, match="split 'train_no_val' cannot be read back"):
        write_npz(himl_data_with_val(tmp_path), tmp_path / "x.npz", splits=["train_no_val"])


def himl_data_with_val(tmp_path):
    import himl.data

    _pngs(tmp_path / "t", ["g/a", "g/b", "g/c", "h/d", "h/e"])
    return himl.data.load("custom", source=str(tmp_path / "t"), image_size=8, val_fraction=0.3)


def test_written_manifest_creates_its_folder(embedded, tmp_path):
    path = write_manifest(embedded, tmp_path / "new" / "m.csv", per_class=2)
    assert len(load_custom(path, **GRAY_28).split("train")) == 14


def test_split_level_on_the_command_line_is_a_name_or_an_index():
    """`--config.data.custom.split_level=class` is a level name, `=0` / `=-1` indices (the
    field was typed int: a name was refused on the command line)."""
    repo = Path(__file__).parents[1]
    show = (
        "from absl import app; from ml_collections import config_flags;"
        "C = config_flags.DEFINE_config_file('config');"
        "app.run(lambda _: print(repr(C.value.data.custom.split_level)))"
    )
    for value, expected in [("class", "class"), ("0", 0), ("-1", -1)]:
        out = subprocess.run(
            [sys.executable, "-c", show, f"--config={repo / 'configs' / 'custom.py'}:small",
             f"--config.data.custom.split_level={value}"],
            capture_output=True, text=True, check=True, cwd=repo,
        ).stdout  # fmt: skip
        assert out.strip() == repr(expected)
    options = custom_data_config()
    options.levels, options.split_level = ("group", "class"), "class"
    custom.check_custom_config(options)
    options.split_level = 1
    custom.check_custom_config(options)  # a name or an index, in Python too


def test_hints_for_a_spreadsheets_manifest_a_single_class_and_windows_paths(tree, tmp_path):
    """Common ways a user's own files go wrong, each one line with what to do."""
    rows = [(str(tree / p), g, c) for p, g, c in _tree_rows(tree)]
    semicolons = _write_csv(tmp_path / "s.csv", ["path", "group", "class"], rows, delimiter=";")
    with pytest.raises(MalformedDataError) as error:
        load_custom(semicolons, **GRAY_28)
    assert str(error.value).endswith(
        "(set config.data.custom.path_column); the header looks ';'-separated but .csv is read "
        "with ',': save it with ','"
    )
    one_group = [(p, "tops", "tops") for p, _, _ in rows]
    path = _write_csv(tmp_path / "one.csv", ["path", "group", "class"], one_group)
    with pytest.raises(MalformedDataError, match=(
        r"one.csv: a class-disjoint split needs >= 2 labels at level 'class' "
        r"\(config.data.custom.split_level\), it has 1 \('tops'\); add classes, or give the rows "
        "a split column"
    )):  # fmt: skip
        load_custom(path, **GRAY_28)
    windows = [(p.relative_to(tree).as_posix().replace("/", "\\"), g, c)
               for p, g, c in ((tree / r[0], r[1], r[2]) for r in _tree_rows(tree))]  # fmt: skip
    path = _write_csv(tree.parent / "win.csv", ["path", "group", "class"], windows)
    with pytest.raises(MissingDataError, match=r"70 of 70 .*use '\\' \(Windows\): write them"):
        load_custom(path, **GRAY_28)
    with pytest.raises(MissingDataError, match=r"moved\? give the new place with --config"):
        load_custom(tmp_path / "gone.csv", **GRAY_28)


def test_a_folder_notes_the_images_it_cannot_read(tree, tmp_path, capsys):
    import shutil

    copy = tmp_path / "tree"
    shutil.copytree(tree, copy)
    first = sorted(copy.rglob("*.png"))[0]
    (first.parent / "photo.HEIC").write_bytes(b"x")
    (first.parent / "scan.jfif").write_bytes(first.read_bytes())  # a JPEG by another name
    (first.parent / "notes.txt").write_text("not an image, not noted")
    files = custom.find_images(copy)
    assert len(files) == 71 and any(f.endswith("scan.jfif") for f in files)
    assert capsys.readouterr().err == (
        f"note: {copy}: 1 image of formats himl does not read left out (.heic: 1); "
        "convert them to .jpg or .png to use them\n"
    )

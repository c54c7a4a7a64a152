"""Annotation files as users have them (a UTF-8 byte-order mark, a repeated image) and
paths as users type them (relative to where they run a command)."""

import json
import shutil

import numpy as np
import pytest
import scipy.io
from test_data_readers import (
    INSHOP_ROWS,
    _cars_names,
    _struct,
    write_cars_combined,
    write_cars_devkit,
    write_cub,
    write_inshop,
)
from test_paper_tables import write_sop

from himl.data.readers_fgvc import read_cars, read_cub, read_sop
from himl.data.readers_hier import read_inshop
from himl.data.records import MalformedDataError

BOM = "\ufeff"


def _add_bom(path):
    path.write_text(BOM + path.read_text(encoding="utf-8"), encoding="utf-8")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")


# --- F7: a UTF-8 byte-order mark (Windows editors) reads as if it were not there ----------


def test_cub_images_txt_with_a_byte_order_mark_reads_as_usual(tmp_path):
    expected = read_cub(write_cub(tmp_path / "plain"))
    root = write_cub(tmp_path / "bom")
    _add_bom(root / "images.txt")
    records = read_cub(root)
    assert records.files == expected.files and len(records.files) == 15
    np.testing.assert_array_equal(records.labels, expected.labels)
    assert records.labels[0].tolist() == [0, 1]  # image id 1 (the row after the mark)


def test_sop_file_with_a_byte_order_mark_reads_as_usual(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "bom").mkdir()
    expected = read_sop(write_sop(tmp_path / "plain"))
    root = write_sop(tmp_path / "bom")
    _add_bom(root / "Ebay_train.txt")  # the mark sits before the header
    records = read_sop(root)
    assert records.files == expected.files and len(records.files) == 12
    np.testing.assert_array_equal(records.labels, expected.labels)


# --- F8: an image listed twice is refused, naming both places -----------------------------


def _one_line_error(read, root):
    with pytest.raises(MalformedDataError) as info:
        read(root)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_cub_image_listed_twice_names_both_lines(tmp_path):
    root = write_cub(tmp_path)
    lines = (root / "images.txt").read_text().splitlines()
    repeated = lines[3].split()[1]  # image id 4's file
    lines[4] = f"5 {repeated}"  # image id 5 lists it again (line 5)
    (root / "images.txt").write_text("\n".join(lines) + "\n")
    message = _one_line_error(read_cub, root)
    assert message == (
        f"{root / 'images.txt'}:5: image {repeated!r} is listed again "
        f"(first at {root / 'images.txt'}:4)"
    )


def test_sop_image_listed_twice_names_both_files_and_lines(tmp_path):
    root = write_sop(tmp_path)
    train = (root / "Ebay_train.txt").read_text().splitlines()
    test = (root / "Ebay_test.txt").read_text().splitlines()
    repeated = train[2].split()[3]  # line 3: the second training row
    test[1] = " ".join([*test[1].split()[:3], repeated])  # line 2 of Ebay_test.txt
    (root / "Ebay_test.txt").write_text("\n".join(test) + "\n")
    message = _one_line_error(read_sop, root)
    assert message == (
        f"{root / 'Ebay_test.txt'}:2: image {repeated!r} is listed again "
        f"(first at {root / 'Ebay_train.txt'}:3)"
    )


def test_inshop_image_listed_as_query_and_gallery_is_refused(tmp_path):
    query = INSHOP_ROWS[5]  # a query image, listed again as a gallery image
    rows = [*INSHOP_ROWS, (query[0], query[1], "gallery")]
    root = write_inshop(tmp_path / "inshop", rows=rows)
    partition = root / "Eval" / "list_eval_partition.txt"
    message = _one_line_error(read_inshop, root)
    # Lines 1-2: count and header; row k is on line k + 3.
    assert message == (
        f"{partition}:{len(rows) + 2}: image {query[0]!r} is listed again (first at {partition}:8)"
    )


def test_cars_image_listed_twice_is_refused_in_both_layouts(tmp_path):
    combined = write_cars_combined(tmp_path / "combined")
    files = [f"car_ims/{i:06d}.jpg" for i in range(1, 7)]
    files[4] = files[1]  # annotation 5 repeats annotation 2
    annotations = _struct(
        relative_im_path=files, **{"class": [1, 1, 2, 99, 101, 101], "test": [0, 1] * 3}
    )
    mat = combined / "cars_annos.mat"
    scipy.io.savemat(
        mat, {"annotations": annotations, "class_names": np.array(_cars_names(), dtype=object)}
    )
    message = _one_line_error(read_cars, combined)
    assert message == (
        f"{mat}: annotation 5: image 'car_ims/000002.jpg' is listed again "
        f"(first at {mat}: annotation 2)"
    )

    devkit = write_cars_devkit(tmp_path / "devkit")
    train = devkit / "devkit" / "cars_train_annos.mat"
    box = dict(bbox_x1=[1, 2], bbox_y1=[1, 2], bbox_x2=[9, 9], bbox_y2=[9, 9])
    names = ["00001.jpg", "00001.jpg"]
    scipy.io.savemat(train, {"annotations": _struct(fname=names, **{"class": [1, 99]}, **box)})
    message = _one_line_error(read_cars, devkit)
    assert message == (
        f"{train}: annotation 2: image 'cars_train/00001.jpg' is listed again "
        f"(first at {train}: annotation 1)"
    )


# --- F3: paths typed relative to where himl-train ran stay pointing there ----------------


def test_path_fields_become_absolute_as_typed_and_empty_ones_stay_empty(tmp_path, monkeypatch):
    from himl.config_lib import PATH_FIELDS, absolute_paths
    from himl.configs import custom

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config = custom.get_config()
    config.data.manual_dir = "~/data"
    config.data.data_dir = "../cache"
    config.data.custom.source = "arr.npz"
    absolute_paths(config)
    assert config.data.manual_dir == f"{tmp_path}/home/data"
    assert config.data.data_dir == f"{tmp_path}/../cache"  # `..` kept, as typed
    assert config.data.custom.source == f"{tmp_path}/arr.npz"
    assert config.model.pretrained == ""  # not given: nothing to resolve
    assert "model.pretrained" in PATH_FIELDS
    plain = {"data": {"manual_dir": "d"}, "model": {"pretrained": "w.pth"}}  # no custom
    absolute_paths(plain)
    assert plain == {
        "data": {"manual_dir": f"{tmp_path}/d"},
        "model": {"pretrained": f"{tmp_path}/w.pth"},
    }


def _tree(folder):
    """{relative path: (size, mtime)} of every file under `folder`."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_relative_manual_dir_and_data_dir_are_saved_absolute_and_reused_from_elsewhere(
    tmp_path, monkeypatch, capsys
):
    from himl.configs import cub
    from himl.eval.run import evaluate_checkpoint
    from himl.runs import get_config
    from himl.train.loop import train_and_evaluate

    here, elsewhere = tmp_path / "train here", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    write_cub(here)
    monkeypatch.chdir(here)
    config = cub.get_config("tiny")
    config.data.manual_dir, config.data.data_dir = "CUB_200_2011", "dd"  # as users type them
    config.data.batch_size, config.data.samples_per_class = 8, 4  # 3 train classes
    config.train.steps, config.train.checkpoint_every = 2, 2
    train_and_evaluate(config, here / "run", progress=False)
    saved = json.loads((here / "run" / "config.json").read_text())["data"]
    assert (saved["manual_dir"], saved["data_dir"]) == (
        str(here / "CUB_200_2011"),
        str(here / "dd"),
    )
    prepared = _tree(here / "dd")
    assert prepared
    capsys.readouterr()

    # himl-eval from another folder reads the same files and the same prepared copy.
    monkeypatch.chdir(elsewhere)
    summary = evaluate_checkpoint(here / "run", plots=False, progress=False)
    assert summary["step"] == 2 and "test" in summary["results"]
    assert list(elsewhere.iterdir()) == [] and _tree(here / "dd") == prepared
    assert "written" not in capsys.readouterr().out

    # A relative override (himl-eval --config.data.data_dir=...) is taken from here too and
    # recorded absolute.
    config = get_config(str(here / "run"))
    config.data.data_dir = "../train here/dd"
    summary = evaluate_checkpoint(
        here / "run", config=config, out_dir=tmp_path / "out", plots=False, progress=False
    )
    assert summary["config"]["data"]["data_dir"] == str(elsewhere / "../train here/dd")
    assert summary["config"]["data"]["manual_dir"] == str(here / "CUB_200_2011")
    assert list(elsewhere.iterdir()) == [] and _tree(here / "dd") == prepared


def _npz_config(source, steps):
    from himl.configs import custom

    config = custom.get_config("small")
    config.data.custom.source = source
    config.data.batch_size, config.data.samples_per_class = 16, 4
    config.train.steps, config.eval.splits, config.eval.at_start = steps, (), False
    return config


def test_relative_custom_source_is_saved_absolute_and_an_older_relative_run_resumes(
    tmp_path, monkeypatch
):
    from himl.errors import ConfigError
    from himl.eval.run import evaluate_checkpoint
    from himl.train.loop import train_and_evaluate

    here, elsewhere = tmp_path / "train here", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (48, 20, 20, 3), np.uint8)
    labels = np.stack([np.arange(48) % 8 // 4, np.arange(48) % 8], axis=1)
    np.savez(here / "arr.npz", images=images, labels=labels)
    shutil.copy(here / "arr.npz", here / "other.npz")
    run = here / "run"
    monkeypatch.chdir(here)
    train_and_evaluate(_npz_config("arr.npz", 2), run, progress=False)
    saved = json.loads((run / "config.json").read_text())
    assert saved["data"]["custom"]["source"] == str(here / "arr.npz")

    monkeypatch.chdir(elsewhere)  # himl-eval from another folder finds the .npz
    summary = evaluate_checkpoint(run, splits=["test"], plots=False, progress=False)
    assert summary["step"] == 2 and "test" in summary["results"]

    # A run saved by an older himl holds the path as typed: resuming it from the folder it
    # was typed in, with the same file (relative or absolute), is accepted.
    saved["data"]["custom"]["source"] = "arr.npz"
    (run / "config.json").write_text(json.dumps(saved))
    monkeypatch.chdir(here)
    train_and_evaluate(_npz_config("arr.npz", 4), run, progress=False)
    saved = json.loads((run / "config.json").read_text())
    assert saved["data"]["custom"]["source"] == str(here / "arr.npz")  # rewritten absolute
    saved["data"]["custom"]["source"] = "arr.npz"
    (run / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match=r"config\.data\.custom\.source = arr\.npz, this run "):
        train_and_evaluate(_npz_config("other.npz", 6), run, progress=False)  # another file
    train_and_evaluate(_npz_config(str(here / "arr.npz"), 6), run, progress=False)
    assert sorted(int(p.name) for p in (run / "checkpoints").iterdir())[-1] == 6

"""Every malformed or partial published file ends in one line naming it (and the row)."""

import zipfile

import numpy as np
import pytest
import scipy.io
from test_data_readers import (
    INSHOP_ROWS,
    write_cars_combined,
    write_cars_devkit,
    write_cub,
    write_inshop,
)

from himl.data.readers_fgvc import read_cars, read_cub, read_sop
from himl.data.readers_hier import read_inshop
from himl.data.records import MalformedDataError, MissingDataError, require_images
from himl.errors import UserError


def raises_one_line(error, match, fn, *args, **kwargs):
    """Calls `fn`, checking it raises `error` (a UserError) with a one-line message."""
    with pytest.raises(error, match=match) as info:
        fn(*args, **kwargs)
    assert isinstance(info.value, UserError) and "\n" not in str(info.value)
    return str(info.value)


def _edit(path, old, new):
    path.write_text(path.read_text().replace(old, new, 1))


def test_cub_non_integer_id_names_file_and_line(tmp_path):
    root = write_cub(tmp_path)
    _edit(root / "images.txt", "3 001.", "3x 001.")
    raises_one_line(
        MalformedDataError, r"images.txt:3: image id '3x' is not an integer", read_cub, root
    )


def test_cub_truncated_and_inconsistent_files(tmp_path):
    root = write_cub(tmp_path)
    text = (root / "image_class_labels.txt").read_text()
    (root / "image_class_labels.txt").write_text(text[: text.rindex("\n", 0, -1)] + "\n1")
    raises_one_line(
        MalformedDataError, r"image_class_labels.txt:15: expected 2 fields, got 1", read_cub, root
    )
    (root / "image_class_labels.txt").write_text(text[: text.rindex("\n", 0, -1)] + "\n")
    raises_one_line(
        MalformedDataError, "list different image ids .e.g. 15; truncated", read_cub, root
    )
    (root / "image_class_labels.txt").write_text(text.replace("15 102", "15 250"))
    raises_one_line(
        MalformedDataError, r"image_class_labels.txt:15: class id outside 1..200", read_cub, root
    )
    (root / "image_class_labels.txt").write_text(text.replace("2 1\n", "2 1\n2 1\n"))
    raises_one_line(
        MalformedDataError, r"image_class_labels.txt:3: image id 2 repeated", read_cub, root
    )
    (root / "image_class_labels.txt").write_text(text)
    classes = (root / "classes.txt").read_text().splitlines()
    (root / "classes.txt").write_text("\n".join(classes[:150]) + "\n")
    raises_one_line(MalformedDataError, "classes.txt: lists 150 class ids", read_cub, root)
    (root / "classes.txt").write_bytes(b"\xff\xfe\x00binary")
    raises_one_line(MalformedDataError, "classes.txt: not a text annotation file", read_cub, root)


def test_missing_images_counted_before_any_decode(tmp_path):
    root = write_cub(tmp_path)
    for name in ("images/001.Bird_1/Bird_1_0.jpg", "images/101.Bird_101/Bird_101_2.jpg"):
        (root / name).unlink()
    message = raises_one_line(
        MissingDataError, "CUB-200-2011: 2 of 15 listed images are missing", read_cub, root
    )
    assert "Bird_1_0.jpg" in message and "Bird_101_2.jpg" in message


def test_require_images_checks_zip_members(tmp_path):
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as z:
        z.writestr("a/1.png", b"x")
    (tmp_path / "b.png").write_bytes(b"x")
    require_images(tmp_path, ["a.zip::a/1.png", "b.png"], dataset="D")
    raises_one_line(
        MissingDataError,
        r"D: 3 of 4 listed images are missing, e.g. .*a.zip::a/2.png",
        require_images,
        tmp_path,
        ["a.zip::a/1.png", "a.zip::a/2.png", "c.zip::x", "c.png"],
        dataset="D",
    )
    (tmp_path / "a.zip").write_bytes(b"PK\x03\x04 truncated")
    raises_one_line(
        MalformedDataError,
        "a.zip: not a readable zip archive",
        require_images,
        tmp_path,
        ["a.zip::a/1.png"],
        dataset="D",
    )


def test_cars_truncated_mat_and_wrong_fields(tmp_path):
    root = write_cars_combined(tmp_path / "c")
    data = (root / "cars_annos.mat").read_bytes()
    (root / "cars_annos.mat").write_bytes(data[: len(data) // 2])
    raises_one_line(
        MalformedDataError, "cars_annos.mat: not a readable MATLAB file", read_cars, root
    )
    scipy.io.savemat(root / "cars_annos.mat", {"class_names": np.array(["a"], object)})
    raises_one_line(
        MalformedDataError, "cars_annos.mat: no variable 'annotations'", read_cars, root
    )
    devkit = write_cars_devkit(tmp_path / "d")
    scipy.io.savemat(
        devkit / "cars_test_annos_withlabels.mat",
        {"annotations": np.array([(np.array("x.jpg"),)], dtype=[("fname", object)])},
    )
    raises_one_line(
        MalformedDataError, "withlabels.mat: annotations have no field 'class'", read_cars, devkit
    )


def test_cars_bad_class_and_split_flag(tmp_path):
    from test_data_readers import _cars_names, _struct

    root = write_cars_combined(tmp_path)
    files = [f"car_ims/{i:06d}.jpg" for i in range(1, 7)]
    for classes, test, match in (
        ([1, "b", 2, 99, 101, 101], [0, 1] * 3, "annotation 2 has class 'b', not an integer"),
        ([1, 1, 2, 99, 101, 101], [0, 1, 2, 0, 1, 0], "'test' flags must be 0 or 1"),
        ([1, 1, 2, 99, 101, 197], [0, 1] * 3, "classes 1..196, got 196 names and classes 1..197"),
    ):
        annotations = _struct(relative_im_path=files, **{"class": classes, "test": test})
        scipy.io.savemat(
            root / "cars_annos.mat",
            {"annotations": annotations, "class_names": np.array(_cars_names(), object)},
        )
        raises_one_line(MalformedDataError, match, read_cars, root)


def test_cars_devkit_images_missing(tmp_path):
    root = write_cars_devkit(tmp_path)
    (root / "cars_test" / "00001.jpg").unlink()
    raises_one_line(
        MissingDataError,
        "Cars196: 1 of 3 listed images are missing.*cars_test/00001",
        read_cars,
        root,
    )


def _write_sop(root, train_header="image_id class_id super_class_id path"):
    from test_data_readers import _jpg

    rows = {
        "train": [(1, 1, 1, "bicycle_final/1_0.JPG"), (2, 2, 1, "bicycle_final/2_0.JPG")],
        "test": [(3, 3, 2, "chair_final/3_0.JPG")],
    }
    for part, lines in rows.items():
        header = train_header if part == "train" else "image_id class_id super_class_id path"
        text = header + "\n" + "".join(" ".join(map(str, r)) + "\n" for r in lines)
        (root / f"Ebay_{part}.txt").write_text(text)
        for r in lines:
            _jpg(root / r[3], seed=r[0])
    return root


def test_sop_header_and_ids(tmp_path):
    root = _write_sop(tmp_path)
    assert len(read_sop(root, val_fraction=0.0).files) == 3
    _write_sop(tmp_path, train_header="image_id class_id path super_class_id")
    raises_one_line(
        MalformedDataError,
        r"Ebay_train.txt:1: header 'image_id class_id path super",
        read_sop,
        root,
    )
    _write_sop(tmp_path)
    _edit(root / "Ebay_test.txt", "3 3 2", "3 three 2")
    raises_one_line(
        MalformedDataError, r"Ebay_test.txt:2: class_id 'three' is not an integer", read_sop, root
    )


@pytest.mark.parametrize(
    "old, new, match",
    [
        (
            f"{len(INSHOP_ROWS)}\n",
            "52712\n",
            r"list_eval_partition.txt:1: states 52712 rows, the "
            "file has 8",
        ),
        (f"{len(INSHOP_ROWS)}\n", "many\n", r"list_eval_partition.txt:1: the row count 'many'"),
        ("image_name item_id", "image_name item", r"list_eval_partition.txt:2: header"),
        (
            "id_00000003 query",
            "id_00000003 test",
            r"list_eval_partition.txt:8: evaluation status "
            "'test'; the format has train, query, gallery",
        ),
        (
            "id_00000002/01_1_front.jpg id_00000002",
            "id_00000002/01_1_front.jpg id_00000009",
            r"partition.txt:6: item_id id_00000009 but the image is in folder id_00000002",
        ),
        (
            "img/MEN/Denim/id_00000002/",
            "img/Denim/id_00000002/",
            r"list_eval_partition.txt:6: image name 'img/Denim/id_00000002/01_1_front.jpg' is not",
        ),
        ("id_00000003 gallery", "id_00000001 gallery", r":9: item_id id_00000001 but"),
        (
            "img/WOMEN/Dresses/id_00000003/01_2_side.jpg id_00000003 gallery",
            "img/WOMEN/Dresses/id_00000001/01_2_side.jpg id_00000001 gallery",
            r"list_eval_partition.txt:9: item id_00000001 is in train and in query/gallery",
        ),
    ],
)
def test_inshop_partition_file(tmp_path, old, new, match):
    root = write_inshop(tmp_path)
    read_inshop(root)  # the written file is well formed
    _edit(root / "Eval" / "list_eval_partition.txt", old, new)
    raises_one_line(MalformedDataError, match, read_inshop, root)


def test_inshop_truncated_and_missing_images(tmp_path):
    root = write_inshop(tmp_path)
    path = root / "Eval" / "list_eval_partition.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-2]) + "\n")  # a download cut short
    raises_one_line(MalformedDataError, r":1: states 8 rows, the file has 6", read_inshop, root)
    path.write_text("\n".join(lines) + "\n")
    (root / INSHOP_ROWS[0][0]).unlink()
    raises_one_line(
        MissingDataError, "In-Shop: 1 of 8 listed images are missing", read_inshop, root
    )
    zipped = write_inshop(tmp_path / "z", images="zip")
    data = (zipped / "Img" / "img.zip").read_bytes()
    (zipped / "Img" / "img.zip").write_bytes(data[:100])
    raises_one_line(MalformedDataError, "img.zip: not a readable zip archive", read_inshop, zipped)

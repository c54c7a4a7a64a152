"""Dataset readers on tiny fixtures written in the official layouts (no real data needed)."""

import io
import json
import pathlib
import shutil
import zipfile

import ml_collections
import numpy as np
import pytest
import scipy.io
from PIL import Image

from himl.data.images import CorruptImageError
from himl.data.readers_fgvc import cars_make, read_cars, read_cub, read_sop
from himl.data.readers_hier import SUPERCLASSES, read_imagenet, read_inshop
from himl.data.real import image_source, to_dataset
from himl.data.records import MalformedDataError, MissingDataError, UnknownOptionError
from himl.errors import UserError


def _jpg(path, seed=0, size=(24, 18), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(path)


def write_cub(root):
    root = root / "CUB_200_2011"
    classes = [1, 2, 3, 101, 102]
    images, labels, split = [], [], []
    i = 0
    for c in classes:
        for k in range(3):
            i += 1
            name = f"{c:03d}.Bird_{c}/Bird_{c}_{k}.jpg"
            _jpg(root / "images" / name, seed=i, mode="L" if i == 2 else "RGB")
            images.append(f"{i} {name}")
            labels.append(f"{i} {c}")
            split.append(f"{i} {k % 2}")
    (root / "images.txt").write_text("\n".join(images) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(split) + "\n")
    names = [f"{c} {c:03d}.Bird_{c}" for c in range(1, 201)]
    (root / "classes.txt").write_text("\n".join(names) + "\n")
    return root


def test_cub_counts_splits_labels(tmp_path):
    records = read_cub(write_cub(tmp_path), val_fraction=0.34)
    assert len(records.files) == 15 and records.level_names == ("class", "image")
    train, test = records.splits["train"], records.splits["test"]
    assert set(records.labels[train, 0]) == {0, 1, 2}
    assert set(records.labels[test, 0]) == {100, 101}
    assert set(records.labels[records.splits["val"], 0]) == {2}  # last train class
    assert set(records.labels[records.splits["train_no_val"], 0]) == {0, 1}
    assert records.class_names[0] == "Bird 1"
    assert records.files[0].startswith("images/001.")


def test_cub_missing_file_is_named(tmp_path):
    root = write_cub(tmp_path)
    (root / "image_class_labels.txt").unlink()
    with pytest.raises(MissingDataError, match="image_class_labels.txt.*vision.caltech"):
        read_cub(root)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_cub(tmp_path / "nowhere")


def _cars_names():
    names = [f"Make{i} Model{i} 2012" for i in range(196)]
    names[0], names[1] = "Aston Martin V8 Vantage Coupe 2012", "Aston Martin Virage 2012"
    names[100] = "BMW M3 Coupe 2012"
    return names


def _struct(**fields):
    n = len(next(iter(fields.values())))
    out = np.empty(n, dtype=[(k, object) for k in fields])
    for k, v in fields.items():
        for i in range(n):
            out[k][i] = v[i]
    return out


CARS_CLASSES = [1, 1, 2, 99, 101, 101]


def write_cars_combined(root):
    """`cars_annos.mat` + `car_ims/` (the all-in-one release)."""
    files = [f"car_ims/{i:06d}.jpg" for i in range(1, 7)]
    for i, f in enumerate(files):
        _jpg(root / f, seed=i)
    annotations = _struct(relative_im_path=files, **{"class": CARS_CLASSES, "test": [0, 1] * 3})
    scipy.io.savemat(
        root / "cars_annos.mat",
        {"annotations": annotations, "class_names": np.array(_cars_names(), dtype=object)},
    )
    return root


def write_cars_devkit(root, labelled_in_devkit=False):
    """The devkit as distributed: devkit/ beside cars_train/, cars_test/ and the separately
    published cars_test_annos_withlabels.mat (beside devkit/ or, if asked, inside it)."""
    devkit = root / "devkit"
    devkit.mkdir(parents=True)
    scipy.io.savemat(devkit / "cars_meta.mat", {"class_names": np.array(_cars_names(), object)})
    box = dict(bbox_x1=[1, 2], bbox_y1=[1, 2], bbox_x2=[9, 9], bbox_y2=[9, 9])
    scipy.io.savemat(
        devkit / "cars_train_annos.mat",
        {"annotations": _struct(fname=["00001.jpg", "00002.jpg"], **{"class": [1, 99]}, **box)},
    )
    unlabelled = {k: v[:1] for k, v in box.items()}
    scipy.io.savemat(
        devkit / "cars_test_annos.mat", {"annotations": _struct(fname=["00001.jpg"], **unlabelled)}
    )
    labelled = (devkit if labelled_in_devkit else root) / "cars_test_annos_withlabels.mat"
    scipy.io.savemat(
        labelled, {"annotations": _struct(fname=["00001.jpg"], **{"class": [2]}, **unlabelled)}
    )
    for i, f in enumerate(["cars_train/00001.jpg", "cars_train/00002.jpg", "cars_test/00001.jpg"]):
        _jpg(root / f, seed=i)
    return root


def test_cars_combined_and_devkit_layouts(tmp_path):
    combined = write_cars_combined(tmp_path / "combined")
    beside = write_cars_devkit(tmp_path / "beside")
    inside = write_cars_devkit(tmp_path / "inside", labelled_in_devkit=True)
    expected_devkit = ("cars_train/00001.jpg", "cars_test/00001.jpg", "cars_train/00002.jpg")
    for manual_dir, n in ((combined, 6), (beside, 3), (inside, 3), (beside / "devkit", 3)):
        records = read_cars(manual_dir)
        assert len(records.files) == n and records.level_names == ("make", "model", "image")
        assert records.labels[records.splits["train"], 1].max() < 98
        assert records.labels[records.splits["test"], 1].min() >= 98
        if n == 3:
            assert records.files == expected_devkit
            devkit_passed = manual_dir.name == "devkit"
            assert records.root == (manual_dir.parent if devkit_passed else manual_dir)
            # model labels from the annotation files: train 1, 2 (test file), then 99
            assert records.labels[:, 1].tolist() == [0, 1, 98]
    records = read_cars(combined)
    np.testing.assert_array_equal(
        records.labels[:, 1], [c - 1 for c in CARS_CLASSES[:3]] + [98, 100, 100]
    )
    # classes 1 and 2 are both Aston Martin: same make label
    by_model = {m: k for k, m, _ in records.labels}
    assert by_model[0] == by_model[1] != by_model[100]
    assert cars_make("AM General Hummer SUV 2000") == "AM General"
    # One folder too deep (either layout): the folder to pass is named.
    for deep in (combined / "car_ims", beside / "cars_train"):
        with pytest.raises(MissingDataError) as error:
            read_cars(deep)
        assert str(error.value).startswith(
            f"Cars196: neither cars_annos.mat nor devkit/cars_meta.mat in {deep}; its parent "
            f"{deep.parent} has them: pass that folder. Get Cars196 "
        )
    with pytest.raises(MissingDataError) as error:
        read_cars(tmp_path / "nothing")
    assert str(error.value).startswith(
        f"Cars196: neither cars_annos.mat nor devkit/cars_meta.mat in {tmp_path / 'nothing'}. Get"
    )


def test_cars_devkit_without_labelled_test_file(tmp_path):
    root = write_cars_devkit(tmp_path)
    (root / "cars_test_annos_withlabels.mat").unlink()
    with pytest.raises(MissingDataError, match="withlabels.mat not found.*has no classes"):
        read_cars(root)


def test_sop(tmp_path):
    rows = {
        "train": [(1, 1, 1, "bicycle_final/1_0.JPG"), (2, 1, 1, "bicycle_final/1_1.JPG"),
                  (3, 2, 2, "chair_final/2_0.JPG")],
        "test": [(4, 3, 1, "bicycle_final/3_0.JPG"), (5, 3, 1, "bicycle_final/3_1.JPG")],
    }  # fmt: skip
    for part, lines in rows.items():
        text = "image_id class_id super_class_id path\n"
        text += "".join(" ".join(map(str, r)) + "\n" for r in lines)
        (tmp_path / f"Ebay_{part}.txt").write_text(text)
        for r in lines:
            _jpg(tmp_path / r[3], seed=r[0])
    records = read_sop(tmp_path, val_fraction=0.5)
    assert records.level_names == ("super_class", "class", "image")
    np.testing.assert_array_equal(records.labels[records.splits["test"]], [[0, 2, 4], [0, 2, 5]])
    assert set(records.labels[records.splits["val"], 1]) == {1}
    assert records.class_names[1] == "chair 2"
    (tmp_path / "Ebay_test.txt").unlink()
    with pytest.raises(MissingDataError, match="Ebay_test.txt"):
        read_sop(tmp_path)


INSHOP_ROWS = [
    ("img/WOMEN/Dresses/id_00000001/01_1_front.jpg", "id_00000001", "train"),
    ("img/WOMEN/Dresses/id_00000001/01_2_side.jpg", "id_00000001", "train"),
    ("img/WOMEN/Dresses/id_00000001/02_1_front.jpg", "id_00000001", "train"),
    ("img/MEN/Denim/id_00000002/01_1_front.jpg", "id_00000002", "train"),
    ("img/WOMEN/Denim/id_00000005/01_1_front.jpg", "id_00000005", "train"),
    ("img/WOMEN/Dresses/id_00000003/01_1_front.jpg", "id_00000003", "query"),
    ("img/WOMEN/Dresses/id_00000003/01_2_side.jpg", "id_00000003", "gallery"),
    ("img/MEN/Denim/id_00000004/01_1_front.jpg", "id_00000004", "gallery"),
]


def write_inshop(root, rows=INSHOP_ROWS, images="folder"):
    """The benchmark as published: Eval/list_eval_partition.txt and Img/img.zip (images
    "zip"), extracted as Img/img/ ("Img") or as img/ beside Eval/ ("folder")."""
    root.mkdir(parents=True, exist_ok=True)
    if images == "zip":
        (root / "Img").mkdir()
        with zipfile.ZipFile(root / "Img" / "img.zip", "w") as z:
            for i, (f, _, _) in enumerate(rows):
                z.writestr(f, _jpeg_bytes(seed=i))
    else:
        for i, (f, _, _) in enumerate(rows):
            _jpg((root / "Img" if images == "Img" else root) / f, seed=i)
    (root / "Eval").mkdir()
    text = f"{len(rows)}\nimage_name item_id evaluation_status\n"
    text += "".join(" ".join(r) + "\n" for r in rows)
    (root / "Eval" / "list_eval_partition.txt").write_text(text)
    return root


def _jpeg_bytes(seed=0):
    buffer = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def _inshop_reference(rows, layout):
    """Labels written from the definition, one row at a time (file order)."""
    cats, out = [], []
    for f, _, _ in rows:
        parts = f.split("/")
        cats.append(parts[2] if layout == "official" else f"{parts[1]}/{parts[2]}")
    names = sorted(set(cats))
    items = sorted({r[1] for r in rows})
    variations = sorted({(r[1], int(r[0].split("/")[-1].split("_")[0])) for r in rows})
    for k, ((f, item, _), c) in enumerate(zip(rows, cats, strict=True)):
        row = [names.index(c), items.index(item)]
        if layout == "official":
            row.append(variations.index((item, int(f.split("/")[-1].split("_")[0]))))
        out.append(row + [k])
    return np.array(out)


@pytest.mark.parametrize("images", ["folder", "Img", "zip"])
@pytest.mark.parametrize("layout", ["official", "gender"])
def test_inshop_layouts(tmp_path, images, layout):
    root = write_inshop(tmp_path / "In-shop Clothes Retrieval Benchmark", images=images)
    records = read_inshop(tmp_path, val_fraction=0.0, layout=layout)  # the parent works too
    levels = ("category", "item", "variation", "image") if layout == "official" else None
    assert records.level_names == (levels or ("category", "item", "image"))
    assert records.class_level == 1
    order = [r[2] for r in INSHOP_ROWS]
    by_part = [i for p in ("train", "query", "gallery") for i, s in enumerate(order) if s == p]
    expected = _inshop_reference(INSHOP_ROWS, layout)[by_part]
    expected[:, -1] = np.array(by_part)  # image ids are the file order
    np.testing.assert_array_equal(records.labels, expected)
    q, g = records.splits["query"], records.splits["gallery"]
    assert len(q) == 1 and len(g) == 2 and len(records.splits["test"]) == 3
    assert records.labels[q[0], 1] == records.labels[g[0], 1]  # same item across lists
    categories = len(set(records.labels[records.splits["train"], 0]))
    assert categories == (2 if layout == "official" else 3)  # Dresses, Denim | +gender
    source = image_source(records, "")
    size = Image.open(io.BytesIO(source[0])).size  # read from the archive or the folder
    assert size == ((10, 12) if images == "zip" else (24, 18))
    (root / "Eval" / "list_eval_partition.txt").unlink()
    with pytest.raises(MissingDataError, match="list_eval_partition.txt"):
        read_inshop(root)


def test_inshop_item_under_two_categories_keeps_its_id(tmp_path, caplog):
    rows = INSHOP_ROWS + [
        ("img/WOMEN/Skirts/id_00000003/02_1_front.jpg", "id_00000003", "gallery"),
        ("img/WOMEN/Skirts/id_00000003/03_1_front.jpg", "id_00000003", "gallery"),
        ("img/WOMEN/Skirts/id_00000003/04_1_front.jpg", "id_00000003", "query"),
    ]
    records = read_inshop(write_inshop(tmp_path, rows), val_fraction=0.0)
    assert "In-Shop: 1 item ids appear under two categories" in caplog.text
    of_item = records.labels[records.splits["test"]]
    item3 = of_item[of_item[:, 1] == of_item[0, 1]]
    assert len(item3) == 5  # one item id: the query still matches its gallery images
    assert len(set(item3[:, 0])) == 1  # all under the majority category (Skirts, 3 of 5)
    assert records.class_names[int(item3[0, 1])] == "Skirts/id_00000003"


# Nine of the 17 garment categories (name order: Dresses 4th, Leggings 8th) in both genders.
INSHOP_CATEGORIES = (
    ("WOMEN", "Blouses_Shirts"),
    ("WOMEN", "Cardigans"),
    ("MEN", "Denim"),
    ("WOMEN", "Dresses"),
    ("WOMEN", "Graphic_Tees"),
    ("WOMEN", "Jackets_Coats"),
    ("MEN", "Jackets_Vests"),
    ("WOMEN", "Leggings"),
    ("MEN", "Pants"),
)


def inshop_category_rows():
    """Partition rows over `INSHOP_CATEGORIES`: per category two train items (2 images, 1
    image) and a query/gallery item (1 query, 2 gallery images), plus one train item with two
    images under Dresses and one under Pants."""
    rows = []
    for gender, category in INSHOP_CATEGORIES:
        for statuses in (("train", "train"), ("train",), ("query", "gallery", "gallery")):
            item = f"id_{len(rows) + 1:08d}"
            folder = f"img/{gender}/{category}/{item}"
            rows += [(f"{folder}/01_{k}_front.jpg", item, s) for k, s in enumerate(statuses, 1)]
    item = f"id_{len(rows) + 1:08d}"
    rows += [(f"img/WOMEN/Dresses/{item}/01_{k}_front.jpg", item, "train") for k in (1, 2)]
    rows.append((f"img/MEN/Pants/{item}/02_1_front.jpg", item, "train"))
    return rows


def write_inshop_categories(root):
    """`write_inshop` with `inshop_category_rows()`: enough categories to hold some out."""
    return write_inshop(root, inshop_category_rows())


def _held_out_reference(rows, layout):
    """({image file: unseen?}, unseen category names) from the definition: an item's
    category is the one of most of its images (ties: first name); every 4th category name in
    sorted order is unseen."""
    counts = {}
    for f, item, _ in rows:
        gender, category = f.split("/")[1:3]
        name = category if layout == "official" else f"{gender}/{category}"
        counts.setdefault(item, {}).setdefault(name, 0)
        counts[item][name] += 1
    category_of = {i: sorted(c, key=lambda n: (-c[n], n))[0] for i, c in counts.items()}
    unseen_names = []
    for position, name in enumerate(sorted(set(category_of.values())), start=1):
        if position % 4 == 0:
            unseen_names.append(name)
    return {f: category_of[i] in unseen_names for f, i, _ in rows}, unseen_names


INSHOP_DISJOINT = ("train_no_val", "val", "query", "gallery", "unseen_train", "unseen_query",
                   "unseen_gallery")  # fmt: skip


@pytest.mark.parametrize("layout", ["official", "gender"])
def test_inshop_held_out_categories(tmp_path, layout):
    rows = inshop_category_rows()
    root = write_inshop(tmp_path, rows)
    records = read_inshop(root, val_fraction=0.25, layout=layout, protocol="held_out_categories")
    unseen_of, unseen_names = _held_out_reference(rows, layout)
    official = ["Dresses", "Leggings"]
    assert unseen_names == (official if layout == "official" else [
        "WOMEN/Blouses_Shirts", "WOMEN/Jackets_Coats"])  # fmt: skip
    status = {f: s for f, _, s in rows}
    splits = records.splits
    every = np.concatenate([splits[s] for s in INSHOP_DISJOINT])
    assert sorted(every.tolist()) == list(range(len(rows)))  # every image in exactly one
    assert all(len(splits[s]) for s in INSHOP_DISJOINT)
    for name in INSHOP_DISJOINT:
        published = "train" if name in ("train_no_val", "val") else name.split("_")[-1]
        for i in splits[name]:
            assert unseen_of[records.files[i]] == name.startswith("unseen"), (name, i)
            assert status[records.files[i]] == published, (name, i)
    for whole, halves in (("train", ("train_no_val", "val")), ("test", ("query", "gallery")),
                          ("unseen", ("unseen_query", "unseen_gallery"))):  # fmt: skip
        assert sorted(splits[whole].tolist()) == sorted(np.concatenate(
            [splits[h] for h in halves]).tolist())  # fmt: skip
    seen_rows = np.concatenate([splits[s] for s in ("train", "test")])
    unseen_rows = np.concatenate([splits[s] for s in ("unseen_train", "unseen")])
    for level in (0, 1):  # no category, no item on both sides
        assert not set(records.labels[seen_rows, level]) & set(records.labels[unseen_rows, level])
    shared = [i for i, f in enumerate(records.files) if f.endswith("02_1_front.jpg")]
    side = "unseen_train" if layout == "official" else "train"  # its item's (Women's) Dresses
    assert len(shared) == 1 and shared[0] in splits[side]
    # "official" (the default) keeps every image in the published splits, no unseen ones.
    default = read_inshop(root, val_fraction=0.25, layout=layout)
    assert not any(s.startswith("unseen") for s in default.splits)
    assert len(default.splits["train"]) + len(default.splits["test"]) == len(rows)
    np.testing.assert_array_equal(default.labels, records.labels)
    assert default.files == records.files  # the stored parts are the same


def test_inshop_bad_protocol_and_too_few_categories(tmp_path):
    root = write_inshop(tmp_path)
    for protocol, error, match in (
        ("held_out", UnknownOptionError,
         "unknown split protocol 'held_out'; valid: official, held_out_categories$"),
        ("held_out_categories", MalformedDataError,
         r"every 4th category in name order, but the partition file has 2 categories "
         r"\(Denim, Dresses\)"),
    ):  # fmt: skip
        (root / INSHOP_ROWS[0][0]).unlink(missing_ok=True)  # raised before the image check
        with pytest.raises(error, match=match) as info:
            read_inshop(root, protocol=protocol)
        assert isinstance(info.value, UserError) and "\n" not in str(info.value)


def test_imagenet_with_wordnet_superclasses(tmp_path):
    mapping = json.loads(SUPERCLASSES.read_text())
    assert len(mapping) == 1000
    wnids = sorted(mapping)
    jpeg = _jpeg_bytes()
    for k, w in enumerate(wnids):
        for folder, name in (("train", f"{w}_1.JPEG"), ("val", f"ILSVRC2012_val_{k:08d}.JPEG")):
            (tmp_path / folder / w).mkdir(parents=True)
            (tmp_path / folder / w / name).write_bytes(jpeg)
    records = read_imagenet(tmp_path)
    assert len(records.files) == 2000 and records.level_names == ("superclass", "class", "image")
    sizes = [len(records.splits[s]) for s in ("train", "unseen_train", "seen_test", "unseen")]
    assert sizes[0] + sizes[1] == 1000 and sizes[2] + sizes[3] == 1000
    seen = set(records.labels[records.splits["train"], 1])
    assert not seen & set(records.labels[records.splits["unseen"], 1])
    with pytest.raises(MissingDataError, match="train"):
        read_imagenet(tmp_path / "val")
    # a class folder nested one level deeper, then a missing validation folder
    w = wnids[5]
    (tmp_path / "train" / w / w).mkdir()
    (tmp_path / "train" / w / f"{w}_1.JPEG").rename(tmp_path / "train" / w / w / "x.JPEG")
    with pytest.raises(MalformedDataError, match=f"train/{w} holds no .JPEG files"):
        read_imagenet(tmp_path)
    (tmp_path / "train" / w / w / "x.JPEG").rename(tmp_path / "train" / w / f"{w}_1.JPEG")
    shutil.rmtree(tmp_path / "val" / wnids[7])
    with pytest.raises(
        MissingDataError, match=f"1 class folders missing in .*val, e.g. {wnids[7]}"
    ):
        read_imagenet(tmp_path)


def _imagenet_subset(root, wnids, *, flat_val=False):
    """train/<wnid>/ (two images) for `wnids` alone; val/<wnid>/ too, or with `flat_val`
    the complete flat validation set (empty files: only their names are read)."""
    jpeg = _jpeg_bytes()
    for w in wnids:
        (root / "train" / w).mkdir(parents=True)
        for i in range(2):
            (root / "train" / w / f"{w}_{i}.JPEG").write_bytes(jpeg)
        if not flat_val:
            (root / "val" / w).mkdir(parents=True)
            (root / "val" / w / f"ILSVRC2012_val_{w}.JPEG").write_bytes(jpeg)
    if flat_val:
        (root / "val").mkdir()
        for k in range(1, 50_001):
            (root / "val" / f"ILSVRC2012_val_{k:08d}.JPEG").touch()


def test_an_imagenet_subset_is_read_from_its_class_list(tmp_path):
    """ImageNet-100 style: only the listed classes' folders exist; the seen/unseen split is
    the full set's rule (every fifth class of each super-class) over the listed ones."""
    mapping = json.loads(SUPERCLASSES.read_text())
    by_super = {}
    for w in sorted(mapping):
        by_super.setdefault(mapping[w]["superclass"], []).append(w)
    big = next(ws for ws in by_super.values() if len(ws) >= 10)
    small = next(ws for ws in by_super.values() if len(ws) == 3)
    wnids = big[:10] + small[:2]
    _imagenet_subset(tmp_path / "in", wnids)
    listing = tmp_path / "imagenet12.txt"
    # saved by Notepad: a byte-order mark and CRLF line ends
    text = "# my subset\r\n\r\n" + "\r\n".join(f"{w} some name" for w in wnids[::-1])
    listing.write_bytes(text.encode("utf-8-sig"))
    records = read_imagenet(tmp_path / "in", class_list=str(listing))
    assert len(records.files) == 12 * 3
    names = {records.class_names[c] for c in set(records.labels[:, 1])}
    assert names == {mapping[w]["name"] for w in wnids}
    unseen = {records.class_names[c] for c in set(records.labels[records.splits["unseen"], 1])}
    assert unseen == {mapping[big[4]]["name"], mapping[big[9]]["name"]}
    assert len(records.splits["train"]) == 10 * 2 and len(records.splits["seen_test"]) == 10
    # Without the list, the missing folders are named with the way to read a subset.
    with pytest.raises(MissingDataError, match="--config.data.class_list=FILE"):
        read_imagenet(tmp_path / "in")
    # Bad lists: one line naming the file and line (or the folder missing for a listed class).
    other = next(w for w in sorted(mapping) if w not in wnids)
    for text, match in [
        ("n01440764x\n", r"imagenet12.txt:1: 'n01440764x' is not an ImageNet-1k class"),
        (f"{wnids[0]}\n\n{wnids[0]}\n", rf"txt:3: {wnids[0]} is listed twice \(first on line 1\)"),
        ("# nothing\n", "lists no class"),
        (f"{wnids[0]}\n{other}\n", f"1 class folders missing in .*, e.g. {other} listed in"),
    ]:  # fmt: skip
        listing.write_text(text)
        with pytest.raises(UserError, match=match) as info:
            read_imagenet(tmp_path / "in", class_list=str(listing))
        assert "\n" not in str(info.value)
    with pytest.raises(MissingDataError, match="class_list: cannot read .*absent.txt"):
        read_imagenet(tmp_path / "in", class_list=str(tmp_path / "absent.txt"))


def test_an_imagenet_subset_takes_its_images_from_the_flat_validation_set(tmp_path):
    import tensorflow_datasets as tfds

    labels = pathlib.Path(tfds.__file__).parent / "datasets" / "imagenet2012"
    truth = (labels / "validation_labels.txt").read_text().split()
    wnids = sorted(set(truth))[:3]
    _imagenet_subset(tmp_path, wnids, flat_val=True)
    (tmp_path / "list.txt").write_text("\n".join(wnids))
    records = read_imagenet(tmp_path, class_list=str(tmp_path / "list.txt"))
    val = [f for f in records.files if f.startswith("val/")]
    expected = [f"val/ILSVRC2012_val_{k + 1:08d}.JPEG" for k, w in enumerate(truth) if w in wnids]
    assert sorted(val) == expected and len(val) == 150


def _config(**kw):
    return ml_collections.ConfigDict(
        {"image_size": 16, "eval_crop": 0.875, "data_dir": "", "val_fraction": 0.2, **kw}
    )


def test_lazy_dataset_from_files_and_corrupt_image(tmp_path):
    records = read_cub(write_cub(tmp_path))
    ds = to_dataset(records, image_source(records, ""), image_size=16, crop_fraction=0.875)
    train = ds.split("train")
    assert train.images.shape == (9, 16, 16, 3) and len(train) == 9
    batch = train.images[2:5]
    assert batch.shape == (3, 16, 16, 3) and batch.dtype == np.uint8
    assert train.images[np.array([0, 8])].shape == (2, 16, 16, 3)
    bad = records.root / records.files[0]
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(CorruptImageError, match=str(bad.name)):
        train.images[0:1]


@pytest.mark.slow
def test_inshop_config_trains_and_evaluates_query_to_gallery(tmp_path):
    from himl.configs import inshop
    from himl.train.loop import train_and_evaluate

    config = inshop.get_config()
    config.data.manual_dir = str(write_inshop(tmp_path / "data"))
    config.data.update(
        dict(
            image_size=16,
            batch_size=8,
            samples_per_class=4,
            sampler="m_per_class",
            num_workers=0,
            val_fraction=0.0,
        )
    )
    config.model.name, config.model.widths, config.model.embedding_dim = "small_cnn", (4,), 8
    config.train.steps, config.eval.batch_size, config.eval.ks = 2, 4, (1, 2)
    summary = train_and_evaluate(config, tmp_path / "run", progress=False)
    result = summary["results"]["query->gallery"]
    assert result["num_samples"] == 1 and result["item"]["num_queries"] == 1
    # One query whose item has one gallery image among two: recall@2 must find it.
    assert result["item"]["recall@2"] == 1.0

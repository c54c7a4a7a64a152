"""Omniglot reader on sets written as published (zips and extracted trees), both protocols."""

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from himl.data.readers_hier import read_omniglot
from himl.data.real import image_source
from himl.data.records import MalformedDataError, MissingDataError, UnknownOptionError

# set -> {alphabet: number of characters}
BACKGROUND = {"Alpha": 4, "Beta": 2}
EVALUATION = {"Gamma": 2}


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 2, (6, 6), dtype=np.uint8) * 255
    Image.fromarray(pixels, mode="L").save(buffer, "PNG")
    return buffer.getvalue()


def _members(name: str, alphabets: dict, first_id: int = 1) -> dict[str, bytes]:
    """`{<set>/<alphabet>/characterNN/<id>_<drawer>.png: bytes}` with 20 drawers each."""
    out, char_id = {}, first_id
    for alphabet, num_chars in alphabets.items():
        for c in range(1, num_chars + 1):
            for drawer in range(1, 21):
                out[f"{name}/{alphabet}/character{c:02d}/{char_id:04d}_{drawer:02d}.png"] = _png(
                    char_id * 100 + drawer
                )
            char_id += 1
    return out


def write_set(root, name, alphabets, *, zipped=True, first_id=1, prefix=""):
    """One published set as `<name>.zip` (directory entries included) or extracted."""
    members = _members(name, alphabets, first_id)
    root.mkdir(parents=True, exist_ok=True)
    if zipped:
        with zipfile.ZipFile(root / f"{name}.zip", "w") as z:
            for member, data in members.items():
                z.writestr(prefix + member, data)
    else:
        for member, data in members.items():
            (root / prefix / member).parent.mkdir(parents=True, exist_ok=True)
            (root / prefix / member).write_bytes(data)
    return members


def _reference(members_by_set, protocol):
    """(alphabet, character, drawer, unseen) per image from the member names, by a loop."""
    rows = []
    for set_name, members in members_by_set.items():
        for member in members:
            _, alphabet, character, file = member.split("/")
            drawer = int(file.split("_")[1].split(".")[0])
            rows.append((alphabet, character, drawer, set_name))
    chars = {}
    for a, c, _, _ in rows:
        chars.setdefault(a, set()).add(c)
    unseen_chars = set()
    for a, cs in chars.items():
        cs = sorted(cs)
        unseen_chars |= {(a, c) for c in cs[len(cs) - len(cs) // 4 :]}
    out = []
    for a, c, d, set_name in rows:
        if protocol == "alphabets":
            unseen = set_name == "images_evaluation"
        elif protocol == "held_out_alphabets":  # every 4th alphabet name, sorted
            unseen = sorted(chars).index(a) % 4 == 3
        else:
            unseen = (a, c) in unseen_chars
        out.append((a, c, d, "unseen" if unseen else ("train" if d <= 15 else "seen_test")))
    return out


def _check(records, reference):
    names = {k: tuple(v.split("/")) for k, v in records.class_names.items()}
    got = []
    for split in ("train", "seen_test", "unseen"):
        for i in records.splits[split]:
            a, c = names[int(records.labels[i, 1])]
            drawer = int(records.files[i].rsplit("_", 1)[1][:2])
            got.append((a, c, drawer, split))
    assert sorted(got) == sorted(reference)
    assert records.level_names == ("alphabet", "character", "image")
    # the alphabet column is one label per alphabet name
    alphabet_of = {}
    for i in range(len(records.files)):
        a = names[int(records.labels[i, 1])][0]
        assert alphabet_of.setdefault(a, records.labels[i, 0]) == records.labels[i, 0]


@pytest.mark.parametrize("zipped", [True, False])
@pytest.mark.parametrize("protocol", ["characters", "alphabets"])
def test_full_sets_zipped_or_extracted(tmp_path, zipped, protocol):
    sets = {
        "images_background": write_set(tmp_path, "images_background", BACKGROUND, zipped=zipped),
        "images_evaluation": write_set(
            tmp_path, "images_evaluation", EVALUATION, zipped=zipped, first_id=7
        ),
    }
    records = read_omniglot(tmp_path, protocol=protocol)
    assert len(records.files) == 8 * 20
    _check(records, _reference(sets, protocol))
    if protocol == "alphabets":
        unseen_alphabets = {
            records.class_names[int(c)].split("/")[0]
            for c in records.labels[records.splits["unseen"], 1]
        }
        assert unseen_alphabets == {"Gamma"}
    source = image_source(records, "")
    first = records.files[0]
    assert ("::" in first) == zipped
    assert Image.open(io.BytesIO(source[0])).size == (6, 6)


def test_small_sets_overlap_kept_once_and_full_set_preferred(tmp_path):
    small1 = write_set(tmp_path, "images_background_small1", {"Alpha": 4})
    small2 = write_set(tmp_path, "images_background_small2", {"Alpha": 4, "Beta": 2})
    records = read_omniglot(tmp_path)
    assert len(records.files) == 6 * 20  # Alpha in both sets: kept once
    sets = {
        "images_background_small1": small1,
        "images_background_small2": {m: v for m, v in small2.items() if "/Beta/" in m},
    }
    _check(records, _reference(sets, "characters"))
    with pytest.raises(MissingDataError, match="protocol 'alphabets' needs images_evaluation"):
        read_omniglot(tmp_path, protocol="alphabets")
    write_set(tmp_path, "images_background", {"Zeta": 1}, zipped=False)
    assert len(read_omniglot(tmp_path).files) == 20  # the full set replaces its subsets


def test_held_out_alphabets_from_the_background_set_alone(tmp_path):
    """Every 4th background alphabet (name order) is unseen, whole; the evaluation set is
    not read, so the protocol works on the small sets."""
    alphabets = {"Delta": 1, "Alpha": 2, "Gamma": 1, "Beta": 1, "Eta": 1, "Zeta": 1, "Theta": 1,
                 "Iota": 2}  # fmt: skip
    background = write_set(tmp_path, "images_background_small1", alphabets)
    write_set(tmp_path, "images_evaluation", EVALUATION, first_id=50)
    records = read_omniglot(tmp_path, protocol="held_out_alphabets")
    _check(records, _reference({"images_background_small1": background}, "held_out_alphabets"))
    unseen = {records.class_names[int(c)].split("/")[0] for c in records.labels[
        records.splits["unseen"], 1]}  # fmt: skip
    assert unseen == {"Eta", "Zeta"}  # 4th, 8th of Alpha Beta Delta Eta Gamma Iota Theta Zeta


@pytest.mark.parametrize("prefix", ["images_background/", "extra/"])
def test_archive_nested_one_level_deeper_or_wrong_top_folder(tmp_path, prefix):
    write_set(tmp_path, "images_background", BACKGROUND, prefix=prefix)
    with pytest.raises(MalformedDataError, match="images_background.zip: '.*' is not images_bac"):
        read_omniglot(tmp_path)


def test_archive_nested_one_level_shallower(tmp_path):
    members = _members("images_background", BACKGROUND)
    with zipfile.ZipFile(tmp_path / "images_background.zip", "w") as z:
        for member, data in members.items():
            z.writestr(member.split("/", 1)[1], data)  # no top folder
    with pytest.raises(MalformedDataError, match="nested deeper or shallower"):
        read_omniglot(tmp_path)


def test_extracted_tree_nested_deeper(tmp_path):
    write_set(tmp_path, "images_background", BACKGROUND, zipped=False)
    (tmp_path / "images_background" / "Alpha" / "character01" / "more").mkdir()
    (tmp_path / "images_background" / "Alpha" / "character01" / "more" / "x.png").write_bytes(
        _png(0)
    )
    (tmp_path / "images_background" / ".DS_Store").write_bytes(b"")  # ignored
    with pytest.raises(MalformedDataError, match="more/x.png' is not"):
        read_omniglot(tmp_path)


def test_partial_extraction_missing_drawer(tmp_path):
    write_set(tmp_path, "images_background", BACKGROUND, zipped=False)
    (tmp_path / "images_background/Beta/character02/0006_07.png").unlink()
    with pytest.raises(MalformedDataError, match="Beta/character02 has drawers .*1..20"):
        read_omniglot(tmp_path)


def test_bad_file_name_truncated_zip_and_unknown_protocol(tmp_path):
    write_set(tmp_path, "images_background", BACKGROUND)
    with pytest.raises(UnknownOptionError, match="unknown protocol 'letters'"):
        read_omniglot(tmp_path, protocol="letters")
    data = (tmp_path / "images_background.zip").read_bytes()
    (tmp_path / "images_background.zip").write_bytes(data[: len(data) // 2])
    with pytest.raises(MalformedDataError, match="images_background.zip: not a readable zip"):
        read_omniglot(tmp_path)
    (tmp_path / "images_background.zip").unlink()
    write_set(tmp_path, "images_background", BACKGROUND, zipped=False)
    (tmp_path / "images_background/Alpha/character01/0001_01.png").rename(
        tmp_path / "images_background/Alpha/character01/0001_x1.png"
    )
    with pytest.raises(MalformedDataError, match="0001_x1.png'.*<character id>_<drawer"):
        read_omniglot(tmp_path)
    with pytest.raises(MissingDataError, match="no images_background"):
        read_omniglot(tmp_path / "images_background")

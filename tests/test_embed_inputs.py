"""What the embedder accepts: a run whose training .npz moved, manifests of new images
(the run's column options, labels optional), grayscale arrays and single image files."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import himl
from himl.configs import tiny
from himl.data.defaults import custom_data_config
from himl.data.listing import listing_options, read_listing
from himl.data.records import MalformedDataError
from himl.embedder import Embedder, EmbedderError
from himl.errors import UserError
from himl.models.registry import build_model

REPO = Path(__file__).parents[1]


# --- a run trained on an .npz that is no longer where config.json says -------------------


def _as_npz_run(workdir: Path, source: str) -> None:
    """Makes the (in-memory, 28 x 28 x 1) tiny run's config say it trained on `source`, as a
    run made before himl-train recorded its input shape (no input.json)."""
    (workdir / "input.json").unlink()
    path = workdir / "config.json"
    config = json.loads(path.read_text())
    config["data"]["name"] = "custom"
    config["data"].setdefault("custom", {})["source"] = source
    path.write_text(json.dumps(config))


def test_a_moved_training_npz_is_named_and_the_shape_can_be_given(
    tiny_run, tiny_run_copy, tmp_path, monkeypatch
):
    workdir, _ = tiny_run_copy
    _as_npz_run(workdir, "data/arr.npz")  # relative to where himl-train ran
    monkeypatch.chdir(tmp_path)
    with pytest.raises(EmbedderError) as info:
        himl.load_embedder(workdir)
    message = str(info.value)
    assert "config.data.custom.source='data/arr.npz'" in message and "\n" not in message
    assert str(tmp_path / "data" / "arr.npz") in message and "--input_shape=H,W,C" in message

    images = np.random.default_rng(0).integers(0, 256, (6, 28, 28, 1), np.uint8)
    expected = himl.load_embedder(tiny_run[0]).embed(images)  # the same checkpoint
    embedder = himl.load_embedder(workdir, input_shape=(28, 28, 1))
    assert embedder.input_shape == (28, 28, 1) and embedder.crop_fraction == 1.0
    np.testing.assert_array_equal(embedder.embed(images), expected)
    with pytest.raises(EmbedderError, match=r"input_shape \(28, 28, 3\) does not fit"):
        himl.load_embedder(workdir, input_shape=(28, 28, 3))
    with pytest.raises(EmbedderError, match="three positive integers"):
        himl.load_embedder(workdir, input_shape=(28, 28))

    # Back at its path, the file gives the shape, and a different one given is refused.
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "arr.npz", images=images[..., 0], labels=np.zeros((6, 1)))
    assert himl.load_embedder(workdir).input_shape == (28, 28, 1)
    with pytest.raises(EmbedderError, match=r"\(20, 20, 1\) differs from the run's \(28, 28, 1\)"):
        himl.load_embedder(workdir, input_shape=(20, 20, 1))


def test_a_run_records_its_input_so_a_moved_npz_is_not_needed(tmp_path, monkeypatch):
    from configs.custom import get_config
    from himl.train.loop import train_and_evaluate

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (48, 20, 20, 3), np.uint8)
    labels = np.stack([np.arange(48) % 8 // 4, np.arange(48) % 8], axis=1)
    monkeypatch.chdir(tmp_path)
    np.savez("arr.npz", images=images, labels=labels)
    config = get_config("small")
    config.data.custom.source = "arr.npz"  # relative, as users write it
    config.data.batch_size, config.data.samples_per_class = 16, 4
    config.train.steps, config.eval.splits, config.eval.at_start = 2, (), False
    train_and_evaluate(config, tmp_path / "run", progress=False)
    record = json.loads((tmp_path / "run" / "input.json").read_text())
    assert record == {"shape": [20, 20, 3], "crop_fraction": 1.0}  # the .npz's, uncropped
    expected = himl.load_embedder(tmp_path / "run").embed(images[:4])

    Path("arr.npz").unlink()
    embedder = himl.load_embedder(tmp_path / "run")
    assert embedder.input_shape == (20, 20, 3) and embedder.crop_fraction == 1.0
    np.testing.assert_array_equal(embedder.embed(images[:4]), expected)
    with pytest.raises(EmbedderError, match=r"\(16, 16, 3\) differs from the run's \(20, 20, 3\)"):
        himl.load_embedder(tmp_path / "run", input_shape=(16, 16, 3))

    (tmp_path / "run" / "input.json").write_text('{"shape": [20, 20]}')
    with pytest.raises(UserError, match=r"input.json is not a valid input record") as info:
        himl.load_embedder(tmp_path / "run")
    assert "\n" not in str(info.value)


# --- manifests of new images ----------------------------------------------------------------


@pytest.fixture
def pictures(tmp_path):
    """Four 8 x 8 PNGs in tmp_path/pics."""
    folder = tmp_path / "pics"
    folder.mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(folder / f"{i}.png")
    return folder


def test_a_manifest_is_read_with_the_runs_column_options(pictures):
    manifest = pictures.parent / "m.csv"
    manifest.write_text("file,part,kind,grp\n" + "".join(
        f"pics/{i}.png,train,k{i % 2},g{i}\n" for i in range(4)))  # fmt: skip
    options = {"path_column": "file", "split_column": "part", "levels": ["grp", "kind"]}
    paths, level_names, labels, split = read_listing(manifest, options)
    assert paths == [pictures / f"{i}.png" for i in range(4)]
    assert level_names == ("grp", "kind")
    assert labels == [(f"g{i}", f"k{i % 2}") for i in range(4)]
    assert split == ["train"] * 4  # written to the .npz, where himl-eval --embeddings reads it
    with pytest.raises(MalformedDataError, match="no path column 'path'"):
        read_listing(manifest, {})  # another run's default


def test_a_split_column_with_gaps_is_left_out_with_a_note(pictures, capsys):
    manifest = pictures.parent / "gaps.csv"
    manifest.write_text("path,split\npics/0.png,test\npics/1.png,\npics/2.png,query\n")
    assert read_listing(manifest).split is None
    assert "gaps.csv:3: no 'split' value (1 such rows): the splits are left out" in (
        capsys.readouterr().err
    )


def test_the_options_come_from_a_custom_data_run_only():
    config = tiny.get_config()
    assert listing_options(config) == {}  # trained on the embedded data
    config.data.name = "custom"
    config.data.custom = custom_data_config()
    config.data.custom.path_column = "file"
    assert listing_options(config) == {"path_column": "file", "split_column": "split",
                                       "levels": ()}  # fmt: skip


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_manifest_without_labels_lists_unlabelled_images(pictures, suffix):
    manifest = pictures.parent / f"only{suffix}"
    rows = [f"pics/{i}.png" for i in range(4)]
    if suffix == ".csv":
        manifest.write_text("path\n" + "\n".join(rows) + "\n")
    else:
        manifest.write_text("".join(json.dumps({"path": r, "cls": None}) + "\n" for r in rows))
    assert read_listing(manifest) == ([pictures / f"{i}.png" for i in range(4)], (), None, None)


def test_written_paths_are_absolute(pictures, monkeypatch):
    """`himl-embed --out` run with a relative --images: the .npz is read from anywhere."""
    from himl.embed_main import write_embeddings

    monkeypatch.chdir(pictures.parent)
    listing = read_listing("pics")
    assert listing.paths[0] == Path("pics/0.png")
    out = write_embeddings("e.npz", np.zeros((4, 2), np.float32), *listing[:3])
    assert list(np.load(out)["paths"]) == [str(pictures / f"{i}.png") for i in range(4)]


def test_labels_left_out_are_noted(pictures, capsys):
    """A manifest whose label columns are not the run's, or a folder whose images are in
    label folders of different depths, is read unlabelled - saying so (an .npz written
    without labels cannot be evaluated); a plain folder of new images says nothing."""
    manifest = pictures.parent / "other.csv"
    manifest.write_text("path,group,klass\npics/0.png,a,b\n")
    assert read_listing(manifest, {"levels": ["alphabet", "character"]}).labels is None
    assert capsys.readouterr().err == (
        f"note: {manifest}: none of the run's label columns ['alphabet', 'character'] (its "
        "config.data.custom.levels) is in the header, which has ['group', 'klass']: the images "
        "are read without labels (name the columns as the run did to label them)\n"
    )
    assert read_listing(pictures).labels is None
    assert capsys.readouterr().err == ""
    (pictures / "deeper").mkdir()
    Image.new("RGB", (8, 8)).save(pictures / "deeper" / "x.png")
    assert read_listing(pictures).labels is None
    err = capsys.readouterr().err
    assert err.startswith(f"note: {pictures}: images at different depths: ")
    assert err.endswith("; the 5 images are read without labels\n")


def test_empty_labels_are_unknown_and_levels_are_all_or_none(pictures):
    manifest = pictures.parent / "partial.csv"
    manifest.write_text("path,grp,cls\npics/0.png,g,a\npics/1.png,g,\npics/2.png,,\n")
    paths, level_names, labels, _ = read_listing(manifest)
    assert len(paths) == 3 and level_names == ("grp", "cls")
    assert labels == [("g", "a"), ("g", ""), ("", "")]
    # The run's levels: none of them in the header -> no labels; some of them -> an error.
    assert read_listing(manifest, {"levels": ["family", "item"]})[1:3] == ((), None)
    with pytest.raises(MalformedDataError, match=r"partial.csv: label column 'item'.*or none"):
        read_listing(manifest, {"levels": ["grp", "item"]})
    # A missing image is still named, with its row.
    manifest.write_text("path\npics/0.png\npics/nope.png\n")
    with pytest.raises(UserError, match=r"1 of 2 listed images are missing.*partial.csv:3"):
        read_listing(manifest)


@pytest.mark.slow
def test_himl_embed_reads_a_manifest_as_the_run_does(tiny_run_copy, pictures):
    """A run trained with path_column=file embeds a path-only manifest with that column."""
    workdir, _ = tiny_run_copy
    path = workdir / "config.json"
    config = json.loads(path.read_text())
    config["data"].setdefault("custom", {})["path_column"] = "file"
    config["data"]["name"] = "custom"
    config["data"]["custom"]["source"] = "/gone/train.npz"
    path.write_text(json.dumps(config))
    manifest = pictures.parent / "new.csv"
    manifest.write_text("file\n" + "".join(f"pics/{i}.png\n" for i in range(4)))
    out = pictures.parent / "e.npz"
    done = subprocess.run(
        [sys.executable, "-m", "himl.embed_main", "--noprogress", f"--workdir={workdir}",
         f"--images={manifest}", f"--out={out}", "--input_shape=28,28,1"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    z = np.load(out)
    assert sorted(z.files) == ["embeddings", "paths"]
    assert list(z["paths"]) == [str(pictures / f"{i}.png") for i in range(4)]
    expected = himl.load_embedder(workdir, input_shape=(28, 28, 1)).embed(
        [pictures / f"{i}.png" for i in range(4)]
    )
    np.testing.assert_allclose(z["embeddings"], expected, atol=1e-6)


# --- arrays and single files ---------------------------------------------------------------


@pytest.fixture(scope="module")
def rgb_embedder():
    """An untrained RGB network (16 x 16 x 3): what matters is how inputs reach it."""
    model = build_model(tiny.get_config().model)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), train=False)
    return Embedder(model, variables, input_shape=(16, 16, 3), crop_fraction=1.0, batch_size=8)


def test_grayscale_arrays_embed_as_gray_rgb(rgb_embedder):
    gray = np.random.default_rng(0).integers(0, 256, (5, 16, 16), np.uint8)
    expected = rgb_embedder.embed(np.repeat(gray[..., None], 3, axis=-1))
    np.testing.assert_allclose(rgb_embedder.embed(gray), expected, atol=1e-6)
    big = np.repeat(np.repeat(gray, 2, axis=1), 2, axis=2)  # [5, 32, 32]: resized
    assert rgb_embedder.embed(big).shape == expected.shape
    with pytest.raises(EmbedderError, match=r"look like one \[H, W, C\] image"):
        rgb_embedder.embed(np.zeros((16, 16, 3), np.uint8))
    # PyTorch's layout: named, with the fix (Pillow's "Cannot handle this data type" before).
    for channels in (1, 3):
        with pytest.raises(
            EmbedderError, match=r"look channel-first .*np.moveaxis\(images, 1, -1\)"
        ):
            rgb_embedder.embed(np.zeros((4, channels, 28, 28), np.uint8))


def test_a_gallery_of_one_image_file(rgb_embedder, pictures):
    one = pictures / "1.png"
    gallery = rgb_embedder.gallery(one)
    assert gallery.items == [one]
    np.testing.assert_array_equal(gallery.embeddings, rgb_embedder.embed([one]))
    assert rgb_embedder.gallery(str(one)).items == [one]


# --- pixel dtypes: any integer dtype is 0..255 pixels, floats are [0, 1] ---------------------


@pytest.fixture(scope="module")
def pixels():
    """Six 16 x 16 RGB uint8 images using both ends of 0..255."""
    x = np.random.default_rng(1).integers(0, 256, (6, 16, 16, 3), np.uint8)
    x[0, 0, 0], x[0, 0, 1] = 0, 255
    return x


def test_integer_and_float_pixel_arrays_embed_like_uint8(rgb_embedder, pixels):
    expected = rgb_embedder.embed(pixels)  # uint8: / 255, as in training
    for dtype in (np.int64, np.int32, np.uint16, np.int16):
        np.testing.assert_array_equal(rgb_embedder.embed(pixels.astype(dtype)), expected)
    # Floats in [0, 1]: float32 / float64 to rounding; float16 and bfloat16 carry 11 and 8
    # significant bits of each pixel (embeddings have unit norm).
    for dtype, atol in [(np.float32, 1e-6), (np.float64, 1e-6), (np.float16, 1e-4),
                        (jnp.bfloat16, 2e-3)]:  # fmt: skip
        got = rgb_embedder.embed((pixels / 255).astype(dtype))
        np.testing.assert_allclose(got, expected, atol=atol, err_msg=np.dtype(dtype).name)
    np.testing.assert_allclose(
        rgb_embedder.embed(jnp.asarray(pixels / 255, jnp.bfloat16)), expected, atol=2e-3
    )
    # Integer images of another size are resized like uint8 ones.
    big = np.repeat(np.repeat(pixels, 2, axis=1), 2, axis=2)
    np.testing.assert_array_equal(rgb_embedder.embed(big.astype(np.int64)), rgb_embedder.embed(big))


def test_the_embedding_function_scales_any_integer_dtype(rgb_embedder, pixels):
    from himl.models.inference import EmbeddingFunction

    embed = EmbeddingFunction(rgb_embedder.model, batch_size=4)
    expected = embed(rgb_embedder.variables, pixels)
    np.testing.assert_array_equal(embed(rgb_embedder.variables, pixels.astype(np.int64)), expected)
    with pytest.raises(ValueError, match=r"float images must be in \[0, 1\]"):
        embed(rgb_embedder.variables, pixels.astype(np.float32))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda x: x.astype(np.float32), r"float images must be in \[0, 1\], got values in "
         r"\[0, 255\]; pass uint8 pixels \(0..255\), or divide by 255"),
        (lambda x: x.astype(np.float16), r"float images must be in \[0, 1\].*divide by 255"),
        (lambda x: jnp.asarray(x, jnp.bfloat16), r"float images must be in \[0, 1\]"),
        (lambda x: np.full(x.shape, np.nan, np.float32), r"float images .* got values in \[nan"),
        (lambda x: x.astype(np.uint16) * 16, r"integer images must be pixels in 0..255, got "
         r"values in \[0, 4080\] \(uint16\)"),
        (lambda x: x.astype(np.int64) - 1, r"integer images .* got values in \[-1, 254\]"),
        (lambda x: x > 127, r"integer pixels in 0..255 or floats in \[0, 1\], got dtype bool"),
        (lambda x: x.astype(str), r"got dtype <U3"),
    ],
)  # fmt: skip
def test_pixels_out_of_range_are_refused_in_one_line(rgb_embedder, pixels, make, message):
    with pytest.raises(EmbedderError, match=message) as info:
        rgb_embedder.embed(make(pixels))
    assert "\n" not in str(info.value)


def test_a_list_mixing_kinds_of_image_names_the_first_odd_one(rgb_embedder, pixels, pictures):
    path, pil = pictures / "0.png", Image.fromarray(pixels[0])
    for images, message in [
        ([path, str(path), pixels[0]], r"images\[2\] is a ndarray where images\[0\] is a path"),
        ([pil, path], r"images\[1\] is a PosixPath where images\[0\] is a Pillow image"),
    ]:
        with pytest.raises(EmbedderError, match=message + ": pass one kind of image per call"):
            rgb_embedder.embed(images)


def test_a_float_batch_of_another_size_is_named_float(rgb_embedder, pixels):
    big = np.repeat(pixels, 2, axis=1) / 255
    with pytest.raises(EmbedderError, match=r"float images must already be 16x16x3") as info:
        rgb_embedder.embed(big)
    assert "\n" not in str(info.value)


def test_one_pillow_image_embeds_as_a_list_of_one(rgb_embedder, pixels):
    image = Image.fromarray(pixels[2])
    expected = rgb_embedder.embed(pixels[2:3])
    np.testing.assert_array_equal(rgb_embedder.embed(image), expected)
    np.testing.assert_array_equal(rgb_embedder.embed([image]), expected)


def test_pillow_images_of_any_mode_and_size_embed_as_their_files_would(rgb_embedder, pixels):
    """Palette images give their colours (not their palette indices as gray levels),
    16-bit grayscale maps >> 8 as a decoded 16-bit file does, sizes may differ; a list
    that mixes Pillow images with arrays is refused by index."""
    rgb = [Image.fromarray(a) for a in pixels]
    palette = [image.quantize(16) for image in rgb]
    looked_up = np.stack([np.asarray(image.convert("RGB")) for image in palette])
    assert not np.array_equal(np.asarray(palette[0]), looked_up[0, ..., 0])
    np.testing.assert_array_equal(rgb_embedder.embed(palette), rgb_embedder.embed(looked_up))
    np.testing.assert_array_equal(
        rgb_embedder.embed(palette[1]), rgb_embedder.embed(looked_up[1:2])
    )

    gray = pixels[:2, ..., 0]
    wide = [Image.fromarray(g.astype(np.uint16) * 257) for g in gray]  # 65535 at 255
    assert wide[0].mode.startswith("I;16")
    as_rgb = np.repeat(gray[..., None], 3, axis=-1)
    np.testing.assert_array_equal(rgb_embedder.embed(wide), rgb_embedder.embed(as_rgb))

    big = np.repeat(np.repeat(pixels[1:2], 2, axis=1), 2, axis=2)  # resized as an array is
    expected = np.concatenate([rgb_embedder.embed(pixels[:1]), rgb_embedder.embed(big)])
    mixed_sizes = [rgb[0], Image.fromarray(big[0])]
    np.testing.assert_array_equal(rgb_embedder.embed(mixed_sizes), expected)
    indices, _ = rgb_embedder.gallery(pixels).search(palette[:2], k=1)
    np.testing.assert_array_equal(
        indices, rgb_embedder.gallery(looked_up).search(looked_up[:2], k=1)[0]
    )
    with pytest.raises(
        EmbedderError, match=r"images\[1\] is a ndarray where images\[0\] is a Pillow"
    ):
        rgb_embedder.embed([rgb[0], pixels[1]])


# --- gallery search: embedding queries and labels -------------------------------------------


def test_gallery_search_takes_bf16_and_single_embeddings(rgb_embedder, pixels):
    gallery = rgb_embedder.gallery(pixels)
    q = rgb_embedder.embed(pixels[:3] // 2)
    q16 = jnp.asarray(q, jnp.bfloat16)
    want = gallery.search(np.asarray(q16, np.float32), k=4)  # the same values, upcast here
    for got, expected in zip(gallery.search(q16, k=4), want, strict=True):
        np.testing.assert_array_equal(got, expected)
    # One embedding [D] is one query: results [1, k].
    indices, scores = gallery.search(q[1], k=4)
    np.testing.assert_array_equal(indices, gallery.search(q[1:2], k=4)[0])
    np.testing.assert_array_equal(scores, gallery.search(q[1:2], k=4)[1])
    assert indices.shape == (1, 4)
    with pytest.raises(EmbedderError, match=r"embeddings must be \[Q, \d+\] or \[\d+\], got "
                       r"shape \(5,\)") as info:  # fmt: skip
        gallery.search(q[0, :5], k=4)
    assert "\n" not in str(info.value)


def test_gallery_labels_of_search_results(rgb_embedder, pixels):
    names = ["a", "b", "c", "d", "e", "f"]
    gallery = rgb_embedder.gallery(pixels, labels=names)
    indices, _ = gallery.search(pixels[:2], k=3)
    assert gallery.labels[indices].tolist() == [[names[j] for j in row] for row in indices]
    # One tuple of level labels per item (himl-embed's manifests): [G, L] -> [Q, k, L].
    levels = [(f"g{i // 3}", names[i]) for i in range(6)]
    gallery = rgb_embedder.gallery(pixels, labels=levels)
    assert gallery.labels[indices].tolist() == [[list(levels[j]) for j in row] for row in indices]
    assert rgb_embedder.gallery(pixels).labels is None
    ragged = [("x",) * (i % 3 + 1) for i in range(6)]  # one object per item
    gallery = rgb_embedder.gallery(pixels, labels=ragged)
    assert gallery.labels[indices].tolist() == [[ragged[j] for j in row] for row in indices]
    with pytest.raises(EmbedderError, match="5 labels for a gallery of 6 images"):
        rgb_embedder.gallery(pixels, labels=names[:5])


def test_a_bad_pixel_in_a_later_batch_is_refused_before_any_embedding(
    rgb_embedder, pixels, monkeypatch
):
    images = np.concatenate([pixels, pixels]).astype(np.int64)  # 12 images: 2 batches of 8
    images[-1, 0, 0, 0] = 300
    calls = []
    monkeypatch.setattr(rgb_embedder._embed, "replicated_batch", lambda *a: calls.append(a))
    with pytest.raises(EmbedderError, match=r"got values in \[0, 300\]"):
        rgb_embedder.embed(images)
    assert calls == []


def test_a_listed_file_that_is_no_image_is_named_with_its_row(pictures):
    (pictures / "notes.png").write_text("not an image")
    manifest = pictures.parent / "with_notes.csv"
    manifest.write_text("path\npics/0.png\npics/notes.png\n")
    with pytest.raises(UserError, match=(
        r"with_notes.csv: 1 of 2 listed images cannot be read as images, e.g. "
        r".*with_notes.csv:3: .*notes.png \(cannot identify image file\)"
    )):  # fmt: skip
        read_listing(manifest)

"""`himl.data.load`, reader options from the config, tiny config variants, preparation text."""

import importlib
import time

import numpy as np
import pytest
from conftest import SHARED_DATA
from test_data_readers import write_cub, write_inshop, write_inshop_categories

import himl.data
from himl.config_lib import validate_config
from himl.data.real import read_records
from himl.data.records import UnknownOptionError

DATASET_CONFIGS = ("cub", "cars", "sop", "inshop", "imagenet", "omniglot")


def test_load_one_call_matches_the_config_path(tmp_path):
    root = write_cub(tmp_path)
    ds = himl.data.load("cub", manual_dir=str(root), image_size=16, val_fraction=0.0)
    assert ds.split("train").images.shape == (9, 16, 16, 3)
    assert ds.split("test").labels[:, 0].tolist() == [100] * 3 + [101] * 3
    with pytest.raises(himl.data.UnknownFieldError, match="no field 'image_sise'"):
        himl.data.load("cub", manual_dir=str(root), image_sise=16)


def test_printing_a_dataset_summarises_it(tmp_path):
    """The README's check of a download prints the splits' sizes, not the label arrays."""
    root = write_cub(tmp_path)
    ds = himl.data.load("cub", manual_dir=str(root), image_size=16, val_fraction=0.0)
    assert repr(ds) == (
        "Dataset 'cub': levels class > image (class level 'class')\n"
        "  train: 9 images of 16 x 16 x 3; labels: class 3, image 9\n"
        "  train_no_val: 9 images of 16 x 16 x 3; labels: class 3, image 9\n"
        "  val: 0 images of 16 x 16 x 3; labels: class 0, image 0\n"
        "  test: 6 images of 16 x 16 x 3; labels: class 2, image 6"
    )


def test_an_in_memory_dataset_refuses_another_image_size():
    """ "embedded" is 28 x 28 x 1 in memory: `image_size=32` was silently ignored."""
    from himl.errors import ConfigError

    with pytest.raises(ConfigError, match=r"'embedded' is held in memory at 28 x 28 x 1") as info:
        himl.data.load("embedded", image_size=32)
    assert "\n" not in str(info.value)
    assert himl.data.load("embedded", image_size=28).split("train").images.shape[1:] == (28, 28, 1)


def test_reader_options_from_the_config(tmp_path):
    from himl.configs import default

    data = default.get_config().data
    data.update(name="inshop", manual_dir=str(write_inshop(tmp_path / "i")), val_fraction=0.0)
    assert read_records(data).level_names == ("category", "item", "variation", "image")
    data.label_layout = "gender"
    assert read_records(data).level_names == ("category", "item", "image")
    data.label_layout = "genders"
    with pytest.raises(UnknownOptionError, match="unknown label layout 'genders'"):
        read_records(data)
    data.update(name="cub", manual_dir=str(write_cub(tmp_path / "c")), label_layout="")
    data.split_protocol = "alphabets"
    with pytest.raises(UnknownOptionError, match="split_protocol='alphabets'.*'cub' has no"):
        read_records(data)
    del data["split_protocol"]  # the config of a run saved before the field existed
    assert len(read_records(data).files) == 15


@pytest.mark.parametrize("name", DATASET_CONFIGS)
def test_tiny_variant_of_every_dataset_config(name):
    module = importlib.import_module(f"himl.configs.{name}")
    full, tiny = module.get_config(), module.get_config("tiny")
    assert tiny.model.name == "small_cnn" and tiny.train.steps == 5
    assert tiny.data.image_size <= 32 and tiny.data.batch_size == 16
    assert tiny.data.name == full.data.name and tiny.eval.splits == full.eval.splits
    assert module.get_config("hierarchical").data.sampler == "hierarchical"
    tiny.data.manual_dir = "/some/where"
    validate_config(tiny, num_devices=8)


def test_inshop_config_uses_the_official_layout():
    from himl.configs import inshop

    assert inshop.get_config().data.label_layout == "official"
    assert inshop.get_config().data.split_protocol == "official"
    unseen = inshop.get_config("himulcone_unseen")
    assert unseen.data.split_protocol == "held_out_categories"
    assert tuple(unseen.eval.query_gallery) == ("unseen_query", "unseen_gallery")
    assert unseen.loss.name == inshop.get_config("himulcone").loss.name == "himulcone"


def test_inshop_split_protocol_from_the_config(tmp_path):
    from himl.configs import inshop

    data = inshop.get_config().data
    data.update(manual_dir=str(write_inshop_categories(tmp_path)), val_fraction=0.0)
    assert "unseen" not in read_records(data).splits
    data.split_protocol = "held_out_categories"
    splits = read_records(data).splits
    assert [len(splits[s]) for s in ("train", "unseen_train", "test", "unseen")] == [21, 9, 21, 6]
    data.split_protocol = "held_out_alphabets"
    with pytest.raises(UnknownOptionError, match="In-Shop: unknown split protocol"):
        read_records(data)


def test_prepare_says_what_happens(tmp_path, capsys):
    from himl.data import tfds_builders

    records = read_records(
        himl.data.default_data(name="cub", manual_dir=str(write_cub(tmp_path)), val_fraction=0.0)
    )
    tfds_builders.prepare(records, tmp_path / "tfds")
    out = capsys.readouterr().out
    assert "Unknown size" not in out and "Downloading" not in out
    assert "writing cub (train 9, test 6 images)" in out and "nothing is downloaded" in out


@pytest.mark.slow
def test_tiny_omniglot_trains_in_seconds(tmp_path):
    if not (SHARED_DATA / "omniglot").is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent")
    from himl.configs import omniglot
    from himl.train.loop import train_and_evaluate

    config = omniglot.get_config("tiny")
    config.data.manual_dir = str(SHARED_DATA / "omniglot")
    start = time.perf_counter()
    summary = train_and_evaluate(config, tmp_path / "run", progress=False)
    seconds = time.perf_counter() - start
    result = summary["results"]["unseen"]
    unseen = read_records(config.data).splits["unseen"]
    assert result["num_samples"] == len(unseen) > 0
    assert np.isfinite(result["character"]["recall@1"])
    print(f"tiny omniglot: {seconds:.1f} s")


@pytest.mark.slow
def test_bad_image_in_a_grain_worker_is_one_line(tmp_path):
    import subprocess
    import sys

    root = write_cub(tmp_path / "data")
    for k in range(3):  # every image of the second class: the first batch holds one
        (root / f"images/002.Bird_2/Bird_2_{k}.jpg").write_bytes(b"not a jpeg")
    command = [
        sys.executable, "-m", "himl.train", "--config=configs/cub.py:tiny",
        f"--config.data.manual_dir={root}", "--config.data.num_workers=2",
        "--config.data.val_fraction=0.0", "--config.data.batch_size=6",
        "--config.data.samples_per_class=2", f"--workdir={tmp_path / 'run'}", "--noprogress",
    ]  # fmt: skip
    repo = __import__("pathlib").Path(__file__).resolve().parents[1]
    done = subprocess.run(command, capture_output=True, text=True, cwd=repo, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert errors[-1].startswith(
        f"himl-train: error: cannot decode image {root}/images/002.Bird_2/Bird_2_"
    ) and errors[-1].endswith(
        f".jpg: cannot identify image file; saved step 0 in {tmp_path / 'run' / 'checkpoints'}: "
        "replace that file and run the same command again to resume"
    ), done.stderr[-2000:]
    assert not any("leaked" in line or "Traceback" in line for line in errors), errors


def test_load_without_manual_dir_says_what_to_pass():
    from himl.errors import ConfigError

    with pytest.raises(
        ConfigError, match=r"^config.data.manual_dir must point at the downloaded cub"
    ):
        himl.data.load("cub", manual_dir="")

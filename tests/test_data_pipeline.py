"""TFDS array_record path (no TensorFlow), grain batches, resume, per-host slices, real data."""

import numpy as np
import pytest
from test_data_readers import write_cub

from himl.configs import default
from himl.data.real import image_source, read_records, to_dataset
from himl.data.registry import load_dataset
from himl.data.sampling import make_batcher

SHARED_DATA = __import__("pathlib").Path(__file__).resolve().parents[1].parent / "shared" / "data"


def cub_config(tmp_path, **kw):
    config = default.get_config()
    config.data.name = "cub"
    config.data.manual_dir = str(write_cub(tmp_path))
    config.data.augmentation = "dml"
    config.data.image_size = 16
    config.data.batch_size = 6
    config.data.samples_per_class = 2
    config.data.num_views = 2
    config.data.val_fraction = 0.0
    config.data.update(kw)
    return config


def test_tfds_array_record_matches_files(tmp_path):
    config = cub_config(tmp_path, data_dir=str(tmp_path / "tfds"))
    records = read_records(config.data)
    from_files = to_dataset(records, image_source(records, ""), image_size=16, crop_fraction=1.0)
    ds = load_dataset(config.data)  # nothing written yet: the run's checks come first
    assert not (tmp_path / "tfds").exists()
    ds.open()  # prepares array_record under data_dir (a run calls it after its checks)
    assert len(list((tmp_path / "tfds").glob("himl_cub_*/2.0.0"))) == 1
    for split in ("train", "test"):
        np.testing.assert_array_equal(ds.split(split).labels, from_files.split(split).labels)
    a = ds.split("test").images[:]
    b = to_dataset(records, image_source(records, ""), image_size=16, crop_fraction=0.875)
    np.testing.assert_array_equal(a, b.split("test").images[:])
    assert load_dataset(config.data).split("train").images.shape == (9, 16, 16, 3)  # reuse


@pytest.mark.parametrize("sampler", ["m_per_class", "hierarchical"])
def test_grain_batches_deterministic_resumable_sharded(tmp_path, sampler):
    config = cub_config(tmp_path, sampler=sampler)
    ds = load_dataset(config.data)
    batcher = make_batcher(config.data, ds, seed=0)
    batches = [batcher(s) for s in range(3)]
    assert batches[0]["images"].shape == (6, 2, 16, 16, 3)
    assert batches[0]["images"].dtype == np.float32 and batches[0]["labels"].shape == (6, 2)
    assert batches[0]["images"].min() >= 0.0 and batches[0]["images"].max() <= 1.0
    resumed = make_batcher(config.data, ds, seed=0)(2)  # a fresh run resuming at step 2
    np.testing.assert_array_equal(resumed["images"], batches[2]["images"])
    np.testing.assert_array_equal(batcher(1)["labels"], batches[1]["labels"])  # jump back
    halves = [
        make_batcher(config.data, ds, seed=0, process_index=i, process_count=2)(1) for i in range(2)
    ]
    for key in ("images", "labels"):
        np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), batches[1][key])


def test_grain_worker_processes(tmp_path):
    config = cub_config(tmp_path, num_workers=1)
    ds = load_dataset(config.data)
    single = make_batcher(cub_config(tmp_path / "b").data, load_dataset(cub_config(
        tmp_path / "b").data), seed=0)(1)  # fmt: skip
    batch = make_batcher(config.data, ds, seed=0)(1)
    np.testing.assert_array_equal(batch["labels"], single["labels"])
    np.testing.assert_allclose(batch["images"], single["images"])


def test_embedded_default_unchanged():
    config = default.get_config()
    ds = load_dataset(config.data)
    a = make_batcher(config.data, ds, seed=0)(4)
    assert a["images"].shape == (64, 2, 28, 28, 1) and a["labels"].shape == (64, 3)
    halves = [make_batcher(config.data, ds, 0, process_index=i, process_count=2)(4) for i in (0, 1)]
    np.testing.assert_array_equal(np.concatenate([h["images"] for h in halves]), a["images"])


def test_real_omniglot_and_fashion_mnist():
    if not (SHARED_DATA / "omniglot").is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent")
    config = default.get_config()
    config.data.update(name="omniglot", manual_dir=str(SHARED_DATA / "omniglot"),
                       image_size=28, eval_crop=1.0, augmentation="dml",
                       sampler="hierarchical", batch_size=16)  # fmt: skip
    ds = load_dataset(config.data)
    sizes = {s: len(ds.split(s)) for s in ds.splits}
    assert sum(sizes.values()) == 4840  # 242 characters x 20 drawers, shared sets once
    assert ds.level_names == ("alphabet", "character", "image")
    assert len(np.unique(ds.split("train").labels[:, 0])) == 8
    assert not set(ds.split("train").labels[:, 1]) & set(ds.split("unseen").labels[:, 1])
    assert ds.split("unseen").images[:4].shape == (4, 28, 28, 1)
    batch = make_batcher(config.data, ds, seed=0)(0)
    assert batch["images"].shape == (16, 2, 28, 28, 1)
    config.data.update(name="fashion_mnist", manual_dir=str(SHARED_DATA / "fashion-mnist"))
    fm = load_dataset(config.data)
    assert sum(len(s) for s in fm.splits.values()) == 70_000

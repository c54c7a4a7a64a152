"""User-downloaded datasets as `Dataset`s with lazily decoded images.

`load_real(config.data)`: parse the official annotation files in `config.data.manual_dir`
(`Records`), pick where the encoded images come from, and wrap every split's images in a
`LazyImages` (`[N, image_size, image_size, C]` uint8, decoded on demand with the
evaluation transform). With `config.data.data_dir` set, the images are written once as
array_record by the tensorflow-datasets builder and read from there
(`himl.data.tfds_builders`) - when the dataset is opened (`Dataset.open()`, which a run
calls once its checks have passed, or the first image read); with it empty they are read
straight from the user's files.
Either way the source is a grain random-access source, so `himl.data.pipeline` feeds
training from it with worker processes.
"""

from __future__ import annotations

import inspect
import os

from himl.data.dataset import Dataset, Split
from himl.data.images import LazyImages
from himl.data.readers_fgvc import read_cars, read_cub, read_sop
from himl.data.readers_hier import read_imagenet, read_inshop, read_omniglot
from himl.data.records import Records, UnknownOptionError

READERS = {
    "cub": read_cub,
    "cars": read_cars,
    "sop": read_sop,
    "inshop": read_inshop,
    "imagenet": read_imagenet,
    "omniglot": read_omniglot,
}
CHANNELS = {"omniglot": 1}  # every other dataset is RGB
# config.data field -> the reader keyword it sets; empty = the reader's default.
# inshop: label_layout "official" | "gender"; omniglot: split_protocol "characters" | "alphabets" |
# "held_out_alphabets"; inshop: split_protocol "official" | "held_out_categories";
# imagenet: class_list, a file of the classes to read.
READER_OPTIONS = {
    "label_layout": "layout",
    "split_protocol": "protocol",
    "class_list": "class_list",
}


def read_records(data_config) -> Records:
    """The parsed annotations of `config.data.name` (no image decoded).

    Raises `UnknownOptionError` for a `READER_OPTIONS` field set on a dataset whose reader
    has no such choice (e.g. a split protocol for CUB).
    """
    reader = READERS[data_config.name]
    accepted = inspect.signature(reader).parameters
    options = {}
    for field, keyword in READER_OPTIONS.items():
        value = data_config.get(field, "")  # configs of older runs lack the field
        if not value:
            continue
        if keyword not in accepted:
            raise UnknownOptionError(
                f"config.data.{field}={value!r}: dataset {data_config.name!r} has no "
                f"{keyword} choice"
            )
        options[keyword] = value
    return reader(data_config.manual_dir, val_fraction=data_config.val_fraction, **options)


def image_source(records: Records, data_dir: str):
    """A grain random-access source of encoded images: array_record if `data_dir` is set."""
    from himl.data import tfds_builders  # imports tensorflow_datasets (no TensorFlow)

    if not data_dir:
        return tfds_builders.raw_source(records)
    return tfds_builders.TfdsSource(records, data_dir)  # prepared when opened


def to_dataset(records: Records, source, *, image_size: int, crop_fraction: float) -> Dataset:
    """A `Dataset` whose splits' images are `LazyImages` over `source`."""
    channels = CHANNELS.get(records.name, 3)
    splits = {
        name: Split(
            images=LazyImages(
                source, idx, size=image_size, channels=channels, crop_fraction=crop_fraction
            ),
            labels=records.labels[idx],
        )
        for name, idx in records.splits.items()
    }
    return Dataset(
        name=records.name,
        level_names=records.level_names,
        class_level=records.class_level,
        class_names=records.class_names,
        splits=splits,
    )


def quiet_worker_exit() -> None:
    """Silences the multiprocessing resource tracker's "leaked semaphore / shared_memory
    objects" warnings for this process's children.

    When a grain worker hits a bad image, the user error reaches the command line, which
    prints it as one line and exits at once (`himl.cli.exit_on_user_error`); the worker
    pool's semaphores and shared memory are then released by the resource tracker, which
    would warn about each kind, burying the one line. The tracker still cleans up; only the
    warning is filtered. It reads `PYTHONWARNINGS` when it starts, i.e. with the workers.
    """
    rule = "ignore:resource_tracker:UserWarning"
    current = os.environ.get("PYTHONWARNINGS", "")
    if rule not in current.split(","):
        os.environ["PYTHONWARNINGS"] = ",".join(filter(None, (current, rule)))


def load_real(data_config) -> Dataset:
    if data_config.get("num_workers", 0) > 0:
        quiet_worker_exit()
    records = read_records(data_config)
    source = image_source(records, data_config.data_dir)
    return to_dataset(
        records, source, image_size=data_config.image_size, crop_fraction=data_config.eval_crop
    )

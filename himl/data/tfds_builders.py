"""tensorflow-datasets builders (array_record, manual_dir) for the user-downloaded datasets.

`prepare(records, data_dir)` writes each official part of a dataset (e.g. CUB "train" and
"test") once as an array_record split under `data_dir/himl_<name>/1.0.0/`, from the
files the user downloaded (`manual_dir`, TFDS's convention for datasets that cannot be
downloaded automatically). `TfdsSource` then reads the encoded images back by random
access through `builder.as_data_source()`, the grain-compatible reader, so neither step
needs TensorFlow: the builder stores the files' bytes as they are (no re-encoding) and
himl decodes with Pillow. Records are written in order (`disable_shuffling`) with their
file name, so the labels parsed from the annotation files line up with the records; the
first and last record of every part are checked when the source is opened.

Reference: https://www.tensorflow.org/datasets/add_dataset (manual download, array_record
file format), https://www.tensorflow.org/datasets/tfless_tfds.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from himl.data.images import CorruptImageError, FileSource
from himl.data.records import MalformedDataError, Records

VERSION = "1.0.0"


def raw_source(records: Records):
    """The records' encoded images straight from the user's files (or zip members)."""
    return FileSource(records.root, records.files)


class HimlImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """One himl dataset: features image (encoded bytes), labels `[L]` int64, file_name."""

    VERSION = tfds.core.Version(VERSION)
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Pass the folder of the official files as manual_dir."
    # Nothing is downloaded: no checksums file (looking for one in the package needs the
    # optional `importlib_resources` in tfds 4.9).
    url_infos: dict = {}

    def __init__(self, *, records: Records, **kwargs):
        self.name = f"himl_{records.name}"  # instance attribute: one class, many datasets
        self._records = records
        super().__init__(**kwargs)

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{self._records.name} ({', '.join(self._records.level_names)})",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, None)),
                    "labels": tfds.features.Tensor(
                        shape=(len(self._records.level_names),), dtype=np.int64
                    ),
                    "file_name": tfds.features.Text(),
                }
            ),
            disable_shuffling=True,
        )

    # tfds's own messages speak of downloading ("Downloading and preparing dataset Unknown
    # size"); nothing is downloaded here, so say what happens instead.
    def _log_download_bytes(self) -> None:
        parts = ", ".join(f"{p} {b - a}" for p, (a, b) in self._records.parts.items())
        print(
            f"himl: writing {self._records.name} ({parts} images) from "
            f"{self._records.root} as array_record to {self.data_dir} - once; later runs "
            "read it from there (nothing is downloaded)",
            flush=True,
        )

    def _log_download_done(self) -> None:
        print(f"himl: {self._records.name} written to {self.data_dir}", flush=True)

    def _split_generators(self, dl_manager):
        del dl_manager  # the records were parsed from manual_dir already
        return {
            part: self._generate_examples(start, stop)
            for part, (start, stop) in self._records.parts.items()
        }

    def _generate_examples(self, start: int, stop: int):
        source = raw_source(self._records)
        for i in range(start, stop):
            data = source[i]
            try:  # header only: a file that is no image fails here, with its path
                Image.open(io.BytesIO(data))
            except Exception as e:
                raise CorruptImageError(f"cannot read image {source.name(i)}: {e}") from e
            yield (
                i,
                {
                    "image": data,
                    "labels": self._records.labels[i],
                    "file_name": self._records.files[i],
                },
            )


def builder(records: Records, data_dir) -> HimlImages:
    return HimlImages(records=records, data_dir=str(Path(data_dir).expanduser()),
                      file_format="array_record")  # fmt: skip


def prepare(records: Records, data_dir) -> HimlImages:
    """Writes the array_record splits once (a no-op when they exist); returns the builder."""
    b = builder(records, data_dir)
    b.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(records.root))
    )
    return b


class TfdsSource:
    """Encoded images of all records from the prepared array_record splits (grain source)."""

    def __init__(self, records: Records, data_dir):
        self.data_dir, self.records = Path(data_dir).expanduser(), records
        self.starts = [(start, part) for part, (start, _) in records.parts.items()]
        self._sources = None
        self._check()

    def __getstate__(self):  # worker processes reopen the files
        return {**self.__dict__, "_sources": None}

    def _open(self):
        if self._sources is None:
            b = builder(self.records, self.data_dir)
            skip = {"image": tfds.decode.SkipDecoding()}
            self._sources = {
                part: b.as_data_source(split=part, decoders=skip) for part in self.records.parts
            }
        return self._sources

    def _record(self, i: int) -> dict:
        start, part = next((s, p) for s, p in reversed(self.starts) if s <= i)
        return self._open()[part][i - start]

    def _check(self):
        for part, (start, stop) in self.records.parts.items():
            if stop - start != len(self._open()[part]):
                raise MalformedDataError(
                    f"{self.data_dir}: prepared split {part} has {len(self._open()[part])} "
                    f"records, the annotations {stop - start}; delete it and prepare again"
                )
            for i in {start, stop - 1} if stop > start else ():
                name = self._record(i)["file_name"]
                name = name.decode() if isinstance(name, bytes) else str(name)
                if name != self.records.files[i]:
                    raise MalformedDataError(
                        f"{self.data_dir}: record {i} is {name}, expected "
                        f"{self.records.files[i]}; delete the prepared dataset and prepare again"
                    )

    def __len__(self) -> int:
        return len(self.records.files)

    def name(self, i: int) -> str:
        return f"{self.records.root / self.records.files[i]} (array_record in {self.data_dir})"

    def __getitem__(self, i: int) -> bytes:
        return self._record(int(i))["image"]

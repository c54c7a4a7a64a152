"""tensorflow-datasets builders (array_record, manual_dir) for the user-downloaded datasets.

`prepare(records, data_dir)` writes each official part of a dataset (e.g. CUB "train" and
"test") once as an array_record split under `data_dir/himl_<name>_<fingerprint>/2.0.0/`,
from the files the user downloaded (`manual_dir`, TFDS's convention for datasets that
cannot be downloaded automatically). `TfdsSource` then reads the encoded images back by
random access through `builder.as_data_source()`, the grain-compatible reader, so neither
step needs TensorFlow: the builder stores the files' bytes as they are (no re-encoding)
and himl decodes with Pillow.

The store holds each record's image bytes and file name, in the records' order
(`disable_shuffling`); labels always come from the annotation files, so one store serves
every label layout of its files. The fingerprint is a hash of the parts and the ordered
file list: annotations that list other files, or a split protocol that orders them
otherwise, get their own store instead of stale or misaligned records (an image file
rewritten in place under the same name is not noticed: delete the store). Preparation
takes a lock in `data_dir`, so runs started together on a fresh `data_dir` write it once.
A `TfdsSource` prepares when it is opened (`open()`, or the first read), so the checks
that need no image run before the expensive write.

Reference: https://www.tensorflow.org/datasets/add_dataset (manual download, array_record
file format), https://www.tensorflow.org/datasets/tfless_tfds.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
from pathlib import Path

import tensorflow_datasets as tfds
from PIL import Image

from himl.data.images import CorruptImageError, FileSource
from himl.data.records import MalformedDataError, Records

# 2.0.0: the store is keyed by the records' fingerprint and holds no labels.
VERSION = "2.0.0"


def raw_source(records: Records):
    """The records' encoded images straight from the user's files (or zip members)."""
    return FileSource(records.root, records.files)


def fingerprint(records: Records) -> str:
    """12 hex digits identifying the records' parts and ordered file list: what a store
    holds, labels aside."""
    parts = sorted((part, int(a), int(b)) for part, (a, b) in records.parts.items())
    text = json.dumps([records.name, parts, list(records.files)])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class HimlImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """One himl dataset's files: features image (encoded bytes) and file_name."""

    VERSION = tfds.core.Version(VERSION)
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Pass the folder of the official files as manual_dir."
    # Nothing is downloaded: no checksums file (looking for one in the package needs the
    # optional `importlib_resources` in tfds 4.9).
    url_infos: dict = {}

    def __init__(self, *, records: Records, **kwargs):
        # An instance attribute: one class, many datasets (and file lists).
        self.name = f"himl_{records.name}_{fingerprint(records)}"
        self._records = records
        super().__init__(**kwargs)

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{self._records.name} ({', '.join(self._records.level_names)})",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, None)),
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
                {"image": data, "file_name": self._records.files[i]},
            )


def builder(records: Records, data_dir) -> HimlImages:
    return HimlImages(records=records, data_dir=str(Path(data_dir).expanduser()),
                      file_format="array_record")  # fmt: skip


@contextlib.contextmanager
def _lock(path: Path):
    """An exclusive lock on `path` (waits for the holder), released on exit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def prepare(records: Records, data_dir) -> HimlImages:
    """Writes the array_record splits once (a no-op when they exist); returns the builder.

    Processes preparing the same store wait for each other (a lock file beside it); where
    the file system has no locks, the one that finishes second uses the first one's copy."""
    b = builder(records, data_dir)
    config = tfds.download.DownloadConfig(manual_dir=str(records.root))
    with _lock(Path(b.data_dir).parents[1] / f"{b.name}.lock"):
        try:
            b.download_and_prepare(download_config=config)
        except FileExistsError:  # another process renamed its finished copy first
            b = builder(records, data_dir)
            if not b.is_prepared():
                raise
    return b


class TfdsSource:
    """Encoded images of all records from the prepared array_record splits (grain source).

    Nothing is written or read until `open()` (or the first image read): a run checks
    everything that needs no image first, then opens its sources."""

    def __init__(self, records: Records, data_dir):
        self.data_dir, self.records = Path(data_dir).expanduser(), records
        self.starts = [(start, part) for part, (start, _) in records.parts.items()]
        self._sources, self._prepared = None, False

    def __getstate__(self):  # worker processes reopen the files (prepared by then)
        return {**self.__dict__, "_sources": None}

    @property
    def files(self) -> tuple[str, ...]:
        """The image file names, relative to the records' root (as `FileSource.files`)."""
        return self.records.files

    def open(self) -> None:
        """Prepares the store (once; see `prepare`) and checks it against the records."""
        if self._sources is not None:
            return
        # A worker process reopens a store its parent prepared and checked.
        b = builder(self.records, self.data_dir) if self._prepared else prepare(
            self.records, self.data_dir
        )  # fmt: skip
        self._store = Path(b.data_dir).parent  # named in errors (`name`)
        skip = {"image": tfds.decode.SkipDecoding()}
        self._sources = {
            part: b.as_data_source(split=part, decoders=skip) for part in self.records.parts
        }
        if not self._prepared:
            self._check(b.data_dir)
            self._prepared = True

    def _record(self, i: int) -> dict:
        self.open()
        start, part = next((s, p) for s, p in reversed(self.starts) if s <= i)
        return self._sources[part][i - start]

    def _check(self, store):
        """The store's size and first and last names per part (its name is the records'
        fingerprint: this catches a store damaged by hand)."""
        for part, (start, stop) in self.records.parts.items():
            if stop - start != len(self._sources[part]):
                raise MalformedDataError(
                    f"{store}: prepared split {part} has {len(self._sources[part])} "
                    f"records, the annotations {stop - start}; delete {store} and prepare again"
                )
            for i in {start, stop - 1} if stop > start else ():
                name = self._record(i)["file_name"]
                name = name.decode() if isinstance(name, bytes) else str(name)
                if name != self.records.files[i]:
                    raise MalformedDataError(
                        f"{store}: record {i} is {name}, expected {self.records.files[i]}; "
                        f"delete {store} and prepare again"
                    )

    def __len__(self) -> int:
        return len(self.records.files)

    def name(self, i: int) -> str:
        """The file, and the store that holds its bytes: a file replaced after the store was
        written is read again only once that store is deleted (it is named by file names)."""
        self.open()  # names come with errors of reads, which opened it already
        return (
            f"{self.records.root / self.records.files[i]} (read from its copy in the store "
            f"{self._store}: after replacing the file, delete that folder)"
        )

    def __getitem__(self, i: int) -> bytes:
        return self._record(int(i))["image"]

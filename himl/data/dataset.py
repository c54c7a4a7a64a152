"""The one shape every data source takes: images, label matrices, names, named splits."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import numpy as np

from himl.errors import UserError
from himl.hierarchy import validate_tree


class UnknownSplitError(UserError, KeyError):
    """A split name the dataset does not have."""

    def __str__(self):
        return str(self.args[0])


@dataclasses.dataclass(frozen=True)
class Split:
    """One named split.

    Attributes:
      images: `[N, H, W, C]` uint8: an in-memory array, or any lazy array-like with
        `.shape`, `__len__` and `__getitem__(int | slice | index array)` returning uint8
        `[n, H, W, C]` (e.g. `himl.data.images.LazyImages`, decoded on demand).
      labels: `[N, L]` int64, column 0 coarsest (the rows form a tree).
    """

    images: Any
    labels: np.ndarray

    def __post_init__(self):
        if len(self.images.shape) != 4:
            raise ValueError(f"images must be [N, H, W, C], got shape {self.images.shape}")
        if self.labels.ndim != 2 or self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(
                f"labels must be [N, L] with N = {self.images.shape[0]}, got {self.labels.shape}"
            )

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A labelled image dataset with class-disjoint splits.

    Attributes:
      name: short name, as in `config.data.name`.
      level_names: names of the L label columns, coarse to fine.
      class_level: the column that holds the class (flat losses and eval use it; columns
        after it, such as an instance id, are finer than a class).
      class_names: `{class label: name}` for the class column.
      splits: split name -> Split; "train" is what training samples from.
      label_names: optional names of the labels per level, `label_names[level][id]`, for
        the levels that have names (coarse to fine); empty when only ids are known.
    """

    name: str
    level_names: tuple[str, ...]
    class_level: int
    class_names: dict[int, str]
    splits: dict[str, Split]
    label_names: tuple[tuple[str, ...], ...] = ()

    def __post_init__(self):
        for split_name, split in self.splits.items():
            if split.labels.shape[1] != len(self.level_names):
                raise ValueError(
                    f"{self.name}/{split_name}: {split.labels.shape[1]} label columns for "
                    f"levels {self.level_names}"
                )
            validate_tree(split.labels, self.level_names)

    def open(self) -> None:
        """Makes every split's images readable now (checks each listed file once, writes a
        tensorflow-datasets store once): a run calls it after the checks that read no image
        file, before the first read (which would open them itself)."""
        for split in self.splits.values():
            getattr(split.images, "open", lambda: None)()

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise UnknownSplitError(
                f"dataset {self.name!r} has no split {name!r}; it has {sorted(self.splits)}"
            )
        return self.splits[name]

    def fingerprint(self) -> dict:
        """`{split: {"images": N, "hash": ...}}`: a hash of each split's labels and images
        (the pixels of in-memory images, the file names of files decoded on demand), by
        which a resume knows the data it trained on (`himl.train.workdir`)."""
        out = {}
        for name, split in sorted(self.splits.items()):
            digest = hashlib.sha256(np.ascontiguousarray(split.labels, np.int64).tobytes())
            images, source = split.images, getattr(split.images, "source", None)
            if isinstance(images, np.ndarray):
                digest.update(np.ascontiguousarray(images).tobytes())
            elif hasattr(source, "files"):
                digest.update("\n".join(source.files[i] for i in images.indices).encode())
            out[name] = {"images": len(split), "hash": digest.hexdigest()[:16]}
        return out

    def __repr__(self) -> str:
        """A summary (`print(himl.data.load(...))` checks a download): levels, and per split
        its images and its classes per level; not the label arrays."""
        lines = [f"Dataset {self.name!r}: levels {' > '.join(self.level_names)} "
                 f"(class level {self.level_names[self.class_level]!r})"]  # fmt: skip
        for name, split in self.splits.items():
            per_level = ", ".join(
                f"{level} {len(np.unique(split.labels[:, i])):,}"
                for i, level in enumerate(self.level_names)
            )
            shape = " x ".join(map(str, split.images.shape[1:]))
            lines.append(f"  {name}: {len(split):,} images of {shape}; labels: {per_level}")
        return "\n".join(lines)

    @property
    def eval_level_names(self) -> tuple[str, ...]:
        """Levels that evaluation reports: the coarsest down to the class level."""
        return self.level_names[: self.class_level + 1]

    def label_name(self, level: int, label: int) -> str:
        """The name of `label` at `level` (the id as text when it has no name)."""
        if level < len(self.label_names):
            return self.label_names[level][label]
        if level == self.class_level and label in self.class_names:
            return self.class_names[label]
        return str(label)

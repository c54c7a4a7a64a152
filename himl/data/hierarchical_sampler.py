"""The hierarchical batch sampler of seed 000 (Zhang et al., CVPR 2022, Sec. 3.4), any depth.

Every anchor comes with one partner per level of the label tree: for K levels (column 0
coarsest) the group is

    anchor, same label at level K-1 (same class),
    same label at level k but another at level k+1, for k = K-2 ... 0,
    another label at level 0,

so `K + 2` samples; groups fill the batch (the last one truncated to the batch size).
With two levels (coarse, fine): anchor, same fine, same coarse but other fine, other
coarse. Indices are a pure function of (seed, step). No index repeats within a batch
unless the data has fewer samples than `config.data.batch_size`. When the data cannot supply a
partner (a class of one image, a coarse label with one fine label, too few samples), another
unused sample (or, with every sample used, a repeat) takes its place, and a warning says so
once per reason (`note()` names the labels the tree's shape leaves without a partner).
"""

from __future__ import annotations

import warnings

import numpy as np


class HierarchicalSampler:
    """Batches `[batch_size]` of anchor groups covering every level of `labels [N, K]`."""

    config_keys = ("batch_size",)  # the `config.data` keys it is built from
    positive_keys = ("batch_size",)  # with num_views, what gives an anchor positives

    @staticmethod
    def class_positives(data_config) -> int:
        """Other samples of its class (views included) each anchor has, at least: V - 1,
        plus V from a same-class partner when the batch has room for one."""
        return data_config.num_views * (2 if data_config.batch_size >= 2 else 1) - 1

    def __init__(self, labels, *, batch_size: int, seed: int):
        self.labels = np.asarray(labels, np.int64)
        if self.labels.ndim != 2:
            raise ValueError(f"labels must be [N, K], got {self.labels.shape}")
        self.num_levels = self.labels.shape[1]
        self.group_size = self.num_levels + 2
        self.batch_size, self.seed = batch_size, seed
        # members[k][label] -> indices with that label at level k
        self.members = []
        for k in range(self.num_levels):
            order = np.argsort(self.labels[:, k], kind="stable")
            values, starts = np.unique(self.labels[order, k], return_index=True)
            groups = np.split(order, starts[1:])
            self.members.append(dict(zip(values.tolist(), groups, strict=True)))
        self.everyone = np.arange(len(self.labels))
        self.warned: set[str] = set()  # the reasons already warned about
        # only_child[k]: labels at level k with one label below them - their anchors can
        # have no "same at k, other at k+1" partner, by the tree's shape, not by chance.
        self.only_child = []
        for k in range(self.num_levels - 1):
            parents, counts = np.unique(
                np.unique(self.labels[:, k : k + 2], axis=0)[:, 0], return_counts=True
            )
            self.only_child.append(set(parents[counts == 1].tolist()))

    def note(self) -> str:
        """One line on the partners the tree cannot give ("" when it gives all), e.g.
        "3 of 5 labels at level 0 have a single label at level 1: their anchors get a
        random partner in place of a same-level-0, other-level-1 one"."""
        parts = []
        for k, alone in enumerate(self.only_child):
            if alone:
                total = len(self.members[k])
                parts.append(
                    f"{len(alone)} of {total} labels at level {k} have a single label at level "
                    f"{k + 1}: their anchors get a random partner in place of a same-level-{k}, "
                    f"other-level-{k + 1} one"
                )
        return "; ".join(parts)

    def _pick(self, rng, candidates, ok, used):
        """A random unused candidate `c` with `ok(c)`; None when there is none."""
        for _ in range(8):  # cheap rejection first
            c = int(candidates[rng.integers(len(candidates))])
            if c not in used and ok(c):
                return c
        valid = [int(c) for c in candidates if int(c) not in used and ok(int(c))]
        return int(valid[rng.integers(len(valid))]) if valid else None

    def _group(self, rng, anchor: int, used: set) -> list[int]:
        row = self.labels[anchor]
        everyone = self.everyone
        wants = [(self.members[-1][row[-1]], lambda c: True)]  # same class
        for k in range(self.num_levels - 2, -1, -1):
            wants.append(
                (self.members[k][row[k]], lambda c, k=k: self.labels[c, k + 1] != row[k + 1])
            )
        wants.append((everyone, lambda c: self.labels[c, 0] != row[0]))
        group = [anchor]
        used.add(anchor)
        # the level each want is about (None: the same class / another coarse label)
        levels = [None, *range(self.num_levels - 2, -1, -1), None]
        for (candidates, ok), k in zip(wants, levels, strict=True):
            pick = self._pick(rng, candidates, ok, used)
            if pick is None:  # fall back: any unused sample, else a repeat
                pick = self._pick(rng, everyone, lambda c: True, used)
                if k is None or row[k] not in self.only_child[k]:  # else `note()` says so
                    self._warn("a level had no partner for an anchor")
            if pick is None:  # every sample is in the batch: `indices` warns of the repeat
                pick = int(rng.integers(len(self.labels)))
            group.append(pick)
            used.add(pick)
        return group

    def _warn(self, why: str):
        """Warns once per reason: a batch can lack partners and repeat indices both."""
        if why not in self.warned:
            warnings.warn(f"HierarchicalSampler: {why} (the data is too small)", stacklevel=3)
            self.warned.add(why)

    def indices(self, step: int) -> np.ndarray:
        """Dataset indices `[batch_size]` of training step `step` (same step, same batch)."""
        rng = np.random.default_rng([self.seed, step])
        used: set[int] = set()
        batch: list[int] = []
        while len(batch) < self.batch_size:
            anchor = self._pick(rng, self.everyone, lambda c: True, used)
            if anchor is None:
                anchor = int(rng.integers(len(self.labels)))
            batch += self._group(rng, anchor, used)
        batch = batch[: self.batch_size]
        if len(set(batch)) < len(batch):  # repeats cut off with the last group do not count
            self._warn(
                f"the data has {len(self.labels)} samples, fewer than config.data.batch_size="
                f"{self.batch_size}: indices repeat in a batch"
            )
        return np.array(batch, np.int64)

"""Samplers: level coverage, class counts, determinism, no duplicates, warnings."""

import numpy as np
import pytest

from himl.data.hierarchical_sampler import HierarchicalSampler
from himl.data.sampling import MPerClassSampler


def tree_labels(coarse=4, fine_per_coarse=3, per_fine=5):
    rows = []
    for c in range(coarse):
        for f in range(fine_per_coarse):
            rows += [[c, c * fine_per_coarse + f]] * per_fine
    return np.array(rows)


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_hierarchical_groups_cover_every_level(levels):
    labels = tree_labels()
    if levels == 3:  # add a middle level: pairs of fine classes
        labels = np.stack([labels[:, 0], labels[:, 1] // 2 * 10, labels[:, 1]], axis=1)
        # keep it a tree: middle label determined by fine, coarse by middle
        labels[:, 0] = labels[:, 1] // 40
    if levels == 1:
        labels = labels[:, 1:]
    k = labels.shape[1]
    sampler = HierarchicalSampler(labels, batch_size=(k + 2) * 5, seed=0)
    idx = sampler.indices(3)
    assert len(idx) == (k + 2) * 5 and len(set(idx.tolist())) == len(idx)
    for group in idx.reshape(-1, k + 2):
        a = labels[group[0]]
        assert (labels[group[1]] == a).all()  # same finest label
        for j, level in enumerate(range(k - 2, -1, -1)):
            p = labels[group[2 + j]]
            assert p[level] == a[level] and p[level + 1] != a[level + 1]
        assert labels[group[-1], 0] != a[0]
    assert not sampler.warned


def test_hierarchical_deterministic_and_fixed_size():
    labels = tree_labels()
    a = HierarchicalSampler(labels, batch_size=30, seed=1)
    b = HierarchicalSampler(labels, batch_size=30, seed=1)
    np.testing.assert_array_equal(a.indices(7), b.indices(7))
    assert not np.array_equal(a.indices(7), a.indices(8))
    assert len(a.indices(0)) == 30  # 30 is not a multiple of the group size 4


def test_hierarchical_too_small_warns():
    labels = tree_labels(coarse=2, fine_per_coarse=1, per_fine=2)  # 4 samples, no sibling
    sampler = HierarchicalSampler(labels, batch_size=8, seed=0)
    with pytest.warns(UserWarning, match="too small"):
        idx = sampler.indices(0)
    assert len(idx) == 8


def test_m_per_class_counts_and_determinism():
    labels = tree_labels()[:, 1]
    sampler = MPerClassSampler(labels, batch_size=16, samples_per_class=4, seed=3)
    idx = sampler.indices(5)
    _, counts = np.unique(labels[idx], return_counts=True)
    assert counts.tolist() == [4, 4, 4, 4] and len(set(idx.tolist())) == 16
    np.testing.assert_array_equal(idx, sampler.indices(5))


def test_hierarchical_note_names_single_child_labels_instead_of_warning():
    """A coarse label with one fine label cannot give a "same coarse, other fine" partner:
    that is the tree's shape, said once by `note()`, not a warning at every batch."""
    import warnings

    labels = np.concatenate([tree_labels(2, per_fine=20), [[9, 99]] * 40])  # 9: one class
    sampler = HierarchicalSampler(labels, batch_size=16, seed=0)
    assert sampler.note() == (
        "1 of 3 labels at level 0 have a single label at level 1: their anchors get a random "
        "partner in place of a same-level-0, other-level-1 one"
    )
    assert HierarchicalSampler(tree_labels(), batch_size=8, seed=0).note() == ""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        groups = np.concatenate([sampler.indices(s) for s in range(20)]).reshape(-1, 4)
    lonely = groups[labels[groups[:, 0], 0] == 9]
    assert len(lonely) > 0 and (labels[lonely[:, 1], 1] == 99).all()  # same class still

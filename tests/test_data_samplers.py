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


# --- which sampler reads config.data.samples_per_class, and the notes each one prints ----


def _data_config(**fields):
    from himl.data.defaults import data_config

    config = data_config()
    config.update(fields)
    return config


def _make(config, labels, capsys=None):
    """`make_sampler` over `labels [N, 2]` (class at level 1) and what it printed."""
    from types import SimpleNamespace

    from himl.data.sampling import make_sampler

    sampler = make_sampler(config, SimpleNamespace(class_level=1), labels, seed=0)
    return sampler, (capsys.readouterr().out if capsys else "")


@pytest.mark.parametrize("name", ["m_per_class", "hierarchical"])
def test_only_samplers_that_read_samples_per_class_need_a_multiple_of_it(name, capsys):
    """Whether a sampler reads samples_per_class is seen from its batches (they change with
    it or not); `config_keys` must say the same, and so must `check_data_config`."""
    from himl.data.sampling import SAMPLERS, BatchConfigError, check_data_config

    labels = tree_labels()  # 12 classes of 5
    batches = [
        _make(_data_config(sampler=name, batch_size=24, samples_per_class=k), labels)[0].indices(3)
        for k in (4, 8)
    ]
    reads = not np.array_equal(*batches)
    assert reads == (name == "m_per_class")
    assert reads == ("samples_per_class" in SAMPLERS[name].config_keys)
    config = _data_config(sampler=name, batch_size=30, samples_per_class=8)
    if reads:
        with pytest.raises(BatchConfigError, match="config.data.samples_per_class"):
            check_data_config(config)
    else:
        check_data_config(config)  # any positive batch size
        assert len(_make(config, labels)[0].indices(0)) == 30
    with pytest.raises(BatchConfigError, match="config.data.batch_size"):
        check_data_config(_data_config(sampler=name, batch_size=0))


def test_make_sampler_notes_a_samples_per_class_the_sampler_ignores(capsys):
    from himl.train.workdir import ReadRecorder

    labels = tree_labels()
    note = "note: config.data.sampler=hierarchical ignores config.data.samples_per_class=24\n"
    out = _make(_data_config(sampler="hierarchical", samples_per_class=24), labels, capsys)[1]
    assert out == note
    assert _make(_data_config(sampler="hierarchical"), labels, capsys)[1] == ""  # default 16
    config = _data_config(sampler="m_per_class", batch_size=24, samples_per_class=3)
    assert _make(config, labels, capsys)[1] == ""  # read, not ignored
    # The note does not make samples_per_class a batch setting a resumed run must keep.
    settings = ReadRecorder(_data_config(sampler="hierarchical", samples_per_class=24))
    assert _make(settings, labels, capsys)[1] == note
    assert "samples_per_class" not in settings.keys_read


def test_m_per_class_notes_classes_smaller_than_samples_per_class(capsys):
    sizes = [3, 5, 6, 9, 2, 8]
    labels = np.repeat(np.arange(len(sizes)), sizes)
    rows = np.stack([labels // 2, labels], axis=1)
    config = _data_config(sampler="m_per_class", batch_size=36, samples_per_class=6)
    sampler, out = _make(config, rows, capsys)
    small = np.flatnonzero(np.bincount(labels) < 6)  # classes 0, 1, 4
    note = (
        f"{len(small)} of 6 classes have fewer images than config.data.samples_per_class=6 "
        f"(the smallest has {min(sizes)}): their images repeat in a batch"
    )
    assert sampler.note() == note and out == f"m_per_class sampler: {note}\n"
    idx = sampler.indices(0)  # every class, 6 draws each
    for c in range(len(sizes)):
        drawn = idx[labels[idx] == c]
        assert len(drawn) == 6
        assert (len(np.unique(drawn)) < 6) == (c in small)  # repeats only in the small ones
    config.batch_size, config.samples_per_class = 12, 2
    assert _make(config, rows, capsys)[0].note() == "" and capsys.readouterr().out == ""


def test_m_per_class_messages_name_the_config_keys():
    from himl.data.sampling import BatchConfigError

    labels = np.repeat(np.arange(7), 10)
    with pytest.raises(BatchConfigError) as err:
        MPerClassSampler(labels, batch_size=64, samples_per_class=8, seed=0)
    assert str(err.value).startswith(
        "config.data.batch_size=64 / config.data.samples_per_class=8 needs 8 classes, "
        "the data has 7"
    )
    with pytest.raises(BatchConfigError) as err:
        MPerClassSampler(labels, batch_size=30, samples_per_class=8, seed=0)
    assert str(err.value) == (
        "config.data.batch_size (30) must be a multiple of config.data.samples_per_class (8)"
    )


def test_hierarchical_warns_once_for_each_reason():
    """Classes of one image (no same-class partner) and fewer samples than a batch: both
    reasons are warned, each once, however many batches are drawn."""
    import warnings

    labels = tree_labels(coarse=2, fine_per_coarse=2, per_fine=1)  # 4 samples, 4 classes
    sampler = HierarchicalSampler(labels, batch_size=8, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = [sampler.indices(step) for step in range(3)]
    assert all(len(np.unique(idx)) < len(idx) for idx in batches)  # indices do repeat
    assert [str(w.message) for w in caught] == [
        "HierarchicalSampler: a level had no partner for an anchor (the data is too small)",
        "HierarchicalSampler: the data has 4 samples, fewer than config.data.batch_size=8: "
        "indices repeat in a batch (the data is too small)",
    ]


def test_hierarchical_repeat_warning_only_when_the_batch_repeats():
    """10 samples, batch 10: the last group is cut off after 2 of its 4, so a partner the
    data no longer has is not in the batch, and no index repeats: no repeat warning."""
    import warnings

    labels = np.array([[0, 0], [0, 0], [0, 1], [0, 1], [0, 1]] + [[1, 2], [1, 2], [1, 3]] * 2)[:10]
    sampler = HierarchicalSampler(labels, batch_size=10, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        idx = sampler.indices(0)
    assert sorted(idx.tolist()) == list(range(10))
    assert not [w for w in caught if "repeat" in str(w.message)]

"""Label-tree helpers: validate_tree, prefix_ids, lca_height."""

from __future__ import annotations

import numpy as np
import pytest

from himl.hierarchy import HierarchyError, as_label_matrix, lca_height, prefix_ids, validate_tree

TREE = np.array([[0, 1, 10], [0, 1, 11], [0, 2, 12], [1, 3, 13], [1, 3, 13]])


def test_valid_tree_passes_and_returns_int64():
    out = validate_tree(TREE.astype(np.int32), level_names=["group", "class", "id"])
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, TREE)


def test_broken_tree_names_the_offending_label():
    broken = TREE.copy()
    broken[4, 0] = 2  # class 3 now has parents 1 and 2
    with pytest.raises(HierarchyError, match=r"label 3 at level 1 \('class'\)") as err:
        validate_tree(broken, level_names=["group", "class", "id"])
    message = str(err.value)
    assert "level 0 ('group')" in message and "row 3" in message and "row 4" in message


def test_broken_tree_at_a_finer_level_without_names():
    broken = TREE.copy()
    broken[0, 2] = 12  # id 12 under classes 1 and 2
    with pytest.raises(HierarchyError, match="label 12 at level 2 has 2 different parents"):
        validate_tree(broken)


def test_bad_inputs():
    with pytest.raises(HierarchyError, match="integers"):
        validate_tree(TREE.astype(float))
    with pytest.raises(HierarchyError, match="shape"):
        as_label_matrix(np.zeros((2, 2, 2), int))
    with pytest.raises(HierarchyError, match="level names"):
        validate_tree(TREE, level_names=["a"])
    assert as_label_matrix(np.arange(3)).shape == (3, 1)


def test_prefix_ids():
    np.testing.assert_array_equal(prefix_ids(TREE, 1), [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(prefix_ids(TREE, 2), [0, 0, 1, 2, 2])
    np.testing.assert_array_equal(prefix_ids(TREE, 3), [0, 1, 2, 3, 3])
    with pytest.raises(HierarchyError, match="prefix length"):
        prefix_ids(TREE, 0)


def test_lca_height():
    assert lca_height(TREE[0], TREE[1]) == 1
    assert lca_height(TREE[0], TREE[2]) == 2
    assert lca_height(TREE[0], TREE[3]) == 3
    assert lca_height(TREE[3], TREE[4]) == 0
    np.testing.assert_array_equal(lca_height(TREE[:, None], TREE[None]).diagonal(), 0)

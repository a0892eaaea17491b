"""Clustering rules on hand-made similarity matrices (no checkpoints)."""
import numpy as np
import pytest

from modelglue.zoo.cluster import choose_cut, cluster, hierarchical_clusters, paper_clusters


def _sym(n, pairs):
    s = np.eye(n)
    for (a, b), v in pairs.items():
        s[a, b] = s[b, a] = v
    return s


# m2 is closest to m1 (0.99) but the paper compares only with each cluster's FIRST member:
# sim(m0, m2) = 0.90 fails, so m2 starts a new cluster, and m3 then joins m2 (0.96).
HAND = _sym(4, {(0, 1): 0.97, (0, 2): 0.90, (1, 2): 0.99, (0, 3): 0.50, (1, 3): 0.40, (2, 3): 0.96})


def test_paper_rule_hand_example():
    assert paper_clusters(HAND, 0.95) == [[0, 1], [2, 3]]


def test_paper_rule_is_order_dependent_and_first_member_only():
    # Same zoo, m1 listed first: m1 takes m0 (0.97) and m2 (0.99); m3 compares with m1
    # only (0.40) and is alone, although it is 0.96 from m2.
    perm = [1, 0, 2, 3]
    got = paper_clusters(HAND[np.ix_(perm, perm)], 0.95)
    assert [[perm[i] for i in c] for c in got] == [[1, 0, 2], [3]]


def test_paper_rule_threshold_is_strict():
    # The released code joins on `sim > threshold`: exactly 0.95 does not join.
    s = _sym(2, {(0, 1): 0.95})
    assert paper_clusters(s, 0.95) == [[0], [1]]
    assert paper_clusters(s, 0.9499) == [[0, 1]]


def test_paper_rule_joins_first_matching_cluster():
    # m2 matches both cluster heads (m0: 0.97, m1: 0.99) and joins the first one.
    s = _sym(3, {(0, 1): 0.2, (0, 2): 0.97, (1, 2): 0.99})
    assert paper_clusters(s, 0.95) == [[0, 2], [1]]


def test_choose_cut_cases():
    floor = 0.05
    assert choose_cut(np.array([1e-3, 2e-3]), floor) == floor  # all within the threshold: one cluster
    assert choose_cut(np.array([0.5, 0.9]), floor) == floor  # nothing within: all alone
    # gentle (1e-3) | harsh (0.08) | other family (0.99): the log gap 1e-3 -> 0.08 is the largest
    cut = choose_cut(np.array([1e-3, 1.5e-3, 0.08, 0.99]), floor)
    assert 1.5e-3 < cut < 0.08
    # a moderately drifted member (0.3) close to the far family: cut below the far family only
    cut = choose_cut(np.array([1e-3, 2e-3, 0.02, 0.99]), floor)
    assert 0.02 < cut < 0.99


def test_hierarchical_families():
    # two families of three, far apart, and a harsh member of family 0
    s = _sym(7, {(0, 1): 0.999, (0, 2): 0.998, (1, 2): 0.997,
                 (3, 4): 0.999, (3, 5): 0.998, (4, 5): 0.997,
                 (0, 6): 0.90, (1, 6): 0.899, (2, 6): 0.898})
    clusters, d = hierarchical_clusters(s, 0.95)
    assert clusters == [[0, 1, 2], [3, 4, 5], [6]]
    assert d is not None and d.floor == pytest.approx(0.05)


def test_hierarchical_single_family_is_one_cluster():
    s = _sym(3, {(0, 1): 0.999, (0, 2): 0.99, (1, 2): 0.985})
    assert hierarchical_clusters(s, 0.95)[0] == [[0, 1, 2]]


def test_hierarchical_is_order_independent():
    perm = [3, 1, 0, 2]
    base = hierarchical_clusters(HAND, 0.95)[0]
    got = hierarchical_clusters(HAND[np.ix_(perm, perm)], 0.95)[0]
    assert sorted(sorted(perm[i] for i in c) for c in got) == sorted(sorted(c) for c in base)


def test_unknown_method():
    with pytest.raises(ValueError):
        cluster(HAND, "kmeans")

"""Clustering the models of one compatibility group by weight similarity.

Two rules, both on the weight cosine matrix of `similarity.py`:

* ``paper``: the Model-GLUE released code, reproduced exactly. Models are taken in the
  given order; each is compared with the FIRST member of every existing cluster, in
  cluster order, and joins the first cluster where ``similarity > threshold`` (strictly
  greater, as in the released ``clustering_by_similarity``); otherwise it starts a new
  cluster. The result depends on the input order and on who came first.
* ``hierarchical`` (default): average-linkage agglomerative clustering on the distance
  ``1 - similarity``, which uses every pair and does not depend on order. The cut is
  chosen from the data: merges at distance <= ``1 - threshold`` are always kept (the
  paper would merge them too), and above that floor the dendrogram is cut in its largest
  gap on a log scale. Related fine-tunes sit orders of magnitude closer to each other
  (distance ~1e-4..1e-2) than to another base (~1), so gaps are compared as ratios.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

METHODS = ("paper", "hierarchical")
# Distances below this count as equal for the log-scale gap (duplicates have distance 0).
_MIN_HEIGHT = 1e-12


def paper_clusters(similarity: np.ndarray, threshold: float = 0.95) -> list[list[int]]:
    """The released Model-GLUE rule (see the module docstring); indices in input order."""
    clusters: list[list[int]] = []
    for i in range(len(similarity)):
        for members in clusters:
            if similarity[members[0], i] > threshold:
                members.append(i)
                break
        else:
            clusters.append([i])
    return clusters


@dataclass
class Dendrogram:
    """An average-linkage tree over one group and where it was cut."""

    linkage: np.ndarray  # scipy linkage matrix, heights are distances 1 - similarity
    cut: float  # distance at which the tree is cut
    floor: float  # 1 - threshold


def distance_matrix(similarity: np.ndarray) -> np.ndarray:
    d = 1.0 - (similarity + similarity.T) / 2.0
    d = np.clip(np.nan_to_num(d, nan=1.0), 0.0, None)
    np.fill_diagonal(d, 0.0)
    return d


def linkage(similarity: np.ndarray) -> np.ndarray:
    from scipy.cluster.hierarchy import linkage as _linkage
    from scipy.spatial.distance import squareform

    return _linkage(squareform(distance_matrix(similarity), checks=False), method="average")


def choose_cut(heights: np.ndarray, floor: float) -> float:
    """The cut distance: keep merges <= floor, then cut in the largest log-scale gap."""
    h = np.sort(np.asarray(heights, dtype=float))
    if len(h) == 0 or h[-1] <= floor:
        return floor  # everything is within the paper's threshold: one cluster
    if h[0] > floor:
        return floor  # nothing is: every model on its own
    best, cut = -1.0, floor
    for i in range(1, len(h)):
        if h[i] <= floor:
            continue
        lo, hi = max(h[i - 1], _MIN_HEIGHT), max(h[i], _MIN_HEIGHT)
        gap = math.log(hi) - math.log(lo)
        if gap > best:
            # Any cut inside (h[i-1], h[i]) gives the same clusters; the geometric
            # midpoint shows where the gap is (it may lie below the floor when h[i-1] does).
            best, cut = gap, math.sqrt(lo * hi) if hi > lo else h[i - 1]
    return cut


def hierarchical_clusters(similarity: np.ndarray, threshold: float = 0.95) -> tuple[list[list[int]], Dendrogram | None]:
    """Average-linkage clusters cut from the data (see the module docstring)."""
    n = len(similarity)
    if n == 1:
        return [[0]], None
    from scipy.cluster.hierarchy import fcluster

    Z = linkage(similarity)
    floor = 1.0 - threshold
    cut = choose_cut(Z[:, 2], floor)
    labels = fcluster(Z, t=cut, criterion="distance")
    return _group_labels(labels), Dendrogram(Z, cut, floor)


def _group_labels(labels) -> list[list[int]]:
    """Clusters in order of their first member, members in input order."""
    order: dict[int, list[int]] = {}
    for i, lab in enumerate(labels):
        order.setdefault(int(lab), []).append(i)
    return list(order.values())


def cluster(similarity: np.ndarray, method: str = "hierarchical", threshold: float = 0.95
            ) -> tuple[list[list[int]], Dendrogram | None]:
    """Cluster one group; the dendrogram is returned for both methods (for the plot)."""
    if method == "paper":
        clusters = paper_clusters(similarity, threshold)
        if len(similarity) < 2:
            return clusters, None
        return clusters, Dendrogram(linkage(similarity), 1.0 - threshold, 1.0 - threshold)
    if method == "hierarchical":
        return hierarchical_clusters(similarity, threshold)
    raise ValueError(f"unknown clustering method {method!r} (use one of {', '.join(METHODS)})")

"""Pseudo-subject grouping: which slices belong to one scan, for data sets whose file names carry no subject id."""

from __future__ import annotations

import numpy as np
import pandas as pd

# Pseudo-subjects where file names carry no id (Kaggle, its re-upload, HF parquet). Consecutive slices of one
# scan are near-identical, but different scans at the same slice level are also alike, so raw correlation
# alone merges scans. Whitening (PCA on 32 px thumbnails, each component scaled to unit variance) suppresses
# what all scans share at a level; mutual k-nearest-neighbour edges above a similarity floor then chain the
# slices of one scan, and connected components are the scans. Leakage comes from under-merging (one scan in
# two groups that may land in different splits), so fragments are attached to their most similar group and
# duplicates are forced together; over-merging only costs subjects. Groups above 1.5x the class's median group
# (two scans chained together) are re-grouped with a stricter graph (k=2), never cut at random. Whitening
# keeps at most n/3 components (at most 400): more components than the data supports makes all images alike.
GROUP_SIDE = 32
GROUP_COMPONENTS = 400
GROUP_NEIGHBOURS = 3
GROUP_FLOOR = 0.4
MIN_GROUP_SIZE = 3
GROUP_SIZE_RATIO = 1.5
MIN_GROUP_CAP = 16


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Return rows centred and scaled to unit length, so a dot product is a Pearson correlation."""
    centred = vectors - vectors.mean(axis=1, keepdims=True)
    return (centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-6)).astype(np.float32)


def components(count: int, firsts: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """Return connected-component labels of an undirected graph given by edge lists."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(firsts)), (firsts, seconds)), shape=(count, count))
    return connected_components(graph, directed=False)[1]


def top_eigenvectors(covariance: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the `count` largest eigenvalues and their eigenvectors of a symmetric matrix."""
    from scipy.linalg import eigh
    from threadpoolctl import threadpool_limits

    size = len(covariance)
    count = min(count, size)
    # One BLAS thread: multi-threaded LAPACK eigensolvers slow down 10-50x on a busy 2-core machine.
    with threadpool_limits(1):
        values, vectors = eigh(covariance.astype(np.float64), subset_by_index=(size - count, size - 1))
    return values[::-1], vectors[:, ::-1]


def whitened_features(thumbnails: np.ndarray, side: int = GROUP_SIDE) -> np.ndarray:
    """Return unit rows of PCA-whitened side x side thumbnails (components: at most n/3, so whitening stays stable)."""
    count, area = thumbnails.shape
    full = round(area ** 0.5)
    factor = max(full // side, 1)
    small = thumbnails.reshape(count, full // factor, factor, full // factor, factor).mean(axis=(2, 4))
    centred = unit_rows(small.reshape(count, -1))
    centred = centred - centred.mean(axis=0)
    values, vectors = top_eigenvectors(centred.T @ centred / count, min(GROUP_COMPONENTS, max(2, count // 3)))
    projected = centred @ vectors / np.sqrt(np.maximum(values, 1e-12))
    return (projected / np.maximum(np.linalg.norm(projected, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def mutual_neighbour_labels(similarity: np.ndarray, neighbours: int, floor: float) -> np.ndarray:
    """Return connected components of the mutual k-nearest-neighbour graph restricted to edges >= floor."""
    count = len(similarity)
    neighbours = min(neighbours, count - 1)
    if neighbours < 1:
        return np.zeros(count, dtype=np.int64)
    masked = similarity.copy()
    np.fill_diagonal(masked, -np.inf)
    nearest = np.argpartition(-masked, neighbours - 1, axis=1)[:, :neighbours]
    adjacency = np.zeros((count, count), dtype=bool)
    adjacency[np.repeat(np.arange(count), neighbours), nearest.ravel()] = True
    firsts, seconds = np.nonzero(np.triu(adjacency & adjacency.T & (masked >= floor), 1))
    return components(count, firsts, seconds)


def attach_fragments(similarity: np.ndarray, labels: np.ndarray, minimum: int = MIN_GROUP_SIZE) -> np.ndarray:
    """Merge every group smaller than `minimum` into the group of its most similar outside image."""
    labels = labels.copy()
    while True:
        sizes = np.bincount(labels)
        small = [label for label in np.flatnonzero((sizes > 0) & (sizes < minimum))]
        if not small or len(np.unique(labels)) < 2:
            return labels
        label = small[0]
        members = np.flatnonzero(labels == label)
        outside = similarity[members][:, labels != label]
        target = labels[labels != label][np.unravel_index(np.argmax(outside), outside.shape)[1]]
        labels[labels == label] = target


def group_one_class(similarity: np.ndarray, neighbours: int = GROUP_NEIGHBOURS, maximum: int | None = None
                    ) -> np.ndarray:
    """Return pseudo-scan labels of one class's images from their whitened similarity matrix.

    A group above `maximum` (default: GROUP_SIZE_RATIO x the median first-pass group, at least MIN_GROUP_CAP)
    is re-grouped with one neighbour fewer (a stricter graph); at two neighbours it is kept whole, since cutting
    further would split scans (leakage) rather than separate them.
    """
    labels = attach_fragments(similarity, mutual_neighbour_labels(similarity, neighbours, GROUP_FLOOR))
    labels = np.unique(labels, return_inverse=True)[1]
    sizes = np.bincount(labels)
    maximum = maximum or max(MIN_GROUP_CAP, int(GROUP_SIZE_RATIO * np.median(sizes)))
    if sizes.max() <= maximum or neighbours <= 2:
        return labels
    for label in np.flatnonzero(sizes > maximum):
        members = np.flatnonzero(labels == label)
        inner = group_one_class(similarity[np.ix_(members, members)], neighbours - 1, maximum)
        labels[members] = np.where(inner == 0, label, labels.max() + 1 + inner)
    return np.unique(labels, return_inverse=True)[1]


def _merge_duplicates(labels: np.ndarray, duplicates: np.ndarray) -> np.ndarray:
    """Put copies of one picture (same near-duplicate group) into one group."""
    known = pd.notna(duplicates)
    firsts = np.arange(len(labels))[known]
    code = pd.Series(duplicates[known]).astype("int64").to_numpy()
    partner = pd.Series(firsts).groupby(code).transform("min").to_numpy()
    extra = len(labels)
    graph_firsts = np.concatenate([np.arange(len(labels)), firsts])
    graph_seconds = np.concatenate([extra + labels, partner])
    return components(extra + labels.max() + 1, graph_firsts, graph_seconds)[:len(labels)]


def similarity_groups(thumbnails: np.ndarray, labels: np.ndarray, duplicates: np.ndarray | None = None
                      ) -> tuple[np.ndarray, dict]:
    """Return a pseudo-subject id per image (`sim_<class>_<n>`), grouping within each class, and a summary."""
    features = whitened_features(thumbnails)
    duplicates = np.full(len(labels), None, dtype=object) if duplicates is None else np.asarray(duplicates, object)
    identifiers = np.empty(len(labels), dtype=object)
    sizes = []
    for label in sorted(set(labels)):
        rows = np.flatnonzero(labels == label)
        groups = group_one_class(features[rows] @ features[rows].T)
        groups = _merge_duplicates(groups, duplicates[rows])
        # Number groups by their first row (rows follow the sorted paths) so ids are stable across runs.
        order = {value: number for number, value in enumerate(dict.fromkeys(groups))}
        identifiers[rows] = [f"sim_{label}_{order[value]:04d}" for value in groups]
        sizes += list(np.bincount(groups))
    return identifiers, {"method": "whitened thumbnail mutual k-NN components", "thumbnail_side": GROUP_SIDE,
                         "max_components": GROUP_COMPONENTS, "neighbours": GROUP_NEIGHBOURS, "floor": GROUP_FLOOR,
                         "min_group_size": MIN_GROUP_SIZE, "group_size_ratio": GROUP_SIZE_RATIO,
                         "groups": len(sizes), "group_size_median": float(np.median(sizes)),
                         "group_size_max": int(max(sizes)),
                         "groups_over_twice_median": int(sum(size > 2 * np.median(sizes) for size in sizes))}

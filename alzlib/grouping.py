"""Pseudo-subject grouping: which slices belong to one scan, for data sets whose file names carry no subject id.

Data sets without ids (Kaggle 4-class, its 128 px re-upload, the Hugging Face parquet copy) get pseudo-subjects by
putting the consecutive slices of one scan together, one class at a time:

1. a scan metric learned from the data itself: thumbnails are whitened by how *neighbouring* slices differ, so what
   changes from one slice to the next counts little and what stays fixed along a scan (head shape, pose, contrast)
   counts much (`scan_features`);
2. chains: a slice has two neighbours in its scan, so mutual top-2 links plus each slice's best link join
   consecutive slices, by rank, with no similarity threshold (`chain_groups`);
3. merging rather than splitting: chains shorter than a scan are attached to the group they link to best, and to
   both groups where two are nearly tied (`attach_pieces`); a small group that continues another's chain is merged
   with it (`merge_halves`). A merged group costs a little statistical power; a scan split across two groups can land
   in train and test. Large groups are never cut;
4. a confidence record measured from the data: how far each group is from the nearest other group, relative to its
   own weakest slice-to-slice link (`grouping_confidence`).

Measured with bench/grouping.py on "the 274-scan fixture" of varied scans (tests/fixtures.py `render_varied_scans`,
Kaggle's levels: 274 scans of 6-40 slices, 6,289 slices at 176 x 208 px, per-scan neighbouring-slice correlations
0.95-0.99, 30% of heads scanned 2-3 times): ARI 0.993, 1 scan split, 3-11 s on 2 busy cores; the previous grouping
(mutual 3-NN on whitened thumbnails above a fixed floor) split 27 scans (ARI 0.982). On its "full-level twin" (the
same heads, slices down to the cerebellum and up to the vertex, correlations 0.93-0.99) 14 of 274 scans are split
(previous grouping: 47, ARI 0.927), ARI 0.942, and the confidence record says "low".
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# Thumbnails are compared at 32 px (block means of the 64 px ingestion thumbnails) on at most 400 principal
# components, and never more than n/3, so every component is estimated from several images per dimension.
GROUP_SIDE = 32
GROUP_COMPONENTS = 400
# Two neighbours per slice in its scan: the chain degree. Under the scan metric, mutual top-2 links join 99.9% of the
# consecutive slices of the 274-scan fixture with no link across scans (mutual top-3 links: 28 across scans). A
# slice's single best link is in its own scan for all but 2 of its 6,289 slices; it is added so that where it is
# not, two scans merge rather than one losing a slice. Measured, a wash: without these links 2 instead of 1 split
# scans there, 13 instead of 14 on its full-level twin, 3 instead of 5 on six 49-67-scan fixtures (329 scans).
CHAIN_DEGREE = 2
# The scan metric is learned twice: first from mutual nearest neighbours, then from the links inside the first
# grouping's groups, which include the weak links at the ends of thick scans. The second round: 3 -> 1 split scans
# of 274 (ARI 0.991 -> 0.993); on the full-level twin 15 -> 14 (ARI 0.897 -> 0.942). A third changed little.
METRIC_ROUNDS = 2
# No scan is expected to have fewer than 6 slices (OASIS exports keep a handful to over 100), so a shorter chain is
# a piece of a scan. Where the chains themselves are shorter (a tiny fixture, 5-slice scans), half the typical chain
# is used instead (`piece_minimum`). 8 split 3 instead of 5 of the 329 scans but cost 1-3 points of ARI everywhere
# (0.976 on the 274-scan fixture, 0.916 on its twin) by merging short scans into others.
MIN_SCAN_SLICES = 6
# A piece whose link to its second-best group is within 10% (in distance, 1 - similarity) of its best is tied: it is
# merged with both. Without ties: 6 instead of 5 split scans of 329, 2 instead of 1 of 274, 15 instead of 14 on the
# twin; a ratio of 0.8 changed no split there but cost 1.8 points of ARI.
TIE_RATIO = 0.9
# Two groups that are each other's best match are two parts of one scan when the link between them is at most twice
# as long (in distance) as the weakest link inside either, clearly shorter than either's second-best link (ratio
# <= 0.8), and the smaller part is small (at most 0.4 of the typical group): a wrong merge then costs little. On nine
# varied fixtures (40-274 scans) the rule merged 6 of 8 scans cut in two, 3 of 39 pairs of sessions of one head and
# 3 of 118 other mutual pairs; without the size condition 7 of 8 halves but 13 other pairs. Without this step 13
# instead of 5 of the 329 scans were split (15 instead of 14 on the full-level twin, 1 as before of 274).
HALF_LINK_SLACK = 2.0
HALF_RATIO = 0.8
HALF_SIZE_SHARE = 0.4
# Confidence. A group's separation is its distance to the nearest other group of its class over its own weakest
# slice-to-slice link (both 1 - similarity under the scan metric); below 1 the group is ambiguous. Measured (median
# separation; share of ambiguous groups; scans split): clean Kaggle-like scans 16.6, 0%, none; six varied fixtures
# of 49-67 scans 4.8-6.0, 0-2%, 0-1 scan each; the 274-scan fixture 3.0, 1.9%, 1 scan; its full-level twin (down
# to the cerebellum, up to the vertex) 2.0, 9.9%, 14 scans; fixtures built to be ambiguous (near-identical heads,
# 8-12 mm slices) 1.1-1.7, 3-50%, 17-100%. "high" needs a median of at least 2.5 and at most 3% of groups
# ambiguous or tied, "medium" at least 2.0 and at most 10%; anything else is "low".
AMBIGUOUS_SEPARATION = 1.0
SEPARATION_LEVELS = {"high": 2.5, "medium": 2.0}
CONFIDENCE_SHARES = {"high": 0.03, "medium": 0.10}
# Groups of a median of fewer than 4 slices leave too few neighbours to tell a scan from a coincidence.
MIN_TYPICAL_GROUP = 4


# ------------------------------------------------------------------------------------------------ helpers


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Return rows centred and scaled to unit length, so a dot product is a Pearson correlation."""
    centred = vectors - vectors.mean(axis=1, keepdims=True)
    return (centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-6)).astype(np.float32)


def unit_length(vectors: np.ndarray) -> np.ndarray:
    """Return rows scaled to unit length (not centred), as float32."""
    return (vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def components(count: int, firsts: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """Return connected-component labels of an undirected graph given by edge lists."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(firsts)), (firsts, seconds)), shape=(count, count))
    return connected_components(graph, directed=False)[1]


def renumber(groups: np.ndarray) -> np.ndarray:
    """Return group labels renumbered 0..k-1 in order of their smallest old label."""
    return np.unique(groups, return_inverse=True)[1]


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


def similarity_without_self(features: np.ndarray) -> np.ndarray:
    """Return the cosine similarity matrix of unit rows with -inf on the diagonal (no image is its own match)."""
    similarity = features @ features.T
    np.fill_diagonal(similarity, -np.inf)
    return similarity


# ------------------------------------------------------------------------------------------------ scan metric


def principal_components(thumbnails: np.ndarray, side: int = GROUP_SIDE) -> tuple[np.ndarray, np.ndarray]:
    """Return side x side thumbnails (unit rows) projected on their principal components, and the variances."""
    count, area = thumbnails.shape
    full = round(area ** 0.5)
    factor = max(full // side, 1)
    small = thumbnails.reshape(count, full // factor, factor, full // factor, factor).mean(axis=(2, 4))
    centred = unit_rows(small.reshape(count, -1))
    centred = centred - centred.mean(axis=0)
    values, vectors = top_eigenvectors(centred.T @ centred / count, min(GROUP_COMPONENTS, max(2, count // 3)))
    return centred @ vectors, np.maximum(values, 1e-12)


def whitened_features(thumbnails: np.ndarray, side: int = GROUP_SIDE) -> np.ndarray:
    """Return unit rows of PCA-whitened thumbnails: what all scans share at a level is suppressed."""
    projected, variances = principal_components(thumbnails, side)
    return unit_length(projected / np.sqrt(variances))


def mutual_nearest_pairs(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return index pairs that are each other's nearest neighbour within their class."""
    firsts, seconds = [], []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        if len(rows) < 2:
            continue
        nearest = similarity_without_self(features[rows]).argmax(axis=1)
        mutual = np.flatnonzero((nearest[nearest] == np.arange(len(rows))) & (np.arange(len(rows)) < nearest))
        firsts.append(rows[mutual])
        seconds.append(rows[nearest[mutual]])
    return np.concatenate(firsts or [np.zeros(0, int)]), np.concatenate(seconds or [np.zeros(0, int)])


def within_scan_metric(projected: np.ndarray, firsts: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """Return unit rows whitened by the covariance of neighbour-pair differences (Ledoit-Wolf shrunk).

    Directions in which neighbouring slices of one scan differ (the change of anatomy from slice to slice, noise)
    are scaled down; directions that stay fixed along a scan (head shape, pose, contrast) are scaled up. On the
    274-scan fixture a slice of another head is closer than the true neighbour for 1 of 6,015 consecutive pairs
    (plain PCA whitening: 29), and the grouping splits 1 scan (ARI 0.993) instead of 9 (ARI 0.839); on its
    full-level twin 20 pairs (whitening: 106), 14 split scans (ARI 0.942) instead of 19 (ARI 0.605).
    """
    from sklearn.covariance import LedoitWolf

    if len(firsts) < 2:
        return unit_length(projected)
    differences = projected[firsts] - projected[seconds]
    covariance = LedoitWolf(store_precision=False, assume_centered=True).fit(differences).covariance_
    values, vectors = top_eigenvectors(covariance, len(covariance))
    return unit_length(projected @ vectors / np.sqrt(np.maximum(values, 1e-12)))


def group_links(features: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the minimum-spanning-tree links inside every group: the consecutive slices it implies."""
    from scipy.sparse.csgraph import minimum_spanning_tree

    firsts, seconds = [], []
    for group in np.unique(groups):
        members = np.flatnonzero(groups == group)
        if len(members) < 2:
            continue
        # 1 - similarity, offset so that identical slices still count as an edge of the tree.
        distances = 1.0001 - features[members] @ features[members].T
        np.fill_diagonal(distances, 0)
        tree = minimum_spanning_tree(distances).tocoo()
        firsts.append(members[tree.row])
        seconds.append(members[tree.col])
    return np.concatenate(firsts or [np.zeros(0, int)]), np.concatenate(seconds or [np.zeros(0, int)])


def scan_features(thumbnails: np.ndarray, labels: np.ndarray, rounds: int = METRIC_ROUNDS) -> np.ndarray:
    """Return unit-row features under the scan metric learned from this data's own neighbouring slices."""
    projected, variances = principal_components(thumbnails)
    features = unit_length(projected / np.sqrt(variances))
    features = within_scan_metric(projected, *mutual_nearest_pairs(features, labels))
    for _ in range(rounds - 1):
        groups = group_classes(features, labels)[0]
        features = within_scan_metric(projected, *group_links(features, groups))
    return features


# ------------------------------------------------------------------------------------------------ chains and pieces


def chain_groups(similarity: np.ndarray, degree: int = CHAIN_DEGREE) -> np.ndarray:
    """Return connected components of mutual top-`degree` links plus every slice's single best link."""
    count = len(similarity)
    if count < 2:
        return np.zeros(count, dtype=np.int64)
    degree = min(degree, count - 1)
    nearest = np.argpartition(-similarity, degree - 1, axis=1)[:, :degree]
    adjacency = np.zeros((count, count), dtype=bool)
    adjacency[np.repeat(np.arange(count), degree), nearest.ravel()] = True
    mutual_firsts, mutual_seconds = np.nonzero(adjacency & adjacency.T)
    best = similarity.argmax(axis=1)
    return components(count, np.concatenate([mutual_firsts, np.arange(count)]), np.concatenate([mutual_seconds, best]))


def component_links(similarity: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Return the best similarity between every two groups (k x k, -inf on the diagonal)."""
    order = np.argsort(groups, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(groups[order]) != 0])
    by_row_group = np.maximum.reduceat(similarity[order], starts, axis=0)
    links = np.maximum.reduceat(by_row_group[:, order], starts, axis=1)
    np.fill_diagonal(links, -np.inf)
    return links


def typical_size(groups: np.ndarray) -> float:
    """Return the size of the group holding the median slice (robust to many tiny pieces)."""
    return float(np.median(np.bincount(groups)[groups]))


def piece_minimum(groups: np.ndarray) -> int:
    """Return the size below which a chain is a piece: MIN_SCAN_SLICES, or half the typical chain if shorter."""
    return int(np.clip(round(typical_size(groups) / 2), 2, MIN_SCAN_SLICES))


def attachment_edges(links: np.ndarray, pieces: np.ndarray, tie: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Return (piece, group) edges to each piece's best group, and to its second where the two are tied."""
    order = np.argsort(-links[pieces], axis=1)
    best = links[pieces, order[:, 0]]
    firsts, seconds = [pieces], [order[:, 0]]
    if links.shape[0] > 2:
        second = links[pieces, order[:, 1]]
        tied = np.isfinite(second) & ((1 - best) >= tie * (1 - second))
        firsts.append(pieces[tied])
        seconds.append(order[tied, 1])
        return np.concatenate(firsts), np.concatenate(seconds), int(tied.sum())
    return pieces, order[:, 0], 0


def attach_pieces(similarity: np.ndarray, groups: np.ndarray, minimum: int, tie: float = TIE_RATIO
                  ) -> tuple[np.ndarray, int]:
    """Merge every group smaller than `minimum` into its best-linked group (tied groups too); return groups, ties."""
    ties = 0
    while True:
        sizes = np.bincount(groups)
        pieces = np.flatnonzero(sizes < minimum)
        if not len(pieces) or len(sizes) < 2:
            return groups, ties
        firsts, seconds, tied = attachment_edges(component_links(similarity, groups), pieces, tie)
        ties += tied
        groups = renumber(components(len(sizes), firsts, seconds)[groups])


def weakest_inner_links(similarity: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Return per group the longest link (1 - similarity) of its minimum spanning tree: its weakest chain link."""
    from scipy.sparse.csgraph import minimum_spanning_tree

    weakest = np.zeros(groups.max() + 1)
    for group in np.flatnonzero(np.bincount(groups) > 1):
        members = np.flatnonzero(groups == group)
        distances = 1.0001 - similarity[np.ix_(members, members)]
        np.fill_diagonal(distances, 0)
        weakest[group] = minimum_spanning_tree(distances).max() - 0.0001
    return weakest


def continuation_pairs(links: np.ndarray, weakest: np.ndarray, sizes: np.ndarray, small: float
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Return group pairs that are each other's best match by a link like their own inner links (see HALF_*)."""
    best = links.argmax(axis=1)
    firsts = np.flatnonzero((best[best] == np.arange(len(links))) & (np.arange(len(links)) < best))
    seconds = best[firsts]
    distance = 1 - links[firsts, seconds]
    runner_up = 1 - np.maximum(np.sort(links[firsts], axis=1)[:, -2], np.sort(links[seconds], axis=1)[:, -2])
    keep = ((distance <= HALF_LINK_SLACK * np.maximum(weakest[firsts], weakest[seconds]))
            & (distance <= HALF_RATIO * runner_up) & (np.minimum(sizes[firsts], sizes[seconds]) <= small))
    return firsts[keep], seconds[keep]


def merge_halves(similarity: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Merge groups that continue each other's chain (two parts of one scan) until none is left."""
    # A merged group keeps the weakest inner link of its parts: the link that merged them must not loosen the
    # test for the next merge, or two scans once joined would chain in a third.
    weakest = weakest_inner_links(similarity, groups)
    small = HALF_SIZE_SHARE * typical_size(groups)
    while groups.max() >= 2:
        firsts, seconds = continuation_pairs(component_links(similarity, groups), weakest, np.bincount(groups), small)
        if not len(firsts):
            break
        merged = components(groups.max() + 1, firsts, seconds)
        parts = np.zeros(merged.max() + 1)
        np.maximum.at(parts, merged, weakest)
        groups, weakest = renumber(merged[groups]), parts[np.unique(merged)]
    return groups


def group_one_class(similarity: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Return pseudo-scan labels (0..k-1) of one class's images, the tied pieces and the piece minimum used."""
    if len(similarity) < 2:
        return np.zeros(len(similarity), dtype=np.int64), 0, MIN_SCAN_SLICES
    chains = renumber(chain_groups(similarity))
    minimum = piece_minimum(chains)
    groups, ties = attach_pieces(similarity, chains, minimum)
    return merge_halves(similarity, groups), ties, minimum


def group_classes(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Return a group number per image (groups never span classes), the tied pieces and the smallest piece minimum."""
    groups = np.zeros(len(labels), dtype=np.int64)
    ties, minimum = 0, MIN_SCAN_SLICES
    for label in sorted(set(labels)):
        rows = np.flatnonzero(labels == label)
        inner, tied, class_minimum = group_one_class(similarity_without_self(features[rows]))
        groups[rows] = inner + groups.max() + 1
        ties, minimum = ties + tied, min(minimum, class_minimum)
    return renumber(groups), ties, minimum


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


# ------------------------------------------------------------------------------------------------ confidence


def group_separations(features: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Return per group its distance to the nearest other group of its class over its own weakest chain link.

    Distances are 1 - similarity under the scan metric; a group alone in its class, or of one image, gets +inf.
    """
    separations = np.full(groups.max() + 1, np.inf)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        local, inverse = np.unique(groups[rows], return_inverse=True)
        if len(local) < 2:
            continue
        similarity = similarity_without_self(features[rows])
        nearest = 1 - component_links(similarity, inverse).max(axis=1)
        weakest = weakest_inner_links(similarity, inverse)
        separations[local] = np.where(weakest > 0, nearest / np.maximum(weakest, 1e-6), np.inf)
    return separations


def neighbour_correlations(thumbnails: np.ndarray, features: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Return each image's raw-pixel correlation with its nearest slice (scan metric) in its own group."""
    pixels = unit_rows(thumbnails)
    values = []
    for group in np.flatnonzero(np.bincount(groups) > 1):
        members = np.flatnonzero(groups == group)
        nearest = members[similarity_without_self(features[members]).argmax(axis=1)]
        values.append(np.einsum("ij,ij->i", pixels[members], pixels[nearest]))
    return np.concatenate(values) if values else np.zeros(0)


def confidence_level(separation: float | None, ambiguous_share: float, tie_share: float, typical: float
                     ) -> tuple[str, str]:
    """Return ("high" | "medium" | "low", the reason) from the median separation, the ambiguous and tied shares."""
    if typical < MIN_TYPICAL_GROUP:
        return "low", f"groups hold a median of {typical:.0f} slices: too few to tell scans apart"
    if separation is None:
        return "low", "every class formed a single group: there is nothing to tell scans apart by"
    share = max(ambiguous_share, tie_share)
    level = next((name for name in ("high", "medium")
                  if separation >= SEPARATION_LEVELS[name] and share <= CONFIDENCE_SHARES[name]), "low")
    reason = (f"groups are {separation:.1f}x farther from the nearest other group than their own weakest "
              f"slice-to-slice link (median); {ambiguous_share:.1%} have another group closer than that link "
              f"and {tie_share:.1%} had a piece tied between two groups")
    return level, reason + ("" if level == "high" else ": scans may be merged or split")


def grouping_confidence(thumbnails: np.ndarray, features: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                        ties: int) -> dict:
    """Return the confidence record of a grouping (keys documented in `similarity_groups`)."""
    separations = group_separations(features, labels, groups)
    finite = separations[np.isfinite(separations)]
    ambiguous = int((separations < AMBIGUOUS_SEPARATION).sum())
    correlations = neighbour_correlations(thumbnails, features, groups)
    median = round(float(np.median(finite)), 3) if len(finite) else None
    level, reason = confidence_level(median, ambiguous / len(separations), ties / len(separations),
                                     typical_size(groups))
    return {"level": level, "reason": reason,
            "neighbour_correlation_median": round(float(np.median(correlations)), 4) if len(correlations) else None,
            "separation_median": median,
            "separation_p05": round(float(np.percentile(finite, 5)), 3) if len(finite) else None,
            "threshold_used": AMBIGUOUS_SEPARATION, "ambiguous_groups": ambiguous, "tied_pieces": ties,
            "tie_ratio": TIE_RATIO}


# ------------------------------------------------------------------------------------------------ entry point


def similarity_groups(thumbnails: np.ndarray, labels: np.ndarray, duplicates: np.ndarray | None = None
                      ) -> tuple[np.ndarray, dict]:
    """Return a pseudo-subject id per image (`sim_<class>_<n>`), grouping within each class, and a summary.

    Summary keys: `method`; `thumbnail_side` and `max_components` (the compared thumbnails); `neighbours` (the chain
    degree); `floor` (None: links are chosen by rank, there is no similarity floor); `min_group_size` (chains below
    it were attached as pieces); `group_size_ratio` (None: large groups are never cut, that would split scans);
    `groups`, `group_size_median`, `group_size_max`, `groups_over_twice_median`; and `confidence`:

    - `level`: "high", "medium" or "low" (see SEPARATION_LEVELS); `reason`: one sentence saying why;
    - `neighbour_correlation_median`: pixel correlation of a slice with its nearest slice in its group, on the 64 px
      thumbnails (about 0.99 for Kaggle's 2.8 mm slices, 0.95 for 8-12 mm slices);
    - `separation_median`, `separation_p05`: per group, the distance to the nearest other group of its class over its
      own weakest slice-to-slice link (scan metric), median and 5th percentile: 1 means no margin at all;
    - `threshold_used`: the separation under which a group counts as ambiguous; `ambiguous_groups`: how many;
    - `tied_pieces`, `tie_ratio`: pieces whose two best groups were tied (and so merged), and the tie threshold.
    """
    labels = np.asarray(labels)
    duplicates = np.full(len(labels), None, dtype=object) if duplicates is None else np.asarray(duplicates, object)
    features = scan_features(thumbnails, labels)
    groups, ties, minimum = group_classes(features, labels)
    identifiers = np.empty(len(labels), dtype=object)
    for label in sorted(set(labels)):
        rows = np.flatnonzero(labels == label)
        local = _merge_duplicates(renumber(groups[rows]), duplicates[rows])
        groups[rows] = renumber(local) + groups.max() + 1
        # Number groups by their first row (rows follow the sorted paths) so ids are stable across runs.
        order = {value: number for number, value in enumerate(dict.fromkeys(local))}
        identifiers[rows] = [f"sim_{label}_{order[value]:04d}" for value in local]
    groups = renumber(groups)
    sizes = np.bincount(groups)
    return identifiers, {"method": "scan-metric chains of neighbouring slices; pieces attached, ties merged",
                         "thumbnail_side": GROUP_SIDE, "max_components": GROUP_COMPONENTS,
                         "neighbours": CHAIN_DEGREE, "floor": None, "min_group_size": minimum,
                         "group_size_ratio": None, "groups": len(sizes),
                         "group_size_median": float(np.median(sizes)), "group_size_max": int(sizes.max()),
                         "groups_over_twice_median": int((sizes > 2 * np.median(sizes)).sum()),
                         "confidence": grouping_confidence(thumbnails, features, labels, groups, ties)}

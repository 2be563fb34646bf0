"""Subject-level stratified splits and the leakage audit of any split (subjects, duplicates, raw-pixel 1-NN)."""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from alzlib import config

DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)
# Neighbouring slices of one scan correlate at about 0.99 on 64 px thumbnails. On a 5,760-image Kaggle-like
# fixture (180 scans), 96% of shipped-split test slices had a train neighbour >= 0.97 and 0.4% of subject-split
# test slices did (0.95 flagged 39% there: with thousands of train images some other scan comes close).
NEAR_IDENTICAL_CORRELATION = 0.97
EXAMPLES_SHOWN = 10


def _check_fractions(fractions: tuple[float, float, float]) -> None:
    """Raise ValueError unless `fractions` are three non-negative numbers summing to 1 with train > 0."""
    values = np.asarray(fractions, dtype=float)
    if values.shape != (3,) or (values < 0).any() or values[0] <= 0 or not np.isclose(values.sum(), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers (train, val, test) summing to 1 with "
                         f"train > 0, got {fractions!r}.")


def _check_columns(frame: pd.DataFrame, columns: tuple[str, ...]) -> None:
    """Raise ValueError naming any of `columns` missing from `frame`."""
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ValueError(f"The frame lacks column(s) {missing}: expected a manifest with {list(columns)}.")


def subject_labels(frame: pd.DataFrame) -> pd.Series:
    """Return each subject's label (its most frequent one; ties broken by name), indexed by sorted subject id."""
    counts = frame.groupby(["subject_id", "label"]).size().reset_index(name="images")
    counts = counts.sort_values(["subject_id", "images", "label"], ascending=[True, False, True])
    return counts.drop_duplicates("subject_id").set_index("subject_id")["label"].sort_index()


def split_counts(subjects: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """Return (train, val, test) subject counts; val/test get at least one subject each when enough exist."""
    wanted = [index for index in (1, 2) if fractions[index] > 0]
    if subjects < 1 + len(wanted):
        return subjects, 0, 0
    counts = [0, 0, 0]
    for index in wanted:
        counts[index] = max(1, round(subjects * fractions[index]))
    while sum(counts[1:]) > subjects - 1:
        counts[int(np.argmax(counts[1:])) + 1] -= 1
    counts[0] = subjects - sum(counts[1:])
    return counts[0], counts[1], counts[2]


def _class_generator(seed: int, label: str) -> np.random.Generator:
    """Return a generator seeded by `seed` and the class name, so each class's shuffle is independent."""
    return np.random.default_rng([seed, zlib.crc32(str(label).encode())])


def assign_subjects(subjects: pd.Series, seed: int, fractions: tuple[float, float, float]) -> dict[str, str]:
    """Return {subject id: split} for subjects (indexed by id, valued by label), stratified by label."""
    assignment: dict[str, str] = {}
    for label in sorted(subjects.unique()):
        identifiers = np.array(sorted(subjects.index[subjects == label]))
        order = _class_generator(seed, label).permutation(len(identifiers))
        train, val, _ = split_counts(len(identifiers), fractions)
        for position, identifier in enumerate(identifiers[order]):
            assignment[identifier] = "train" if position < train else "val" if position < train + val else "test"
    return assignment


def subject_split(frame: pd.DataFrame, seed: int, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
                  ) -> pd.Series:
    """Return each row's split (train/val/test), all rows of one subject together, stratified by class.

    A class with fewer than three subjects cannot be split three ways: all its subjects go to train and
    `split_warnings` says so.
    """
    _check_fractions(fractions)
    _check_columns(frame, ("subject_id", "label"))
    assignment = assign_subjects(subject_labels(frame), seed, fractions)
    return frame["subject_id"].map(assignment).rename("split")


def shipped_policy_split(frame: pd.DataFrame, seed: int, validation_fraction: float = 0.15) -> pd.Series:
    """Return splits under the data set's own split: its test stays test; val is carved by subject from its train."""
    _check_columns(frame, ("subject_id", "label", "shipped_split"))
    shipped = frame["shipped_split"]
    if shipped.isna().all():
        raise ValueError("SPLIT='shipped' but this data set ships no train/test split (no train/test folders or "
                         "files): use SPLIT='subject'.")
    if shipped.isna().any():
        example = frame.loc[shipped.isna(), "path"].iloc[0] if "path" in frame else "?"
        raise ValueError(f"SPLIT='shipped' needs every image in a shipped split; {int(shipped.isna().sum())} "
                         f"are in none (e.g. {example}).")
    result = shipped.astype(object).copy().rename("split")
    train_rows = shipped == "train"
    if not (shipped == "val").any():
        assignment = assign_subjects(subject_labels(frame[train_rows]), seed, (1 - validation_fraction,
                                                                                validation_fraction, 0.0))
        result[train_rows] = frame.loc[train_rows, "subject_id"].map(assignment)
    return result


def split_warnings(frame: pd.DataFrame, split_column: str = "split") -> list[str]:
    """Return a sentence for every class missing from a split or with too few subjects to split three ways."""
    _check_columns(frame, ("subject_id", "label", split_column))
    warnings = []
    subjects = subject_labels(frame)
    for label in sorted(frame["label"].unique()):
        count = int((subjects == label).sum())
        present = set(frame.loc[frame["label"] == label, split_column].dropna())
        missing = [split for split in config.SPLITS if split not in present]
        if missing:
            warnings.append(f"Class {label!r} has {count} subject(s) and no images in {', '.join(missing)} "
                            f"(a subject-level split needs at least 3 subjects per class); its "
                            f"{'/'.join(missing)} metrics will be missing.")
    return warnings


def _shared_subjects(frame: pd.DataFrame, split_column: str) -> dict:
    """Count subjects present in more than one split, per pair of splits."""
    splits = frame.groupby("subject_id")[split_column].agg(lambda values: tuple(sorted(set(values.dropna()))))
    shared = splits[splits.map(len) > 1]
    pairs: dict[str, int] = {}
    for combination in shared:
        for first_index, first in enumerate(combination):
            for second in combination[first_index + 1:]:
                pairs[f"{first}-{second}"] = pairs.get(f"{first}-{second}", 0) + 1
    return {"subjects_shared": len(shared), "subjects_total": len(splits), "shared_by_pair": pairs,
            "shared_examples": [str(identifier) for identifier in shared.index[:EXAMPLES_SHOWN]]}


def _groups_across_splits(frame: pd.DataFrame, key: str, split_column: str) -> dict:
    """Count groups of rows sharing `key` (hash or near-duplicate group) that span more than one split."""
    if key not in frame.columns:
        return {"groups": None, "images": None, "examples": []}
    rows = frame.dropna(subset=[key])
    spans = rows.groupby(key)[split_column].nunique()
    crossing = spans[spans > 1].index
    members = rows[rows[key].isin(crossing)]
    examples = [sorted(group["path"].astype(str))[:3] for _, group in members.groupby(key)][:EXAMPLES_SHOWN]
    return {"groups": len(crossing), "images": len(members), "examples": examples}


def nearest_train_neighbours(features: np.ndarray, train_rows: np.ndarray, query_rows: np.ndarray,
                             block: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Return, per query row, the index (into `features`) and correlation of its most correlated train row."""
    train = features[train_rows]
    best_index = np.zeros(len(query_rows), dtype=np.int64)
    best_value = np.full(len(query_rows), -1.0, dtype=np.float32)
    for start in range(0, len(query_rows), block):
        similarity = features[query_rows[start:start + block]] @ train.T
        best_index[start:start + block] = train_rows[similarity.argmax(axis=1)]
        best_value[start:start + block] = similarity.max(axis=1)
    return best_index, best_value


def pixel_neighbour_check(frame: pd.DataFrame, split_column: str, features: np.ndarray,
                          threshold: float = NEAR_IDENTICAL_CORRELATION) -> dict:
    """Raw-pixel 1-NN audit: each held-out image's nearest train image, its correlation and label agreement.

    `features` are rows of mean-centred, unit-norm pixel vectors aligned with `frame` (a dot product is a
    Pearson correlation). A 1-NN 'classifier' on raw pixels scoring far above chance means the held-out
    images have near copies in train.
    """
    splits = frame[split_column].to_numpy()
    labels = frame["label"].to_numpy()
    train_rows = np.flatnonzero(splits == "train")
    result = {"threshold": threshold}
    for split in ("val", "test"):
        query_rows = np.flatnonzero(splits == split)
        if not len(query_rows) or not len(train_rows):
            result[split] = None
            continue
        neighbour, correlation = nearest_train_neighbours(features, train_rows, query_rows)
        result[split] = _neighbour_summary(correlation, labels[neighbour] == labels[query_rows], labels[train_rows],
                                           threshold)
    return result


def _neighbour_summary(correlation: np.ndarray, agrees: np.ndarray, train_labels: np.ndarray,
                       threshold: float) -> dict:
    """Summarise nearest-train correlations and the 1-NN accuracy against the majority-class rate."""
    majority = float(pd.Series(train_labels).value_counts(normalize=True).iloc[0])
    return {"images": len(correlation),
            "correlation_median": float(np.median(correlation)),
            "correlation_p95": float(np.percentile(correlation, 95)),
            "correlation_max": float(correlation.max()),
            "near_identical_share": float(np.mean(correlation >= threshold)),
            "nearest_neighbour_accuracy": float(np.mean(agrees)),
            "majority_class_rate": majority}


def leakage_audit(frame: pd.DataFrame, split_column: str = "split", features: np.ndarray | None = None) -> dict:
    """Audit one split: subjects shared between splits, exact and near duplicates across splits, raw-pixel 1-NN.

    Near duplicates need a `near_duplicate_group` column; the 1-NN check needs `features` aligned with `frame`.
    """
    _check_columns(frame, ("path", "subject_id", "label", "sha256", split_column))
    rows = frame[frame[split_column].notna()]
    audit = {"split_column": split_column,
             "images_per_split": {str(key): int(value) for key, value in rows[split_column].value_counts().items()},
             **_shared_subjects(rows, split_column),
             "exact_duplicates_across_splits": _groups_across_splits(rows, "sha256", split_column),
             "near_duplicates_across_splits": _groups_across_splits(rows, "near_duplicate_group", split_column),
             "pixel_neighbours": None}
    if features is not None:
        if len(features) != len(frame):
            raise ValueError(f"features has {len(features)} rows but the frame has {len(frame)}: they must align.")
        kept = frame[split_column].notna().to_numpy()
        audit["pixel_neighbours"] = pixel_neighbour_check(rows, split_column, features[kept])
    audit["leaks"] = bool(audit["subjects_shared"] or audit["exact_duplicates_across_splits"]["groups"]
                          or audit["near_duplicates_across_splits"]["groups"])
    return audit

"""Subject-level and slice-level splits and the leakage audit of any split (subjects, duplicates, raw-pixel 1-NN)."""

from __future__ import annotations

import itertools
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
# The pixel check judges held-out images against a null of image pairs known to be of different subjects: a fixed
# cut (0.97 above) cannot tell leakage from a data set whose scans are simply alike; the null's own tail can. Train
# subjects are dealt into two halves, and for each half the held-out images' nearest images in it are compared with
# those of the other half's train images: both sides face the same reference images, so honest held-out subjects
# and train subjects are exchangeable. (A leave-subject-out null within the whole train set is not: taking a subject
# out of train changes its neighbours' values; it tripped 2-3x its nominal rate.) Slices of one subject share their
# anatomy, so their exceedances come in clusters: the tests permute whole subjects, not images. Measured on honest
# subject splits of rendered scans (12 slices each; nominal rate 0.5% per held-out split): 40 scans, 600 splits:
# 0.17% tripped; 100 scans, 180 splits: 0.56%.
NULL_QUANTILE = 0.99
PIXEL_ALPHA = 0.01  # family-wise false-alarm rate of all pixel tests of one audit (Bonferroni over them)
PERMUTATIONS = 4000  # p-value resolution 1/4001: a test at 0.01/4, corrected over two halves, needs p < 0.00125
PERMUTATION_SEED = 0
# Above this many images per held-out split (and in the null) a hash-chosen subset is compared, so OASIS (~60,000
# train images) costs 15,000 x 60,000 dot products of 4,096 (7 TFLOP, about a minute on two cores) instead of
# 26,000 x 60,000; Kaggle (about 4,500 train images under a subject split) stays whole.
MAX_COMPARED_IMAGES = 5000
GROUPING_LEVELS = ("high", "medium", "low")


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


def _stratified_part(positions: np.ndarray, labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Return the `fraction` of `positions` drawn by scikit-learn's train_test_split, stratified where it can be."""
    from sklearn.model_selection import train_test_split

    if len(positions) < 2:
        return positions[:0]
    try:
        return train_test_split(positions, test_size=fraction, random_state=seed, stratify=labels)[1]
    except ValueError:
        # scikit-learn refuses to stratify a class with one image, or fewer held-out images than classes:
        # this split is the leaky baseline, so an unstratified draw serves it better than no split at all.
        return train_test_split(positions, test_size=fraction, random_state=seed)[1]


def slice_split(frame: pd.DataFrame, seed: int, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
                ) -> pd.Series:
    """Return a random slice-level split (train/val/test) stratified by label that ignores subjects: it leaks.

    This is what a random split of image files does (Keras `validation_split`, `train_test_split` on paths);
    it exists to measure that leak. Rows are ordered by path first, so the split depends on the seed only.
    """
    _check_fractions(fractions)
    _check_columns(frame, ("path", "label"))
    order = np.argsort(frame["path"].astype(str).to_numpy(), kind="stable")
    labels = frame["label"].astype(str).to_numpy()
    result = np.full(len(frame), "train", dtype=object)
    held_out = fractions[1] + fractions[2]
    if held_out > 0 and len(frame) > 1:
        rest = _stratified_part(order, labels[order], held_out, seed)
        test = rest if fractions[1] == 0 else (_stratified_part(rest, labels[rest], fractions[2] / held_out, seed)
                                                if fractions[2] > 0 else rest[:0])
        result[rest] = "val"
        result[test] = "test"
    return pd.Series(result, index=frame.index, name="split")


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


def nearest_by_part(features: np.ndarray, train_rows: np.ndarray, parts: np.ndarray, query_rows: np.ndarray,
                    block: int = 512, count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return (index into `features`, correlation), each parts x queries: every query's best train row per part.

    `parts` numbers each train row's part from 0 to `count` - 1 (default: the largest part); a part with no rows
    gets index -1 and correlation -inf.
    """
    order = np.argsort(parts, kind="stable")
    # Train rows sorted by part make each part a contiguous block of columns (a view, not a copy, per block).
    train_rows, parts = train_rows[order], parts[order]
    train = features[train_rows]
    count = int(parts.max(initial=-1)) + 1 if count is None else count
    bounds = np.searchsorted(parts, np.arange(count + 1))
    best_index = np.full((len(bounds) - 1, len(query_rows)), -1, dtype=np.int64)
    best_value = np.full((len(bounds) - 1, len(query_rows)), -np.inf, dtype=np.float32)
    for start in range(0, len(query_rows), block):
        similarity = features[query_rows[start:start + block]] @ train.T
        for part, (low, high) in enumerate(itertools.pairwise(bounds)):
            if high > low:
                best = similarity[:, low:high].argmax(axis=1)
                best_index[part, start:start + block] = train_rows[low + best]
                best_value[part, start:start + block] = similarity[np.arange(len(best)), low + best]
    return best_index, best_value


def nearest_train_neighbours(features: np.ndarray, train_rows: np.ndarray, query_rows: np.ndarray,
                             block: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Return, per query row, the index (into `features`) and correlation of its most correlated train row."""
    index, value = nearest_by_part(features, train_rows, np.zeros(len(train_rows), dtype=np.int64), query_rows,
                                   block)
    return index[0], value[0]


def compared_rows(paths: np.ndarray, rows: np.ndarray, limit: int | None = None) -> np.ndarray:
    """Return `rows`, or at most `limit` of them chosen by a CRC32 hash of their paths (deterministic, no seed)."""
    limit = MAX_COMPARED_IMAGES if limit is None else limit
    if len(rows) <= limit:
        return rows
    hashes = np.array([zlib.crc32(str(path).encode()) for path in paths[rows]], dtype=np.int64)
    return np.sort(rows[np.argsort(hashes, kind="stable")[:limit]])


def train_halves(frame: pd.DataFrame, train_rows: np.ndarray) -> np.ndarray:
    """Return 0 or 1 per train row: subjects, class by class in CRC32 order of their ids, go to alternate halves."""
    train = frame.iloc[train_rows]
    labels = subject_labels(train.assign(subject_id=train["subject_id"].astype(str)))
    # One running count over all classes, so classes with an odd number of subjects don't all favour half 0.
    dealt = sorted(labels.index, key=lambda name: (str(labels[name]), zlib.crc32(name.encode()), name))
    half = {subject: position % 2 for position, subject in enumerate(dealt)}
    return train["subject_id"].astype(str).map(half).to_numpy(dtype=np.int64)


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


def _subject_counts(subjects: np.ndarray, above: np.ndarray, agrees: np.ndarray) -> np.ndarray:
    """Return one row per subject: (images, images above the null's cut, images whose 1-NN label agrees)."""
    table = pd.DataFrame({"subject": subjects, "images": 1, "above": above, "agrees": agrees})
    return table.groupby("subject", sort=True)[["images", "above", "agrees"]].sum().to_numpy(dtype=np.float64)


def subject_permutation_p_values(held_out: np.ndarray, null: np.ndarray, permutations: int = PERMUTATIONS
                                 ) -> tuple[float, float]:
    """Return one-sided p-values that the held-out subjects' above-cut and agreement shares exceed the null's.

    Rows are subjects (images, above, agrees); held-out and null subjects are reassigned at random, whole
    subjects at a time, and the shares recomputed: p = (1 + permutations at least as high) / (1 + permutations).
    """
    pooled = np.concatenate([held_out, null])
    observed = held_out[:, 1:].sum(axis=0) / held_out[:, 0].sum()
    generator = np.random.default_rng(PERMUTATION_SEED)
    membership = np.zeros(len(pooled), dtype=np.float64)
    membership[:len(held_out)] = 1.0
    higher = np.zeros(2)
    for start in range(0, permutations, 500):
        chosen = generator.permuted(np.tile(membership, (min(500, permutations - start), 1)), axis=1)
        totals = chosen @ pooled
        higher += (totals[:, 1:] / totals[:, :1] >= observed - 1e-12).sum(axis=0)
    p_values = (1 + higher) / (1 + permutations)
    return float(p_values[0]), float(p_values[1])


def _null_neighbours(frame: pd.DataFrame, features: np.ndarray, train_rows: np.ndarray, halves: np.ndarray
                     ) -> dict:
    """Return the null: each (compared) train image's nearest train image in the other half (another subject)."""
    queries = compared_rows(frame["path"].to_numpy(), train_rows)
    query_halves = halves[np.searchsorted(train_rows, queries)]
    index, value = nearest_by_part(features, train_rows, halves, queries, count=2)
    columns = np.arange(len(queries))
    neighbour, correlation = index[1 - query_halves, columns], value[1 - query_halves, columns]
    found = neighbour >= 0
    labels = frame["label"].to_numpy()
    return {"rows": queries[found], "half": query_halves[found], "correlation": correlation[found],
            "agrees": labels[neighbour[found]] == labels[queries[found]]}


def _null_cuts(null: dict) -> list[float | None]:
    """Return, per half, the null's NULL_QUANTILE of correlations with that half (None when nothing faced it)."""
    cuts = []
    for half in (0, 1):
        facing = null["correlation"][null["half"] == 1 - half]
        cuts.append(float(np.quantile(facing, NULL_QUANTILE)) if len(facing) else None)
    return cuts


def _half_test(frame: pd.DataFrame, compared: np.ndarray, neighbour: np.ndarray, correlation: np.ndarray,
               null: dict, half: int, cut: float | None) -> dict | None:
    """Test held-out images against the null on one train half: both sides face the same half of train."""
    facing = null["half"] == 1 - half
    if cut is None or not (neighbour >= 0).all():
        return None
    labels, subjects = frame["label"].to_numpy(), frame["subject_id"].astype(str).to_numpy()
    agrees = labels[neighbour] == labels[compared]
    held_out = _subject_counts(subjects[compared], correlation > cut, agrees)
    null_counts = _subject_counts(subjects[null["rows"][facing]], null["correlation"][facing] > cut,
                                  null["agrees"][facing])
    above_p, agreement_p = subject_permutation_p_values(held_out, null_counts)
    return {"above": float(np.mean(correlation > cut)), "agrees": float(np.mean(agrees)), "above_p": above_p,
            "agreement_p": agreement_p}


def _combine_halves(tests: list[dict]) -> dict:
    """Return a split's shares (mean over the halves tested) and p-values Bonferroni-corrected over the halves."""
    if not tests:
        return {"halves_tested": 0, "above_null_share": None, "agreement_within_half": None,
                "above_null_p_value": 1.0, "agreement_p_value": 1.0}
    # Either half may hold the scans a held-out image came from, so the smaller p-value of the two counts, doubled.
    return {"halves_tested": len(tests),
            "above_null_share": float(np.mean([test["above"] for test in tests])),
            "agreement_within_half": float(np.mean([test["agrees"] for test in tests])),
            "above_null_p_value": min(1.0, len(tests) * min(test["above_p"] for test in tests)),
            "agreement_p_value": min(1.0, len(tests) * min(test["agreement_p"] for test in tests))}


def _split_evidence(frame: pd.DataFrame, features: np.ndarray, train_rows: np.ndarray, halves: np.ndarray,
                    query_rows: np.ndarray, null: dict, threshold: float) -> dict:
    """Return one held-out split's 1-NN summary (against all train) and its tests against the null (per half)."""
    labels = frame["label"].to_numpy()
    compared = compared_rows(frame["path"].to_numpy(), query_rows)
    index, value = nearest_by_part(features, train_rows, halves, compared, count=2)
    columns, best = np.arange(len(compared)), value.argmax(axis=0)
    neighbour, correlation = index[best, columns], value[best, columns]
    summary = _neighbour_summary(correlation, labels[neighbour] == labels[compared], labels[train_rows], threshold)
    tests = [_half_test(frame, compared, index[half], value[half], null, half, cut)
             for half, cut in enumerate(_null_cuts(null))]
    return {**summary, "images": len(query_rows), "images_compared": len(compared),
            "subjects_compared": int(frame["subject_id"].iloc[compared].nunique()),
            **_combine_halves([test for test in tests if test is not None])}


def _null_summary(null: dict, train_labels: np.ndarray, threshold: float, train_images: int,
                  halves: np.ndarray) -> dict:
    """Summarise the null in the same keys as a held-out split, plus its cuts and half sizes."""
    summary = _neighbour_summary(null["correlation"], null["agrees"], train_labels, threshold)
    return {**summary, "images": train_images, "images_compared": len(null["rows"]),
            "correlation_cuts": _null_cuts(null), "images_per_half": [int((halves == 0).sum()),
                                                                       int((halves == 1).sum())],
            "description": ("each train image's most correlated train image in the other half of the train "
                            "subjects (subjects dealt alternately, class by class in CRC32 order of their ids); "
                            "its 1-NN accuracy compares with a held-out split's agreement_within_half")}


def _pixel_rule(tests: int) -> str:
    """Return the sentence stating the pixel-neighbour decision rule."""
    return (f"Train subjects are dealt into two halves; held-out images and the other half's train images are "
            f"both compared with each half. A held-out split leaks by raw pixels when its share of images above "
            f"the null's {NULL_QUANTILE:.0%} quantile of correlations, or its 1-NN label agreement, is higher than "
            f"the other half's: one-sided permutation tests ({PERMUTATIONS} permutations of whole subjects), "
            f"each p-value Bonferroni-corrected over the two halves and held to alpha {PIXEL_ALPHA}/{tests} "
            f"(statistics x splits), so an honest split (held-out subjects exchangeable with train subjects) "
            f"trips it at most {PIXEL_ALPHA:.0%} of the time.")


def pixel_neighbour_check(frame: pd.DataFrame, split_column: str, features: np.ndarray,
                          threshold: float = NEAR_IDENTICAL_CORRELATION) -> dict:
    """Raw-pixel 1-NN audit: each held-out image's nearest train image, tested against a different-subject null.

    `features` are rows of mean-centred, unit-norm pixel vectors aligned with `frame` (a dot product is a
    Pearson correlation). Held-out images closer to train images, or agreeing in label with their nearest one
    more often, than train images are to other train subjects have copies or same-scan neighbours in train,
    whatever the subject ids say.
    """
    _check_columns(frame, ("path", "subject_id", "label", split_column))
    splits = frame[split_column].to_numpy()
    train_rows = np.flatnonzero(splits == "train")
    present = [split for split in ("val", "test") if (splits == split).any() and len(train_rows)]
    tests = max(2 * len(present), 1)
    result = {"threshold": threshold, "null": None, "rule": _pixel_rule(tests), "alpha_per_test": PIXEL_ALPHA / tests,
              "sampling": None, "val": None, "test": None}
    if not present:
        return result
    halves = train_halves(frame, train_rows)
    null = _null_neighbours(frame, features, train_rows, halves)
    labels = frame["label"].to_numpy()
    if len(null["rows"]):
        result["null"] = _null_summary(null, labels[train_rows], threshold, len(train_rows), halves)
    for split in present:
        evidence = _split_evidence(frame, features, train_rows, halves, np.flatnonzero(splits == split), null,
                                   threshold)
        evidence["leaks"] = bool(min(evidence["above_null_p_value"], evidence["agreement_p_value"])
                                 < result["alpha_per_test"])
        result[split] = evidence
    result["sampling"] = _sampling_note(result)
    return result


def _sampling_note(result: dict) -> str | None:
    """Return a sentence when any part of the pixel check compared a subset, else None."""
    parts = [(name, result[name]) for name in ("null", "val", "test") if isinstance(result[name], dict)]
    sampled = [f"{name} {part['images_compared']} of {part['images']}" for name, part in parts
               if part["images_compared"] < part["images"]]
    if not sampled:
        return None
    return (f"Compared a subset chosen by a CRC32 hash of each path (deterministic, no seed; at most "
            f"{MAX_COMPARED_IMAGES} per part), each against every train image: {', '.join(sampled)}.")


def _tripped_by(audit: dict) -> list[str]:
    """Return the names of the evidence that says the split leaks (empty when clean)."""
    tripped = []
    if audit["subjects_shared"]:
        tripped.append("subjects shared")
    if audit["exact_duplicates_across_splits"]["groups"]:
        tripped.append("exact duplicates")
    if audit["near_duplicates_across_splits"]["groups"]:
        tripped.append("near duplicates")
    for split, evidence in (audit["pixel_neighbours"] or {}).items():
        if isinstance(evidence, dict) and evidence.get("leaks"):
            tripped.append(f"pixel neighbours ({split})")
    return tripped


def _grouping_note(grouping_confidence: str | None) -> str | None:
    """Return the caveat for subject ids from a low-confidence grouping (None otherwise); check the level."""
    if grouping_confidence not in (None, *GROUPING_LEVELS):
        raise ValueError(f"grouping_confidence must be one of {list(GROUPING_LEVELS)} or None, "
                         f"got {grouping_confidence!r}.")
    if grouping_confidence != "low":
        return None
    return ("Subject ids are uncertain (low grouping confidence): slices of one scan may carry different ids, so "
            "no subject shared between splits is weak reassurance, and the pixel null (built from those ids) may "
            "hold same-scan pairs that make the pixel check less sensitive.")


def leakage_audit(frame: pd.DataFrame, split_column: str = "split", features: np.ndarray | None = None,
                  grouping_confidence: str | None = None) -> dict:
    """Audit one split: subjects shared between splits, exact and near duplicates across splits, raw-pixel 1-NN.

    Near duplicates need a `near_duplicate_group` column; the 1-NN check needs `features` aligned with `frame`.
    `grouping_confidence` ("high"/"medium"/"low", from the ingestion report) is recorded; "low" adds a note.
    `leaks` is true when any evidence trips; `tripped_by` names which.
    """
    _check_columns(frame, ("path", "subject_id", "label", "sha256", split_column))
    note = _grouping_note(grouping_confidence)
    rows = frame[frame[split_column].notna()]
    audit = {"split_column": split_column,
             "images_per_split": {str(key): int(value) for key, value in rows[split_column].value_counts().items()},
             **_shared_subjects(rows, split_column),
             "exact_duplicates_across_splits": _groups_across_splits(rows, "sha256", split_column),
             "near_duplicates_across_splits": _groups_across_splits(rows, "near_duplicate_group", split_column),
             "pixel_neighbours": None, "grouping_confidence": grouping_confidence, "subject_ids_note": note}
    if features is not None:
        if len(features) != len(frame):
            raise ValueError(f"features has {len(features)} rows but the frame has {len(frame)}: they must align.")
        kept = frame[split_column].notna().to_numpy()
        audit["pixel_neighbours"] = pixel_neighbour_check(rows, split_column, features[kept])
    audit["tripped_by"] = _tripped_by(audit)
    audit["leaks"] = bool(audit["tripped_by"])
    return audit

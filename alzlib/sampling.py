"""Stratified samples: the one seeded way the stages draw a smaller set of rows with every group in proportion."""

from __future__ import annotations

import numpy as np
import pandas as pd


def proportional_counts(sizes: pd.Series, total: int) -> pd.Series:
    """Return how many of each group to draw so the counts sum to `total` in proportion (largest remainder, >= 1)."""
    quotas = sizes.astype(float) * total / sizes.sum()
    counts = np.minimum(np.maximum(np.floor(quotas), 1), sizes).astype(int)
    remainders = (quotas - np.floor(quotas)).sort_values(ascending=False, kind="stable")
    for name in remainders.index:
        if counts.sum() >= total:
            break
        if counts[name] < sizes[name]:
            counts[name] += 1
    return counts


def stratified_sample(frame: pd.DataFrame, total: int, seed: int, by: str | list[str] = "label") -> pd.DataFrame:
    """Return `total` rows of `frame` (more only to keep one per group), each `by` group in proportion, seeded.

    Rows are drawn without replacement and keep their order in `frame`; a frame of at most `total` rows comes back
    whole (a copy).
    """
    if len(frame) <= total:
        return frame.copy()
    generator = np.random.default_rng(seed)
    groups = dict(list(frame.groupby(by, sort=True)))
    counts = proportional_counts(pd.Series({key: len(group) for key, group in groups.items()}), total)
    parts = [group.iloc[np.sort(generator.choice(len(group), size=counts[key], replace=False))]
             for key, group in groups.items()]
    return pd.concat(parts).sort_index()


def thin_slices(frame: pd.DataFrame, max_images: int) -> pd.DataFrame:
    """Return every k-th slice of each subject (in slice order where known), k the least that fits `max_images`.

    Thinning keeps every subject and each scan's slices spread over its whole extent; neighbouring slices of a
    scan are nearly identical, so every k-th slice loses little that the others do not show.
    """
    step = int(np.ceil(len(frame) / max_images)) if max_images > 0 else 1
    if step <= 1:
        return frame
    order = [column for column in ("subject_id", "slice_index", "path") if column in frame.columns]
    ordered = frame.sort_values(order, kind="stable")
    return ordered[ordered.groupby("subject_id").cumcount() % step == 0].sort_index()

#!/usr/bin/env python
"""Pseudo-subject grouping on a Kaggle-size fixture of varied scans: ARI, split-scan share and seconds.

    python bench/grouping.py                      # Kaggle's levels (template z 22-70), 191 heads, about 6,300 slices
    python bench/grouping.py --levels full        # down to the cerebellum and up to the vertex (z 11-73): harder
    python bench/grouping.py --heads 48 --size 128

Scans are rendered by tests/fixtures.py `render_varied_scans` (6-40 slices per scan, neighbouring-slice correlations
0.93-0.99, 30% of heads scanned 2-3 times), per class in Kaggle's proportions, at Kaggle's 176 x 208 px, JPEG
round-tripped and thumbnailed as ingestion does. Only `similarity_groups` is timed. A scan is split when its slices
fall into more than one group. Writes outputs/bench/grouping.json.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np

import common
from alzlib import grouping, ingestion

# The fixture renderers live with the tests; the benchmark reuses them rather than keeping a second copy.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import fixtures  # noqa: E402

LEVELS = {"kaggle": fixtures.VARIED_LEVELS, "full": fixtures.FULL_LEVELS}
# 191 heads in Kaggle's class shares give about 274 scans and 6,300 slices (Kaggle: 200 scans, 6,400 slices).
DEFAULT_HEADS = 191


def thumbnails_of(images: np.ndarray) -> np.ndarray:
    """Return ingestion's 64 px thumbnails of JPEG round-tripped images."""
    from PIL import Image

    decoded = [np.asarray(Image.open(io.BytesIO(fixtures.encode_image(image)))) for image in images]
    return np.stack([ingestion.thumbnail(image).ravel() for image in decoded])


def render(heads: int, levels: tuple[float, float], size: tuple[int, int], seed: int) -> dict:
    """Render varied scans per class in Kaggle's shares; return thumbnails, labels, true scans, correlations."""
    counts = {name: max(1, round(share * heads)) for name, share in common.KAGGLE_CLASS_SHARES.items()}
    thumbnails, labels, scans, correlations, offset = [], [], [], [], 0
    for index, (name, count) in enumerate(counts.items()):
        cohort = fixtures.render_varied_scans(count, seed=seed * 10 + index, size=size, levels=levels)
        thumbnails.append(thumbnails_of(cohort.images))
        labels.append(np.full(len(cohort.scans), name))
        scans.append(cohort.scans + offset)
        correlations += list(fixtures.scan_neighbour_correlations(cohort).values())
        offset += cohort.scans.max() + 1
    return {"thumbnails": np.concatenate(thumbnails), "labels": np.concatenate(labels),
            "scans": np.concatenate(scans), "correlations": correlations}


def measure(levels_name: str, heads: int, size: tuple[int, int], seed: int) -> dict:
    """Render one fixture, group it, and return the scores and timings."""
    import pandas as pd
    from sklearn.metrics import adjusted_rand_score

    started = time.perf_counter()
    data = render(heads, LEVELS[levels_name], size, seed)
    rendered = time.perf_counter() - started
    started = time.perf_counter()
    groups, summary = grouping.similarity_groups(data["thumbnails"], data["labels"])
    seconds = time.perf_counter() - started
    split = pd.Series(groups).groupby(data["scans"]).nunique().gt(1)
    medians = [float(np.median(values)) for values in data["correlations"]]
    return {"levels": levels_name, "level_range": list(LEVELS[levels_name]), "heads": heads, "size": list(size),
            "seed": seed, "images": len(groups), "scans": int(split.size),
            "neighbour_correlation_per_scan": {"min": min(medians), "median": float(np.median(medians)),
                                               "max": max(medians)},
            "ari": float(adjusted_rand_score(data["scans"], groups)), "split_scans": int(split.sum()),
            "split_share": float(split.mean()), "groups": summary["groups"], "seconds": seconds,
            "render_seconds": rendered, "confidence": summary["confidence"]}


def main() -> None:
    """Run the benchmark and write its JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="kaggle", type=lambda text: common.parse_names(text, LEVELS),
                        help="comma-separated level ranges: kaggle (z 22-70), full (z 11-73)")
    parser.add_argument("--heads", type=common.positive_int, default=DEFAULT_HEADS)
    parser.add_argument("--size", type=common.positive_int, nargs="+", default=[208, 176],
                        help="slice height and width in pixels (one number: square)")
    parser.add_argument("--seed", type=int, default=2)
    common.add_output_argument(parser, "grouping")
    arguments = parser.parse_args()
    size = tuple((arguments.size * 2)[:2])  # one number: a square
    common.quiet_tensorflow()
    machine = common.machine_record()
    results = [measure(name, arguments.heads, size, arguments.seed) for name in arguments.levels]
    rows = [{**item, "confidence": item["confidence"]["level"],
             "correlation": f"{item['neighbour_correlation_per_scan']['min']:.3f}-"
                            f"{item['neighbour_correlation_per_scan']['max']:.3f}"} for item in results]
    common.print_table(rows, ["levels", "images", "scans", "correlation", "ari", "split_scans", "split_share",
                              "groups", "confidence", "seconds", "render_seconds"],
                       "Pseudo-subject grouping (correlation: per-scan median of neighbouring slices)")
    common.write_result("grouping", arguments.output, {**machine, "results": results})


if __name__ == "__main__":
    main()

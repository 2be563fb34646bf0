#!/usr/bin/env python
"""Write a Kaggle-size tree to time the whole pipeline on: 200 scans x 32 slices, 176 x 208 JPEG, 6,400 images.

    python bench/kaggle_size_tree.py /tmp/kag6400        # about a minute on 2 cores
    time python run_all.py --data /tmp/kag6400           # the cpu profile on it (about 40 minutes here)

Laid out like the Kaggle set (`train/<Class>/nonDem<i>.jpg`, `test/<Class>/<k>.jpg`), with its class counts in
scans (100 / 70 / 28 / 2: 3,200 / 2,240 / 896 / 64 images) and its shipped split by slice position (the last 7
slices of every scan in test). Scans are rendered by tests/fixtures.py `render_scans`; the classes carry no signal,
so this measures time and the controls, not accuracy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fixtures import KAGGLE_FOLDERS, KAGGLE_TRAIN_PREFIX, render_scans, save_image  # noqa: E402

SCANS = {"NonDemented": 100, "VeryMildDemented": 70, "MildDemented": 28, "ModerateDemented": 2}
SLICES, TEST_FROM = 32, 25


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="folder to write (must not exist)")
    root = parser.parse_args().root
    if root.exists():
        sys.exit(f"error: {root} exists: give a new folder.")
    rng, written = np.random.default_rng(0), 0
    for offset, (name, count) in enumerate(SCANS.items()):
        slices = [("test" if index >= TEST_FROM else "train", pixels)
                  for scan in render_scans(count, SLICES, seed=100 + offset) for index, pixels in enumerate(scan)]
        for split in ("train", "test"):
            part = [pixels for kind, pixels in slices if kind == split]
            for number, order in enumerate(rng.permutation(len(part))):
                file_name = f"{KAGGLE_TRAIN_PREFIX[name]}{number}.jpg" if split == "train" else f"{number}.jpg"
                save_image(root / split / KAGGLE_FOLDERS[name] / file_name, part[order])
                written += 1
    print(f"{written:,} images under {root}")


if __name__ == "__main__":
    main()

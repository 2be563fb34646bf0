"""Small fixture trees in the layouts of the real data sets (docs: /work/shared/DATASETS.md), made in tmp dirs.

Realistic scans are stacks of consecutive axial slices re-sampled from nilearn's MNI152 template with a
per-scan random affine, smooth elastic warp, intensity change and noise, so that neighbouring slices of
one scan correlate at about 0.98 on raw pixels while different scans at the same level are also fairly
similar: the property that makes slice-level splits of the Kaggle set leak. Varied scans (`render_varied_scans`)
add what real collections do: 6-40 slices per scan, thicker slices (correlations 0.93-0.99) and several sessions
of one head (same shape and warp, new pose and contrast).
"""

from __future__ import annotations

import functools
import io
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

KAGGLE_FOLDERS = {"NonDemented": "NonDemented", "VeryMildDemented": "VeryMildDemented",
                  "MildDemented": "MildDemented", "ModerateDemented": "ModerateDemented"}
KAGGLE_TRAIN_PREFIX = {"NonDemented": "nonDem", "VeryMildDemented": "verymildDem",
                       "MildDemented": "mildDem", "ModerateDemented": "moderateDem"}
REUPLOAD_FOLDERS = {"NonDemented": "Non_Demented", "VeryMildDemented": "Very_Mild_Demented",
                    "MildDemented": "Mild_Demented", "ModerateDemented": "Moderate_Demented"}
REUPLOAD_PREFIX = {"NonDemented": "non", "VeryMildDemented": "verymild", "MildDemented": "mild",
                   "ModerateDemented": "moderate"}
OASIS_FOLDERS = {"NonDemented": "Non Demented", "VeryMildDemented": "Very mild Dementia",
                 "MildDemented": "Mild Dementia", "ModerateDemented": "Moderate Dementia"}
HF_LABELS = {"MildDemented": 0, "ModerateDemented": 1, "NonDemented": 2, "VeryMildDemented": 3}
KAGGLE_SIZE = (208, 176)  # height, width
# A slice step of 1.4 template voxels (2.8 mm) gives neighbouring-slice correlations of about 0.98.
SLICE_STEP = 1.4


@functools.lru_cache(maxsize=1)
def mni_template() -> np.ndarray:
    """Return nilearn's 2 mm MNI152 template as float32 in [0, 1] (ships with nilearn, loads offline)."""
    from nilearn.datasets import load_mni152_template

    volume = load_mni152_template(resolution=2).get_fdata().astype(np.float32)
    return volume / max(float(volume.max()), 1e-6)


def _rotation(angles: np.ndarray) -> np.ndarray:
    """Return the 3-D rotation matrix for angles (radians) about x, y and z."""
    cos, sin = np.cos(angles), np.sin(angles)
    about_x = np.array([[1, 0, 0], [0, cos[0], -sin[0]], [0, sin[0], cos[0]]])
    about_y = np.array([[cos[1], 0, sin[1]], [0, 1, 0], [-sin[1], 0, cos[1]]])
    about_z = np.array([[cos[2], -sin[2], 0], [sin[2], cos[2], 0], [0, 0, 1]])
    return about_x @ about_y @ about_z


def _slice_points(depth: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Return template voxel coordinates (3 x slices x H x W) of axial slices at `depth`, before any pose."""
    volume = mni_template()
    height, width = size
    z, rows, cols = np.meshgrid(depth, np.arange(height, dtype=np.float32), np.arange(width, dtype=np.float32),
                                indexing="ij")
    return np.stack([cols * volume.shape[0] / width, (height - 1 - rows) * volume.shape[1] / height, z])


def _posed_points(points: np.ndarray, matrix: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Return `points` moved by `matrix` about the template centre and then by `shift` (3 x 1 x 1 x 1)."""
    center = (np.array(mni_template().shape, np.float32) / 2)[:, None, None, None]
    return np.tensordot(matrix.astype(np.float32), points - center, axes=1) + center + shift


def _draw_waves(rng: np.random.Generator, strength: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw a smooth elastic warp: frequencies, phases and amplitudes of 4 low-frequency waves per axis."""
    frequencies = rng.normal(0, 0.06, (3, 4, 3)).astype(np.float32)
    phases = rng.uniform(0, 2 * np.pi, (3, 4)).astype(np.float32)
    amplitudes = (rng.uniform(0.5, 1.5, (3, 4)) * strength).astype(np.float32)
    return frequencies, phases, amplitudes


def _sample_warped(warped: np.ndarray, waves: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Return the template sampled at `warped` plus the elastic displacement the waves give there."""
    frequencies, phases, amplitudes = waves
    displacement = np.zeros_like(warped)
    for axis in range(3):
        for wave in range(4):
            phase = np.tensordot(frequencies[axis, wave], warped, axes=1) + phases[axis, wave]
            displacement[axis] += amplitudes[axis, wave] * np.sin(phase)
    return ndimage.map_coordinates(mni_template(), warped + displacement, order=1, mode="constant")


def _to_pixels(rng: np.random.Generator, sampled: np.ndarray, noise: float) -> np.ndarray:
    """Return uint8 pixels of template intensities after a random gamma, gain and Gaussian noise."""
    gamma, gain = rng.uniform(0.8, 1.25), rng.uniform(0.85, 1.15)
    pixels = np.clip(sampled, 0, 1) ** gamma * gain * 255 + rng.normal(0, noise, sampled.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def render_scan(rng: np.random.Generator, slices: int, size: tuple[int, int] = KAGGLE_SIZE,
                first_slice: float = 24.0, step: float = SLICE_STEP, strength: float = 1.0,
                noise: float = 3.0) -> np.ndarray:
    """Return `slices` consecutive axial slices (uint8, slices x H x W) of one randomly deformed template scan."""
    depth = np.arange(slices, dtype=np.float32) * step + first_slice + rng.uniform(-1.0, 1.0)
    points = _slice_points(depth, size)
    angles = np.deg2rad(rng.uniform([-3, -3, -8], [3, 3, 8]) * strength)
    matrix = _rotation(angles) @ np.diag(1 + rng.uniform(-0.1, 0.1, 3) * strength)
    shift = (rng.uniform([-4, -4, -1.5], [4, 4, 1.5]) * strength)[:, None, None, None]
    warped = _posed_points(points, matrix, shift)
    # Smooth elastic warp: a few random low-frequency waves per axis (about 1-3 voxels of displacement).
    return _to_pixels(rng, _sample_warped(warped, _draw_waves(rng, strength)), noise)


def render_scans(count: int, slices: int, seed: int = 0, size: tuple[int, int] = KAGGLE_SIZE,
                 strength: float = 1.0) -> list[np.ndarray]:
    """Return `count` independent scans of `slices` slices each (same slice levels, different heads)."""
    rng = np.random.default_rng(seed)
    return [render_scan(rng, slices, size=size, strength=strength) for _ in range(count)]


def render_sessions(rng: np.random.Generator, sessions: list[tuple[int, float, float]],
                    size: tuple[int, int] = KAGGLE_SIZE, strength: float = 1.0,
                    noise: float = 3.0) -> list[np.ndarray]:
    """Return one scan per (slices, step, first_slice) of one head: shared shape and warp, own pose and contrast."""
    scale = np.diag(1 + rng.uniform(-0.1, 0.1, 3) * strength)
    waves = _draw_waves(rng, strength)
    scans = []
    for slices, step, first_slice in sessions:
        depth = np.arange(slices, dtype=np.float32) * step + first_slice
        angles = np.deg2rad(rng.uniform([-3, -3, -8], [3, 3, 8]) * strength)
        shift = (rng.uniform([-4, -4, -1.5], [4, 4, 1.5]) * strength)[:, None, None, None]
        warped = _posed_points(_slice_points(depth, size), _rotation(angles) @ scale, shift)
        scans.append(_to_pixels(rng, _sample_warped(warped, waves), noise))
    return scans


# Varied scans: slice steps of 1.0-3.2 template voxels give neighbouring-slice correlations of about 0.93-0.99 on
# raw pixels (measured medians: step 1.0 -> 0.988, 2.0 -> 0.973, 2.5 -> 0.958, 3.0 -> 0.948), the OASIS range.
# Every scan is centred on the same level, so scans overlap as much as Kaggle's do. The default levels, template z
# 22-70, are those of the Kaggle fixture (z 24-67); FULL_LEVELS (z 11-73) reaches the cerebellum and the vertex,
# where thick slices of different heads look alike (harder: see bench/grouping.py).
VARIED_STEPS = (1.0, 3.2)
VARIED_SLICES = (6, 40)
VARIED_LEVELS = (22.0, 70.0)
FULL_LEVELS = (11.0, 73.0)
LEVEL_JITTER = 2.0


def draw_session(rng: np.random.Generator, slices: tuple[int, int] = VARIED_SLICES,
                 steps: tuple[float, float] = VARIED_STEPS,
                 levels: tuple[float, float] = VARIED_LEVELS) -> tuple[int, float, float]:
    """Draw one scan's (slices, step, first_slice): any count in `slices`, a step that keeps it within `levels`."""
    span_limit = levels[1] - levels[0] - 2 * LEVEL_JITTER
    count = int(rng.integers(slices[0], slices[1] + 1))
    step = float(rng.uniform(steps[0], min(steps[1], max(steps[0], span_limit / max(count - 1, 1)))))
    centre = (levels[0] + levels[1]) / 2 + float(rng.uniform(-LEVEL_JITTER, LEVEL_JITTER))
    return count, step, centre - (count - 1) * step / 2


class VariedScans(NamedTuple):
    """Slices of varied scans in a shuffled order, with the truth for each slice."""

    images: np.ndarray  # slices x H x W, uint8
    scans: np.ndarray  # true scan number per slice
    subjects: np.ndarray  # true subject number per slice (several scans may share one)
    positions: np.ndarray  # slice position within its scan
    levels: np.ndarray  # nominal template z (voxels) of each slice


def render_varied_scans(subjects: int, seed: int = 0, size: tuple[int, int] = KAGGLE_SIZE,
                        sessions: int = 3, repeat_share: float = 0.3, slices: tuple[int, int] = VARIED_SLICES,
                        steps: tuple[float, float] = VARIED_STEPS, levels: tuple[float, float] = VARIED_LEVELS,
                        strength: float = 1.0) -> VariedScans:
    """Return the shuffled slices of `subjects` heads, each with one scan or (at `repeat_share`) 2 to `sessions`.

    Every scan draws its own slice count and step (`draw_session`); sessions of one head share its shape and warp.
    """
    rng = np.random.default_rng(seed)
    scans, plans, subject_of_scan = [], [], []
    for subject in range(subjects):
        repeats = int(rng.integers(2, sessions + 1)) if sessions > 1 and rng.random() < repeat_share else 1
        plan = [draw_session(rng, slices, steps, levels) for _ in range(repeats)]
        scans += render_sessions(rng, plan, size=size, strength=strength)
        plans += plan
        subject_of_scan += [subject] * repeats
    scan_ids = np.concatenate([np.full(len(scan), number) for number, scan in enumerate(scans)])
    positions = np.concatenate([np.arange(len(scan)) for scan in scans])
    levels = np.concatenate([first + step * np.arange(count) for count, step, first in plans])
    order = rng.permutation(len(scan_ids))
    return VariedScans(np.concatenate(scans)[order], scan_ids[order], np.asarray(subject_of_scan)[scan_ids][order],
                       positions[order], levels[order])


def scan_neighbour_correlations(cohort: VariedScans) -> dict[int, np.ndarray]:
    """Return {scan: raw-pixel correlations of its consecutive slices} for every scan in `cohort`."""
    order = np.lexsort((cohort.positions, cohort.scans))
    images, scans = cohort.images[order], cohort.scans[order]
    starts = np.flatnonzero(np.r_[True, np.diff(scans) != 0])
    return {int(scans[start]): neighbour_correlations(scan)
            for start, scan in zip(starts, np.split(images, starts[1:]))}


def neighbour_correlations(scan: np.ndarray) -> np.ndarray:
    """Return the raw-pixel Pearson correlation of each pair of consecutive slices of one scan (slices x H x W)."""
    rows = scan.reshape(len(scan), -1).astype(np.float64)
    rows = rows - rows.mean(axis=1, keepdims=True)
    rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    return np.einsum("ij,ij->i", rows[:-1], rows[1:])


def simple_image(seed: int, size: tuple[int, int] = (64, 64)) -> np.ndarray:
    """Return a cheap, distinct uint8 test image (smoothed noise with a bright disc) of `size` (H, W)."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.uniform(0, 255, size), 3)
    rows, cols = np.mgrid[0:size[0], 0:size[1]]
    disc = ((rows - size[0] / 2) ** 2 + (cols - size[1] / 2) ** 2) < (min(size) / 3) ** 2
    image = (noise - noise.min()) / max(np.ptp(noise), 1e-6) * 180 + disc * 60
    return np.clip(image, 0, 255).astype(np.uint8)


def save_image(path: str | Path, pixels: np.ndarray, quality: int = 90) -> Path:
    """Save a uint8 array as JPEG or PNG (by the suffix), creating folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        image.save(path, format="JPEG", quality=quality)
    else:
        image.save(path)
    return path


def encode_image(pixels: np.ndarray, image_format: str = "JPEG") -> bytes:
    """Return the encoded bytes of a uint8 array."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format)
    return buffer.getvalue()


def make_kaggle_tree(root: str | Path, scans: dict[str, int], slices: int = 10, test_every: int = 5,
                     seed: int = 0, size: tuple[int, int] = KAGGLE_SIZE) -> dict[str, str]:
    """Write a Kaggle 4-class tree (train/test by slice position); return {absolute path: true scan id}.

    Every `test_every`-th slice of each scan goes to test, as in the shipped Kaggle split, so every scan
    is in both train and test. Train names are `nonDem<i>.jpg`..., test names `<k>.jpg` / `<k> (<j>).jpg`,
    numbered in a shuffled order so names carry no scan information.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    truth: dict[str, str] = {}
    scan_seed = seed * 1000
    for class_name, count in scans.items():
        items = []
        for scan_index, volume in enumerate(render_scans(count, slices, seed=scan_seed, size=size)):
            for slice_index, pixels in enumerate(volume):
                shipped = "test" if slice_index % test_every == test_every - 1 else "train"
                items.append((shipped, f"{class_name}_scan{scan_index:03d}", pixels))
        scan_seed += 1
        train_items = [item for item in items if item[0] == "train"]
        test_items = [item for item in items if item[0] == "test"]
        for number, order in enumerate(rng.permutation(len(train_items))):
            _, scan_id, pixels = train_items[order]
            path = root / "train" / KAGGLE_FOLDERS[class_name] / f"{KAGGLE_TRAIN_PREFIX[class_name]}{number}.jpg"
            truth[str(save_image(path, pixels).resolve())] = scan_id
        for number, order in enumerate(rng.permutation(len(test_items))):
            _, scan_id, pixels = test_items[order]
            name = f"{number // 3}.jpg" if number % 3 == 0 else f"{number // 3} ({number % 3}).jpg"
            path = root / "test" / KAGGLE_FOLDERS[class_name] / name
            truth[str(save_image(path, pixels).resolve())] = scan_id
    return truth


def make_reupload_tree(root: str | Path, scans: dict[str, int], slices: int = 6, seed: int = 0) -> dict[str, str]:
    """Write the 128 px re-upload layout (`Mild_Demented/mild_10.jpg`, no split); return {path: scan id}."""
    root = Path(root)
    truth: dict[str, str] = {}
    for offset, (class_name, count) in enumerate(scans.items()):
        volumes = render_scans(count, slices, seed=seed * 1000 + offset, size=(128, 128))
        for number, (scan_index, slice_index) in enumerate(np.ndindex(count, slices)):
            path = root / REUPLOAD_FOLDERS[class_name] / f"{REUPLOAD_PREFIX[class_name]}_{number}.jpg"
            truth[str(save_image(path, volumes[scan_index][slice_index]).resolve())] = f"{class_name}_{scan_index}"
    return truth


def make_oasis_tree(root: str | Path, subjects: dict[str, list[int]], slices: int = 3,
                    size: tuple[int, int] = (64, 64)) -> dict[str, str]:
    """Write the OASIS export layout `Data/<Class>/OAS1_0308_MR1_mpr-1_101.jpg`; return {path: subject id}."""
    root = Path(root)
    truth: dict[str, str] = {}
    for class_name, numbers in subjects.items():
        for number in numbers:
            for slice_index in range(slices):
                name = f"OAS1_{number:04d}_MR1_mpr-1_{100 + slice_index}.jpg"
                path = root / "Data" / OASIS_FOLDERS[class_name] / name
                pixels = simple_image(number * 100 + slice_index, size)
                truth[str(save_image(path, pixels).resolve())] = f"OAS1_{number:04d}"
    return truth


def make_adni_tree(root: str | Path, patients: dict[str, dict[str, list[int]]], slices: int = 3,
                   size: tuple[int, int] = (240, 256)) -> dict[str, str]:
    """Write `AD_NC/<split>/{AD,NC}/<patientID>_<index>.jpeg`; `patients` is {split: {class: [ids]}}."""
    root = Path(root)
    truth: dict[str, str] = {}
    for split, classes in patients.items():
        for class_name, identifiers in classes.items():
            for identifier in identifiers:
                for slice_index in range(slices):
                    path = root / "AD_NC" / split / class_name / f"{identifier}_{70 + slice_index}.jpeg"
                    pixels = simple_image(identifier * 10 + slice_index, size)
                    truth[str(save_image(path, pixels).resolve())] = str(identifier)
    return truth


def make_hf_parquet(root: str | Path, scans: dict[str, int], slices: int = 5, test_every: int = 5,
                    seed: int = 0) -> dict[str, str]:
    """Write the Hugging Face `Falah/Alzheimer_MRI` layout: `data/{train,test}-00000-of-00001.parquet`.

    Returns {`<parquet path>#row=<i>`: true scan id}.
    """
    root = Path(root) / "data"
    root.mkdir(parents=True, exist_ok=True)
    rows = {"train": [], "test": []}
    for offset, (class_name, count) in enumerate(scans.items()):
        volumes = render_scans(count, slices, seed=seed * 1000 + offset, size=(128, 128))
        for scan_index, slice_index in np.ndindex(count, slices):
            shipped = "test" if slice_index % test_every == test_every - 1 else "train"
            content = encode_image(volumes[scan_index][slice_index])
            rows[shipped].append(({"bytes": content, "path": None}, HF_LABELS[class_name],
                                  f"{class_name}_{scan_index}"))
    truth: dict[str, str] = {}
    for shipped, items in rows.items():
        path = (root / f"{shipped}-00000-of-00001-5e4f6a.parquet").resolve()
        frame = pd.DataFrame({"image": [item[0] for item in items], "label": [item[1] for item in items]})
        frame.to_parquet(path, index=False)
        truth.update({f"{path}#row={index}": item[2] for index, item in enumerate(items)})
    return truth


def make_synthetic_cohort(root: str | Path, subjects: dict[str, int], slices: int = 3,
                          size: tuple[int, int] = (104, 88)) -> dict[str, str]:
    """Write a tiny cohort in the layout of alzlib/synthetic.py (cohort.json, images/, masks/, metadata.csv)."""
    root = Path(root)
    truth: dict[str, str] = {}
    records = []
    number = 0
    for class_name, count in subjects.items():
        for _ in range(count):
            number += 1
            subject_id = f"SYN{number:04d}"
            for slice_index in range(slices):
                stem = f"{subject_id}_slice{slice_index:02d}"
                image_path = save_image(root / "images" / class_name / f"{stem}.jpg",
                                        simple_image(number * 100 + slice_index, size))
                mask_path = save_image(root / "masks" / class_name / f"{stem}.png", np.zeros(size, np.uint8))
                truth[str(image_path.resolve())] = subject_id
                records.append({"subject_id": subject_id, "label": class_name, "slice_index": slice_index,
                                "file": str(image_path.relative_to(root)),
                                "mask_file": str(mask_path.relative_to(root))})
    pd.DataFrame(records).to_csv(root / "metadata.csv", index=False)
    (root / "cohort.json").write_text(json.dumps({"synthetic": True, "generator_version": "fixture",
                                                  "counts": subjects}))
    return truth


def make_class_tree(root: str | Path, folders: list[str], images_per_folder: int = 2,
                    size: tuple[int, int] = (64, 64), seed: int = 0) -> Path:
    """Write `<root>/<folder>/img<i>.png` for each folder name (relative paths allowed); return root."""
    root = Path(root)
    for folder_index, folder in enumerate(folders):
        for image_index in range(images_per_folder):
            save_image(root / folder / f"img{image_index}.png",
                       simple_image(seed * 10000 + folder_index * 100 + image_index, size))
    return root


def write_bad_files(folder: str | Path) -> dict[str, str]:
    """Write one file of each bad kind into `folder`; return {file name: a word its skip reason contains}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    full = encode_image(simple_image(7, (96, 96)), "JPEG")
    (folder / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (folder / "notes.jpg").write_text("this is a text file with an image extension\n")
    save_image(folder / "tiny.png", simple_image(8, (8, 8)))
    return {"empty.jpg": "empty", "truncated.jpg": "truncated", "notes.jpg": "not an image", "tiny.png": "too small"}


def write_accepted_variants(folder: str | Path) -> dict[str, str]:
    """Write RGB, RGBA, 16-bit and palette images that ingestion must accept; return {file name: source mode}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    grey = simple_image(11, (64, 64))
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(folder / "rgb.png")
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 128)])
    Image.fromarray(rgba).save(folder / "rgba.png")
    Image.fromarray(grey.astype(np.uint16) * 16).save(folder / "sixteen.png")
    Image.fromarray(grey).convert("P").save(folder / "palette.png")
    return {"rgb.png": "RGB", "rgba.png": "RGBA", "sixteen.png": "I;16", "palette.png": "P"}


def write_volume_files(folder: str | Path) -> dict[str, str]:
    """Write one 3D volume file of each format a new user may hold; return {file name: extension reported}."""
    import gzip

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dicom = b"\x00" * 128 + b"DICM" + b"\x02\x00\x00\x00" * 8  # preamble, marker, a few header bytes
    (folder / "sub-01_T1w.nii.gz").write_bytes(gzip.compress(b"\x5c\x01" + b"\x00" * 346))
    (folder / "brain.nii").write_bytes(b"\x5c\x01" + b"\x00" * 350)
    (folder / "aseg.mgz").write_bytes(gzip.compress(b"\x00" * 284))
    (folder / "scan.hdr").write_bytes(b"\x5c\x01" + b"\x00" * 346)
    (folder / "scan.img").write_bytes(b"\x00" * 512)
    (folder / "slice.dcm").write_bytes(dicom)
    (folder / "IM0001").write_bytes(dicom)  # scanner exports often give DICOM files no extension
    return {"sub-01_T1w.nii.gz": ".nii.gz", "brain.nii": ".nii", "aseg.mgz": ".mgz", "scan.hdr": ".hdr",
            "scan.img": ".img", "slice.dcm": ".dcm", "IM0001": "DICOM"}


def train_tiny_cnn(images: np.ndarray, labels: np.ndarray, name: str, epochs: int = 6):
    """Return (model, last training accuracy): a tiny two-class CNN, its convolutions nested as a sub-model
    `backbone` (conv_a, pool, conv_b), trained in seconds on uint8 `images` (N x S x S); the Grad-CAM tests plant
    what it must find."""
    import keras

    keras.utils.set_random_seed(0)
    size = images.shape[1]
    inner_input = keras.Input((size, size, 1))
    features = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_a")(inner_input)
    features = keras.layers.MaxPooling2D(2, name="pool")(features)
    features = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv_b")(features)
    backbone = keras.Model(inner_input, features, name="backbone")
    inputs = keras.Input((size, size, 1))
    pooled = keras.layers.GlobalAveragePooling2D()(backbone(keras.layers.Rescaling(1 / 255)(inputs)))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="predictions")(pooled), name=name)
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(images[..., None].astype("float32"), labels, epochs=epochs, batch_size=32, verbose=0)
    return model, history.history["accuracy"][-1]

"""Ingestion: accept a data set as it lies on disk, give every image a subject, split by subject, audit leakage.

Layouts (docs: /work/shared/DATASETS.md): the synthetic cohort (cohort.json), class-folder trees with or without
train/test folders (Kaggle 4-class, its 128 px re-upload, OASIS-1 export, ADNI AD/NC) and Hugging Face parquet
files. Subject ids come from file names where they carry one and from image similarity where they do not.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from alzlib import config, freshness, splits
from alzlib.grouping import components, similarity_groups, unit_rows
from alzlib.storage import write_json, write_parquet

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp")
# 3D volume formats a new user may hold instead of exported slices: NIfTI, FreeSurfer MGH, Analyze, DICOM.
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".mgz", ".mgh", ".img", ".hdr", ".dcm", ".dicom")
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz")
VOLUME_HINT = ("this looks like 3D volumes (NIfTI/DICOM): export 2D slices to PNG/JPEG first "
               "(see README 'Your own data')")
SPLIT_FOLDERS = {"train": "train", "training": "train", "test": "test", "testing": "test", "val": "val",
                 "valid": "val", "validation": "val"}
MIN_SIDE = 32
# Decompression-bomb guard: the header is checked before any pixel is decoded (PIL's own limit is ~179 MP).
MAX_PIXELS = 40_000_000
THUMBNAIL_SIDE = 64
# Copies of one picture (re-encoded, resized) correlate >= 0.9999 on 64 px thumbnails; neighbouring slices of
# one scan at most ~0.995 (measured on fixture scans), so 0.998 separates "same picture" from "next slice".
NEAR_DUPLICATE_CORRELATION = 0.998
# Block averaging removes the high-frequency differences (JPEG noise) by which copies differ, so copies correlate
# at least as well on 16 px thumbnails: 0.99 there keeps every candidate with a wide margin.
COARSE_CANDIDATE_CORRELATION = 0.99
# Falah/Alzheimer_MRI label integers (its dataset card): 0 Mild, 1 Moderate, 2 Non, 3 VeryMild.
HF_FALAH_LABELS = {0: "MildDemented", 1: "ModerateDemented", 2: "NonDemented", 3: "VeryMildDemented"}
SUBJECT_PATTERNS = (
    ("filename:oasis", re.compile(r"^(?P<subject>OAS[12]_\d{4})_MR\d+.*?_(?P<slice>\d+)$", re.IGNORECASE)),
    ("filename:adni", re.compile(r"^(?P<subject>\d+(?:_S_\d+)?)_(?P<slice>\d+)$")),
)
SYNTHETIC_PATTERN = re.compile(r"^(?P<subject>SYN\d{4,})_slice(?P<slice>\d+)$")
MANIFEST_COLUMNS = ("path", "label", "label_index", "subject_id", "subject_source", "split", "shipped_split",
                    "sha256", "width", "height", "mode", "format", "slice_index", "mask_path", "original_folder",
                    "near_duplicate_group")


class IngestionError(ValueError):
    """The data set cannot be ingested as it is; the message names the file or folder and what was expected."""


class UnusableImage(ValueError):
    """One file cannot be used; its message is the skip reason recorded in the report."""


# ------------------------------------------------------------------------------------------------ class names


def _class_key(folder: str) -> str:
    """Return a folder name reduced to lower-case letters, without a leading number ('2 Mild' -> 'mild')."""
    return re.sub(r"[^a-z]", "", re.sub(r"^\s*\d+[\s._-]*", "", folder).lower())


FOUR_CLASS_KEYS = {"verymild": "VeryMildDemented", "mild": "MildDemented", "moderate": "ModerateDemented"}
NORMAL_KEYS = {"non", "no", "normal", "cn", "nc", "control", "healthy", "cognitivelynormal"}
AD_KEYS = {"ad", "alzheimer", "alzheimers", "alzheimersdisease"}


def canonical_class(folder: str) -> tuple[str, str] | None:
    """Return (kind, class) for a folder name: kind 'four', 'two' or 'normal' (either task); None if unknown."""
    key = _class_key(folder)
    stem = re.sub(r"(demented|dementia|dem)$", "", key)
    if stem in FOUR_CLASS_KEYS:
        return "four", FOUR_CLASS_KEYS[stem]
    if key in NORMAL_KEYS or stem in NORMAL_KEYS:
        return "normal", "NonDemented"
    if key in AD_KEYS:
        return "two", "AD"
    return None


def resolve_classes(folders: list[str], data_dir: Path) -> tuple[str, dict[str, str]]:
    """Return the task ('4-class'/'2-class') and {folder name: canonical class}; raise IngestionError otherwise."""
    mapped = {folder: canonical_class(folder) for folder in sorted(set(folders))}
    unknown = [folder for folder, value in mapped.items() if value is None]
    if unknown:
        raise IngestionError(f"Cannot map class folder(s) {unknown} in {data_dir} to a class: expected names like "
                             f"{list(config.CLASS_NAMES)} (or 'Non Demented', 'Very mild Dementia', '2 Mild', "
                             f"'Moderate_Demented') or the 2-class {list(config.BINARY_CLASS_NAMES)} / CN.")
    kinds = {kind for kind, _ in mapped.values()}
    if {"four", "two"} <= kinds:
        four = [folder for folder, value in mapped.items() if value[0] == "four"]
        two = [folder for folder, value in mapped.items() if value[0] == "two"]
        raise IngestionError(f"{data_dir} mixes 4-class folders {four} with 2-class folders {two}: expected "
                             f"either {list(config.CLASS_NAMES)} or {list(config.BINARY_CLASS_NAMES)}.")
    task = "2-class" if "two" in kinds else "4-class"
    mapping = {folder: ("NC" if task == "2-class" else name) if kind == "normal" else name
               for folder, (kind, name) in mapped.items()}
    if len(set(mapping.values())) < 2:
        raise IngestionError(f"{data_dir} holds only class {sorted(set(mapping.values()))} (folders "
                             f"{sorted(mapping)}): a classification task needs at least two classes.")
    return task, mapping


def ordered_classes(labels, task: str) -> list[str]:
    """Return the task's classes present in `labels`, in canonical order."""
    names = config.BINARY_CLASS_NAMES if task == "2-class" else config.CLASS_NAMES
    present = set(labels)
    return [name for name in names if name in present]


# ------------------------------------------------------------------------------------------------ subject ids


def parse_subject(stem: str, synthetic: bool = False) -> tuple[str | None, str | None, int | None]:
    """Return (subject id, how it was derived, slice index) parsed from a file stem, or Nones."""
    patterns = (("filename:synthetic", SYNTHETIC_PATTERN),) if synthetic else SUBJECT_PATTERNS
    for source, pattern in patterns:
        match = pattern.match(stem)
        if match:
            subject = match["subject"].upper() if source == "filename:oasis" else match["subject"]
            return subject, source, int(match["slice"])
    return None, None, None


# ------------------------------------------------------------------------------------------------ scanning


@dataclass
class DatasetScan:
    """What lies on disk: candidate images with their labels and ids, the layout, and files skipped already."""

    files: pd.DataFrame
    data_source: dict
    task: str
    skipped: list[dict] = field(default_factory=list)


def _check_data_dir(data_dir: Path) -> Path:
    """Return the resolved data folder; raise FileNotFoundError/IngestionError when missing or a file."""
    if not data_dir.exists():
        raise FileNotFoundError(f"Data folder {data_dir} does not exist: set DATA_DIR to a data set root "
                                f"(class folders, train/test folders or parquet files), or None for the synthetic "
                                f"cohort.")
    if not data_dir.is_dir():
        raise IngestionError(f"DATA_DIR {data_dir} is a file: expected a folder.")
    return data_dir.resolve()


def _check_not_empty(root: Path, files: list[Path], skipped: list[dict]) -> None:
    """Raise IngestionError when the walk found no readable file, naming the first dead end if there was one."""
    if files:
        return
    dead_end = (f" (only {len(skipped)} unreadable entries, e.g. {skipped[0]['path']}: {skipped[0]['reason']})"
                if skipped else "")
    raise IngestionError(f"Data folder {root} is empty{dead_end}: expected class folders of images "
                         f"(e.g. {root}/NonDemented/*.jpg) or parquet files.")


def walk_files(root: Path) -> tuple[list[Path], list[dict]]:
    """Return every visible file under `root`, following symbolic links, and a skip record for each dead end."""
    files: list[Path] = []
    skipped: list[dict] = []
    _walk(root, frozenset({os.path.realpath(root)}), files, skipped)
    return sorted(files), skipped


def _walk(folder: Path, ancestors: frozenset[str], files: list[Path], skipped: list[dict]) -> None:
    """Add the files below `folder` to `files`; `ancestors` (real paths) stop a link that loops back up."""
    for path in _listing(folder, skipped):
        if path.is_dir():
            real = os.path.realpath(path)
            if real in ancestors:
                skipped.append({"path": str(path), "reason": f"symbolic link to {real} loops back to a folder "
                                                             f"above it: not followed"})
            else:
                _walk(path, ancestors | {real}, files, skipped)
        elif path.is_file():
            files.append(path)
        else:
            skipped.append({"path": str(path), "reason": _dead_end(path)})


def _listing(folder: Path, skipped: list[dict]) -> list[Path]:
    """Return the visible entries of `folder` in name order; record a folder that cannot be listed."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as error:
        skipped.append({"path": str(folder), "reason": f"cannot list folder ({error.strerror or error})"})
        return []
    # Hidden entries (.DS_Store, .ipynb_checkpoints, .git) are tool files, not data.
    return [folder / name for name in names if not name.startswith(".")]


def _dead_end(path: Path) -> str:
    """Return why an entry that is neither a readable file nor a folder cannot be used."""
    if path.is_symlink():
        return f"broken symbolic link to {os.readlink(path)}"
    return "not a regular file or folder (a socket, pipe or device)"


def file_extension(path: Path) -> str:
    """Return a file's lower-case extension, both parts of a compressed one ('.nii.gz'); '' when it has none."""
    suffixes = [suffix.lower() for suffix in path.suffixes]
    if len(suffixes) > 1 and suffixes[-1] in COMPRESSED_SUFFIXES:
        return "".join(suffixes[-2:])
    return suffixes[-1] if suffixes else ""


def is_volume(path: Path) -> bool:
    """True for a 3D volume file (NIfTI, MGH, Analyze, DICOM) by its extension or its DICOM marker."""
    return file_extension(path) in VOLUME_SUFFIXES or _has_dicom_marker(path)


def _has_dicom_marker(path: Path) -> bool:
    """True when bytes 128-131 read 'DICM' (scanner exports often give DICOM files no extension)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def scan_dataset(data_dir: str | Path) -> DatasetScan:
    """Find every candidate image under `data_dir` with its class, shipped split and (parsed) subject id."""
    root = _check_data_dir(Path(data_dir).expanduser())
    files, skipped = walk_files(root)
    _check_not_empty(root, files, skipped)
    if _is_synthetic(root):
        images = root / "images"
        return _scan_folders(images, root, {"kind": "synthetic", "layout": "synthetic cohort", "synthetic": True},
                             [path for path in files if images in path.parents], skipped)
    if not any(path.suffix.lower() in IMAGE_SUFFIXES for path in files) and any(
            path.suffix.lower() == ".parquet" for path in files):
        scan = _scan_parquet(sorted(path for path in files if path.suffix.lower() == ".parquet"), root)
        return DatasetScan(scan.files, scan.data_source, scan.task, skipped)
    return _scan_folders(root, root, {"kind": "class_folders", "layout": None, "synthetic": False}, files, skipped)


def _is_synthetic(root: Path) -> bool:
    """True when `root` holds a cohort.json marker saying the data is synthetic."""
    marker = root / "cohort.json"
    if not marker.is_file():
        return False
    try:
        return bool(json.loads(marker.read_text()).get("synthetic"))
    except (ValueError, AttributeError) as error:
        raise IngestionError(f"{marker} is not a valid cohort marker ({error}): expected JSON with "
                             f"\"synthetic\": true.") from error


def _class_folder(path: Path, root: Path) -> tuple[str | None, str | None]:
    """Return (class folder name, shipped split) of an image: its nearest non-split ancestor below `root`."""
    parents = path.relative_to(root).parts[:-1]
    shipped = next((SPLIT_FOLDERS[part.lower()] for part in parents if part.lower() in SPLIT_FOLDERS), None)
    for part in reversed(parents):
        if part.lower() not in SPLIT_FOLDERS and canonical_class(part) is not None:
            return part, shipped
    folder = parents[-1] if parents and parents[-1].lower() not in SPLIT_FOLDERS else None
    return folder, shipped


def _scan_folders(image_root: Path, root: Path, data_source: dict, files: list[Path],
                  walk_skipped: list[dict]) -> DatasetScan:
    """Scan the walked files of a class-folder tree (optionally under train/test folders)."""
    if not image_root.is_dir():
        raise IngestionError(f"{root} has a synthetic cohort.json but no images/ folder: expected "
                             f"{image_root}/<Class>/SYN0001_slice00.jpg.")
    images = [path for path in files if path.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise IngestionError(_no_images_message(image_root, files))
    placed = {path: _class_folder(path, image_root) for path in images}
    loose = [str(path) for path, (folder, _) in placed.items() if folder is None]
    if len(loose) == len(images):
        raise IngestionError(f"No class folders in {image_root}: found {len(images)} image(s) such as {loose[0]} "
                             f"outside any class folder; expected {image_root}/<Class>/<image>.")
    task, mapping = resolve_classes([folder for folder, _ in placed.values() if folder], image_root)
    skipped = walk_skipped + [{"path": path, "reason": "outside any class folder"} for path in loose]
    skipped += [{"path": str(path), "reason": _not_image_reason(path)}
                for path in files if path.suffix.lower() not in IMAGE_SUFFIXES]
    synthetic = data_source["kind"] == "synthetic"
    rows = [_folder_row(path, folder, shipped, mapping, root, synthetic)
            for path, (folder, shipped) in placed.items() if folder]
    frame = pd.DataFrame(rows)
    data_source = {**data_source, "layout": data_source["layout"] or _layout_name(frame, task)}
    return DatasetScan(frame, data_source, task, skipped)


def _no_images_message(image_root: Path, files: list[Path]) -> str:
    """Return the error for a tree without 2D images: a hint to export slices when it holds volumes."""
    volumes = [path for path in files if is_volume(path)]
    if volumes:
        return (f"No 2D image files ({', '.join(IMAGE_SUFFIXES)}) under {image_root}, only {len(volumes)} volume "
                f"file(s) such as {volumes[0]}: {VOLUME_HINT}.")
    return (f"No image files ({', '.join(IMAGE_SUFFIXES)}) under {image_root}: expected class folders of images, "
            f"e.g. {image_root}/NonDemented/*.jpg.")


def _not_image_reason(path: Path) -> str:
    """Return the skip reason of a file that is not a 2D image (a volume gets the export hint)."""
    extension = file_extension(path)
    if is_volume(path):
        return f"3D volume file ({extension or 'DICOM'}), not a 2D image: {VOLUME_HINT}"
    return f"not an image file (extension {extension or 'none'!r})"


def _folder_row(path: Path, folder: str, shipped: str | None, mapping: dict, root: Path, synthetic: bool) -> dict:
    """Return the candidate row of one image file in a class folder."""
    subject, source, slice_index = parse_subject(path.stem, synthetic)
    mask = None
    if synthetic:
        mask_path = root / "masks" / path.parent.name / f"{path.stem}.png"
        mask = str(mask_path.resolve()) if mask_path.is_file() else None
    # The path as found below the resolved root, links kept: a linked file and its target stay two rows.
    return {"path": str(path), "label": mapping[folder], "original_folder": folder,
            "shipped_split": shipped, "subject_id": subject, "subject_source": source,
            "slice_index": slice_index, "mask_path": mask}


def _layout_name(frame: pd.DataFrame, task: str) -> str:
    """Describe a class-folder layout in words (for titles and the report)."""
    shipped = sorted(frame["shipped_split"].dropna().unique())
    sources = sorted(frame["subject_source"].dropna().unique())
    ids = f", ids from {'/'.join(source.split(':')[1] for source in sources)} file names" if sources else ""
    split = f" with shipped {'/'.join(shipped)} folders" if shipped else ""
    return f"{task} class folders{split}{ids}"


def _scan_parquet(paths: list[Path], root: Path) -> DatasetScan:
    """Scan Hugging Face style parquet files (columns `image` {bytes, path} and `label`)."""
    rows = []
    for path in paths:
        table = _parquet_table(str(path.resolve()))
        shipped = next((SPLIT_FOLDERS[word] for word in re.split(r"[^a-z]+", path.stem.lower())
                        if word in SPLIT_FOLDERS), None)
        labels = [_parquet_label(value, path) for value in table["label"]]
        rows += [{"path": f"{path.resolve()}#row={index}", "label": label, "original_folder": f"label {raw}",
                  "shipped_split": shipped, "subject_id": None, "subject_source": None, "slice_index": None,
                  "mask_path": None} for index, (raw, label) in enumerate(zip(table["label"], labels))]
    frame = pd.DataFrame(rows)
    task = "2-class" if set(frame["label"]) <= set(config.BINARY_CLASS_NAMES) else "4-class"
    return DatasetScan(frame, {"kind": "parquet", "layout": f"{task} parquet ({len(paths)} files)",
                               "synthetic": False}, task)


def _parquet_label(value, path: Path) -> str:
    """Return the canonical class of one parquet label (Falah integers or class-name strings)."""
    if isinstance(value, (int, np.integer)) and int(value) in HF_FALAH_LABELS:
        return HF_FALAH_LABELS[int(value)]
    if isinstance(value, str) and canonical_class(value) is not None:
        return canonical_class(value)[1]
    raise IngestionError(f"{path}: label {value!r} is not a known class: expected an integer 0-3 "
                         f"({HF_FALAH_LABELS}) or a class name.")


@functools.lru_cache(maxsize=4)
def _parquet_table(path: str) -> dict:
    """Return {'image': [bytes or None], 'label': [...]} of a parquet file; raise IngestionError on bad columns."""
    try:
        frame = pd.read_parquet(path)
    except Exception as error:  # pyarrow raises several types for a corrupt file
        raise IngestionError(f"{path} cannot be read as parquet ({error}).") from error
    missing = [column for column in ("image", "label") if column not in frame.columns]
    if missing:
        raise IngestionError(f"{path} lacks column(s) {missing}: expected 'image' (struct with 'bytes') and "
                             f"'label' (Hugging Face Falah/Alzheimer_MRI layout); found {list(frame.columns)}.")
    images = [value.get("bytes") if isinstance(value, dict) else value for value in frame["image"]]
    return {"image": images, "label": list(frame["label"])}


# ------------------------------------------------------------------------------------------------ decoding


def read_bytes(path: str) -> bytes:
    """Return the encoded bytes behind a manifest path (a file or `<parquet>#row=<i>`)."""
    if "#row=" in path:
        parquet, row = path.rsplit("#row=", 1)
        content = _parquet_table(parquet)["image"][int(row)]
        if not isinstance(content, (bytes, bytearray)):
            raise UnusableImage(f"not an image: parquet row holds {type(content).__name__}, expected bytes")
        return bytes(content)
    return Path(path).read_bytes()


def _open_checked(content: bytes) -> Image.Image:
    """Open encoded bytes with PIL, checking emptiness, type and size before decoding any pixel."""
    if not content:
        raise UnusableImage("empty file (0 bytes)")
    try:
        image = Image.open(io.BytesIO(content))
    except Image.DecompressionBombError as error:
        raise UnusableImage(f"too large: {error} (decompression-bomb guard)") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise UnusableImage(f"not an image: PIL cannot identify it ({error})") from error
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise UnusableImage(f"too large: {width}x{height} pixels exceeds the {MAX_PIXELS:,}-pixel limit "
                            f"(decompression-bomb guard)")
    if min(width, height) < MIN_SIDE:
        raise UnusableImage(f"too small: {width}x{height} pixels, expected at least {MIN_SIDE} on each side")
    return image


def to_greyscale(image: Image.Image) -> tuple[np.ndarray, str | None]:
    """Return uint8 greyscale pixels and a note when the conversion changed the range (16-bit, float)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        low, high = float(pixels.min()), float(pixels.max())
        scaled = (pixels - low) / (high - low) * 255 if high > low else np.zeros_like(pixels)
        return np.round(scaled).astype(np.uint8), f"rescaled {image.mode} range {low:g}-{high:g} to 8-bit 0-255"
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparency is ignored: MRI slices carry no meaning in alpha, and converting drops it.
        return np.asarray(image.convert("RGBA").convert("L"), dtype=np.uint8), f"converted {image.mode} to L"
    if image.mode != "L":
        return np.asarray(image.convert("L"), dtype=np.uint8), f"converted {image.mode} to L"
    return np.asarray(image, dtype=np.uint8), None


def decode(content: bytes) -> tuple[np.ndarray, dict]:
    """Decode image bytes to uint8 greyscale; return pixels and {width, height, mode, format, note}."""
    image = _open_checked(content)
    try:
        image.load()
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise UnusableImage(f"truncated or corrupt image data ({error})") from error
    pixels, note = to_greyscale(image)
    return pixels, {"width": image.width, "height": image.height, "mode": image.mode, "format": image.format,
                    "note": note}


def load_image(path: str | Path) -> np.ndarray:
    """Return the image behind a manifest path (file or `<parquet>#row=<i>`) as uint8 H x W greyscale."""
    path = str(path)
    try:
        return decode(read_bytes(path))[0]
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{path} does not exist: was the data folder moved since ingestion?") from error
    except UnusableImage as error:
        raise UnusableImage(f"{path}: {error}") from error


def thumbnail(pixels: np.ndarray, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """Return a side x side float32 area-averaged thumbnail (aspect ignored: it is only compared, never shown)."""
    import cv2

    return cv2.resize(pixels.astype(np.float32), (side, side), interpolation=cv2.INTER_AREA)




def read_candidates(files: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, list[dict], list[dict]]:
    """Decode every candidate: return usable rows (with sha256, size, mode), thumbnails, skips and conversions."""
    kept, thumbnails, skipped, conversions = [], [], [], []
    for row in files.to_dict("records"):
        try:
            content = read_bytes(row["path"])
            pixels, info = decode(content)
        except (UnusableImage, OSError) as error:
            skipped.append({"path": row["path"], "reason": str(error)})
            continue
        note = info.pop("note")
        if note:
            conversions.append({"path": row["path"], "conversion": note})
        kept.append({**row, **info, "sha256": hashlib.sha256(content).hexdigest()})
        thumbnails.append(thumbnail(pixels).ravel())
    if not kept:
        raise IngestionError(f"None of the {len(files)} candidate image(s) could be read; first skip: "
                             f"{skipped[0] if skipped else None}.")
    return pd.DataFrame(kept), np.stack(thumbnails), skipped, conversions


# ------------------------------------------------------------------------------------------------ duplicates


def coarse_features(features: np.ndarray, factor: int = 4) -> np.ndarray:
    """Return unit rows of square thumbnails block-averaged by `factor` (64 px rows -> 16 px rows)."""
    side = int(round(np.sqrt(features.shape[1])))
    if side * side != features.shape[1] or side % factor:
        return features
    blocks = features.reshape(len(features), side // factor, factor, side // factor, factor).mean(axis=(2, 4))
    return unit_rows(blocks.reshape(len(features), -1))


def near_duplicate_pairs(features: np.ndarray, threshold: float = NEAR_DUPLICATE_CORRELATION,
                         block: int = 512, coarse_threshold: float = COARSE_CANDIDATE_CORRELATION
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Return index pairs (i < j) whose unit-row features correlate at or above `threshold`.

    All pairs are first compared on 16x fewer block-averaged features; only pairs above `coarse_threshold` there
    are checked at full resolution, which keeps an 86,000-image set (OASIS) to minutes instead of hours.
    """
    coarse = coarse_features(features)
    firsts, seconds = [], []
    for start in range(0, len(features), block):
        similarity = coarse[start:start + block] @ coarse.T
        rows, columns = np.nonzero(similarity >= coarse_threshold)
        rows = rows + start
        keep = columns > rows
        rows, columns = rows[keep], columns[keep]
        exact = np.einsum("ij,ij->i", features[rows], features[columns]) >= threshold
        firsts.append(rows[exact])
        seconds.append(columns[exact])
    return np.concatenate(firsts), np.concatenate(seconds)




def nearest_copies(features: np.ndarray, reference: np.ndarray, threshold: float = NEAR_DUPLICATE_CORRELATION,
                   block: int = 512, coarse_threshold: float = COARSE_CANDIDATE_CORRELATION
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Return, per row of `features`, the `reference` row it nearly duplicates (-1: none) and their correlation.

    The same unit-row test as `near_duplicate_pairs`, between two sets (an external test set against the training
    data), with the same coarse pre-filter.
    """
    coarse, coarse_reference = coarse_features(features), coarse_features(reference)
    match, correlation = np.full(len(features), -1), np.zeros(len(features))
    for start in range(0, len(features), block):
        rows, columns = np.nonzero(coarse[start:start + block] @ coarse_reference.T >= coarse_threshold)
        rows = rows + start
        values = np.einsum("ij,ij->i", features[rows], reference[columns])
        keep = values >= threshold
        order = np.argsort(values[keep])  # ascending: the closest copy of a row is written last and stays
        match[rows[keep][order]] = columns[keep][order]
        correlation[rows[keep][order]] = values[keep][order]
    return match, correlation


def duplicate_groups(frame: pd.DataFrame, features: np.ndarray) -> pd.Series:
    """Return a near-duplicate group id per row (exact copies and pixel copies together); None when unique."""
    firsts, seconds = near_duplicate_pairs(features)
    codes = frame["sha256"].astype("category").cat.codes.to_numpy()
    by_hash = pd.Series(np.arange(len(frame))).groupby(codes).transform("min").to_numpy()
    labels = components(len(frame), np.concatenate([firsts, by_hash]),
                        np.concatenate([seconds, np.arange(len(frame))]))
    sizes = np.bincount(labels)
    groups = pd.Series(labels, index=frame.index).where(sizes[labels] > 1)
    # Number groups by their first row (rows are sorted by path) so ids are stable across runs.
    first_row = groups.dropna().groupby(groups.dropna()).head(1)
    renumber = {value: number for number, value in enumerate(first_row.to_numpy())}
    return groups.map(renumber).astype("Int64")


def contradictory_copies(frame: pd.DataFrame) -> list[dict]:
    """Return a skip record for every image whose exact bytes also lie under another class (label unknowable)."""
    classes_per_hash = frame.groupby("sha256")["label"].transform("nunique")
    skipped = []
    for _, group in frame[classes_per_hash > 1].groupby("sha256", sort=False):
        paths, classes = sorted(group["path"]), sorted(set(group["label"]))
        filed_under = f"{', '.join(classes[:-1])} and {classes[-1]}"
        skipped += [{"path": path, "reason": f"same bytes as {next(other for other in paths if other != path)} "
                                             f"filed under class {filed_under}: label contradicts itself"}
                    for path in paths]
    return skipped


def drop_contradictory_copies(frame: pd.DataFrame, thumbnails: np.ndarray
                              ) -> tuple[pd.DataFrame, np.ndarray, list[dict], dict]:
    """Drop every copy of bytes filed under two classes; return kept rows, their thumbnails, skips and counts."""
    skipped = contradictory_copies(frame)
    dropped = frame["path"].isin({item["path"] for item in skipped}).to_numpy()
    counts = {"contradictory_groups": int(frame.loc[dropped, "sha256"].nunique()),
              "contradictory_images_dropped": int(dropped.sum())}
    if dropped.all():
        raise IngestionError(f"Every readable image ({len(frame)}) has an identical copy filed under another class, "
                             f"e.g. {skipped[0]['path']}: {skipped[0]['reason']}.")
    return frame[~dropped].reset_index(drop=True), thumbnails[~dropped], skipped, counts


def duplicate_summary(frame: pd.DataFrame, contradictory: dict | None = None) -> dict:
    """Count exact duplicates (same SHA-256), near duplicates and copies filed under different classes.

    `contradictory` holds the counts of exact copies under two classes, dropped before `frame` was built.
    """
    exact = frame[frame.duplicated("sha256", keep=False)]
    near = frame.dropna(subset=["near_duplicate_group"])
    conflicting = near.groupby("near_duplicate_group")["label"].nunique()
    examples = [sorted(group["path"])[:3] for _, group in exact.groupby("sha256")][:splits.EXAMPLES_SHOWN]
    return {"exact_groups": int(exact["sha256"].nunique()), "exact_images": len(exact),
            "near_groups": int(near["near_duplicate_group"].nunique()), "near_images": len(near),
            "groups_with_conflicting_labels": int((conflicting > 1).sum()),
            "near_threshold": NEAR_DUPLICATE_CORRELATION, "exact_examples": examples,
            **(contradictory or {"contradictory_groups": 0, "contradictory_images_dropped": 0})}


# ------------------------------------------------------------------------------------------------ subjects


def assign_similarity_subjects(frame: pd.DataFrame, thumbnails: np.ndarray) -> tuple[pd.DataFrame, dict]:
    """Give rows without a parsed subject id a pseudo-subject from image similarity, one class at a time."""
    missing = frame["subject_id"].isna().to_numpy()
    if not missing.any():
        return frame, {"method": None, "images": 0}
    started = time.perf_counter()
    rows = np.flatnonzero(missing)
    duplicates = frame["near_duplicate_group"].to_numpy()[rows]
    groups, details = similarity_groups(thumbnails[rows], frame["label"].to_numpy()[rows], duplicates)
    frame = frame.copy()
    frame.loc[frame.index[rows], "subject_id"] = groups
    frame.loc[frame.index[rows], "subject_source"] = "similarity"
    details.update(images=len(rows), seconds=round(time.perf_counter() - started, 2))
    return frame, details


# ------------------------------------------------------------------------------------------------ manifest


def manifest_frame(scan: DatasetScan) -> tuple[pd.DataFrame, np.ndarray, dict]:
    """Decode, hash, de-duplicate-group and subject-group the scanned files; return rows sorted by path."""
    files = scan.files.sort_values("path", kind="stable").reset_index(drop=True)
    frame, thumbnails, skipped, conversions = read_candidates(files)
    # Identical bytes under two classes: the label is unknowable and a split could put copies on both sides.
    frame, thumbnails, contradictions, contradictory = drop_contradictory_copies(frame, thumbnails)
    features = unit_rows(thumbnails)
    frame["near_duplicate_group"] = duplicate_groups(frame, features)
    frame, grouping = assign_similarity_subjects(frame, thumbnails)
    classes = ordered_classes(frame["label"], scan.task)
    if len(classes) < 2:
        raise IngestionError(f"Only class {classes} has readable images: a classification task needs two.")
    frame["label_index"] = frame["label"].map({name: index for index, name in enumerate(classes)}).astype(int)
    dropped = {item["path"] for item in contradictions}
    extras = {"skipped": scan.skipped + skipped + contradictions, "grouping": grouping, "classes": classes,
              "conversions": [item for item in conversions if item["path"] not in dropped],
              "contradictory": contradictory}
    return frame, features, extras


def choose_split(frame: pd.DataFrame, policy: str, seed: int) -> tuple[pd.Series, pd.Series | None]:
    """Return (the subject split, the split under the shipped policy or None when nothing is shipped)."""
    subject = splits.subject_split(frame, seed)
    shipped = None
    # A shipped split needs both a train and a test part; train/ alone is only audited, never used.
    if frame["shipped_split"].notna().all() and {"train", "test"} <= set(frame["shipped_split"]):
        shipped = splits.shipped_policy_split(frame, seed)
    if policy == "shipped" and shipped is None:
        raise IngestionError(_no_shipped_split_message(frame))
    return subject, shipped


def _no_shipped_split_message(frame: pd.DataFrame) -> str:
    """Return the one-line error for SPLIT='shipped' on data without a complete shipped train/test split."""
    shipped, root = frame["shipped_split"], _data_root(frame)
    parts = sorted(set(shipped.dropna()))
    if shipped.isna().any():
        example = frame.loc[shipped.isna(), "path"].iloc[0]
        outside = f"; {int(shipped.isna().sum())} image(s) lie in none, e.g. {example}"
        return (f"SPLIT='shipped' but {root} ships no train/test split for every image (no train/test folders or "
                f"files{outside if parts else ''}): use SPLIT='subject'.")
    missing = next(part for part in ("train", "test") if part not in parts)
    return (f"SPLIT='shipped' but {root} ships only {'/'.join(parts)}/ (no {missing}/ folder or {missing} file): "
            f"use SPLIT='subject'.")


def _data_root(frame: pd.DataFrame) -> Path:
    """Return the folder above every manifest path, cut above its last train/test folder (names the data set)."""
    common = Path(os.path.commonpath([str(Path(path.split("#row=")[0]).parent) for path in frame["path"]]))
    cuts = [index for index, part in enumerate(common.parts) if part.lower() in SPLIT_FOLDERS]
    return Path(*common.parts[:cuts[-1]]) if cuts else common


def build_report(frame: pd.DataFrame, features: np.ndarray, scan: DatasetScan, extras: dict,
                 settings: config.Settings) -> dict:
    """Assemble the ingestion report: source, classes, counts, skips, duplicates, split policy, leakage audit."""
    subject_frame = frame.assign(split=frame["subject_split"])
    # Pseudo-subjects from similarity grouping are uncertain where the grouping says so; ids from names are not.
    confidence = (extras["grouping"].get("confidence") or {}).get("level")
    audit = {"subject": splits.leakage_audit(subject_frame, "split", features, confidence),
             "shipped": (splits.leakage_audit(frame, "shipped_split", features, confidence)
                         if frame["shipped_split"].notna().any() else None)}
    if settings.split == "slice":
        audit["slice"] = splits.leakage_audit(frame, "split", features, confidence)
    counts = {"files_seen": int(len(frame) + len(extras["skipped"])), "images": len(frame),
              "skipped": len(extras["skipped"]), "subjects": int(frame["subject_id"].nunique()),
              "per_class": _count(frame, "label"), "per_split": _count(frame, "split"),
              "subjects_per_class": {str(key): int(value) for key, value in
                                     frame.groupby("label")["subject_id"].nunique().items()},
              "subject_sources": _count(frame, "subject_source")}
    return {"data_dir": str(settings.data_dir), "data_source": scan.data_source, "classes": extras["classes"],
            "task": scan.task, "counts": counts, "skipped": extras["skipped"], "conversions": extras["conversions"],
            "duplicates": duplicate_summary(frame, extras.get("contradictory")), "subject_grouping": extras["grouping"],
            "split_policy": settings.split, "seed": settings.seed,
            "split_fractions": list(splits.DEFAULT_FRACTIONS),
            "split_warnings": splits.split_warnings(frame, "split"), "leakage_audit": audit}


def _count(frame: pd.DataFrame, column: str) -> dict:
    """Return value counts of a column as a sorted JSON-ready dict."""
    return {str(key): int(value) for key, value in sorted(frame[column].value_counts().items())}


def build_manifest(settings: config.Settings) -> tuple[pd.DataFrame, dict]:
    """Ingest `settings.data_dir`; write manifest.parquet and ingestion_report.json; return both."""
    # Taken before the scan: a file added while ingestion runs makes the manifest stale, never silently current.
    fingerprint = freshness.manifest_fingerprint(settings)
    scan = scan_dataset(settings.data_dir)
    frame, features, extras = manifest_frame(scan)
    subject, shipped = choose_split(frame, settings.split, settings.seed)
    frame["subject_split"] = subject
    frame["split"] = {"subject": subject, "shipped": shipped,
                      "slice": splits.slice_split(frame, settings.seed) if settings.split == "slice" else None
                      }[settings.split]
    report = {**build_report(frame, features, scan, extras, settings), "fingerprint": fingerprint}
    manifest = frame[list(MANIFEST_COLUMNS)].reset_index(drop=True)
    manifest["slice_index"] = manifest["slice_index"].astype("Int64")
    write_parquet(settings.paths.manifest, manifest)
    write_json(settings.paths.ingestion_report, report)
    return manifest, report


def audit_frame(report: dict) -> pd.DataFrame:
    """Return the leakage audit of an ingestion report as one tidy table (policy, check, value, in use)."""
    rows = []
    for policy, audit in (report.get("leakage_audit") or {}).items():
        if audit is None:
            rows.append((policy, "data set ships a split", "no", policy == report.get("split_policy")))
            continue
        for check, value in _audit_checks(audit):
            rows.append((policy, check, value, policy == report.get("split_policy")))
    return pd.DataFrame(rows, columns=["split_policy", "check", "value", "in_use"])


def _audit_checks(audit: dict) -> list[tuple[str, object]]:
    """Flatten one split's audit into (check, value) rows."""
    checks = [("images per split", ", ".join(f"{key} {value}" for key, value in audit["images_per_split"].items())),
              ("subjects shared between splits", f"{audit['subjects_shared']} of {audit['subjects_total']}"),
              ("exact duplicate groups across splits", audit["exact_duplicates_across_splits"]["groups"]),
              ("near duplicate groups across splits", audit["near_duplicates_across_splits"]["groups"])]
    neighbours = audit.get("pixel_neighbours") or {}
    for split, summary in neighbours.items():
        if isinstance(summary, dict) and split in config.SPLITS:
            checks += [(f"{split}: median correlation with nearest train image",
                        round(summary["correlation_median"], 4)),
                       (f"{split}: share above the different-subject null's 99th percentile",
                        _rounded(summary.get("above_null_share"))),
                       (f"{split}: p-value of that share (subject permutation)",
                        _rounded(summary.get("above_null_p_value"))),
                       (f"{split}: raw-pixel 1-NN accuracy (majority class rate)",
                        f"{summary['nearest_neighbour_accuracy']:.3f} ({summary['majority_class_rate']:.3f})"),
                       (f"{split}: p-value of the 1-NN agreement against the null",
                        _rounded(summary.get("agreement_p_value"))),
                       (f"{split}: pixel evidence says it leaks", "yes" if summary.get("leaks") else "no")]
    if audit.get("subject_ids_note"):
        checks.append(("subject ids", audit["subject_ids_note"]))
    checks.append(("leaks", "yes" if audit["leaks"] else "no"))
    checks.append(("tripped by", ", ".join(audit.get("tripped_by") or []) or "nothing"))
    return checks


def _rounded(value, digits: int = 4):
    """Return `value` rounded, or 'not tested' when the check did not run."""
    return "not tested" if value is None else round(float(value), digits)

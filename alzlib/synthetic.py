"""The embedded default data: a synthetic cohort of axial T1-like slices with graded, known atrophy.

Every subject is nilearn's MNI152 template (T1, grey- and white-matter maps, 1 mm; they ship in the nilearn wheel
and load offline) under a random affine and smooth elastic warp, with atrophy applied in template space: ventricles
dilated, the outer cortex thinned (sulci widened) and the hippocampus/amygdala eroded, each by a severity drawn
from its dementia stage (distributions overlap between neighbouring stages) plus an age-like term common to all
classes. Intensity varies by a smooth bias field and contrast change; magnitude (Rician) noise is added and the
slice skull-stripped. Each image gets a mask of where each atrophy component changed it (bit flags: 1 ventricles,
2 cortex, 4 medial temporal). Synthetic: it teaches the method and has no clinical meaning.

Cohort versions (docs/synthetic_cohort.md): "1" is the original model above, kept byte-identical per seed. In "2"
each component has its own subject weight and noise, the ventricles and cortex carry a weaker stage effect than
the medial temporal lobe (whose temporal horns also widen, asymmetrically), head pose varies more, and labels near
a stage boundary are flipped to the neighbouring stage at a stated rate; its masks mark only the class-relevant
change (what the stage adds to the subject's age-only atrophy). Version 2 can be rendered as site "A" or site
"B": another scanner (contrast curve, bias field, noise, resolution, slice thickness, intensity scale) with its
own subjects and nothing class-related changed.
"""

from __future__ import annotations

import functools
import io as bytes_io
import os
import re
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

from alzlib import config
from alzlib.storage import read_json, write_json

GENERATOR_VERSION = "1.0"
IMAGE_WIDTH, IMAGE_HEIGHT = 176, 208  # the Kaggle set's size (width x height)
JPEG_QUALITY = 90
SYNTHETIC_NAME = re.compile(r"^(?P<subject>SYN\d{4,})_slice(?P<slice>\d{2,})\.(?:jpg|jpeg|png)$", re.IGNORECASE)
MASK_BITS = {"ventricles": 1, "cortex": 2, "medial_temporal": 4}
MASK_COLOURS = {"ventricles": (0.12, 0.47, 0.95), "cortex": (1.0, 0.6, 0.0), "medial_temporal": (0.9, 0.05, 0.05)}
METADATA_COLUMNS = ("subject_id", "label", "severity_ventricles", "severity_cortex", "severity_mtl", "age_atrophy",
                    "slice_index", "file", "mask_file")

# Disease severity per stage (NonDemented .. ModerateDemented): a subject's latent severity is drawn around its
# stage mean with a spread that makes neighbouring stages overlap; each component adds its own noise.
STAGE_MEANS = (0.0, 0.3, 0.6, 0.9)
STAGE_SPREAD = 0.10
COMPONENT_SPREAD = 0.08
# The age-like term every subject gets (whatever its class) and how much of it each component takes.
AGE_RANGE = (0.0, 0.6)
AGE_WEIGHTS = {"ventricles": 0.6, "cortex": 0.6, "medial_temporal": 0.2}
# Millimetres of tissue turned to CSF per unit of applied severity.
ATROPHY_MM = {"ventricles": 6.0, "cortex": 1.8, "medial_temporal": 4.0}
# A pixel counts as changed by a component when its intensity (scale 0..1) changed this much: about 15 grey levels.
MASK_CHANGE = 0.06

# Axial slices run around the medial temporal lobe (z = -25..-5 mm) up to the third and lateral ventricles.
SLICE_CENTRE_MM = -6.0
SLICE_SPAN_MM = 36.0
SLICE_SPACING_MM = (1.2, 3.0)
BRAIN_CENTRE_Y_MM = -17.0  # the brain's front-back middle in MNI space: the image is centred on it
# Template crop (MNI mm) that holds every sampled point: the whole brain in x and y, z around the slices.
CROP_MM = ((-78, 78), (-112, 78), (-50, 42))
# Medial temporal region: tubes of radius MTL_RADIUS_MM along the amygdala-hippocampus axis (MNI mm, left side;
# the right side mirrors x). Its grey matter and the temporal horn beside it form the region eroded by MTL loss.
MTL_AXIS_MM = ((-22.0, -4.0, -20.0), (-27.0, -14.0, -17.0), (-29.0, -26.0, -10.0), (-24.0, -38.0, -1.0))
MTL_RADIUS_MM = 7.0
COARSE_SHAPE = (53, 45)  # grid (rows, columns) the smooth random fields are evaluated on, then interpolated
CHANNELS = ("t1", "grey", "white", "brain", "ventricle_distance", "cortex_depth", "mtl_depth", "mtl_region")

# ----- cohort version 2 (docs/synthetic_cohort.md has the design and the measured calibration)
COHORT_VERSIONS = ("1", "2")
DEFAULT_COHORT_VERSION = "1"
METADATA_COLUMNS_V2 = METADATA_COLUMNS + ("true_label", "label_noise", "latent_severity", "site", "cohort_version")
CHANNELS_V2 = CHANNELS + ("horn_distance",)
# Each component's severity = stage effect x subject weight x latent severity + the component's own noise. The
# weights (log-normal, median 1) and noises are independent, so components agree only through the stage: the
# ventricles and cortex carry much less of it than the medial temporal lobe, and the cortex most of the age term.
# Measured (bench/cohort_v2.py, docs/synthetic_cohort.md): with these, global intensity/CSF/area statistics give a
# subject-level balanced accuracy of about 0.37 and the same statistics in the medial temporal window about 0.63.
STAGE_EFFECT_V2 = {"ventricles": 0.35, "cortex": 0.35, "medial_temporal": 1.0}
WEIGHT_SPREAD_V2 = {"ventricles": 0.5, "cortex": 0.5, "medial_temporal": 0.15}
COMPONENT_NOISE_V2 = {"ventricles": 0.12, "cortex": 0.12, "medial_temporal": 0.05}
AGE_RANGE_V2 = (0.0, 0.8)
AGE_WEIGHTS_V2 = {"ventricles": 0.3, "cortex": 1.2, "medial_temporal": 0.1}
# Millimetres per unit of applied severity: the hippocampus erodes from its borders and the temporal horn widens.
# Erosion saturates (the region is a few mm thick), so the horn carries the graded change between the later stages:
# measured, hippocampal erosion of 4-6 mm left Mild and Moderate masks almost the same size.
ATROPHY_MM_V2 = {"ventricles": 6.0, "cortex": 1.8, "medial_temporal": 3.0, "temporal_horn": 10.0}
# Medial temporal loss is asymmetric: one side takes 1 + a of it, the other 1 - a, a uniform in +-this.
MTL_ASYMMETRY = 0.35
# Label noise: a subject whose latent severity lies within LABEL_NOISE_BAND of a boundary between its stage and a
# neighbouring one gets the neighbour's label with probability LABEL_NOISE_PROBABILITY (about 10% of all subjects).
STAGE_BOUNDARIES = tuple((low + high) / 2 for low, high in zip(STAGE_MEANS[:-1], STAGE_MEANS[1:]))
LABEL_NOISE_BAND = 0.06
LABEL_NOISE_PROBABILITY = 0.4
# Site-B subjects are numbered from here (SYN5001, ...), so no id is shared with a site-A cohort.
SITE_NUMBER_OFFSET = {"A": 0, "B": 5000}
SITE_STREAM = {"A": 101, "B": 202}  # random-stream keys: each site draws its own subjects and scanner settings
# Version 2's anatomy, pose and atrophy stream is keyed by subject number alone (sites number their subjects apart):
# the same subject rendered at both sites differs only in the acquisition.
ANATOMY_STREAM_V2 = 303


@dataclass(frozen=True)
class Pose:
    """How far a subject's head pose and anatomy depart from the template (uniform ranges, +- values)."""

    rotation_degrees: tuple = (3.0, 2.0, 4.0)  # about x, y and z (z is in the image plane)
    shift_mm: tuple = (2.0, 2.0)  # left-right, front-back
    scale_spread: float = 0.03  # standard deviation of the per-axis size factor
    warp_mm: tuple = (1.0, 2.5)  # range of the elastic displacement's amplitude


POSE_V1 = Pose()
# Version 2: more pose and individual anatomy, so no structure sits on a fixed pixel (registered slice sets
# still differ by several millimetres between subjects).
POSE_V2 = Pose(rotation_degrees=(3.0, 2.0, 10.0), shift_mm=(8.0, 8.0), scale_spread=0.05, warp_mm=(1.5, 3.5))


@dataclass(frozen=True)
class Acquisition:
    """One scanner's acquisition: tissue contrast, contrast curve, bias field, noise, resolution and scaling.

    Ranges are drawn uniformly per subject; nothing here depends on the subject's class.
    """

    site: str
    grey_level: tuple = (0.52, 0.62)
    white_level: tuple = (0.82, 0.92)
    csf_level: tuple = (0.04, 0.12)
    gamma: tuple = (0.85, 1.2)  # contrast curve: signal ** gamma
    gain: tuple = (0.9, 1.05)
    bias_strength: tuple = (0.04, 0.12)
    noise_sigma: tuple = (0.012, 0.035)  # Rician noise, on the 0..1 intensity scale
    blur_mm: float = 0.0  # in-plane point-spread function (Gaussian sigma)
    slice_thickness_mm: float = 1.0  # through-plane averaging over a slab this thick
    intensity_scale: float = 1.0  # the scanner's output scaling (display window)

    def plane_offsets(self) -> tuple[float, ...]:
        """Return the through-plane offsets (mm) averaged into one slice: one plane per 1.5 mm of thickness."""
        planes = max(1, int(round(self.slice_thickness_mm / 1.5)))
        half = (self.slice_thickness_mm - self.slice_thickness_mm / planes) / 2
        return tuple(float(offset) for offset in np.linspace(-half, half, planes))


ACQUISITIONS = {
    # Site A is version 1's acquisition.
    "A": Acquisition(site="A"),
    # Site B: flatter grey-white contrast and contrast curve, a stronger bias field, more noise, 1.2 mm blur,
    # 3 mm slices and darker output. Everything class-related (stages, atrophy model, pose) is site A's.
    "B": Acquisition(site="B", grey_level=(0.60, 0.68), white_level=(0.78, 0.84), csf_level=(0.10, 0.16),
                     gamma=(0.65, 0.8), gain=(0.9, 1.05), bias_strength=(0.18, 0.28), noise_sigma=(0.05, 0.07),
                     blur_mm=1.2, slice_thickness_mm=3.0, intensity_scale=0.75),
}


@dataclass(frozen=True)
class Anatomy:
    """Template volumes (cropped, 1 mm) stacked as channels, with the MNI position of voxel (0, 0, 0)."""

    stack: np.ndarray
    origin_mm: np.ndarray


@dataclass(frozen=True)
class Subject:
    """One synthetic subject: identity, class and the severities applied."""

    number: int
    label: str
    severity: dict
    age_atrophy: float
    version: str = "1"
    site: str = "A"
    true_label: str | None = None  # the stage the subject was drawn from when label noise changed `label`
    latent: float | None = None
    asymmetry: float = 0.0  # version 2: the left medial temporal lobe takes 1 + asymmetry, the right 1 - asymmetry

    @property
    def subject_id(self) -> str:
        """Return the subject id, e.g. SYN0001."""
        return f"SYN{self.number:04d}"

    @property
    def stage(self) -> str:
        """Return the stage the subject's atrophy was drawn from (its label unless label noise changed it)."""
        return self.true_label or self.label

    def applied(self, component: str) -> float:
        """Return the total severity applied to `component` (stage part plus its share of the age term)."""
        weights = AGE_WEIGHTS if self.version == "1" else AGE_WEIGHTS_V2
        return self.severity[component] + weights[component] * self.age_atrophy


# ----------------------------------------------------------------------------------------------- template anatomy


def _load_templates() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return nilearn's 1 mm MNI152 T1, grey and white matter volumes (float32) and their affine."""
    from nilearn.datasets import (
        load_mni152_gm_template,
        load_mni152_template,
        load_mni152_wm_template,
    )

    images = [loader(resolution=1) for loader in (load_mni152_template, load_mni152_gm_template,
                                                  load_mni152_wm_template)]
    volumes = [np.asarray(image.get_fdata(), dtype=np.float32) for image in images]
    return volumes[0] / max(float(volumes[0].max()), 1e-6), volumes[1], volumes[2], images[0].affine


def _crop(volumes: list[np.ndarray], affine: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Crop volumes to CROP_MM; return them and the MNI position of their first voxel."""
    if not np.allclose(np.abs(np.diag(affine)[:3]), 1.0) or np.any(np.diag(affine)[:3] < 0):
        raise ValueError(f"Expected a 1 mm MNI152 template with a positive diagonal affine, got {affine.tolist()}")
    start = [int(round(low - affine[axis, 3])) for axis, (low, _) in enumerate(CROP_MM)]
    stop = [int(round(high - affine[axis, 3])) + 1 for axis, (_, high) in enumerate(CROP_MM)]
    region = tuple(slice(max(a, 0), b) for a, b in zip(start, stop))
    origin = np.array([affine[axis, 3] + region[axis].start for axis in range(3)], dtype=np.float32)
    return [volume[region] for volume in volumes], origin


def _ventricles_and_horns(csf: np.ndarray, brain: np.ndarray, origin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the lateral/third ventricles and the temporal horns: CSF pockets enclosed by brain tissue."""
    outside = ndimage.binary_dilation(~brain, iterations=2)
    labels, count = ndimage.label((csf > 0.5) & brain)
    touching = set(np.unique(labels[outside & (labels > 0)]).tolist())
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, range(1, count + 1))
    centres = np.array(ndimage.center_of_mass(np.ones_like(labels), labels, range(1, count + 1))) + origin
    ventricles = np.zeros_like(brain)
    horns = np.zeros_like(brain)
    for index in range(count):
        if index + 1 in touching:
            continue
        x, y, z = centres[index]
        if sizes[index] >= 2000 and abs(x) < 15:
            ventricles |= labels == index + 1
        elif sizes[index] >= 40 and 15 < abs(x) < 42 and -30 < y < 5 and -32 < z < -5:
            horns |= labels == index + 1
    if ventricles.sum() < 5000 or horns.sum() < 80:
        raise ValueError(f"Could not find the ventricles ({int(ventricles.sum())} voxels) and temporal horns "
                         f"({int(horns.sum())} voxels) in the MNI152 template: is nilearn's template different?")
    return ventricles, horns


def _mtl_region(grey: np.ndarray, horns: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Return the medial temporal region: grey matter near the amygdala-hippocampus axis, plus the temporal horns."""
    axis_points = np.array(MTL_AXIS_MM, dtype=np.float32)
    # Only a box around both axes can be within reach: compute distances there (cheap) and nowhere else.
    reach = np.abs(axis_points).max(0) + MTL_RADIUS_MM + 1
    low = np.maximum(np.floor(np.array([-reach[0], axis_points[:, 1].min() - MTL_RADIUS_MM - 1,
                                        axis_points[:, 2].min() - MTL_RADIUS_MM - 1]) - origin).astype(int), 0)
    high = np.minimum(np.ceil(np.array([reach[0], axis_points[:, 1].max() + MTL_RADIUS_MM + 1,
                                        axis_points[:, 2].max() + MTL_RADIUS_MM + 1]) - origin).astype(int) + 1,
                      grey.shape)
    box = tuple(slice(a, b) for a, b in zip(low, high))
    grid = np.stack(np.meshgrid(*[np.arange(a, b, dtype=np.float32) + origin[axis]
                                  for axis, (a, b) in enumerate(zip(low, high))], indexing="ij"), axis=-1)
    distance = np.full(grid.shape[:3], np.inf, dtype=np.float32)
    for side in (-1.0, 1.0):
        mirrored = axis_points * np.array([side, 1.0, 1.0], dtype=np.float32)
        for start, stop in zip(mirrored[:-1], mirrored[1:]):
            direction = stop - start
            along = np.clip(((grid - start) @ direction) / float(direction @ direction), 0.0, 1.0)
            distance = np.minimum(distance, np.linalg.norm(grid - start - along[..., None] * direction, axis=-1))
    region = np.zeros(grey.shape, dtype=bool)
    region[box] = (distance < MTL_RADIUS_MM) & (grey[box] > 0.35)
    return region | horns


def template_anatomy(version: str = "1") -> Anatomy:
    """Return the cropped template channels every subject is sampled from (computed once per process)."""
    check_cohort(version, "A")
    return _template_anatomy(version)


@functools.lru_cache(maxsize=2)
def _template_anatomy(version: str) -> Anatomy:
    """Return the template channels of cohort `version` (CHANNELS; version 2 adds CHANNELS_V2's horn distance)."""
    t1, grey, white, affine = _load_templates()
    (t1, grey, white), origin = _crop([t1, grey, white], affine)
    # Skull-strip with the tissue maps: dilated grey + white matter, ventricles filled in.
    brain = ndimage.binary_fill_holes(ndimage.binary_dilation((grey + white) > 0.3, iterations=2))
    csf = np.clip(brain - grey - white, 0.0, 1.0)
    ventricles, horns = _ventricles_and_horns(csf, brain, origin)
    region = _mtl_region(grey, horns, origin)
    # Outer CSF (sulci and the brain's surface) is where cortical thinning starts; ventricles are not outer CSF.
    inner = ndimage.binary_dilation(ventricles | horns, iterations=2)
    outer = ~brain | ((csf > 0.35) & ~inner)
    channels = [t1, grey, white, ndimage.gaussian_filter(brain.astype(np.float32), 0.7),
                np.minimum(ndimage.distance_transform_edt(~ventricles), 30.0),
                np.minimum(ndimage.distance_transform_edt(~outer), 30.0),
                ndimage.distance_transform_edt(region), ndimage.gaussian_filter(region.astype(np.float32), 0.5)]
    if version != "1":
        channels.append(np.minimum(ndimage.distance_transform_edt(~horns), 30.0))
    # Stored z, y, x (x fastest): neighbouring pixels of an image row are neighbours in memory, which makes
    # the per-subject gather several times faster than x, y, z order.
    stack = np.stack([np.asarray(channel, dtype=np.float32).transpose(2, 1, 0) for channel in channels], axis=-1)
    return Anatomy(stack=np.ascontiguousarray(stack), origin_mm=origin)


def sample_trilinear(anatomy: Anatomy, points: np.ndarray, chunk: int = 16384) -> np.ndarray:
    """Return every channel at MNI positions `points` (3, N; x, y, z mm), trilinearly, clamped to the crop."""
    shape = np.array(anatomy.stack.shape[:3])
    flat = anatomy.stack.reshape(-1, anatomy.stack.shape[-1])
    offsets = np.array([(dz * shape[1] + dy) * shape[2] + dx for dz in (0, 1) for dy in (0, 1) for dx in (0, 1)])
    result = np.empty((points.shape[1], flat.shape[1]), dtype=np.float32)
    # Chunks keep the gathered corners in cache.
    for start in range(0, points.shape[1], chunk):
        voxels = (points[::-1, start:start + chunk] - anatomy.origin_mm[::-1, None]).astype(np.float32)
        voxels = np.clip(voxels, 0, (shape - 1.001)[:, None].astype(np.float32))
        floor = np.floor(voxels)
        fraction = voxels - floor
        floor = floor.astype(np.int64)
        base = (floor[0] * shape[1] + floor[1]) * shape[2] + floor[2]
        weights = [np.stack([1 - fraction[axis], fraction[axis]]) for axis in range(3)]
        weights = (weights[0][:, None, None] * weights[1][None, :, None] * weights[2][None, None, :]).reshape(8, -1)
        result[start:start + chunk] = np.einsum("kn,knc->nc", weights, flat[base[None, :] + offsets[:, None]])
    return result


# ----------------------------------------------------------------------------------------------- subjects


def slice_positions(slices: int) -> np.ndarray:
    """Return the nominal MNI z (mm) of `slices` consecutive axial slices around the medial temporal lobe."""
    if slices < 1:
        raise ValueError(f"slices_per_subject must be at least 1, got {slices}")
    spacing = float(np.clip(SLICE_SPAN_MM / max(slices - 1, 1), *SLICE_SPACING_MM))
    return SLICE_CENTRE_MM + (np.arange(slices, dtype=np.float32) - (slices - 1) / 2) * spacing


def check_cohort(version: str, site: str) -> None:
    """Raise ValueError unless `version` is a cohort version and `site` an acquisition it can be rendered with."""
    if version not in COHORT_VERSIONS:
        raise ValueError(f"cohort version must be one of {COHORT_VERSIONS}, got {version!r}")
    if site not in ACQUISITIONS:
        raise ValueError(f"site must be one of {tuple(ACQUISITIONS)}, got {site!r}")
    if version == "1" and site != "A":
        raise ValueError(f"cohort version 1 has one acquisition (site 'A'); site {site!r} needs version '2'")


def draw_subjects(profile: config.Profile, seed: int, version: str = DEFAULT_COHORT_VERSION,
                  site: str = "A") -> list[Subject]:
    """Return the cohort's subjects: classes shuffled over ids (ids carry no class), severities per stage."""
    check_cohort(version, site)
    labels = [name for name in config.CLASS_NAMES for _ in range(int(profile.cohort_subjects.get(name, 0)))]
    unknown = set(profile.cohort_subjects) - set(config.CLASS_NAMES)
    if unknown or not labels:
        raise ValueError(f"profile {profile.name!r} cohort_subjects must count subjects of {config.CLASS_NAMES}; "
                         f"got {profile.cohort_subjects}")
    if version == "2":
        return _draw_subjects_v2(labels, seed, site)
    order = np.random.default_rng([seed, 0]).permutation(len(labels))
    subjects = []
    for number, position in enumerate(order, start=1):
        rng = np.random.default_rng([seed, number, 1])
        stage = config.CLASS_NAMES.index(labels[position])
        latent = STAGE_MEANS[stage] + rng.normal(0.0, STAGE_SPREAD)
        severity = {name: float(max(0.0, latent + rng.normal(0.0, COMPONENT_SPREAD))) for name in MASK_BITS}
        subjects.append(Subject(number, labels[position], severity, float(rng.uniform(*AGE_RANGE))))
    return subjects


def _draw_subjects_v2(stages: list[str], seed: int, site: str) -> list[Subject]:
    """Return version-2 subjects of the given stages (shuffled over ids), from the site's own random stream."""
    offset, limit = SITE_NUMBER_OFFSET[site], min(value for value in SITE_NUMBER_OFFSET.values() if value > 0)
    if len(stages) > limit:  # more would give a site-A subject a site-B id
        raise ValueError(f"A version-2 cohort holds at most {limit} subjects per site, got {len(stages)}")
    order = np.random.default_rng([seed, SITE_STREAM[site], 0]).permutation(len(stages))
    return [_draw_subject_v2(np.random.default_rng([seed, SITE_STREAM[site], number, 1]), offset + number,
                             stages[position], site) for number, position in enumerate(order, start=1)]


def _draw_subject_v2(rng: np.random.Generator, number: int, stage_name: str, site: str) -> Subject:
    """Return one version-2 subject: independent component weights and noise, age, asymmetry, boundary label noise."""
    stage = config.CLASS_NAMES.index(stage_name)
    # A fixed number of draws in a fixed order, whatever the outcome: every subject's stream stays aligned.
    latent = STAGE_MEANS[stage] + rng.normal(0.0, STAGE_SPREAD)
    weights = np.exp(rng.normal(0.0, [WEIGHT_SPREAD_V2[name] for name in MASK_BITS]))
    noises = rng.normal(0.0, [COMPONENT_NOISE_V2[name] for name in MASK_BITS])
    age, asymmetry, flip = rng.uniform(*AGE_RANGE_V2), rng.uniform(-MTL_ASYMMETRY, MTL_ASYMMETRY), rng.uniform()
    severity = {name: float(max(0.0, STAGE_EFFECT_V2[name] * weight * latent + noise))
                for name, weight, noise in zip(MASK_BITS, weights, noises)}
    neighbour = boundary_neighbour(stage, latent)
    label = config.CLASS_NAMES[neighbour] if neighbour is not None and flip < LABEL_NOISE_PROBABILITY else stage_name
    return Subject(number, label, severity, float(age), version="2", site=site,
                   true_label=stage_name if label != stage_name else None, latent=float(latent),
                   asymmetry=float(asymmetry))


def boundary_neighbour(stage: int, latent: float) -> int | None:
    """Return the neighbouring stage whose boundary with `stage` lies within LABEL_NOISE_BAND of `latent`, else None."""
    for neighbour in (stage - 1, stage + 1):
        if 0 <= neighbour < len(STAGE_MEANS):
            boundary = STAGE_BOUNDARIES[min(stage, neighbour)]
            if abs(latent - boundary) < LABEL_NOISE_BAND:
                return neighbour
    return None


def _rotation(angles: np.ndarray) -> np.ndarray:
    """Return the 3-D rotation matrix for angles (radians) about x, y and z."""
    cos, sin = np.cos(angles), np.sin(angles)
    about_x = np.array([[1, 0, 0], [0, cos[0], -sin[0]], [0, sin[0], cos[0]]])
    about_y = np.array([[cos[1], 0, sin[1]], [0, 1, 0], [-sin[1], 0, cos[1]]])
    about_z = np.array([[cos[2], -sin[2], 0], [sin[2], cos[2], 0], [0, 0, 1]])
    return about_x @ about_y @ about_z


def _image_grid(depth: np.ndarray, height: int, width: int) -> np.ndarray:
    """Return nominal MNI positions (3, S*height*width; mm) of an image grid spanning the 176 x 208 mm frame."""
    # Radiological convention: the subject's right is on the image's left.
    x = (IMAGE_WIDTH - 1) / 2 - np.linspace(0, IMAGE_WIDTH - 1, width, dtype=np.float32)
    y = (IMAGE_HEIGHT - 1) / 2 - np.linspace(0, IMAGE_HEIGHT - 1, height, dtype=np.float32)
    z, y, x = np.meshgrid(depth.astype(np.float32), y, x, indexing="ij")
    return np.stack([x.ravel(), y.ravel(), z.ravel()])


def _subject_affine(rng: np.random.Generator, pose: Pose = POSE_V1) -> tuple[np.ndarray, np.ndarray]:
    """Return a random head pose and size: matrix (3, 3) and shift (3, 1) from image to template mm."""
    # Small: the public slice sets come from scans registered to an atlas (OASIS: Talairach space).
    rotation = np.array(pose.rotation_degrees, dtype=float)
    matrix = _rotation(np.deg2rad(rng.uniform(-rotation, rotation))) @ np.diag(1 / rng.normal(1.0, pose.scale_spread,
                                                                                                3))
    shift = np.array([[rng.uniform(-pose.shift_mm[0], pose.shift_mm[0])],
                      [BRAIN_CENTRE_Y_MM + rng.uniform(-pose.shift_mm[1], pose.shift_mm[1])], [0.0]])
    return matrix.astype(np.float32), shift.astype(np.float32)


def _smooth_fields(rng: np.random.Generator, points: np.ndarray, frequencies: list[float],
                   waves: int = 3) -> np.ndarray:
    """Return smooth random fields in [-1, 1], one per frequency (rad/mm), at `points` (3, N): random plane waves."""
    values = []
    for frequency in frequencies:
        directions = rng.normal(0.0, frequency, (waves, 3)).astype(np.float32)
        phases = rng.uniform(0.0, 2 * np.pi, (waves, 1)).astype(np.float32)
        values.append(np.sin(directions @ points + phases).mean(0))
    return np.stack(values)


def _upsample(coarse: np.ndarray, slices: int) -> np.ndarray:
    """Return values on the coarse grid (F, S*h*w) linearly interpolated to the image grid (F, S*H*W)."""
    grid = coarse.reshape(len(coarse), slices, COARSE_SHAPE[0], COARSE_SHAPE[1])
    rows = _interpolation_matrix(IMAGE_HEIGHT, COARSE_SHAPE[0])
    columns = _interpolation_matrix(IMAGE_WIDTH, COARSE_SHAPE[1])
    return (rows @ grid @ columns.T).reshape(len(coarse), -1)


@functools.lru_cache(maxsize=4)
def _interpolation_matrix(size: int, coarse: int) -> np.ndarray:
    """Return the (size, coarse) matrix that linearly interpolates `coarse` evenly spread samples to `size`."""
    positions = np.linspace(0, coarse - 1, size)
    return np.stack([np.interp(positions, np.arange(coarse), column) for column in np.eye(coarse)],
                    axis=1).astype(np.float32)


def subject_geometry(rng: np.random.Generator, slices: int, pose: Pose = POSE_V1,
                     plane_offsets: tuple[float, ...] = (0.0,), version: str = "1"
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return one subject's template positions of its pixels (3, S*P*H*W, mm), 4 smooth fields and a brain hint.

    The random fields vary over centimetres, so they are evaluated on a coarse grid and interpolated. The
    hint marks pixels that may show brain (from the coarse grid, dilated); only those are rendered. Each of
    the S slices is sampled on P planes at `plane_offsets` (mm) for through-plane averaging.
    """
    depth = slice_positions(slices) + rng.uniform(-1.5, 1.5)
    depth = (depth[:, None] + np.asarray(plane_offsets, dtype=np.float32)[None, :]).ravel()
    slices = len(depth)
    matrix, shift = _subject_affine(rng, pose)
    coarse = matrix @ _image_grid(depth, *COARSE_SHAPE) + shift
    # Elastic warp (a few mm of smooth displacement): individual anatomy beyond the affine; then fields for
    # patchy atrophy (3) and the scanner's bias field (1).
    fields = _smooth_fields(rng, coarse, [0.045] * 3 + [0.06] * 3 + [0.015])
    fields[:3] *= rng.uniform(*pose.warp_mm, (3, 1)).astype(np.float32)
    brain = sample_trilinear(template_anatomy(version), coarse + fields[:3])[:, CHANNELS.index("brain")]
    grid_shape = (slices, COARSE_SHAPE[0], COARSE_SHAPE[1])
    hint = ndimage.maximum_filter(brain.reshape(grid_shape), size=(1, 3, 3)).reshape(1, -1)
    fine = _upsample(np.concatenate([fields, hint]), slices)
    points = matrix @ _image_grid(depth, IMAGE_HEIGHT, IMAGE_WIDTH) + shift + fine[:3]
    return points, fine[3:7], fine[7] > 1e-3


def _grown(reach: np.ndarray | float, distance: np.ndarray) -> np.ndarray:
    """Return the fraction of tissue at `distance` (mm) a CSF region takes when it grows by `reach` mm.

    A soft step over 1.5 mm (anti-aliased), minus the step at zero reach, so no growth changes nothing.
    """
    return np.clip((reach - distance) / 1.5 + 0.5, 0.0, 1.0) - np.clip(0.5 - distance / 1.5, 0.0, 1.0)


def render_subject(subject: Subject, slices: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return one subject's slices (uint8, S x H x W) and atrophy masks (uint8 bit flags, same shape)."""
    if subject.version == "2":
        return _render_subject_v2(subject, slices, seed)
    rng = np.random.default_rng([seed, subject.number, 2])
    points, fields, hint = subject_geometry(rng, slices)
    pixels = np.flatnonzero(hint)
    fields = fields[:, pixels]
    values = sample_trilinear(template_anatomy(), points[:, pixels])
    channel = {name: values[:, index] for index, name in enumerate(CHANNELS)}
    # Tissue contrast varies per subject; the T1 template keeps the texture of deep grey matter.
    grey_level, white_level, csf_level = rng.uniform(0.52, 0.62), rng.uniform(0.82, 0.92), rng.uniform(0.04, 0.12)
    csf = np.clip(channel["brain"] - channel["grey"] - channel["white"], 0.0, 1.0)
    base = 0.5 * channel["t1"] + 0.5 * (grey_level * channel["grey"] + white_level * channel["white"]
                                        + csf_level * csf)
    csf_value = 0.5 * 0.22 + 0.5 * csf_level
    converted = _atrophy(subject, channel, 0.5 + 0.5 * fields[:3])
    inside = channel["brain"] > 0.5
    masks = np.zeros(points.shape[1], dtype=np.uint8)
    for name, fraction in converted.items():
        masks[pixels] |= (((fraction * (base - csf_value)) > MASK_CHANGE) & inside).astype(np.uint8) * MASK_BITS[name]
    fraction = np.maximum.reduce(list(converted.values()))
    image = np.zeros(points.shape[1], dtype=np.float32)
    image[pixels] = _acquire(rng, base * (1 - fraction) + csf_value * fraction, fields[3]) * channel["brain"]
    shape = (slices, IMAGE_HEIGHT, IMAGE_WIDTH)
    return np.clip(np.round(image * 255), 0, 255).astype(np.uint8).reshape(shape), masks.reshape(shape)


def _atrophy(subject: Subject, channel: dict, patches: np.ndarray) -> dict:
    """Return, per component, the fraction of tissue turned to CSF at each pixel (patchy, severity-scaled)."""
    grey_share = channel["grey"] / np.maximum(channel["grey"] + channel["white"], 1e-3)
    reach = {name: ATROPHY_MM[name] * subject.applied(name) for name in MASK_BITS}
    return {
        # Ventricles grow into the tissue around them.
        "ventricles": _grown(reach["ventricles"] * (0.7 + 0.6 * patches[0]), channel["ventricle_distance"]),
        # Grey matter next to outer CSF thins, unevenly: sulci widen.
        "cortex": grey_share * _grown(reach["cortex"] * (0.4 + 1.2 * patches[1]), channel["cortex_depth"]),
        # The hippocampus/amygdala region erodes from its borders.
        "medial_temporal": channel["mtl_region"] * _grown(reach["medial_temporal"] * (0.8 + 0.4 * patches[2]),
                                                          channel["mtl_depth"]),
    }


def _render_subject_v2(subject: Subject, slices: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return a version-2 subject's slices and masks as its site's scanner acquires them."""
    acquisition = ACQUISITIONS[subject.site]
    rng = np.random.default_rng([seed, SITE_STREAM[subject.site], subject.number, 3])  # the scanner's draws
    planes = acquisition.plane_offsets()
    anatomy_rng = np.random.default_rng([seed, ANATOMY_STREAM_V2, subject.number, 2])
    points, fields, hint = subject_geometry(anatomy_rng, slices, POSE_V2, planes, version="2")
    pixels = np.flatnonzero(hint)
    values = sample_trilinear(template_anatomy("2"), points[:, pixels])
    channel = {name: values[:, index] for index, name in enumerate(CHANNELS_V2)}
    grey_level, white_level, csf_level = (rng.uniform(*acquisition.grey_level), rng.uniform(*acquisition.white_level),
                                          rng.uniform(*acquisition.csf_level))
    csf = np.clip(channel["brain"] - channel["grey"] - channel["white"], 0.0, 1.0)
    base = 0.5 * channel["t1"] + 0.5 * (grey_level * channel["grey"] + white_level * channel["white"]
                                        + csf_level * csf)
    csf_value = 0.5 * 0.22 + 0.5 * csf_level
    # Template x < 0 is the left hemisphere.
    patches, hemisphere = 0.5 + 0.5 * fields[:3, pixels], np.sign(points[0, pixels])
    converted = _atrophy_v2(subject, channel, patches, hemisphere)
    # Masks mark the class-relevant change: what the stage part adds to the age-only atrophy of the same subject.
    ageing = _atrophy_v2(replace(subject, severity={name: 0.0 for name in MASK_BITS}), channel, patches, hemisphere)
    fraction = np.maximum.reduce(list(converted.values()))
    # Everything is rendered on every plane of the slab, then averaged through the slice's thickness.
    layers = [base * (1 - fraction) + csf_value * fraction, channel["brain"]]
    layers += [(converted[name] - ageing[name]) * (base - csf_value) for name in MASK_BITS]
    shape = (slices, len(planes), IMAGE_HEIGHT * IMAGE_WIDTH)
    full = np.zeros((len(layers), points.shape[1]), dtype=np.float32)
    full[:, pixels] = np.stack(layers)
    full = full.reshape(len(layers), *shape).mean(axis=2).reshape(len(layers), slices, IMAGE_HEIGHT, IMAGE_WIDTH)
    bias = fields[3].reshape(shape).mean(axis=1).reshape(slices, IMAGE_HEIGHT, IMAGE_WIDTH)
    signal, brain, changes = full[0], full[1], full[2:]
    masks = np.zeros(signal.shape, dtype=np.uint8)
    for change, bit in zip(changes, MASK_BITS.values()):
        masks |= ((change > MASK_CHANGE) & (brain > 0.5)).astype(np.uint8) * bit
    image = _acquire_site(rng, signal, bias, acquisition) * brain
    return np.clip(np.round(image * 255), 0, 255).astype(np.uint8), masks


def _atrophy_v2(subject: Subject, channel: dict, patches: np.ndarray, hemisphere: np.ndarray) -> dict:
    """Return version 2's converted tissue fractions: v1's ventricles and cortex; hippocampus and temporal horn."""
    grey_share = channel["grey"] / np.maximum(channel["grey"] + channel["white"], 1e-3)
    reach = {name: ATROPHY_MM_V2[name] * subject.applied(name) for name in MASK_BITS}
    # Medial temporal loss differs between the sides; both the hippocampus and the horn beside it change shape.
    side = (1.0 - subject.asymmetry * hemisphere) * subject.applied("medial_temporal") * (0.8 + 0.4 * patches[2])
    hippocampus = channel["mtl_region"] * _grown(ATROPHY_MM_V2["medial_temporal"] * side, channel["mtl_depth"])
    horn = _grown(ATROPHY_MM_V2["temporal_horn"] * side, channel["horn_distance"])
    return {
        "ventricles": _grown(reach["ventricles"] * (0.7 + 0.6 * patches[0]), channel["ventricle_distance"]),
        "cortex": grey_share * _grown(reach["cortex"] * (0.4 + 1.2 * patches[1]), channel["cortex_depth"]),
        "medial_temporal": np.maximum(hippocampus, horn),
    }


def _acquire_site(rng: np.random.Generator, image: np.ndarray, bias_field: np.ndarray,
                  acquisition: Acquisition) -> np.ndarray:
    """Return slices (S x H x W) as `acquisition`'s scanner gives them: contrast curve, blur, bias field, noise."""
    gamma, gain = rng.uniform(*acquisition.gamma), rng.uniform(*acquisition.gain)
    strength, sigma = rng.uniform(*acquisition.bias_strength), rng.uniform(*acquisition.noise_sigma)
    signal = np.clip(image, 0, None) ** gamma
    if acquisition.blur_mm > 0:  # pixels are 1 mm
        signal = ndimage.gaussian_filter(signal, (0.0, acquisition.blur_mm, acquisition.blur_mm))
    signal = gain * signal * (1.0 + strength * bias_field)
    real = signal + rng.normal(0.0, sigma, signal.shape).astype(np.float32)
    imaginary = rng.normal(0.0, sigma, signal.shape).astype(np.float32)
    return acquisition.intensity_scale * np.sqrt(real ** 2 + imaginary ** 2)


def _acquire(rng: np.random.Generator, image: np.ndarray, bias_field: np.ndarray) -> np.ndarray:
    """Return `image` as a scanner would give it: contrast change, smooth bias field and Rician noise."""
    gamma, gain = rng.uniform(0.85, 1.2), rng.uniform(0.9, 1.05)
    signal = gain * np.clip(image, 0, None) ** gamma * (1.0 + rng.uniform(0.04, 0.12) * bias_field)
    sigma = rng.uniform(0.012, 0.035)
    real = signal + rng.normal(0.0, sigma, signal.shape).astype(np.float32)
    imaginary = rng.normal(0.0, sigma, signal.shape).astype(np.float32)
    return np.sqrt(real ** 2 + imaginary ** 2)


# ----------------------------------------------------------------------------------------------- files


def parse_synthetic_name(name: str) -> tuple[str, int] | None:
    """Return (subject id, slice index) from a cohort file name like SYN0001_slice07.jpg, else None."""
    match = SYNTHETIC_NAME.match(Path(name).name)
    return (match.group("subject"), int(match.group("slice"))) if match else None


def _encode(pixels: np.ndarray, image_format: str) -> bytes:
    """Return the bytes of a uint8 image: JPEG at a fixed quality (no optimiser pass) or PNG; deterministic."""
    buffer = bytes_io.BytesIO()
    if image_format == "JPEG":
        Image.fromarray(pixels, mode="L").save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=False)
    else:
        Image.fromarray(pixels, mode="L").save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def _write_subject(task: tuple[Subject, int, int, str]) -> list[dict]:
    """Render and write one subject's images and masks under `root`; return its metadata rows."""
    subject, slices, seed, root = task
    images, masks = render_subject(subject, slices, seed)
    rows = []
    for slice_index in range(slices):
        stem = f"{subject.subject_id}_slice{slice_index:02d}"
        # Files sit under the subject's label: with label noise, the label a rater gave, not the drawn stage.
        image_file = Path("images") / subject.label / f"{stem}.jpg"
        mask_file = Path("masks") / subject.label / f"{stem}.png"
        (Path(root) / image_file).write_bytes(_encode(images[slice_index], "JPEG"))
        (Path(root) / mask_file).write_bytes(_encode(masks[slice_index], "PNG"))
        # Severities are what was applied to the image: the stage's part plus the component's share of the age term.
        rows.append({"subject_id": subject.subject_id, "label": subject.label,
                     "severity_ventricles": subject.applied("ventricles"),
                     "severity_cortex": subject.applied("cortex"),
                     "severity_mtl": subject.applied("medial_temporal"), "age_atrophy": subject.age_atrophy,
                     "slice_index": slice_index, "file": image_file.as_posix(), "mask_file": mask_file.as_posix()})
        if subject.version != "1":
            rows[-1].update({"true_label": subject.stage, "label_noise": subject.true_label is not None,
                             "latent_severity": subject.latent, "site": subject.site,
                             "cohort_version": subject.version})
    return rows


def metadata_columns(version: str = DEFAULT_COHORT_VERSION) -> tuple[str, ...]:
    """Return the columns of a cohort's metadata.csv (version 2 adds the true stage, label noise and site)."""
    return METADATA_COLUMNS if version == "1" else METADATA_COLUMNS_V2


def cohort_parameters(profile: config.Profile) -> dict:
    """Return the generation parameters stored in cohort.json (and compared when reusing a cohort)."""
    return {"cohort_subjects": {name: int(profile.cohort_subjects.get(name, 0)) for name in config.CLASS_NAMES},
            "slices_per_subject": int(profile.slices_per_subject), "image_width": IMAGE_WIDTH,
            "image_height": IMAGE_HEIGHT, "jpeg_quality": JPEG_QUALITY,
            "slice_positions_mm": [round(float(z), 2) for z in slice_positions(profile.slices_per_subject)]}


def _cohort_record(profile: config.Profile, seed: int, frame: pd.DataFrame, version: str, site: str) -> dict:
    """Return the contents of cohort.json (no timestamps: the same seed gives byte-identical files)."""
    import nilearn

    counts = {name: {"subjects": int(frame.loc[frame.label == name, "subject_id"].nunique()),
                     "images": int((frame.label == name).sum())} for name in config.CLASS_NAMES}
    record = {"synthetic": True, "generator": "alzlib.synthetic", "generator_version": GENERATOR_VERSION,
              "cohort_version": version, "site": site, "seed": int(seed), "profile": profile.name,
              "parameters": cohort_parameters(profile), "counts": counts,
              "n_subjects": int(frame.subject_id.nunique()), "n_images": len(frame), "mask_bits": MASK_BITS,
              "template": f"MNI152 T1/GM/WM 1 mm from nilearn {nilearn.__version__}",
              "note": "Synthetic data made from a brain template with simulated atrophy: no clinical meaning."}
    if version != "1":
        subjects = frame.drop_duplicates("subject_id")
        record["acquisition"] = asdict(ACQUISITIONS[site])
        record["mask_meaning"] = ("class-relevant change: pixels the stage part of each component's severity "
                                  "changed beyond the same subject's age-only atrophy")
        record["label_noise"] = {"subjects": int(subjects.label_noise.sum()),
                                 "rate": float(subjects.label_noise.mean()), "band": LABEL_NOISE_BAND,
                                 "probability_near_boundary": LABEL_NOISE_PROBABILITY,
                                 "rule": "a subject whose latent severity lies within the band of a boundary with a "
                                         "neighbouring stage gets that stage's label with this probability"}
        record["true_stage_subjects"] = {name: int((subjects.true_label == name).sum())
                                         for name in config.CLASS_NAMES}
    return record


def _worker_count(subjects: int) -> int:
    """Return how many processes render: ALZ_SYNTHETIC_WORKERS, else up to 2 (the files never depend on it)."""
    requested = os.environ.get("ALZ_SYNTHETIC_WORKERS")
    if requested:
        if not requested.isdigit() or int(requested) < 1:
            raise ValueError(f"ALZ_SYNTHETIC_WORKERS must be a positive integer, got {requested!r}")
        return min(int(requested), subjects)
    # A second process pays for its start-up only with a dozen or more subjects.
    return max(1, min(2, os.cpu_count() or 1, subjects // 12))


def _render_all(subjects: list[Subject], slices: int, seed: int, root: Path) -> list[dict]:
    """Render every subject into `root` (in parallel processes where that pays); return rows in subject order."""
    from threadpoolctl import threadpool_limits

    tasks = [(subject, slices, seed, str(root)) for subject in subjects]
    workers = _worker_count(len(subjects))
    # The matrix products here are small: BLAS threads only fight over the cores (several times slower).
    with threadpool_limits(limits=1):
        if workers == 1:
            return [row for task in tasks for row in _write_subject(task)]
        # Each subject has its own random stream, so the files do not depend on the worker count or order.
        with ProcessPoolExecutor(max_workers=workers, initializer=_start_worker,
                                 initargs=(subjects[0].version,)) as pool:
            return [row for rows in pool.map(_write_subject, tasks, chunksize=4) for row in rows]


def _start_worker(version: str = "1") -> None:
    """Prepare a rendering process: one BLAS thread, template anatomy loaded once."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)
    template_anatomy(version)


def is_synthetic_cohort(data_dir: str | os.PathLike) -> bool:
    """True when `data_dir` holds a complete synthetic cohort (cohort.json, written last, says synthetic)."""
    marker = Path(data_dir) / "cohort.json"
    try:
        return marker.is_file() and read_json(marker).get("synthetic") is True
    except ValueError:
        return False


def _check_replaceable(out_dir: Path) -> None:
    """Raise FileExistsError when `out_dir` holds anything other than a synthetic cohort (it is never deleted)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} is a file, not a cohort folder: move it or choose another data folder.")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not is_synthetic_cohort(out_dir):
        raise FileExistsError(f"{out_dir} is not empty and holds no synthetic cohort (no cohort.json with "
                              f"\"synthetic\": true); it is left untouched. Pass DATA_DIR=<that folder> to use it "
                              f"as a data set, or empty/move it to generate the synthetic cohort there.")


def generate_cohort(out_dir: str | os.PathLike, profile: config.Profile, seed: int = config.DEFAULT_SEED,
                    version: str = DEFAULT_COHORT_VERSION, site: str = "A") -> Path:
    """Write the synthetic cohort of `profile` to `out_dir` atomically (temp sibling, then rename); return it.

    `version` picks the cohort model ("1" or "2"); `site` the acquisition ("B" needs version "2": another
    scanner and other subjects, for external validation).
    """
    out_dir = Path(out_dir).expanduser().absolute()
    _check_replaceable(out_dir)
    subjects = draw_subjects(profile, seed, version, site)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    temporary = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        for folder in ("images", "masks"):
            for name in config.CLASS_NAMES:
                (temporary / folder / name).mkdir(parents=True, exist_ok=True)
        template_anatomy(version)  # computed before any worker starts, so forked workers share it
        frame = pd.DataFrame(_render_all(subjects, profile.slices_per_subject, seed, temporary),
                             columns=list(metadata_columns(version)))
        frame.to_csv(temporary / "metadata.csv", index=False, float_format="%.6f", lineterminator="\n")
        # Last: the completion marker.
        write_json(temporary / "cohort.json", _cohort_record(profile, seed, frame, version, site))
        _replace_folder(temporary, out_dir)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return out_dir


def _replace_folder(source: Path, target: Path) -> None:
    """Move `source` onto `target`; an old cohort there is moved aside first and deleted after."""
    _check_replaceable(target)
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    if target.exists():
        target.rename(old)
    source.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def cohort_matches(data_dir: str | os.PathLike, profile: config.Profile, seed: int,
                   version: str = DEFAULT_COHORT_VERSION, site: str = "A") -> bool:
    """True when `data_dir` holds a complete cohort of this generator, seed, profile, cohort version and site."""
    check_cohort(version, site)
    if not is_synthetic_cohort(data_dir):
        return False
    record = read_json(Path(data_dir) / "cohort.json")
    # Markers written before cohort versions existed are version-1, site-A cohorts.
    return (record.get("generator_version") == GENERATOR_VERSION and record.get("seed") == seed
            and record.get("cohort_version", "1") == version and record.get("site", "A") == site
            and record.get("parameters") == cohort_parameters(profile)
            and (Path(data_dir) / "metadata.csv").is_file())


def ensure_cohort(profile: config.Profile, seed: int = config.DEFAULT_SEED,
                  data_dir: str | os.PathLike | None = None, version: str | None = None,
                  site: str = "A") -> Path:
    """Return the cohort folder, generating it unless a matching complete cohort is already there.

    `version` None: the profile's `cohort_version` (what the pipeline's default run uses).
    """
    version = version or profile.cohort_version
    data_dir = Path(data_dir) if data_dir is not None else config.default_data_dir(profile)
    if cohort_matches(data_dir, profile, seed, version, site):
        return data_dir
    _check_replaceable(data_dir)
    return generate_cohort(data_dir, profile, seed, version, site)


# ----------------------------------------------------------------------------------------------- reading back


def load_metadata(data_dir: str | os.PathLike) -> pd.DataFrame:
    """Return the cohort's metadata table, naming the folder when it is not a synthetic cohort."""
    data_dir = Path(data_dir)
    if not is_synthetic_cohort(data_dir):
        raise FileNotFoundError(f"{data_dir} holds no complete synthetic cohort (cohort.json missing or not "
                                f"synthetic): run synthetic.ensure_cohort first.")
    return pd.read_csv(data_dir / "metadata.csv")


def _read_grey(path: Path) -> np.ndarray:
    """Return an image file as a uint8 greyscale array."""
    with Image.open(path) as image:
        return np.asarray(image.convert("L"))


def mask_overlay(image: np.ndarray, mask: np.ndarray, opacity: float = 0.55) -> np.ndarray:
    """Return an RGB float image: the slice with each mask component tinted in its colour."""
    rgb = np.repeat(image[..., None] / 255.0, 3, axis=-1)
    for name, bit in MASK_BITS.items():
        where = (mask & bit) > 0
        rgb[where] = (1 - opacity) * rgb[where] + opacity * np.array(MASK_COLOURS[name])
    return rgb


def _example_rows(frame: pd.DataFrame, label: str, count: int) -> pd.DataFrame:
    """Return `count` middle slices of the class's most typical subject (median total severity)."""
    rows = frame[frame.label == label]
    if rows.empty:
        raise ValueError(f"The cohort has no images of class {label!r}.")
    totals = rows.groupby("subject_id")[["severity_ventricles", "severity_cortex", "severity_mtl"]].first().sum(1)
    subject = (totals - totals.median()).abs().sort_values(kind="stable").index[0]
    slices = rows[rows.subject_id == subject].sort_values("slice_index")
    middle = len(slices) // 2
    start = max(0, min(middle - count // 2, len(slices) - count))
    return slices.iloc[start:start + count]


def plot_class_examples(data_dir: str | os.PathLike, slices_per_class: int = 2):
    """Return a figure: per class, example slices beside their atrophy-mask overlays (synthetic cohort)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    data_dir = Path(data_dir)
    frame = load_metadata(data_dir)
    labels = [name for name in config.CLASS_NAMES if (frame.label == name).any()]
    figure = Figure(figsize=(2.2 * 2 * slices_per_class, 2.6 * len(labels)), layout="constrained")
    axes = figure.subplots(len(labels), 2 * slices_per_class, squeeze=False)
    for row, label in enumerate(labels):
        for column, (_, record) in enumerate(_example_rows(frame, label, slices_per_class).iterrows()):
            image, mask = _read_grey(data_dir / record.file), _read_grey(data_dir / record.mask_file)
            axes[row, 2 * column].imshow(image, cmap="gray", vmin=0, vmax=255)
            axes[row, 2 * column + 1].imshow(mask_overlay(image, mask))
            axes[row, 2 * column].set_title(f"{label}\n{record.subject_id} slice {record.slice_index}", fontsize=8)
            axes[row, 2 * column + 1].set_title("atrophy mask", fontsize=8)
        for axis in axes[row]:
            axis.axis("off")
    legend = [Patch(color=MASK_COLOURS[name], label=name.replace("_", " ")) for name in MASK_BITS]
    figure.legend(handles=legend, loc="outside lower center", ncol=3, fontsize=8)
    figure.suptitle("Synthetic cohort: example slices per class and where atrophy was applied")
    return figure


def calibration_baseline(data_dir: str | os.PathLike, seed: int = config.DEFAULT_SEED, size: int = 32) -> dict:
    """Return how a logistic regression on downsampled pixels does under subject-grouped cross-validation.

    The check that the synthetic task is learnable but not trivial: out-of-fold predictions of a
    StratifiedGroupKFold (folds by subject, at most 5) pooled into one balanced accuracy.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, balanced_accuracy_score
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    data_dir = Path(data_dir)
    frame = load_metadata(data_dir)
    subjects_per_class = frame.groupby("label")["subject_id"].nunique()
    if len(subjects_per_class) < 2 or subjects_per_class.min() < 2:
        raise ValueError(f"calibration_baseline needs at least 2 classes with 2+ subjects each; got "
                         f"{subjects_per_class.to_dict()}")
    pixels = np.stack([np.asarray(Image.fromarray(_read_grey(data_dir / name)).resize((size, size), Image.BOX),
                                  dtype=np.float32).ravel() / 255.0 for name in frame.file])
    classes = [name for name in config.CLASS_NAMES if name in subjects_per_class.index]
    targets = frame.label.map({name: index for index, name in enumerate(classes)}).to_numpy()
    folds = StratifiedGroupKFold(n_splits=int(min(5, subjects_per_class.min())), shuffle=True, random_state=seed)
    predictions = np.empty_like(targets)
    # One BLAS thread: on a small shared machine more threads make these small fits many times slower.
    with threadpool_limits(limits=1):
        for train, test in folds.split(pixels, targets, groups=frame.subject_id):
            model = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=2000))
            predictions[test] = model.fit(pixels[train], targets[train]).predict(pixels[test])
    return {"balanced_accuracy": float(balanced_accuracy_score(targets, predictions)),
            "accuracy": float(accuracy_score(targets, predictions)),
            "chance_balanced_accuracy": 1.0 / len(classes),
            "majority_class_accuracy": float(np.bincount(targets).max() / len(targets)),
            "n_images": len(frame), "n_subjects": int(frame.subject_id.nunique()), "n_classes": len(classes),
            "image_size": size, "folds": folds.get_n_splits(), "model": "logistic regression (C=0.05) on pixels",
            "split": "StratifiedGroupKFold by subject, out-of-fold predictions pooled", "synthetic": True}


# ----------------------------------------------------------------------------------------------- difficulty checks

# Grey level above which a pixel counts as brain in the statistics below (the background is skull-stripped to 0).
BRAIN_LEVEL = 10
STATISTIC_NAMES = ("area", "mean", "std", "p10", "p25", "p50", "p75", "p90", "csf_fraction", "dark_fraction")
# The focal window: the template's medial temporal region in a template-posed image, widened by this margin (mm)
# so that it still holds the region under a subject's pose and warp.
WINDOW_MARGIN_MM = 6


def medial_temporal_window(slices: int, margin_mm: int = WINDOW_MARGIN_MM) -> np.ndarray:
    """Return where the medial temporal region lies in each of `slices` template-posed slices (S x H x W, bool)."""
    points = _image_grid(slice_positions(slices), IMAGE_HEIGHT, IMAGE_WIDTH)
    points = points + np.array([[0.0], [BRAIN_CENTRE_Y_MM], [0.0]], dtype=np.float32)
    region = sample_trilinear(template_anatomy(), points)[:, CHANNELS.index("mtl_region")] > 0.3
    disc = np.hypot(*np.mgrid[-margin_mm:margin_mm + 1, -margin_mm:margin_mm + 1]) <= margin_mm
    return np.stack([ndimage.binary_dilation(plane, disc) for plane in
                     region.reshape(slices, IMAGE_HEIGHT, IMAGE_WIDTH)])


def image_statistics(image: np.ndarray, region: np.ndarray | None = None) -> np.ndarray:
    """Return STATISTIC_NAMES of a uint8 slice's brain, or of its brain inside `region`: area, intensity, CSF.

    Area is a fraction of the image (or region); CSF and dark fractions count brain pixels darker than 0.45 and
    0.7 of the whole brain's median, so they do not depend on the scanner's gain.
    """
    brain = ndimage.binary_fill_holes(image > BRAIN_LEVEL)
    if not brain.any():
        return np.zeros(len(STATISTIC_NAMES), dtype=np.float32)
    median = float(np.median(image[brain])) / 255.0
    if region is not None:
        brain &= region
    values = image[brain].astype(np.float32) / 255.0
    if values.size == 0:
        return np.zeros(len(STATISTIC_NAMES), dtype=np.float32)
    percentiles = np.percentile(values, [10, 25, 50, 75, 90])
    area = brain.sum() / (region.sum() if region is not None else brain.size)
    return np.array([area, values.mean(), values.std(), *percentiles, (values < 0.45 * median).mean(),
                     (values < 0.7 * median).mean()], dtype=np.float32)


def acquisition_statistics(image: np.ndarray) -> dict:
    """Return a uint8 slice's acquisition properties, measured inside its brain (eroded 4 px from the edge).

    noise: 10th percentile of the 5 x 5 local standard deviation (flat tissue); contrast: (p75 - p25) / p50 of
    intensities; sharpness: mean gradient magnitude of the slice smoothed by 1 px, over its median; brightness:
    the median (0..1).
    """
    pixels = image.astype(np.float32) / 255.0
    brain = ndimage.binary_erosion(ndimage.binary_fill_holes(image > BRAIN_LEVEL), iterations=4)
    if not brain.any():
        raise ValueError(f"No brain in the image (no pixel above grey level {BRAIN_LEVEL} after erosion)")
    mean = ndimage.uniform_filter(pixels, 5)
    local_std = np.sqrt(np.clip(ndimage.uniform_filter(pixels ** 2, 5) - mean ** 2, 0, None))
    low, median, high = np.percentile(pixels[brain], [25, 50, 75])
    smooth = ndimage.gaussian_filter(pixels, 1.0)
    gradient = np.hypot(ndimage.sobel(smooth, 0), ndimage.sobel(smooth, 1))
    return {"noise": float(np.percentile(local_std[brain], 10)), "contrast": float((high - low) / median),
            "sharpness": float(gradient[brain].mean() / median), "brightness": float(median)}


def subject_statistics(data_dir: str | os.PathLike) -> pd.DataFrame:
    """Return per subject its label and the mean over its slices of the global and focal statistics."""
    data_dir = Path(data_dir)
    frame = load_metadata(data_dir)
    slices = int(read_json(data_dir / "cohort.json")["parameters"]["slices_per_subject"])
    window = medial_temporal_window(slices)
    rows = []
    for record in frame.itertuples():
        image = _read_grey(data_dir / record.file)
        values = np.concatenate([image_statistics(image), image_statistics(image, window[record.slice_index])])
        rows.append(values)
    names = [f"global_{name}" for name in STATISTIC_NAMES] + [f"focal_{name}" for name in STATISTIC_NAMES]
    statistics = pd.DataFrame(np.stack(rows), columns=names)
    statistics.insert(0, "subject_id", frame.subject_id.to_numpy())
    columns = ["label"] + (["true_label"] if "true_label" in frame.columns else [])
    labels = frame.groupby("subject_id")[columns].first()
    return labels.join(statistics.groupby("subject_id").mean()).reset_index()


def feature_calibration(data_dir: str | os.PathLike, seed: int = config.DEFAULT_SEED, repeats: int = 3,
                        label_column: str = "label") -> dict:
    """Return how much class information global statistics and medial temporal (focal) statistics carry.

    Each is a logistic regression on subject-level statistics (image_statistics averaged over a subject's
    slices), scored by the balanced accuracy of pooled out-of-fold predictions of a stratified 5-fold split of
    subjects, repeated `repeats` times. Global: whole-brain intensity, CSF and area statistics. Focal: the same
    statistics inside the fixed medial temporal window (medial_temporal_window), never the subject's own mask.
    """
    subjects = subject_statistics(data_dir)
    if label_column not in subjects.columns:
        raise ValueError(f"{data_dir} metadata has no {label_column!r} column (version-1 cohorts have 'label' only)")
    counts = subjects[label_column].value_counts()
    if len(counts) < 2 or counts.min() < 2:
        raise ValueError(f"feature_calibration needs at least 2 classes with 2+ subjects each; got {counts.to_dict()}")
    targets = subjects[label_column].map({name: index for index, name in enumerate(config.CLASS_NAMES)}).to_numpy()
    folds = int(min(5, counts.min()))
    result = {"n_subjects": len(subjects), "n_classes": len(counts), "folds": folds, "repeats": repeats,
              "labels": label_column, "chance_balanced_accuracy": 1.0 / len(counts), "statistics": STATISTIC_NAMES,
              "model": "StandardScaler + LogisticRegression(C=1, class_weight='balanced') on subject means",
              "synthetic": True}
    for kind in ("global", "focal"):
        features = subjects[[f"{kind}_{name}" for name in STATISTIC_NAMES]].to_numpy()
        scores = _repeated_scores(features, targets, folds, repeats, seed)
        result[kind] = {"balanced_accuracy": float(np.mean(scores)), "sd_over_repeats": float(np.std(scores)),
                        "per_repeat": [float(score) for score in scores]}
    return result


def _repeated_scores(features: np.ndarray, targets: np.ndarray, folds: int, repeats: int, seed: int) -> list[float]:
    """Return the pooled out-of-fold balanced accuracy of each repeat of a stratified k-fold logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    scores = []
    with threadpool_limits(limits=1):
        for repeat in range(repeats):
            predictions = np.empty_like(targets)
            splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed + repeat)
            for train, test in splitter.split(features, targets):
                model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, class_weight="balanced",
                                                                           max_iter=5000))
                predictions[test] = model.fit(features[train], targets[train]).predict(features[test])
            scores.append(balanced_accuracy_score(targets, predictions))
    return scores

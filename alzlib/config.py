"""Paths, profiles and run settings: the one place every path and budget comes from."""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = PROJECT_ROOT / "data"
NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"

CLASS_NAMES = ("NonDemented", "VeryMildDemented", "MildDemented", "ModerateDemented")
BINARY_CLASS_NAMES = ("NC", "AD")
SPLITS = ("train", "val", "test")
SPLIT_POLICIES = ("subject", "shipped", "slice")
# Splits that put one subject's slices on both sides on purpose: offered to demonstrate leakage, never to report.
LEAKY_SPLIT_POLICIES = ("slice",)
MODEL_NAMES = ("baseline_cnn", "resnet50", "resnet50_attention", "efficientnetb0")
# The other published systems (issue 18; alzlib.systems holds their builders, recipes and citations): trained on
# request (alzlib.system_training), never part of the four-model design.
EXTRA_MODEL_NAMES = ("alexnet", "convnext_scratch", "resnet50_frozen", "vit")
ALL_MODEL_NAMES = (*MODEL_NAMES, *EXTRA_MODEL_NAMES)
# Always trained, whatever MODELS says: the leakage controls share its architecture and recipe (notebook 05), and
# every comparison is read against it and the linear baseline trained beside it.
REFERENCE_MODEL_NAME = "baseline_cnn"
# Models that are not deep networks, trained beside them on the same splits and folds (alzlib.linear): every
# comparison table carries them, so a CNN has to beat a linear model on pixels to claim anything (Wen et al. 2020).
BASELINE_MODEL_NAMES = ("linear_pixels",)
CONTROL_MODEL_NAME = "baseline_cnn_random_labels"
DEFAULT_SEED = 42
COHORT_VERSIONS = ("1", "2")


@dataclass(frozen=True)
class Profile:
    """Data size, image size and training budget of one kind of run."""

    name: str
    image_size: int
    batch_size: int
    epochs: int
    warmup_epochs: int
    cohort_subjects: dict = field(default_factory=dict)
    slices_per_subject: int = 32
    max_feature_points: int = 2000
    robustness_images: int = 200
    gradcam_images: int = 8
    control_epochs: int = 60
    control_images: int = 2400
    control_image_size: int = 32
    # The transfer models (ResNet50, its attention variant, EfficientNetB0) train on every k-th slice of each
    # training subject beyond this many images (None: all). At the cpu profile the two ResNets took about 20 minutes
    # each on the 4,480 training images of the Kaggle set; thinned to 1,500 they fit a 45-minute run.
    transfer_train_images: int | None = None
    # Subject-level cross-validation (alzlib.crossval): the number of folds (1: the single split only) and the models
    # cross-validated; the others are scored on the single split only. Fold models train on every k-th slice of each
    # training subject beyond `fold_train_images` (None: all).
    folds: int = 5
    fold_models: tuple[str, ...] = ("linear_pixels", "baseline_cnn")
    fold_train_images: int | None = None
    # Per-model budgets where a model needs another than `epochs` (and the recipe's learning rate): at the cpu
    # profile the baseline CNN trains longer and faster than the transfer models (issue 19, bench/cnn_budget.py).
    # EPOCHS (run_all.py --epochs) overrides every model's epochs.
    model_epochs: dict = field(default_factory=dict)
    model_learning_rates: dict = field(default_factory=dict)
    # The embedded synthetic cohort's version (alzlib.synthetic; ALZ_COHORT_VERSION overrides): "2" puts the class
    # evidence in the medial temporal lobe and comes with a second site (site B) for external validation; "1" is the
    # earlier cohort, kept reproducible by name.
    cohort_version: str = "2"
    # The ViT's hyperparameter search (alzlib.search, run when MODELS names vit): how many of the 36 grid points to
    # try, in KerasTuner's order, and the epochs each trial trains (on the thinned train split; scored on val).
    search_trials: int = 36
    search_epochs: int = 1
    description: str = ""

    def to_dict(self) -> dict:
        """Return the profile as a JSON-ready dict."""
        return asdict(self)

    def epochs_for(self, model: str) -> int:
        """Return the epoch budget of `model` under this profile."""
        return int(self.model_epochs.get(model, self.epochs))


# Cohort sizes keep every class splittable 70/15/15 by subject and the class mix imbalanced
# like the Kaggle set (most NonDemented, fewest ModerateDemented).
PROFILES = {
    "smoke": Profile(
        name="smoke",
        image_size=64,
        batch_size=16,
        epochs=1,
        warmup_epochs=1,
        cohort_subjects={"NonDemented": 6, "VeryMildDemented": 5, "MildDemented": 4, "ModerateDemented": 4},
        slices_per_subject=4,
        max_feature_points=200,
        robustness_images=16,
        gradcam_images=2,
        control_epochs=2,
        control_images=76,
        control_image_size=32,
        folds=2,
        search_trials=3,
        description="tests and CI: tiny data, one epoch, seconds per notebook",
    ),
    "cpu": Profile(
        name="cpu",
        image_size=64,
        batch_size=16,
        epochs=4,
        warmup_epochs=1,
        cohort_subjects={"NonDemented": 70, "VeryMildDemented": 50, "MildDemented": 35, "ModerateDemented": 25},
        # 8 slices per subject and the baseline CNN's own budget (24 epochs, Adam at 1e-3) let it learn the cohort's
        # focal evidence: measured with bench/cnn_budget.py (5 subject folds, cohort version 2), the baseline CNN
        # scored a pooled subject-level balanced accuracy of 0.585 against linear_pixels' 0.436, a paired
        # difference of +0.149 [+0.057, +0.238]; with 4 slices and 4 epochs at 1e-4 it lost to the linear baseline
        # (0.36 vs 0.42), and with 8 slices, 12 epochs at 1e-3 it led by +0.063 [-0.030, +0.149], not supported.
        slices_per_subject=8,
        # Two published systems (--models) learn only past the common 4 epochs: measured with bench/system_budget.py
        # on the default cohort, validation subjects only, subject-level balanced accuracy at 4 -> 16 epochs:
        # convnext_scratch 0.31 -> 0.43 [0.31, 0.56] (at 4 its 5-epoch warm-up, Mixup/CutMix schedule and weight
        # average from 80% collapse into 4 epochs), resnet50_frozen (random, trained whole offline) 0.24 -> 0.54
        # [0.43, 0.67]; alexnet (0.43 -> 0.37) and the ViT (0.49 both) did not gain and keep 4.
        model_epochs={"baseline_cnn": 24, "convnext_scratch": 16, "resnet50_frozen": 16},
        model_learning_rates={"baseline_cnn": 1e-3},
        max_feature_points=1500,
        robustness_images=160,
        gradcam_images=6,
        control_epochs=60,
        control_images=2400,
        control_image_size=32,
        transfer_train_images=1500,
        folds=5,
        fold_models=("linear_pixels", "baseline_cnn"),
        fold_train_images=1500,
        description="default without a GPU: a real but modest run, about 30 minutes on 2 cores",
    ),
    "full": Profile(
        name="full",
        image_size=224,
        batch_size=32,
        epochs=50,
        warmup_epochs=5,
        cohort_subjects={"NonDemented": 80, "VeryMildDemented": 56, "MildDemented": 40, "ModerateDemented": 24},
        slices_per_subject=32,
        max_feature_points=4000,
        robustness_images=600,
        gradcam_images=8,
        control_epochs=60,
        control_images=8000,
        control_image_size=64,
        folds=5,
        fold_models=("linear_pixels", *MODEL_NAMES),
        search_epochs=3,
        description="the seed recipe: 224 px, batch 32, 50 epochs; default when a GPU is visible",
    ),
}


def gpu_available() -> bool:
    """Return True when the Keras backend sees at least one GPU (imported lazily, its start-up lines silenced)."""
    from alzlib import backend

    with _native_stderr_silenced():
        return bool(backend.visible_gpus())


@contextlib.contextmanager
def _native_stderr_silenced():
    """Send file descriptor 2 to /dev/null for the block: TensorFlow's C++ start-up lines (oneDNN, absl) are written
    there before any Python logging setting applies. Python exceptions still propagate."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def default_profile_name() -> str:
    """Return the profile named by ALZ_PROFILE, else `full` with a GPU and `cpu` without."""
    return os.environ.get("ALZ_PROFILE") or ("full" if gpu_available() else "cpu")


def get_profile(name: str | None = None) -> Profile:
    """Return the profile called `name` (None: ALZ_PROFILE or the hardware default), with ALZ_COHORT_VERSION's
    cohort version where that is set."""
    name = name or default_profile_name()
    if name not in PROFILES:
        raise ValueError(f"Unknown profile {name!r}: expected one of {', '.join(PROFILES)}.")
    version = os.environ.get("ALZ_COHORT_VERSION")
    if version and version not in COHORT_VERSIONS:
        raise ValueError(f"ALZ_COHORT_VERSION must be one of {', '.join(COHORT_VERSIONS)}, got {version!r}.")
    return replace(PROFILES[name], cohort_version=version) if version else PROFILES[name]


def outputs_root() -> Path:
    """Return the folder all outputs go under (ALZ_OUTPUTS_DIR overrides `outputs/`)."""
    return Path(os.environ.get("ALZ_OUTPUTS_DIR") or PROJECT_ROOT / "outputs")


def default_data_dir(profile: Profile) -> Path:
    """Return where the synthetic cohort of `profile` lives (ALZ_DATA_DIR overrides); version 1 in `<name>-v1`."""
    override = os.environ.get("ALZ_DATA_DIR")
    if override:
        return Path(override)
    return DATA_DIR / "synthetic" / (profile.name if profile.cohort_version == "2" else f"{profile.name}-v1")


def site_b_data_dir(profile: Profile) -> Path:
    """Return where the synthetic cohort's second site (site B, version 2 only) lives: beside site A's folder."""
    site_a = default_data_dir(profile)
    return site_a.with_name(f"{site_a.name}-site-B")


@dataclass(frozen=True)
class OutputPaths:
    """Every file and folder a run writes, under its run folder `outputs/<profile>/<data-name>-<split>/`."""

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.parquet"

    @property
    def ingestion_report(self) -> Path:
        return self.root / "ingestion_report.json"

    @property
    def cohort_calibration(self) -> Path:
        return self.root / "cohort_calibration.json"

    @property
    def eda(self) -> Path:
        return self.root / "eda"

    @property
    def preprocessing(self) -> Path:
        return self.root / "preprocessing"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def features(self) -> Path:
        return self.root / "features"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def training(self) -> Path:
        return self.root / "training"

    @property
    def evaluation(self) -> Path:
        return self.root / "evaluation"

    @property
    def gradcam(self) -> Path:
        return self.root / "gradcam"

    @property
    def comparison(self) -> Path:
        return self.root / "comparison"

    @property
    def robustness(self) -> Path:
        return self.root / "robustness"

    @property
    def folds(self) -> Path:
        return self.root / "folds"

    @property
    def crossval(self) -> Path:
        return self.root / "crossval"

    @property
    def notebooks(self) -> Path:
        return self.root / "notebooks"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def report_screenshots(self) -> Path:
        return self.root / "report_screenshots"

    @property
    def run_summary(self) -> Path:
        return self.root / "run_summary.json"

    @property
    def run_metadata(self) -> Path:
        return self.root / "run_metadata.json"


def data_name(data_dir: str | os.PathLike | None, profile: Profile | str) -> str:
    """Return the short name of a data set: `synthetic` for the embedded cohort (`synthetic-v1` for its version 1),
    else its folder's name as a slug."""
    profile = get_profile(profile) if isinstance(profile, str) else profile
    if data_dir is None or Path(data_dir).expanduser().resolve() == default_data_dir(profile).resolve():
        return "synthetic" if profile.cohort_version == "2" else f"synthetic-v{profile.cohort_version}"
    slug = re.sub(r"[^A-Za-z0-9._]+", "_", Path(data_dir).expanduser().resolve().name).strip("._")
    return slug or "data"


def run_name(data_dir: str | os.PathLike | None, profile: Profile | str, split: str = "subject") -> str:
    """Return the run folder's name, `<data-name>-<split>` (e.g. `synthetic-subject`)."""
    return f"{data_name(data_dir, profile)}-{split}"


def output_paths(profile: Profile | str, data_dir: str | os.PathLike | None = None,
                 split: str = "subject") -> OutputPaths:
    """Return the output paths of one run: `outputs/<profile>/<data-name>-<split>/`.

    Each data set and split policy gets its own run folder under the profile's, so a run on another data set never
    replaces the last one; `outputs/<profile>/` stays the parent of every run of that profile.
    """
    name = profile if isinstance(profile, str) else profile.name
    return OutputPaths(outputs_root() / name / run_name(data_dir, profile, split))


@dataclass(frozen=True)
class Settings:
    """The parameters a notebook runs with, checked and resolved."""

    profile: Profile
    seed: int
    data_dir: Path
    split: str
    epochs: int
    weights: str | None
    deterministic: bool
    paths: OutputPaths
    folds: int = 1
    external_data: Path | None = None
    models: tuple[str, ...] = MODEL_NAMES

    @property
    def synthetic(self) -> bool:
        """True when the data is the embedded synthetic cohort."""
        return self.data_dir.resolve() == default_data_dir(self.profile).resolve()

    def to_dict(self) -> dict:
        """Return the settings as a JSON-ready dict."""
        return {
            "profile": self.profile.name,
            "seed": self.seed,
            "data_dir": str(self.data_dir),
            "split": self.split,
            "epochs": self.epochs,
            "weights": self.weights,
            "deterministic": self.deterministic,
            "folds": self.folds,
            "external_data": str(self.external_data) if self.external_data else None,
            "models": list(self.models),
            "cohort_version": self.profile.cohort_version if self.synthetic else None,
            "synthetic": self.synthetic,
            "outputs": str(self.paths.root),
        }


def load_settings(
    profile: str | None = None,
    seed: int = DEFAULT_SEED,
    data_dir: str | os.PathLike | None = None,
    split: str = "subject",
    epochs: int | None = None,
    weights: str | None = None,
    deterministic: bool = False,
    folds: int | None = None,
    external_data: str | os.PathLike | None = None,
    models: str | Sequence[str] | None = None,
) -> Settings:
    """Check the notebook parameters and resolve defaults; raise ValueError naming a bad one."""
    resolved = get_profile(profile)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"SEED must be a non-negative integer, got {seed!r}.")
    if split not in SPLIT_POLICIES:
        raise ValueError(f"SPLIT must be one of {SPLIT_POLICIES}, got {split!r}.")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise ValueError(f"EPOCHS must be a positive integer or None, got {epochs!r}.")
    if not isinstance(deterministic, bool):
        raise ValueError(f"DETERMINISTIC must be True or False, got {deterministic!r}.")
    if folds is not None and (isinstance(folds, bool) or not isinstance(folds, int) or folds < 1):
        raise ValueError(f"FOLDS must be a positive integer (1: the single split only) or None, got {folds!r}.")
    if weights is not None and weights not in ("imagenet", "none") and not Path(weights).is_file():
        raise ValueError(f"WEIGHTS must be 'imagenet', 'none' or the path of a weights file; {weights!r} is none "
                         f"of these.")
    if external_data is not None and not Path(external_data).expanduser().is_dir():
        raise ValueError(f"EXTERNAL_DATA must be None or the root folder of a data set to test on, got "
                         f"{str(external_data)!r}, which is not a folder.")
    if epochs is not None:
        resolved = replace(resolved, epochs=epochs, warmup_epochs=min(resolved.warmup_epochs, epochs), model_epochs={})
    return Settings(
        profile=resolved,
        seed=seed,
        data_dir=Path(data_dir).expanduser() if data_dir else default_data_dir(resolved),
        split=split,
        epochs=resolved.epochs,
        weights=weights,
        deterministic=deterministic,
        paths=output_paths(resolved, data_dir, split),
        folds=resolved.folds if folds is None else folds,
        external_data=Path(external_data).expanduser() if external_data else None,
        models=parse_models(models),
    )


def parse_models(models: str | Sequence[str] | None) -> tuple[str, ...]:
    """Return the models a run trains and evaluates, in ALL_MODEL_NAMES order; raise ValueError naming a bad one.

    None or "default": the four of the design (MODEL_NAMES); "all": every model (ALL_MODEL_NAMES); else names,
    comma-separated or a list. REFERENCE_MODEL_NAME is always among them (the controls and comparisons need it).
    """
    if models is None or (isinstance(models, str) and models.strip().lower() in ("", "default")):
        return MODEL_NAMES
    if isinstance(models, str) and models.strip().lower() == "all":
        return ALL_MODEL_NAMES
    names = [part.strip() for part in models.split(",")] if isinstance(models, str) else list(models)
    unknown = [name for name in names if name not in ALL_MODEL_NAMES]
    if unknown or not names:
        raise ValueError(f"MODELS: unknown model {', '.join(map(repr, unknown)) or '(none given)'}: expected "
                         f"'default', 'all' or comma-separated names among {', '.join(ALL_MODEL_NAMES)}.")
    wanted = {REFERENCE_MODEL_NAME, *names}
    return tuple(name for name in ALL_MODEL_NAMES if name in wanted)

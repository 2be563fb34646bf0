"""Run the pipeline notebooks in order with papermill: selection, resume, timing, fail-fast and one run per folder."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from alzlib import backend, config, freshness, pipeline
from alzlib.storage import read_json, write_json

NOTEBOOK_PATTERN = re.compile(r"^(\d{2})_[a-z0-9_]+\.ipynb$")
# The notebook that builds the manifest from the data folder: the data fingerprint is taken when it succeeds.
INGESTION_NUMBER = "01"
LOCK_NAME = ".run.lock"
# absl's format (severity, date, time, thread, file:line]); before TensorFlow initialises absl, these lines
# ignore TF_CPP_MIN_LOG_LEVEL (oneDNN's notice, twice per kernel), so the runner applies that level itself.
ABSL_LINE = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\S+\s+\d+ \S+:\d+\] ")
ABSL_BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
ABSL_SEVERITIES = "IWEF"
# Other library lines that tell the user nothing: nbconvert's alt-text lint, logged by the kernel each time notebook
# 13 renders the executed notebooks to HTML (figures made by the pipeline have no alt text to give).
KERNEL_NOISE = (re.compile(r"^\[IPKernelApp\] WARNING \| Alternative text is missing on \d+ image\(s\)\.\s*$"),)


class NotebookFailed(RuntimeError):
    """A notebook raised; carries the path of the executed copy that shows where."""

    def __init__(self, name: str, executed_path: Path, cause: BaseException):
        self.name, self.executed_path = name, executed_path
        summary = getattr(cause, "ename", type(cause).__name__)
        detail = getattr(cause, "evalue", str(cause))
        super().__init__(f"{name} failed ({summary}: {detail}). See the executed notebook: {executed_path}")


class NotebookInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the run while `name` was executing (recorded as interrupted in run_summary.json)."""

    def __init__(self, name: str):
        self.name = name
        super().__init__(f"interrupted during {name}")


class OutputsLocked(RuntimeError):
    """Another run holds the lock on an output folder."""


@dataclass(frozen=True)
class NotebookStep:
    """One pipeline notebook: its number, name, source path and the parameters it adds to the run's (the system
    notebook's MODEL)."""

    number: str
    name: str
    path: Path
    parameters: dict = field(default_factory=dict, compare=False, hash=False)


def discover_notebooks(notebook_dir: Path = config.NOTEBOOKS_DIR) -> list[NotebookStep]:
    """Return the pipeline notebooks `NN_verb_noun.ipynb` in order."""
    steps = [NotebookStep(match.group(1), path.stem, path) for path in sorted(Path(notebook_dir).glob("*.ipynb"))
             if (match := NOTEBOOK_PATTERN.match(path.name))]
    if not steps:
        raise FileNotFoundError(f"No notebooks named NN_name.ipynb in {notebook_dir}.")
    return steps


def parse_numbers(text: str | None) -> list[str]:
    """Parse '1,3' or '01,03' into ['01', '03']; raise ValueError on anything else."""
    if not text:
        return []
    numbers = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit():
            raise ValueError(f"Notebook numbers must look like 01 or 1,3; got {text!r}.")
        numbers.append(f"{int(part):02d}")
    return numbers


def select_notebooks(steps: list[NotebookStep], only: str | None = None,
                     start: str | None = None) -> list[NotebookStep]:
    """Keep the steps named by `only` (NN[,NN]) or those from `start` (NN) on."""
    known = {step.number for step in steps}
    wanted = parse_numbers(only) + parse_numbers(start)
    unknown = sorted(set(wanted) - known)
    if unknown:
        raise ValueError(f"No notebook numbered {', '.join(unknown)}; available: {', '.join(sorted(known))}.")
    if only:
        steps = [step for step in steps if step.number in parse_numbers(only)]
    if start:
        first = parse_numbers(start)[0]
        steps = [step for step in steps if step.number >= first]
    return steps


def with_models(steps: list[NotebookStep], models: tuple[str, ...],
                notebook_dir: Path = config.NOTEBOOKS_DIR) -> list[NotebookStep]:
    """Return `steps` for the run's models (config.parse_models): a design model's training notebook (06-08) runs only
    when selected, and the system notebook runs once per selected extra system, after 08, as `08_train_<name>`.

    05 always runs (the reference model, the controls and the linear baseline). The system steps carry number 08,
    so `--only 08` and `--from 08` include them and `--from 09` does not.
    """
    extras = [name for name in models if name in config.EXTRA_MODEL_NAMES]
    kept = [step for step in steps if TRAINED_IN.get(step.number) in (None, config.REFERENCE_MODEL_NAME)
            or TRAINED_IN[step.number] in models]
    if not extras or not any(step.number == "08" for step in steps):
        return kept
    source = Path(notebook_dir) / pipeline.SYSTEM_NOTEBOOK
    if not source.is_file():
        raise FileNotFoundError(f"{source} does not exist: it trains the extra systems ({', '.join(extras)}).")
    systems = [NotebookStep("08", f"08_train_{name}", source, {"MODEL": name}) for name in extras]
    after = max((index for index, step in enumerate(kept) if step.number <= "08"), default=-1) + 1
    return kept[:after] + systems + kept[after:]


def executed_path(step: NotebookStep, paths: config.OutputPaths) -> Path:
    """Return where the executed copy of `step` is written."""
    return paths.notebooks / f"{step.name}.ipynb"


def is_up_to_date(step: NotebookStep, paths: config.OutputPaths, summary: dict, parameters: dict,
                  newer_than: float, data_fingerprint: dict | None = None) -> bool:
    """True when `step` last succeeded with these parameters, after its source and all earlier steps changed.

    With `data_fingerprint` (the data folder's now), also only while it matches the one taken when 01 last
    succeeded: files added to, removed from or changed in the data folder make every notebook out of date.
    """
    record = next((entry for entry in summary.get("notebooks", []) if entry.get("name") == step.name), None)
    if not record or record.get("status") != "ok" or not same_parameters(summary.get("parameters"), parameters,
                                                                         step):
        return False
    if data_fingerprint is not None and (summary.get("data_fingerprint") or {}).get("digest") != \
            data_fingerprint["digest"]:
        return False
    output = executed_path(step, paths)
    if not output.is_file():
        return False
    written = output.stat().st_mtime
    return (_written_before_success(written, record) and written >= step.path.stat().st_mtime
            and written >= newer_than)


# The first notebook that reads MODELS (the run's selection): 09-13 score the selected models; 01-08 and each
# system's training (its MODEL is in its name) give the same result whatever else MODELS names, so `--models all
# --resume` after a default run trains the four systems and reruns 09-13 only.
SELECTION_READER = "09"


def same_parameters(recorded: dict | None, parameters: dict, step: NotebookStep | None = None) -> bool:
    """True when `recorded` equals the run's `parameters`, MODELS aside for a step before SELECTION_READER."""
    if not isinstance(recorded, dict):
        return False
    if step is not None and step.number >= SELECTION_READER:
        return recorded == parameters
    return {**recorded, "MODELS": None} == {**parameters, "MODELS": None}


def _written_before_success(written: float, record: dict) -> bool:
    """True when the executed copy predates the record's `finished` time (written only after success).

    A later copy comes from a rerun that never recorded its end (killed, crashed); `finished` is kept to the
    second, so the copy may be up to a second newer than it says.
    """
    try:
        finished = datetime.fromisoformat(record["finished"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return False
    return written < finished + 1.0


def load_summary(paths: config.OutputPaths) -> dict:
    """Return the last run summary, or an empty one."""
    return read_json(paths.run_summary) if paths.run_summary.is_file() else {}


def data_folder(parameters: dict) -> Path:
    """Return the data folder the run's parameters name (DATA_DIR, else the profile's synthetic cohort)."""
    if parameters.get("DATA_DIR"):
        return Path(parameters["DATA_DIR"]).expanduser()
    return config.default_data_dir(config.get_profile(parameters["PROFILE"]))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _command_line() -> str:
    return " ".join([Path(sys.executable).name, *sys.argv])


def _describe_lock_holder(lock_path: Path) -> str:
    """Return 'pid N, started T: command' from a lock file, or a placeholder while the holder is still writing it."""
    try:
        holder = json.loads(lock_path.read_text())
        return f"pid {holder['pid']}, started {holder['started']}: {holder['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "details not written yet"


@contextlib.contextmanager
def lock_outputs(root: Path, command: str | None = None) -> Iterator[Path]:
    """Hold an exclusive lock on the output folder `root` for one run; raise OutputsLocked if another run holds it.

    flock is released by the operating system when the holder exits in any way (Ctrl-C, crash, kill -9), so a
    stale lock file never blocks a later run. The file stays: deleting it would let two runs lock two files.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    lock_path = root / LOCK_NAME
    if os.name != "posix":  # no flock; Windows runs go unguarded
        yield lock_path
        return
    import fcntl

    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputsLocked(f"{root} is in use by another run ({_describe_lock_holder(lock_path)}); wait for "
                                f"it to end, or point ALZ_OUTPUTS_DIR at another folder.") from None
        handle.truncate(0)
        handle.write(json.dumps({"pid": os.getpid(), "started": _now(), "command": command or _command_line()}))
        handle.flush()
        try:
            yield lock_path
        finally:
            handle.truncate(0)


@contextlib.contextmanager
def kernel_folder() -> Iterator[Path]:
    """Yield a private temporary folder (mode 700) for kernel connection files and IPC sockets; remove it after."""
    with tempfile.TemporaryDirectory(prefix="alz-kernels-", ignore_cleanup_errors=True) as folder:
        yield Path(folder)


def is_kernel_log_noise(line: str, min_log_level: int) -> bool:
    """True for an absl-format line (or absl's pre-initialisation banner) below TF_CPP_MIN_LOG_LEVEL, or a line of
    KERNEL_NOISE."""
    if any(pattern.match(line) for pattern in KERNEL_NOISE):
        return True
    if line.startswith(ABSL_BANNER):
        return min_log_level > ABSL_SEVERITIES.index("W")
    match = ABSL_LINE.match(line)
    return bool(match) and ABSL_SEVERITIES.index(match.group(1)) < min_log_level


def _tensorflow_log_level() -> int:
    level = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0")
    return int(level) if level.isdigit() else 0


def _forward_kernel_stderr(read_end: int) -> threading.Thread:
    """Copy a kernel's stderr to ours line by line, without the start-up lines TF_CPP_MIN_LOG_LEVEL hides."""
    min_log_level = _tensorflow_log_level()

    def forward() -> None:
        with open(read_end, "rb") as stream:
            for raw in stream:
                line = raw.decode(errors="replace")
                if not is_kernel_log_noise(line, min_log_level):
                    sys.stderr.write(line)
                    sys.stderr.flush()

    thread = threading.Thread(target=forward, name="kernel-stderr", daemon=True)
    thread.start()
    return thread


class StoppedByCtrlC(RuntimeError):
    """Raised inside nbclient after Ctrl-C: an ordinary exception, so that nbclient shuts the kernel down cleanly."""


@dataclass
class KernelWatch:
    """What execute_notebook keeps of its kernels: where their files go, their stderr forwarders, their process
    groups (to pass Ctrl-C on) and whether Ctrl-C was pressed."""

    folder: Path
    forwarders: list[threading.Thread] = field(default_factory=list)
    process_groups: list[int] = field(default_factory=list)
    interrupted: bool = False

    def interrupt(self) -> None:
        """Interrupt the running cell (as Jupyter's stop button does) and stop the notebook before its next cell."""
        self.interrupted = True
        for group in self.process_groups:
            with contextlib.suppress(OSError):
                os.killpg(group, signal.SIGINT)

    def stop_if_interrupted(self, **_) -> None:
        """nbclient's on_cell_start hook: a Ctrl-C that fell between two cells stops the notebook here."""
        if self.interrupted:
            raise StoppedByCtrlC("stopped before the next cell")


@contextlib.contextmanager
def _ctrl_c_interrupts_kernel(watch: KernelWatch) -> Iterator[None]:
    """Within the block, the first Ctrl-C calls `watch.interrupt()`; a second one stops the runner at once.

    A KeyboardInterrupt raised inside nbclient's event loop orphans its tasks: the kernel is shut down under a
    waiting cell and asyncio prints half a page about a dead kernel. Interrupting the cell instead ends the
    notebook through papermill's ordinary error path, executed copy written.
    """
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is signal.SIG_IGN:
        yield
        return

    def interrupt(signum, frame) -> None:
        signal.signal(signal.SIGINT, previous)
        watch.interrupt()

    signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _kernel_manager_class(watch: KernelWatch):
    """Return a kernel manager whose connection file and IPC sockets live in `watch.folder`, never in notebooks/.

    IPC sockets (POSIX) rather than TCP: ipykernel warns on every start that TCP traffic is unencrypted, and
    sockets in a private folder are reachable by this user only. jupyter_client names the sockets after the
    connection file (`<file>-ipc-1..5`); by default both are relative names resolved in papermill's cwd (the
    notebooks folder), where two runs from one checkout took each other's sockets ("Invalid Signature").
    The kernel's stderr goes through `_forward_kernel_stderr`.
    """
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import CaselessStrEnum, default

    class PrivateKernelManager(AsyncKernelManager):
        transport = CaselessStrEnum(["tcp", "ipc"], default_value="ipc" if os.name == "posix" else "tcp",
                                    config=True)

        @default("connection_file")
        def _private_connection_file(self) -> str:
            # Short name: a Unix socket path (folder + name + "-ipc-N") must stay under 108 bytes.
            return str(Path(watch.folder) / f"kernel-{uuid.uuid4().hex[:8]}.json")

        async def _async_launch_kernel(self, kernel_cmd: list[str], **kw) -> None:
            read_end, write_end = os.pipe()
            try:
                await super()._async_launch_kernel(kernel_cmd, stderr=write_end, **kw)
            except BaseException:
                os.close(read_end)
                raise
            finally:
                os.close(write_end)
            watch.forwarders.append(_forward_kernel_stderr(read_end))
            if getattr(self.provisioner, "pgid", None):
                watch.process_groups.append(self.provisioner.pgid)

        async def _async_interrupt_kernel(self) -> None:
            # jupyter_client sends SIGINT before every shutdown; landing in ipykernel's message loop, it logged
            # "KeyboardInterrupt caught in kernel" after 2 of 45 successful notebooks (0 of 30 without). The
            # kernel is idle by then, and the shutdown request (then SIGTERM, SIGKILL) stops it anyway.
            if not self.shutting_down:
                await super()._async_interrupt_kernel()

    return PrivateKernelManager


def execute_notebook(step: NotebookStep, paths: config.OutputPaths, parameters: dict, kernel: str | None,
                     kernel_dir: Path | None = None) -> float:
    """Execute one notebook with papermill; return its wall time in seconds.

    Raises NotebookFailed, or NotebookInterrupted after Ctrl-C. Kernel files go to `kernel_dir` (default: a
    temporary folder for this call); the kernel's cwd stays the notebook's folder.
    """
    import papermill

    output = executed_path(step, paths)
    output.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        watch = KernelWatch(kernel_dir or stack.enter_context(kernel_folder()))
        try:
            with _ctrl_c_interrupts_kernel(watch):
                papermill.execute_notebook(str(step.path), str(output), parameters={**parameters, **step.parameters},
                                           kernel_name=kernel, cwd=str(step.path.parent), progress_bar=False,
                                           log_output=False,
                                           kernel_manager_class=_kernel_manager_class(watch),
                                           on_cell_start=watch.stop_if_interrupted)
        except Exception as error:  # papermill wraps cell errors; any failure stops the run here
            if watch.interrupted:
                raise NotebookInterrupted(step.name) from error
            raise NotebookFailed(step.name, output, error) from error
        finally:
            for forwarder in watch.forwarders:  # the kernel's last stderr lines print before the runner's next
                forwarder.join(timeout=2.0)
    if watch.interrupted:  # pressed as the last cell ended: recorded as interrupted all the same
        raise NotebookInterrupted(step.name)
    return time.perf_counter() - started


# The training notebooks: the run's remaining time is estimated before the first of them runs.
TRAINING_NUMBERS = ("05", "06", "07", "08")
# Each notebook's time as fixed seconds (kernel start, TensorFlow import, tracing, saving, scoring) plus seconds
# per unit of work at 64 px on 2 cores: a line through two runs on the same 2-core machine, the default cpu run
# (720 images, 504 train, 4 epochs; docs/benchmarks.md and the control models' records) and a smoke run (76
# images, 44 train, 1 epoch; measured while the machine was shared, so fixed costs lean high). The per-image
# costs include each epoch's validation, batch-norm re-estimation and the first epoch's extra time: the baseline
# CNN trains at about 170 images/s, ResNet50 at 5 (every layer trained: no ImageNet file offline), EfficientNetB0
# at 20. Units: training images x epochs (05-08), evaluated images (val + test) x 5 models (09), Grad-CAM
# images x 4 models (10), models (11), robustness images x 4 models, every corruption and severity (12).
TRAINED_IN = {"05": "baseline_cnn", "06": "resnet50", "07": "resnet50_attention", "08": "efficientnetb0"}
NOTEBOOK_COSTS = {"05": (15.0, 0.0047), "06": (73.0, 0.033), "07": (29.0, 0.040), "08": (41.0, 0.021),
                  "09": (16.5, 0.0094), "10": (0.0, 2.15), "11": (20.0, 0.875), "12": (34.0, 0.215), "13": (8.4, 0.0)}
# Those costs were fitted on the default cpu run of 2026-12-06 (idle 2-core machine, notebooks 05-13 in 866 s); 10's
# was refitted on the run after Grad-CAM gained its nulls and cascade (51.5 s for 6 images x 4 models). 06-08 were
# refitted as lines through that run (about 2,000 units) and two Kaggle-size runs (6,000 units: 1,500 thinned
# training images x 4 epochs; 06 272 s, 07 270 s, 08 167 s on average, machine shared): the line through the smoke
# run put too much on each image and overestimated the Kaggle-size transfer models 1.7x.
# Machines of one kind differ by up to 2x between sessions, so every estimate is scaled by a speed probe measured
# just before it (SPEED_PROBE: the baseline CNN's train step at 64 px, batch 16) against the probe on that machine.
SPEED_REFERENCE_SECONDS = 0.061  # measured idle on that machine: 0.059-0.062 s per step
SPEED_FACTOR_BOUNDS = (0.25, 4.0)
# The extra systems' training (the system notebook, one step per system): fixed seconds (kernel, cache, building,
# saving, the first epoch's tracing) plus seconds per training image-epoch at 64 px on 2 cores, measured on
# 2026-12-07 from the second of two epochs of 256 images at batch 16 with each recipe's augmentation (random
# weights; the ResNet50 backbone then trains whole). The ViT's search adds, per trial, SEARCH_TRIAL_SECONDS (a
# model built, compiled and scored) and its epochs at the ViT's per-image cost: the cpu run with --models all took
# 584 s for 36 one-epoch trials of 1,008 images. That run's system notebooks took 89, 59, 147 and 622 s against
# estimates of 91, 69, 155 and 430 s (the last with 6 s per trial).
SYSTEM_COSTS = {"alexnet": (25.0, 0.0163), "convnext_scratch": (30.0, 0.0097), "resnet50_frozen": (45.0, 0.0274),
                "vit": (25.0, 0.0047)}
SEARCH_TRIAL_SECONDS = 11.5
# Each leakage-control model (notebook 05): 5 s to build, trace and score, then per epoch a fixed 0.67 s (validation,
# batch-norm re-estimation, callbacks) and 0.00032 s per training image at the control's 32 px: a line through the
# cpu run's records (49-58 s for 60 epochs of 504 images) and a Kaggle-size run's (about 78 s for 60 epochs of
# 1,704); a cost per image alone overestimated the Kaggle-size controls 2x.
CONTROL_MODEL_COST = (5.0, 0.67, 0.00032)
CONTROL_REFERENCE_SIZE = 32
REFERENCE_CORES = 2
REFERENCE_IMAGE_SIZE = 64
# Each cross-validation fold (alzlib.crossval): a model trains on about (K-1)/K x 85% of the images (at most the
# profile's fold_train_images) at its notebook's per-image cost, plus FOLD_MODEL_SECONDS to build, score and write
# it; the linear baseline costs LINEAR_FOLD_SECONDS per fit (its 4 values of C on at most a few thousand images).
FOLD_MODEL_SECONDS = 8.0
LINEAR_FOLD_SECONDS = 4.0
# 05's cost per image-epoch was refitted on the default cpu run of 2026-12-07 (cohort v2, 1,440 images; the baseline
# CNN 24 epochs on the single split and on 5 folds, about 142,000 image-epochs): 918 s, where 0.006 predicted 1,188 s
# at the speed of the other notebooks (which ran at 0.92 of their costs); 0.0047 predicts 05-13 at 1,818 s against
# the 1,702 s measured.
# Run-to-run spread of those measurements (ResNet epochs 72-80 s, control models 94-111 s), a busy machine and the
# speed probe's own error: in that run it read 1.24 while the notebooks ran at 0.92 of their costs, hence 0.7.
ESTIMATE_SPREAD = (0.7, 1.3)


def _work_units(number: str, profile: config.Profile, images: int, train_images: int, models: int = 4) -> float:
    """Return the units of work notebook `number` does, in NOTEBOOK_COSTS' terms, for `models` trained models."""
    evaluated = images - train_images
    if number in TRAINED_IN:
        limit = profile.transfer_train_images if TRAINED_IN[number] != "baseline_cnn" else None
        # transfer models train on a thinned set
        return min(train_images, limit or train_images) * profile.epochs_for(TRAINED_IN[number])
    return {"09": evaluated * (models + 1), "10": profile.gradcam_images * models, "11": models,
            "12": min(profile.robustness_images, evaluated) * models, "13": 0}[number]


def _fold_seconds(number: str, profile: config.Profile, images: int, folds: int) -> float:
    """Return the seconds the cross-validation folds of notebook `number` train for (0 where it has none)."""
    from alzlib import crossval, linear

    name = TRAINED_IN.get(number)
    if folds < 2 or name is None:
        return 0.0
    per_fold = images * (folds - 1) / folds * (1 - crossval.VALIDATION_FRACTION)
    units = min(per_fold, profile.fold_train_images or per_fold) * profile.epochs_for(name)
    pixels = (profile.image_size / REFERENCE_IMAGE_SIZE) ** 2
    seconds = folds * (FOLD_MODEL_SECONDS + NOTEBOOK_COSTS[number][1] * pixels * units) if (
        name in profile.fold_models) else 0.0
    if number == "05" and linear.NAME in profile.fold_models:
        seconds += (folds + 1) * LINEAR_FOLD_SECONDS  # its folds and its single-split fit
    return seconds


def _control_seconds(profile: config.Profile, control_models: int, control_train_images: int) -> float:
    """Return the seconds the leakage-control models of notebook 05 train for."""
    fixed, per_epoch, per_image = CONTROL_MODEL_COST
    pixels = (profile.control_image_size / CONTROL_REFERENCE_SIZE) ** 2  # the controls train at their own size
    return control_models * (fixed + profile.control_epochs * (per_epoch + control_train_images * per_image) * pixels)


def _core_range(seconds: float, cpu_count: int) -> tuple[float, float]:
    """Return (low, high) seconds on `cpu_count` cores for `seconds` measured on REFERENCE_CORES."""
    # Never faster than linear in cores, and TensorFlow's small CPU batches stop scaling well before 8 cores.
    cores = max(cpu_count, 1)
    slower = max(1.0, REFERENCE_CORES / cores)
    faster = min(1.0, REFERENCE_CORES / min(cores, 8))
    return seconds * ESTIMATE_SPREAD[0] * faster * slower, seconds * ESTIMATE_SPREAD[1] * slower


def measure_speed(steps: int = 12) -> float:
    """Return the seconds of one baseline-CNN train step at 64 px, batch 16, on this machine (after a warm-up)."""
    import numpy as np

    with config._native_stderr_silenced():
        import keras

        from alzlib import models
    model, _ = models.build_model("baseline_cnn", 4, 64, "none")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    images = np.random.default_rng(0).random((16, 64, 64, 3), dtype=np.float32)
    labels = np.arange(16) % 4
    for _ in range(3):  # tracing and first-call costs
        model.train_on_batch(images, labels)
    started = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(images, labels)
    keras.backend.clear_session()
    return (time.perf_counter() - started) / steps


def speed_factor(step_seconds: float) -> float:
    """Return how much slower than the reference machine this one is (bounded: a probe is no benchmark)."""
    return float(min(max(step_seconds / SPEED_REFERENCE_SECONDS, SPEED_FACTOR_BOUNDS[0]), SPEED_FACTOR_BOUNDS[1]))


def estimate_run(profile: config.Profile, images: int, train_images: int, numbers: list[str], cpu_count: int = 2,
                 shipped_split: bool = False, speed: float = 1.0, folds: int | None = None,
                 systems: tuple[str, ...] = (), models: int | None = None) -> dict:
    """Estimate the seconds notebooks `numbers` (05-13) take for `images` ingested images on `cpu_count` cores.

    Per-image costs scale with the pixels of the profile's image size; the controls train 4 models (6 when the
    data ship a split) of at most `profile.control_images` images for `control_epochs` each; `folds` (None: the
    profile's) cross-validation folds add the profile's fold models' training (05-08). `systems`: the extra systems
    the system notebook trains (keyed '08 <name>'); `models` (None: 4 plus the systems): the trained models 09-12
    score. Returns per-notebook seconds, the total, a low-high range and the line to print.
    """
    if images < 1 or not 0 < train_images <= images:
        raise ValueError(f"Expected images >= 1 and 0 < train_images <= images; got {images} and {train_images}.")
    pixels = (profile.image_size / REFERENCE_IMAGE_SIZE) ** 2
    control_train = round(min(images, profile.control_images) * train_images / images)
    control_models = 6 if shipped_split else 4
    models = len(config.MODEL_NAMES) + len(systems) if models is None else models
    seconds = {number: NOTEBOOK_COSTS[number][0] + NOTEBOOK_COSTS[number][1] * pixels
               * _work_units(number, profile, images, train_images, models) for number in numbers
               if number in NOTEBOOK_COSTS}
    folds = profile.folds if folds is None else folds
    if "05" in seconds:
        seconds["05"] += _control_seconds(profile, control_models, control_train)
    for number in seconds:
        seconds[number] += _fold_seconds(number, profile, images, folds)
    for name in systems:  # after 08, in run order
        trained = min(train_images, profile.transfer_train_images or train_images)
        fixed, per_unit = SYSTEM_COSTS[name]
        seconds[f"08 {name}"] = fixed + per_unit * pixels * trained * profile.epochs_for(name)
        if name == "vit":  # its hyperparameter search first
            seconds[f"08 {name}"] += profile.search_trials * (
                SEARCH_TRIAL_SECONDS + per_unit * pixels * trained * profile.search_epochs)
    seconds = dict(sorted(seconds.items()))
    seconds = {number: value * speed for number, value in seconds.items()}
    low, high = _core_range(sum(seconds.values()), cpu_count)
    estimate = {"notebooks": {number: round(value, 1) for number, value in seconds.items()},
                "seconds": round(sum(seconds.values()), 1), "low_seconds": round(low, 1),
                "high_seconds": round(high, 1), "images": images, "train_images": train_images,
                "image_size": profile.image_size, "epochs": profile.epochs,
                "model_epochs": {name: profile.epochs_for(name) for name in (*TRAINED_IN.values(), *systems)
                                 if profile.epochs_for(name) != profile.epochs},
                "control_models": control_models,
                "control_epochs": profile.control_epochs, "control_train_images": control_train,
                "folds": folds, "fold_models": list(profile.fold_models) if folds > 1 else [],
                "cpu_count": cpu_count, "speed_factor": round(speed, 3),
                "basis": f"costs measured on {REFERENCE_CORES} cores at {REFERENCE_IMAGE_SIZE} px "
                         f"(alzlib.runner.NOTEBOOK_COSTS), scaled by pixels and by this machine's speed probe; "
                         f"CPU only"}
    return {**estimate, "line": describe_estimate(estimate)}


def format_duration(seconds: float) -> str:
    """Return seconds as '45 s', '12 min' or '3.5 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def describe_estimate(estimate: dict) -> str:
    """Return the one console line of an estimate from `estimate_run`."""
    numbers = list(estimate["notebooks"])
    largest = max(numbers, key=estimate["notebooks"].get)
    low, high = format_duration(estimate["low_seconds"]), format_duration(estimate["high_seconds"])
    span = f"{numbers[0]}-{numbers[-1]}" if len(numbers) > 1 else numbers[0]
    return (f"estimated {low} to {high} for {span} on this machine ({estimate['cpu_count']} cores, CPU): "
            f"{estimate['images']:,} images ({estimate['train_images']:,} train) x {_epochs(estimate['epochs'])} per "
            f"model{_own_epochs(estimate)} at {estimate['image_size']} px, {estimate['control_models']} control "
            f"models x {_epochs(estimate['control_epochs'])} of {estimate['control_train_images']:,}"
            f"{_folds(estimate)}; largest {largest} "
            f"(~{format_duration(estimate['notebooks'][largest])})")


def _folds(estimate: dict) -> str:
    models = estimate.get("fold_models") or []
    return f", {estimate['folds']} folds of {', '.join(models)}" if estimate.get("folds", 1) > 1 and models else ""


def _own_epochs(estimate: dict) -> str:
    """Return ' (baseline_cnn 24)' for models with their own epoch budget, else ''."""
    own = estimate.get("model_epochs") or {}
    return f" ({', '.join(f'{name} {count}' for name, count in own.items())})" if own else ""


def _epochs(count: int) -> str:
    return f"{count} epoch{'' if count == 1 else 's'}"


def _cpu_count() -> int:
    """Return the cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def estimate_from_outputs(paths: config.OutputPaths, parameters: dict, steps: list[NotebookStep]) -> dict | None:
    """Return `estimate_run` for `steps`, the run's profile and models and the ingested data; None before ingestion."""
    numbers = [step.number for step in steps if step.number in NOTEBOOK_COSTS and not step.parameters]
    systems = tuple(step.parameters["MODEL"] for step in steps if step.parameters.get("MODEL") in SYSTEM_COSTS)
    if not (numbers or systems) or not paths.ingestion_report.is_file():
        return None
    report = read_json(paths.ingestion_report)
    counts = report.get("counts", {})
    profile = config.get_profile(parameters["PROFILE"])
    if parameters.get("EPOCHS"):
        profile = replace(profile, epochs=parameters["EPOCHS"], model_epochs={})
    shipped = bool((report.get("leakage_audit") or {}).get("shipped"))
    try:
        return estimate_run(profile, counts.get("images", 0), counts.get("per_split", {}).get("train", 0), numbers,
                            _cpu_count(), shipped, speed_factor(measure_speed()), parameters.get("FOLDS"), systems,
                            len(config.parse_models(parameters.get("MODELS"))))
    except ValueError:  # an empty or odd report: the notebooks will say what is wrong with it
        return None


def _write_summary(paths: config.OutputPaths, summary: dict, *entries: dict) -> None:
    """Write `summary` with `entries` appended to its notebooks (the summary itself is left as it was)."""
    write_json(paths.run_summary, {**summary, "notebooks": summary["notebooks"] + list(entries)})


def _with_headline(line: str, entry: dict) -> str:
    """Return a progress line followed by the notebook's headline, when it wrote one."""
    return f"{line}: {entry['headline']}" if entry.get("headline") else line


def _read_headline(step: NotebookStep, paths: config.OutputPaths) -> dict:
    """Return {'headline', 'warnings'} from the headline file `step` wrote, or {} when it wrote none."""
    path = pipeline.headline_path(paths, step.name)
    if not path.is_file():
        return {}
    try:
        written = read_json(path)
    except ValueError:
        return {"warnings": [f"{path} is not valid JSON"]}
    return {"headline": str(written.get("headline", "")),
            "warnings": [str(text) for text in written.get("warnings", [])]}


def collect_warnings(summary: dict) -> list[str]:
    """Return every notebook's warnings in the run, as 'notebook: warning' lines."""
    return [f"{entry['name']}: {warning}" for entry in summary.get("notebooks", [])
            for warning in entry.get("warnings", [])]


def run_pipeline(steps: list[NotebookStep], paths: config.OutputPaths, parameters: dict, kernel: str | None = None,
                 resume: bool = False, echo=None, keras_backend: str | None = None) -> dict:
    """Run `steps` with ALZ_PROFILE (and KERAS_BACKEND when `keras_backend` is given) set for their kernels,
    restoring the caller's environment afterwards.

    JAX's persistent compilation cache goes to the profile's cache folder unless JAX_COMPILATION_CACHE_DIR is set:
    measured on the smoke profile, a second ResNet50 training compiled from it took 100 s instead of 158 s, and
    notebooks 09-12 reload the same models.
    """
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(paths.cache / "xla")
    with environment_variable("ALZ_PROFILE", parameters["PROFILE"]), environment_variable("KERAS_BACKEND",
                                                                                           keras_backend), \
            environment_variable("JAX_COMPILATION_CACHE_DIR", cache):
        return _run_steps(steps, paths, parameters, kernel, resume, echo)


@contextlib.contextmanager
def environment_variable(name: str, value: str | None) -> Iterator[None]:
    """Set environment variable `name` to `value` (None: leave it) for the block, then restore it."""
    saved = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        # A caller in the same process (a test session, a notebook) must not inherit this run's settings.
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


def _run_steps(steps: list[NotebookStep], paths: config.OutputPaths, parameters: dict, kernel: str | None,
               resume: bool, echo) -> dict:
    """Run `steps` in order, record each one's time and headline in run_summary.json, stop at the first failure or
    Ctrl-C. `echo` prints progress (default: print, flushed).

    Each notebook is recorded as running before it starts and as ok, with its `finished` time, only after it
    succeeded, so `--resume` never takes an interrupted or killed notebook as done. The data folder's fingerprint,
    taken when 01 succeeds, is kept beside the parameters: `--resume` reruns everything once the data changed.
    Before the first training notebook runs, the time of the rest of the run is estimated and recorded.
    """
    echo = echo or functools.partial(print, flush=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    previous = load_summary(paths)
    keras_backend = backend.requested_backend()
    if previous.get("backend", keras_backend) != keras_backend:
        previous = {}  # --resume reruns every notebook on another backend
    data_dir = data_folder(parameters)
    fingerprint = freshness.data_fingerprint(data_dir)
    kept_fingerprint = previous.get("data_fingerprint") if same_parameters(previous.get("parameters"),
                                                                           parameters) else None
    summary = {"profile": parameters["PROFILE"], "parameters": parameters, "data_fingerprint": kept_fingerprint,
               "kernel": kernel or "notebook default", "backend": keras_backend, "started": _now(),
               "status": "running", "notebooks": [], "total_seconds": 0.0}
    newer_than = 0.0
    with kernel_folder() as kernels:
        for index, step in enumerate(steps, start=1):
            label = f"[{index}/{len(steps)}] {step.name}"
            if resume and is_up_to_date(step, paths, previous, parameters, newer_than, fingerprint):
                kept = next(entry for entry in previous["notebooks"] if entry["name"] == step.name)
                echo(_with_headline(f"{label}: up to date, skipped (--resume)", kept))
                summary["notebooks"].append({**kept, "skipped": True})
                newer_than = max(newer_than, executed_path(step, paths).stat().st_mtime)
                continue
            if "estimate" not in summary and step.number in TRAINING_NUMBERS:
                estimate = estimate_from_outputs(paths, parameters, steps[index - 1:])
                if estimate:
                    summary["estimate"] = estimate
                    echo(estimate["line"])
            echo(f"{label}: running ...")
            record = {"name": step.name, "output": str(executed_path(step, paths)), "started": _now()}
            _write_summary(paths, summary, {**record, "status": "running"})
            pipeline.headline_path(paths, step.name).unlink(missing_ok=True)  # never show a previous run's news
            try:
                seconds = execute_notebook(step, paths, parameters, kernel, kernels)
            except NotebookFailed:
                summary["notebooks"].append({**record, "status": "failed"})
                summary.update(status="failed", failed=step.name, finished=_now())
                write_json(paths.run_summary, summary)
                raise
            except KeyboardInterrupt as interruption:
                summary["notebooks"].append({**record, "status": "interrupted"})
                summary.update(status="interrupted", interrupted=step.name, finished=_now())
                write_json(paths.run_summary, summary)
                raise NotebookInterrupted(step.name) from interruption
            if step.number == INGESTION_NUMBER:
                # Taken after 01 (which may have made the synthetic cohort); 01 also records its own, taken before
                # its scan, in the ingestion report, which every later notebook checks (pipeline.load_manifest).
                fingerprint = summary["data_fingerprint"] = freshness.data_fingerprint(data_dir)
            entry = {**record, "status": "ok", "seconds": round(seconds, 1), "finished": _now(),
                     **_read_headline(step, paths)}
            summary["notebooks"].append(entry)
            summary["total_seconds"] = round(sum(entry.get("seconds", 0) for entry in summary["notebooks"]
                                                 if not entry.get("skipped")), 1)
            write_json(paths.run_summary, summary)
            newer_than = time.time()
            echo(_with_headline(f"{label}: ok in {seconds:.1f} s", entry))
    if "estimate" in summary:
        summary["estimate"]["actual_seconds"] = _actual_seconds(summary, summary["estimate"]["notebooks"])
    summary.update(status="ok", finished=_now())
    write_json(paths.run_summary, summary)
    return summary


def _actual_seconds(summary: dict, numbers: dict) -> float:
    """Return the seconds the notebooks numbered in `numbers` ('08 alexnet': a system step) took in this run (skipped
    ones not counted)."""
    estimated = {key[:2] for key in numbers}
    return round(sum(entry.get("seconds", 0) for entry in summary["notebooks"]
                     if not entry.get("skipped") and entry["name"][:2] in estimated), 1)

#!/usr/bin/env python
"""Run the pipeline notebooks in order with papermill and build the HTML report.

    python run_all.py                      # the embedded synthetic cohort, `cpu` profile (`full` with a GPU)
    python run_all.py --profile smoke      # tiny, for a quick check
    python run_all.py --data /path/to/Alzheimer_s\\ Dataset --profile full
    python run_all.py --only 09,10         # re-run some notebooks; --from 05 runs 05 to the end
    python run_all.py --folds 1            # the single split only, no cross-validation
    python run_all.py --data /data/kaggle --external-data /data/oasis   # train on one set, also test on another
    python run_all.py --cohort-version 1   # the earlier synthetic cohort (no second site), for comparison
    python run_all.py --backend jax        # Keras on JAX (or torch); default: KERAS_BACKEND, else tensorflow
    python run_all.py --models all         # also the other published systems: AlexNet, ConvNeXt, frozen ResNet50, ViT

Each data set and split policy gets its own run folder, outputs/<profile>/<data-name>-<split>/ (the synthetic cohort:
outputs/cpu/synthetic-subject/); outputs/runs.csv and outputs/index.html list every run with its headline numbers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alzlib import backend, config, environment, freshness, runner, runs


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(config.PROFILES), default=None,
                        help="data size, image size and epochs (default: ALZ_PROFILE, else full with a GPU, cpu "
                             "without)")
    parser.add_argument("--data", type=Path, default=None,
                        help="data set root (default: the synthetic cohort, made on first use)")
    parser.add_argument("--split", choices=config.SPLIT_POLICIES, default="subject",
                        help="subject: leakage-safe subject-level split (default); shipped: the data set's own split; "
                             "slice: a random slice-level split that leaks subjects (demonstration only)")
    parser.add_argument("--seed", type=int, default=config.DEFAULT_SEED)
    parser.add_argument("--epochs", type=int, default=None, help="override the profile's epoch budget")
    parser.add_argument("--weights", choices=("imagenet", "none"), default=None,
                        help="transfer models: imagenet (default; Keras' cache or a download, random with a warning "
                             "when unavailable) or none (random weights)")
    parser.add_argument("--deterministic", action="store_true",
                        help="TensorFlow op determinism: identical reruns, somewhat slower")
    parser.add_argument("--folds", type=int, default=None,
                        help="subject-level cross-validation folds for the profile's fold models (default: the "
                             "profile's, 5 at cpu and full); 1: the single split only")
    parser.add_argument("--external-data", type=Path, default=None,
                        help="a second data set (its root, any layout --data takes) on which notebook 09 also tests "
                             "every model and reports the drop from the run's own test split; copies of the training "
                             "data are left out (default: the synthetic cohort's site B where the data are synthetic)")
    parser.add_argument("--cohort-version", choices=config.COHORT_VERSIONS, default=None,
                        help="version of the embedded synthetic cohort (default 2: focal evidence and a second site; "
                             "1: the earlier cohort); sets ALZ_COHORT_VERSION for every notebook")
    parser.add_argument("--models", default=None,
                        help="models to train and evaluate: default (the design's four), all (also "
                             f"{', '.join(config.EXTRA_MODEL_NAMES)}), or names, e.g. baseline_cnn,alexnet; "
                             "baseline_cnn, the controls and the linear baseline always run")
    parser.add_argument("--only", default=None, help="run only these notebooks, e.g. 01,03")
    parser.add_argument("--from", dest="start", default=None, help="run from this notebook on, e.g. 05")
    parser.add_argument("--backend", choices=backend.BACKENDS, default=None,
                        help="Keras backend of every notebook (sets KERAS_BACKEND for the kernels; default: "
                             "KERAS_BACKEND, else tensorflow)")
    parser.add_argument("--kernel", default=None, help="Jupyter kernel name (default: the notebooks' python3)")
    parser.add_argument("--resume", action="store_true",
                        help="skip notebooks that already succeeded with the same parameters and are newer than "
                             "their inputs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the selected notebooks; return the exit code."""
    arguments = parse_arguments(argv)
    environment.quiet_tensorflow()  # before the GPU check imports TensorFlow
    try:
        keras_backend = backend.check_backend(arguments.backend)
    except (ValueError, backend.BackendMissing) as error:
        print(f"error: {'' if arguments.backend else 'KERAS_BACKEND: '}{error}", file=sys.stderr)
        return 2
    # The GPU check and every notebook's kernel (which inherits this environment) use this backend; the caller's
    # environment is restored afterwards (tests call main in-process).
    # ALZ_COHORT_VERSION: read by config.get_profile here and in every kernel.
    with runner.environment_variable("KERAS_BACKEND", arguments.backend), \
            runner.environment_variable("ALZ_COHORT_VERSION", arguments.cohort_version):
        return run_selected(arguments, keras_backend)


def run_selected(arguments: argparse.Namespace, keras_backend: str) -> int:
    """Check the settings, then run the selected notebooks under the output lock; return the exit code."""
    for option, folder in (("--data", arguments.data), ("--external-data", arguments.external_data)):
        if folder and not folder.is_dir():
            print(f"error: {option} {folder} is not a folder: expected the root of a data set (see README, "
                  f"'Your own data').", file=sys.stderr)
            return 2
    try:
        profile = config.get_profile(arguments.profile)
    except ValueError as error:
        print(f"error: {'' if arguments.profile else 'ALZ_PROFILE: '}{error}", file=sys.stderr)
        return 2
    data = str(arguments.data) if arguments.data else None
    external = str(arguments.external_data) if arguments.external_data else None
    parameters = {"PROFILE": profile.name, "SEED": arguments.seed, "DATA_DIR": data, "SPLIT": arguments.split,
                  "EPOCHS": arguments.epochs, "WEIGHTS": arguments.weights, "DETERMINISTIC": arguments.deterministic,
                  "FOLDS": arguments.folds, "EXTERNAL_DATA": external, "MODELS": arguments.models}
    try:
        settings = config.load_settings(profile.name, arguments.seed, data, arguments.split, arguments.epochs,
                                        arguments.weights, arguments.deterministic, arguments.folds, external,
                                        arguments.models)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    paths = settings.paths  # the run folder, outputs/<profile>/<data-name>-<split>/, chosen once in alzlib.config
    try:
        steps = runner.with_models(runner.select_notebooks(runner.discover_notebooks(), arguments.only,
                                                           arguments.start), settings.models)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        with runner.lock_outputs(paths.root):  # one run per output folder; released on any exit
            print(f"Profile {profile.name} ({profile.description}); backend: {keras_backend}; data: "
                  f"{data or 'synthetic cohort (made on first use)'}; split: {arguments.split}; models: "
                  f"{', '.join(settings.models)}; outputs: {paths.root}",
                  flush=True)
            problem = stale_inputs(settings, steps)
            if problem:
                print(f"error: {problem}", file=sys.stderr)
                return 2
            return run_and_report(steps, paths, parameters, arguments)
    except runner.OutputsLocked as refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interruption:
        where = f" during {interruption.name}" if isinstance(interruption, runner.NotebookInterrupted) else ""
        print(f"interrupted{where}; rerun with --resume to skip the notebooks that finished", file=sys.stderr)
        return 130


def stale_inputs(settings: config.Settings, steps: list[runner.NotebookStep]) -> str | None:
    """Return why the selected notebooks cannot start from the manifest on disk, or None (always None when 01 runs)."""
    # Checked before any kernel starts; each notebook checks again (pipeline.load_manifest) when run on its own.
    if runner.INGESTION_NUMBER in {step.number for step in steps}:
        return None
    try:
        freshness.read_checked_report(settings)
    except (freshness.StaleManifest, FileNotFoundError) as error:
        return str(error)
    return None


def run_and_report(steps: list[runner.NotebookStep], paths: config.OutputPaths, parameters: dict,
                   arguments: argparse.Namespace) -> int:
    """Run the notebooks, then rebuild the report if the run made one; return the exit code."""
    try:
        summary = runner.run_pipeline(steps, paths, parameters, kernel=arguments.kernel, resume=arguments.resume)
    except runner.NotebookFailed as failure:
        print_warnings(runner.load_summary(paths))
        print(f"error: {failure}", file=sys.stderr)
        runs.update_index()
        return 1
    print_warnings(summary)
    print(f"Done in {summary['total_seconds']:.0f} s{compared_with_estimate(summary)}. Timings: {paths.run_summary}")
    if paths.report.is_file():
        # Rebuilt here so the report links every executed notebook, 13_final_report's own page included.
        from alzlib import report

        report.render_notebooks_html(paths.notebooks)
        report.build_report(paths)
        print(f"Report: {paths.report}")
    print(f"Runs index: {runs.update_index()}")
    return 0


def print_warnings(summary: dict) -> None:
    """Print the run's warnings (split warnings, skipped files, missing models...) in one block."""
    warnings = runner.collect_warnings(summary)
    if warnings:
        print(f"Warnings ({len(warnings)}):", *(f"  {warning}" for warning in warnings), sep="\n")


def compared_with_estimate(summary: dict) -> str:
    """Return ' (05-13: 31 min, estimated 27 to 45 min)' when the run recorded an estimate, else ''."""
    estimate = summary.get("estimate")
    if not estimate or estimate.get("actual_seconds") is None:
        return ""
    numbers = list(estimate["notebooks"])
    return (f" ({numbers[0]}-{numbers[-1]}: {runner.format_duration(estimate['actual_seconds'])}, estimated "
            f"{runner.format_duration(estimate['low_seconds'])} to {runner.format_duration(estimate['high_seconds'])})")


if __name__ == "__main__":
    sys.exit(main())

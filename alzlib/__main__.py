"""The `alzlib` command (`python -m alzlib`): `predict` new images with a saved model, `install-kernel` for Jupyter.

Exit codes: 0 every image answered, 1 some image could not be answered (its JSON entry says why), 2 a usage
error (bad arguments, a missing or unreadable model or recipe record), reported in one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from alzlib import environment

EXIT_OK, EXIT_IMAGE_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A command-line mistake, reported in one line with exit code 2."""


class _Parser(argparse.ArgumentParser):
    """ArgumentParser that raises UsageError instead of printing the usage block and exiting."""

    def error(self, message: str):
        raise UsageError(f"{message} (see: {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of the `alzlib` command and its subcommands."""
    parser = _Parser(prog="alzlib", description="Alzheimer MRI slice classifier (research use only, not for "
                                                "clinical use).")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    predict = commands.add_parser("predict", help="classify image files with a trained model; prints JSON")
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    predict.add_argument("--model", required=True, metavar="PATH",
                         help="a .keras model written by training, with its recipe record (.json) beside it")
    predict.add_argument("--gradcam", metavar="OUT_DIR", help="write a Grad-CAM overlay PNG per image here")
    predict.add_argument("--top", type=int, metavar="K", help="also list the K most probable classes")
    kernel = commands.add_parser("install-kernel", help="register this Python as a Jupyter kernel (user install)")
    kernel.add_argument("--name", default="alzlib", help="kernel name (default: alzlib)")
    kernel.add_argument("--display-name", help="name shown in JupyterLab (default: 'Python (<name>)')")
    return parser


def run_predict(arguments: argparse.Namespace) -> int:
    """Run `predict`: print the JSON list of answers; return 0, or 1 when any image failed."""
    from pathlib import Path

    from alzlib import predict

    gradcam_dir = Path(arguments.gradcam) if arguments.gradcam else None
    if gradcam_dir is not None and gradcam_dir.exists() and not gradcam_dir.is_dir():
        raise UsageError(f"--gradcam {gradcam_dir} is a file: expected a folder for the overlay PNGs.")
    try:
        predictor = predict.load_predictor(arguments.model)
        predict.check_top(arguments.top, len(predictor.class_names))
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(str(error)) from error
    entries = predict.predict_images(predictor, arguments.images, gradcam_dir, arguments.top)
    print(json.dumps(entries, indent=2))
    return EXIT_IMAGE_FAILED if any("error" in entry for entry in entries) else EXIT_OK


def run_install_kernel(arguments: argparse.Namespace) -> int:
    """Run `install-kernel`: register the kernel and say what was done."""
    from alzlib import kernels

    try:
        installed = kernels.install_kernel(arguments.name, arguments.display_name)
    except (ValueError, ImportError) as error:
        raise UsageError(str(error)) from error
    print(f"Installed Jupyter kernel {installed['name']!r} (shown as {installed['display_name']!r}) for "
          f"{installed['python']} in {installed['folder']}.")
    if installed["env"]:
        print(f"alzlib does not import outside the project with this interpreter, so the kernel sets "
              f"PYTHONPATH={installed['env']['PYTHONPATH']}.")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `alzlib` command with `argv` (default: sys.argv[1:]); return the exit code."""
    environment.quiet_tensorflow()
    try:
        arguments = build_parser().parse_args(argv)
        handler = run_predict if arguments.command == "predict" else run_install_kernel
        return handler(arguments)
    except UsageError as error:
        # One line, even when a library's message spans several.
        print(f"alzlib: error: {' '.join(str(error).split())}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exit_request:  # --help prints and exits 0
        return int(exit_request.code or 0)


if __name__ == "__main__":
    sys.exit(main())

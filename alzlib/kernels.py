"""Jupyter kernels (the `alzlib install-kernel` command): register this interpreter so notebooks can run on it."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile

from alzlib import config

KERNEL_NAME_PATTERN = re.compile(r"[a-z0-9._-]+")


def _alzlib_importable_elsewhere() -> bool:
    """True when this interpreter imports alzlib outside the project folder (a kernel starts in the notebook's)."""
    with tempfile.TemporaryDirectory() as folder:
        result = subprocess.run([sys.executable, "-c", "import alzlib"], cwd=folder, capture_output=True, timeout=60,
                                check=False)
    return result.returncode == 0


def install_kernel(name: str = "alzlib", display_name: str | None = None) -> dict:
    """Register this interpreter as a Jupyter kernel for the current user; return what was installed.

    When alzlib only imports from the project folder (an install that does not point here), the kernel gets
    PYTHONPATH set to the project root so notebooks can import it.
    """
    from ipykernel import kernelspec

    if not KERNEL_NAME_PATTERN.fullmatch(name):
        raise ValueError(f"Kernel name {name!r} is not valid: use lower-case letters, digits, '.', '_' or '-'.")
    display_name = display_name or f"Python ({name})"
    environment_variables = {} if _alzlib_importable_elsewhere() else {"PYTHONPATH": str(config.PROJECT_ROOT)}
    folder = kernelspec.install(user=True, kernel_name=name, display_name=display_name, env=environment_variables)
    return {"name": name, "display_name": display_name, "python": sys.executable, "folder": str(folder),
            "env": environment_variables}

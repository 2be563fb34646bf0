"""Run the pipeline notebooks in order with papermill: selection, resume, timing and fail-fast."""

from __future__ import annotations

import functools
import os
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from alzlib import config
from alzlib.storage import read_json, write_json

NOTEBOOK_PATTERN = re.compile(r"^(\d{2})_[a-z0-9_]+\.ipynb$")


class NotebookFailed(RuntimeError):
    """A notebook raised; carries the path of the executed copy that shows where."""

    def __init__(self, name: str, executed_path: Path, cause: BaseException):
        self.name, self.executed_path = name, executed_path
        summary = getattr(cause, "ename", type(cause).__name__)
        detail = getattr(cause, "evalue", str(cause))
        super().__init__(f"{name} failed ({summary}: {detail}). See the executed notebook: {executed_path}")


@dataclass(frozen=True)
class NotebookStep:
    """One pipeline notebook: its number, name and source path."""

    number: str
    name: str
    path: Path


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


def select_notebooks(steps: list[NotebookStep], only: str | None = None, start: str | None = None) -> list[NotebookStep]:
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


def executed_path(step: NotebookStep, paths: config.OutputPaths) -> Path:
    """Return where the executed copy of `step` is written."""
    return paths.notebooks / f"{step.name}.ipynb"


def is_up_to_date(step: NotebookStep, paths: config.OutputPaths, summary: dict, parameters: dict,
                  newer_than: float) -> bool:
    """True when `step` last succeeded with these parameters, after its source and all earlier steps changed."""
    record = next((entry for entry in summary.get("notebooks", []) if entry.get("name") == step.name), None)
    if not record or record.get("status") != "ok" or summary.get("parameters") != parameters:
        return False
    output = executed_path(step, paths)
    if not output.is_file():
        return False
    finished = output.stat().st_mtime
    return finished >= step.path.stat().st_mtime and finished >= newer_than


def load_summary(paths: config.OutputPaths) -> dict:
    """Return the last run summary, or an empty one."""
    return read_json(paths.run_summary) if paths.run_summary.is_file() else {}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _kernel_manager_class():
    """Return a kernel manager that talks to the kernel over local IPC sockets on POSIX (TCP elsewhere).

    Over TCP, ipykernel warns on every start that traffic is unencrypted; IPC sockets are files readable only by
    this user, so there is nothing to warn about and the run's output stays clean.
    """
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import CaselessStrEnum

    if os.name != "posix":
        return AsyncKernelManager

    class IpcKernelManager(AsyncKernelManager):
        transport = CaselessStrEnum(["tcp", "ipc"], default_value="ipc", config=True)

    return IpcKernelManager


def execute_notebook(step: NotebookStep, paths: config.OutputPaths, parameters: dict, kernel: str | None) -> float:
    """Execute one notebook with papermill; return its wall time in seconds or raise NotebookFailed."""
    import papermill

    output = executed_path(step, paths)
    output.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        papermill.execute_notebook(str(step.path), str(output), parameters=parameters, kernel_name=kernel,
                                   cwd=str(step.path.parent), progress_bar=False, log_output=False,
                                   kernel_manager_class=_kernel_manager_class())
    except Exception as error:  # papermill wraps cell errors; any failure stops the run here
        raise NotebookFailed(step.name, output, error) from error
    return time.perf_counter() - started


def run_pipeline(steps: list[NotebookStep], paths: config.OutputPaths, parameters: dict, kernel: str | None = None,
                 resume: bool = False, echo=functools.partial(print, flush=True)) -> dict:
    """Run `steps` in order, record each one's time in run_summary.json, stop at the first failure."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["ALZ_PROFILE"] = parameters["PROFILE"]
    previous = load_summary(paths)
    summary = {"profile": parameters["PROFILE"], "parameters": parameters, "kernel": kernel or "notebook default",
               "started": _now(), "status": "running", "notebooks": [], "total_seconds": 0.0}
    newer_than = 0.0
    for index, step in enumerate(steps, start=1):
        label = f"[{index}/{len(steps)}] {step.name}"
        if resume and is_up_to_date(step, paths, previous, parameters, newer_than):
            echo(f"{label}: up to date, skipped (--resume)")
            kept = next(entry for entry in previous["notebooks"] if entry["name"] == step.name)
            summary["notebooks"].append({**kept, "skipped": True})
            newer_than = max(newer_than, executed_path(step, paths).stat().st_mtime)
            continue
        echo(f"{label}: running ...")
        record = {"name": step.name, "output": str(executed_path(step, paths)), "started": _now()}
        try:
            seconds = execute_notebook(step, paths, parameters, kernel)
        except NotebookFailed:
            summary["notebooks"].append({**record, "status": "failed"})
            summary.update(status="failed", failed=step.name, finished=_now())
            write_json(paths.run_summary, summary)
            raise
        summary["notebooks"].append({**record, "status": "ok", "seconds": round(seconds, 1)})
        summary["total_seconds"] = round(sum(entry.get("seconds", 0) for entry in summary["notebooks"]
                                             if not entry.get("skipped")), 1)
        write_json(paths.run_summary, summary)
        newer_than = time.time()
        echo(f"{label}: ok in {seconds:.1f} s")
    summary.update(status="ok", finished=_now())
    write_json(paths.run_summary, summary)
    return summary

"""run_all's runner: notebook selection, papermill execution, fail-fast, timings and resume."""

import dataclasses
import os
import sys

import nbformat
import pytest

from alzlib import config, runner, storage

sys.path.insert(0, str(config.PROJECT_ROOT))
import run_all  # noqa: E402  (the script lives at the project root)


def write_notebook(path, source):
    """Write a one-cell notebook with a papermill parameters cell."""
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.cells = [
        nbformat.v4.new_code_cell('PROFILE = None\nSEED = 42\nDATA_DIR = None\nSPLIT = "subject"',
                                  metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(source),
    ]
    nbformat.write(notebook, path)


@pytest.fixture
def notebook_dir(tmp_path):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    log = tmp_path / "log.txt"
    for number, name in (("01", "first"), ("02", "second"), ("03", "third")):
        code = f"open({str(log)!r}, 'a').write('{number} ' + PROFILE + '\\n')"
        write_notebook(folder / f"{number}_{name}.ipynb", code)
    (folder / "scratch.ipynb").write_text("{}")  # not a pipeline notebook: ignored
    return folder


def parameters(profile="smoke"):
    return {"PROFILE": profile, "SEED": 1, "DATA_DIR": None, "SPLIT": "subject"}


def test_discovers_numbered_notebooks_in_order(notebook_dir):
    steps = runner.discover_notebooks(notebook_dir)
    assert [step.name for step in steps] == ["01_first", "02_second", "03_third"]


def test_select_only_and_from(notebook_dir):
    steps = runner.discover_notebooks(notebook_dir)
    assert [s.number for s in runner.select_notebooks(steps, only="1,03")] == ["01", "03"]
    assert [s.number for s in runner.select_notebooks(steps, start="02")] == ["02", "03"]
    with pytest.raises(ValueError, match="No notebook numbered 07"):
        runner.select_notebooks(steps, only="07")
    with pytest.raises(ValueError, match="look like 01"):
        runner.select_notebooks(steps, only="first")


def test_runs_in_order_and_records_timings(notebook_dir, tmp_path):
    paths = config.OutputPaths(tmp_path / "out")
    summary = runner.run_pipeline(runner.discover_notebooks(notebook_dir), paths, parameters(), echo=lambda _: None)
    assert (tmp_path / "log.txt").read_text().split("\n")[:3] == ["01 smoke", "02 smoke", "03 smoke"]
    recorded = storage.read_json(paths.run_summary)
    assert recorded["status"] == "ok"
    assert [entry["name"] for entry in recorded["notebooks"]] == ["01_first", "02_second", "03_third"]
    assert all(entry["seconds"] > 0 for entry in recorded["notebooks"])
    assert (paths.notebooks / "02_second.ipynb").is_file()
    assert summary["total_seconds"] > 0


def test_fails_fast_naming_the_executed_notebook(notebook_dir, tmp_path):
    write_notebook(notebook_dir / "02_second.ipynb", "raise ValueError('bad input in 02')")
    paths = config.OutputPaths(tmp_path / "out")
    with pytest.raises(runner.NotebookFailed, match="02_second failed .*bad input in 02.*02_second.ipynb"):
        runner.run_pipeline(runner.discover_notebooks(notebook_dir), paths, parameters(), echo=lambda _: None)
    recorded = storage.read_json(paths.run_summary)
    assert recorded["status"] == "failed" and recorded["failed"] == "02_second"
    assert "03" not in (tmp_path / "log.txt").read_text()


def test_resume_skips_notebooks_that_are_up_to_date(notebook_dir, tmp_path):
    paths = config.OutputPaths(tmp_path / "out")
    steps = runner.discover_notebooks(notebook_dir)
    runner.run_pipeline(steps, paths, parameters(), echo=lambda _: None)
    write_notebook(notebook_dir / "02_second.ipynb", f"open({str(tmp_path / 'log.txt')!r}, 'a').write('02 again\\n')")
    messages = []
    runner.run_pipeline(runner.discover_notebooks(notebook_dir), paths, parameters(), resume=True, echo=messages.append)
    assert any("01_first: up to date" in message for message in messages)
    lines = (tmp_path / "log.txt").read_text().split("\n")
    assert lines[3:5] == ["02 again", "03 smoke"], "an edited notebook and everything after it run again"


def test_resume_reruns_everything_when_parameters_change(notebook_dir, tmp_path):
    paths = config.OutputPaths(tmp_path / "out")
    steps = runner.discover_notebooks(notebook_dir)
    runner.run_pipeline(steps, paths, parameters(), echo=lambda _: None)
    runner.run_pipeline(steps, paths, {**parameters(), "SEED": 2}, resume=True, echo=lambda _: None)
    assert len((tmp_path / "log.txt").read_text().split()) == 12


def test_resume_with_other_models_reruns_only_the_notebooks_that_read_the_selection(tmp_path):
    folder, log = tmp_path / "notebooks", tmp_path / "log.txt"
    folder.mkdir()
    for number in ("01", "08", "09"):
        write_notebook(folder / f"{number}_step.ipynb", f"open({str(log)!r}, 'a').write('{number} ')")
    paths, steps = config.OutputPaths(tmp_path / "out"), runner.discover_notebooks(folder)
    runner.run_pipeline(steps, paths, {**parameters(), "MODELS": None}, echo=lambda _: None)
    runner.run_pipeline(steps, paths, {**parameters(), "MODELS": "all"}, resume=True, echo=lambda _: None)
    assert log.read_text().split() == ["01", "08", "09", "09"]


def test_run_all_rejects_unknown_notebook_number(capsys):
    assert run_all.main(["--profile", "smoke", "--only", "99"]) == 2
    assert "No notebook numbered 99" in capsys.readouterr().err


def test_run_all_rejects_unknown_profile():
    with pytest.raises(SystemExit):
        run_all.parse_arguments(["--profile", "huge"])


def test_run_all_rejects_a_missing_data_folder(tmp_path, capsys):
    assert run_all.main(["--profile", "smoke", "--data", str(tmp_path / "absent")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert run_all.main(["--profile", "smoke", "--external-data", str(tmp_path / "absent")]) == 2
    assert f"--external-data {tmp_path / 'absent'} is not a folder" in capsys.readouterr().err


def test_run_all_checks_epochs_and_weights_before_any_notebook_runs(capsys):
    assert run_all.main(["--profile", "smoke", "--epochs", "0"]) == 2
    assert "EPOCHS" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_all.parse_arguments(["--weights", "resnet.h5"])
    assert run_all.parse_arguments(["--weights", "none"]).weights == "none"


def test_run_all_names_a_bad_profile_from_the_environment_in_one_line(monkeypatch, capsys):
    monkeypatch.setenv("ALZ_PROFILE", "nonsense")
    assert run_all.main([]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "ALZ_PROFILE" in error and "'nonsense'" in error and "smoke" in error


def test_kernel_files_live_in_a_private_folder_removed_after_the_run(notebook_dir, tmp_path):
    report = tmp_path / "connection.txt"
    write_notebook(notebook_dir / "01_first.ipynb",
                   "import json, os\nfrom ipykernel import get_connection_file\n"
                   "connection = get_connection_file()\n"
                   f"open({str(report)!r}, 'w').write(json.dumps([connection, json.load(open(connection))['ip'], "
                   "os.getcwd()]))")
    before = sorted(path.name for path in notebook_dir.iterdir())
    step = runner.discover_notebooks(notebook_dir)[0]
    runner.execute_notebook(step, config.OutputPaths(tmp_path / "out"), parameters(), kernel=None)
    connection, ipc_base, cwd = storage.json.loads(report.read_text())
    folder = runner.Path(connection).parent
    assert folder.name.startswith("alz-kernels-") and runner.Path(ipc_base).parent == folder
    assert not folder.exists(), "the private kernel folder is removed after the notebook"
    assert cwd == str(notebook_dir), "the kernel still runs in the notebooks folder"
    assert sorted(path.name for path in notebook_dir.iterdir()) == before, "no socket or connection file there"


def test_kernel_stderr_keeps_errors_and_drops_tensorflow_start_up_lines(notebook_dir, tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    write_notebook(notebook_dir / "01_first.ipynb", (
        "import os\n"
        f"os.write(2, {runner.ABSL_BANNER!r}.encode() + b'\\n')\n"
        "os.write(2, b'I0000 00:00:1796574649.611335    4637 port.cc:153] oneDNN custom operations are on.\\n')\n"
        "os.write(2, b'E0000 00:00:1796574649.611335    4637 cuda.cc:1] a real error\\n')\n"
        "os.write(2, b'plain stderr from a library\\n')"))
    step = runner.discover_notebooks(notebook_dir)[0]
    runner.execute_notebook(step, config.OutputPaths(tmp_path / "out"), parameters(), kernel=None)
    error = capfd.readouterr().err
    assert "a real error" in error and "plain stderr from a library" in error
    assert "oneDNN" not in error and "absl::InitializeLog" not in error


def test_absl_lines_are_noise_only_below_the_tensorflow_log_level():
    info = "I0000 00:00:1796574649.611335    4637 port.cc:153] oneDNN custom operations are on."
    error = "E0000 00:00:1796574649.611335    4637 cuda.cc:1] failed call"
    assert runner.is_kernel_log_noise(info, 2) and runner.is_kernel_log_noise(runner.ABSL_BANNER, 2)
    assert not runner.is_kernel_log_noise(info, 0) and not runner.is_kernel_log_noise(runner.ABSL_BANNER, 1)
    assert not runner.is_kernel_log_noise(error, 2)
    assert not runner.is_kernel_log_noise("[IPKernelApp] ERROR | something broke", 3)
    assert runner.is_kernel_log_noise("[IPKernelApp] WARNING | Alternative text is missing on 9 image(s).\n", 0)


def test_kernel_is_not_sent_sigint_when_shutting_down(tmp_path):
    import asyncio

    manager = runner._kernel_manager_class(runner.KernelWatch(tmp_path))()
    with pytest.raises(RuntimeError, match="No kernel is running"):
        asyncio.run(manager._async_interrupt_kernel())  # an interrupt otherwise goes through as usual
    manager.shutting_down = True
    asyncio.run(manager._async_interrupt_kernel())


def test_a_second_run_on_a_locked_folder_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ALZ_OUTPUTS_DIR", str(tmp_path))
    run_folder = config.output_paths("smoke").root  # the synthetic cohort's run folder, smoke/synthetic-subject
    with runner.lock_outputs(run_folder, command="python run_all.py --profile smoke"):
        assert run_all.main(["--profile", "smoke", "--only", "01"]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "in use by another run" in captured.err
    assert f"pid {runner.os.getpid()}" in captured.err and "python run_all.py --profile smoke" in captured.err
    assert "Profile" not in captured.out, "refused before anything runs"
    with runner.lock_outputs(run_folder):  # released when the holder's block ends
        pass


def test_runs_into_different_output_folders_both_proceed(tmp_path):
    with runner.lock_outputs(tmp_path / "first"), runner.lock_outputs(tmp_path / "second"):
        with pytest.raises(runner.OutputsLocked, match="first"):
            with runner.lock_outputs(tmp_path / "first"):
                pass


def test_lock_is_released_when_its_holder_is_killed(tmp_path):
    import subprocess

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from alzlib import runner\n"
        f"with runner.lock_outputs(runner.Path({str(tmp_path)!r})): print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(runner.OutputsLocked, match=f"pid {holder.pid}"):
            with runner.lock_outputs(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    with runner.lock_outputs(tmp_path):
        pass


def interrupt_at(name, monkeypatch):
    """Make execute_notebook raise KeyboardInterrupt (Ctrl-C) when it reaches notebook `name`."""
    execute = runner.execute_notebook

    def execute_or_interrupt(step, *arguments):
        if step.name == name:
            raise KeyboardInterrupt
        return execute(step, *arguments)

    monkeypatch.setattr(runner, "execute_notebook", execute_or_interrupt)


def test_ctrl_c_records_the_notebook_as_interrupted_and_resume_reruns_it(notebook_dir, tmp_path, monkeypatch):
    paths = config.OutputPaths(tmp_path / "out")
    steps = runner.discover_notebooks(notebook_dir)
    runner.run_pipeline(steps, paths, parameters(), echo=lambda _: None)
    interrupt_at("02_second", monkeypatch)
    with pytest.raises(runner.NotebookInterrupted, match="02_second") as interruption:
        runner.run_pipeline(steps, paths, parameters(), echo=lambda _: None)
    assert isinstance(interruption.value, KeyboardInterrupt)
    recorded = storage.read_json(paths.run_summary)
    assert recorded["status"] == "interrupted" and recorded["interrupted"] == "02_second"
    assert [entry["status"] for entry in recorded["notebooks"]] == ["ok", "interrupted"]
    assert runner.is_up_to_date(steps[0], paths, recorded, parameters(), 0.0)
    assert not runner.is_up_to_date(steps[1], paths, recorded, parameters(), 0.0)
    monkeypatch.undo()
    messages = []
    runner.run_pipeline(steps, paths, parameters(), resume=True, echo=messages.append)
    assert messages[0].endswith("up to date, skipped (--resume)") and "02_second: running" in messages[1]


def test_an_executed_copy_newer_than_its_success_record_is_not_up_to_date(notebook_dir, tmp_path):
    paths = config.OutputPaths(tmp_path / "out")
    steps = runner.discover_notebooks(notebook_dir)
    runner.run_pipeline(steps, paths, parameters(), echo=lambda _: None)
    recorded = storage.read_json(paths.run_summary)
    assert all(runner.is_up_to_date(step, paths, recorded, parameters(), 0.0) for step in steps)
    # A rerun of 02 killed outright (no summary written) leaves a newer, half-executed copy behind.
    rerun = runner.datetime.fromisoformat(recorded["notebooks"][1]["finished"]).timestamp() + 30
    runner.os.utime(paths.notebooks / "02_second.ipynb", (rerun, rerun))
    assert not runner.is_up_to_date(steps[1], paths, recorded, parameters(), 0.0)
    without_marker = {**recorded, "notebooks": [{k: v for k, v in entry.items() if k != "finished"}
                                                 for entry in recorded["notebooks"]]}
    assert not runner.is_up_to_date(steps[0], paths, without_marker, parameters(), 0.0)


def test_a_notebook_is_recorded_as_running_while_it_runs(notebook_dir, tmp_path, monkeypatch):
    paths = config.OutputPaths(tmp_path / "out")
    seen = []
    monkeypatch.setattr(runner, "execute_notebook",
                        lambda step, *_: seen.append(storage.read_json(paths.run_summary)["notebooks"][-1]) or 1.0)
    runner.run_pipeline(runner.discover_notebooks(notebook_dir)[:1], paths, parameters(), echo=lambda _: None)
    assert seen[0]["name"] == "01_first" and seen[0]["status"] == "running"


def test_run_all_reports_ctrl_c_in_one_line_with_exit_code_130(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ALZ_OUTPUTS_DIR", str(tmp_path))

    def interrupted(*_, **__):
        raise runner.NotebookInterrupted("05_train_baseline_cnn")

    monkeypatch.setattr(runner, "run_pipeline", interrupted)
    assert run_all.main(["--profile", "smoke", "--only", "01"]) == 130
    error = capsys.readouterr().err
    assert error == ("interrupted during 05_train_baseline_cnn; rerun with --resume to skip the notebooks that "
                     "finished\n")
    with runner.lock_outputs(config.output_paths("smoke").root):  # the lock went with the interrupted run
        pass


def test_ctrl_c_interrupts_the_running_cell_and_stops_the_notebook(notebook_dir, tmp_path):
    import signal
    import threading
    import time

    # As in a terminal: a shell starts background jobs (`pytest &`) with SIGINT ignored, and the runner leaves an
    # ignored SIGINT alone, so this test sets Python's default handler whatever launched it.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        started = tmp_path / "started"
        write_notebook(notebook_dir / "01_first.ipynb", f"open({str(started)!r}, 'w').write('x')\nimport time\n"
                                                        "time.sleep(120)")

        def press_ctrl_c_once_the_cell_runs():
            while not started.exists():
                time.sleep(0.1)
            runner.os.kill(runner.os.getpid(), signal.SIGINT)

        threading.Thread(target=press_ctrl_c_once_the_cell_runs, daemon=True).start()
        paths = config.OutputPaths(tmp_path / "out")
        began = time.monotonic()
        with pytest.raises(runner.NotebookInterrupted, match="01_first"):
            runner.execute_notebook(runner.discover_notebooks(notebook_dir)[0], paths, parameters(), kernel=None)
        assert time.monotonic() - began < 60, "the sleeping cell was interrupted, not waited for"
        assert "KeyboardInterrupt" in (paths.notebooks / "01_first.ipynb").read_text()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "Ctrl-C handling restored afterwards"
    finally:
        signal.signal(signal.SIGINT, previous)


def test_ctrl_c_between_cells_stops_before_the_next_one(tmp_path):
    watch = runner.KernelWatch(tmp_path)
    watch.stop_if_interrupted(cell=None, cell_index=0)
    watch.interrupt()
    with pytest.raises(runner.StoppedByCtrlC):
        watch.stop_if_interrupted(cell=None, cell_index=1)


def data_parameters(data_dir):
    """Run parameters naming a data folder of the test's own (one placeholder file to start with)."""
    (data_dir / "NonDemented").mkdir(parents=True, exist_ok=True)
    (data_dir / "NonDemented" / "a.jpg").write_bytes(b"image")
    return {**parameters(), "DATA_DIR": str(data_dir)}


def test_data_added_between_two_resume_decisions_makes_01_out_of_date(notebook_dir, tmp_path):
    paths = config.OutputPaths(tmp_path / "out")
    steps = runner.discover_notebooks(notebook_dir)
    run_parameters = data_parameters(tmp_path / "data")
    runner.run_pipeline(steps, paths, run_parameters, echo=lambda _: None)
    recorded = storage.read_json(paths.run_summary)
    before = runner.freshness.data_fingerprint(tmp_path / "data")
    assert recorded["data_fingerprint"] == before
    assert runner.is_up_to_date(steps[0], paths, recorded, run_parameters, 0.0, before)
    (tmp_path / "data" / "NonDemented" / "b.jpg").write_bytes(b"another image")
    after = runner.freshness.data_fingerprint(tmp_path / "data")
    assert not runner.is_up_to_date(steps[0], paths, recorded, run_parameters, 0.0, after)
    messages = []
    runner.run_pipeline(steps, paths, run_parameters, resume=True, echo=messages.append)
    assert not any("up to date" in message for message in messages), "01 and everything after it run again"
    assert len((tmp_path / "log.txt").read_text().split()) == 12
    assert storage.read_json(paths.run_summary)["data_fingerprint"] == after
    messages.clear()
    runner.run_pipeline(steps, paths, run_parameters, resume=True, echo=messages.append)
    assert all("up to date" in message for message in messages), "unchanged data: all skipped"


def headline_writer(paths, name, text, warnings):
    """Notebook source that writes a headline where the runner looks for it."""
    path = runner.pipeline.headline_path(paths, name)
    return (f"import json, pathlib\npath = pathlib.Path({str(path)!r})\n"
            "path.parent.mkdir(parents=True, exist_ok=True)\n"
            f"path.write_text(json.dumps({{'headline': {text!r}, 'warnings': {warnings!r}}}))")


def test_progress_line_carries_the_headline_and_warnings_are_collected(notebook_dir, tmp_path):
    paths = config.OutputPaths(tmp_path / "out")
    write_notebook(notebook_dir / "01_first.ipynb", headline_writer(paths, "01_first", "720 images, 180 subjects",
                                                                    ["2 files skipped"]))
    stale = runner.pipeline.headline_path(paths, "02_second")
    stale.parent.mkdir(parents=True)
    stale.write_text('{"headline": "from an earlier run"}')
    messages = []
    summary = runner.run_pipeline(runner.discover_notebooks(notebook_dir), paths, parameters(), echo=messages.append)
    assert [message for message in messages if ": ok in " in message][0].endswith(": 720 images, 180 subjects")
    assert not any("earlier run" in message for message in messages), "a headline the notebook did not write"
    assert summary["notebooks"][0]["headline"] == "720 images, 180 subjects"
    assert runner.collect_warnings(summary) == ["01_first: 2 files skipped"]
    messages.clear()
    runner.run_pipeline(runner.discover_notebooks(notebook_dir), paths, parameters(), resume=True,
                        echo=messages.append)
    assert messages[0].endswith("up to date, skipped (--resume): 720 images, 180 subjects")


def test_estimate_of_the_default_cpu_run_matches_its_measured_time():
    # The cpu profile as it was measured: 4 slices per subject, every model 4 epochs.
    profile = dataclasses.replace(config.PROFILES["cpu"], slices_per_subject=4, model_epochs={},
                                  model_learning_rates={})
    numbers = ["05", "06", "07", "08", "09", "10", "11", "12", "13"]
    # Measured on 2026-12-06 (idle 2-core machine, the costs' reference, no cross-validation): 05-13 in 866 s.
    estimate = runner.estimate_run(profile, 720, 504, numbers, cpu_count=2, folds=1)
    assert 0.85 * 866 < estimate["seconds"] < 1.15 * 866 and estimate["speed_factor"] == 1.0
    assert estimate["low_seconds"] < estimate["seconds"] < estimate["high_seconds"]
    assert list(estimate["notebooks"]) == numbers and estimate["control_models"] == 4
    assert estimate["line"].startswith("estimated 10 min to 19 min for 05-13 on this machine (2 cores, CPU): "
                                       "720 images (504 train) x 4 epochs per model at 64 px, 4 control models x 60 "
                                       "epochs of 504; largest ")
    # The profile's 5 folds of the baselines add to 05 only, and the line names them.
    folded = runner.estimate_run(profile, 720, 504, numbers, cpu_count=2)
    assert folded["notebooks"]["05"] > estimate["notebooks"]["05"] + 60 and folded["notebooks"]["06"] == (
        estimate["notebooks"]["06"])
    assert "5 folds of linear_pixels, baseline_cnn" in folded["line"]


def test_estimate_of_the_cohort_v2_default_run_matches_its_measured_time():
    # Measured on 2026-12-07 (idle 2-core machine, fresh clone, python run_all.py): 05-13 in 1,702 s, 05 in 918 s.
    numbers = ["05", "06", "07", "08", "09", "10", "11", "12", "13"]
    estimate = runner.estimate_run(config.PROFILES["cpu"], 1440, 1008, numbers, cpu_count=2)
    assert 0.85 * 1702 < estimate["seconds"] < 1.15 * 1702
    assert 0.85 * 918 < estimate["notebooks"]["05"] < 1.15 * 918


def test_estimate_grows_with_data_epochs_image_size_and_a_shipped_split():
    profile = config.PROFILES["cpu"]
    base = runner.estimate_run(profile, 720, 504, ["06"])["seconds"]
    # 06 has a fixed part (tracing, the first epoch, validation) of about a third of the default run's time.
    assert runner.estimate_run(profile, 1440, 1008, ["06"])["seconds"] > 1.4 * base
    assert runner.estimate_run(runner.replace(profile, epochs=8), 720, 504, ["06"])["seconds"] > 1.4 * base
    assert runner.estimate_run(runner.replace(profile, image_size=128), 720, 504, ["06"])["seconds"] > 2 * base
    # The transfer models train on at most the profile's transfer_train_images (1,500 at cpu).
    kaggle = runner.estimate_run(profile, 6400, 4480, ["06"])["seconds"]
    assert kaggle == pytest.approx(runner.estimate_run(profile, 2143, 1500, ["06"])["seconds"], rel=1e-3)
    # A machine twice as slow as the reference (its speed probe) gets twice the estimate.
    assert runner.estimate_run(profile, 720, 504, ["06"], speed=2.0)["seconds"] == pytest.approx(2 * base, rel=1e-3)
    four, six = (runner.estimate_run(profile, 720, 504, ["05"], shipped_split=shipped, folds=1)
                 for shipped in (False, True))
    assert six["control_models"] == 6 and six["seconds"] > 1.35 * four["seconds"]
    # The controls stop at the profile's control_images: 86,000 images cost no more control time than 2,400.
    large, medium = (runner.estimate_run(profile, images, round(0.7 * images), ["05"])["control_train_images"]
                     for images in (86_000, 2_400))
    assert large == medium == 1680


def test_estimate_range_widens_downwards_with_more_cores_and_checks_its_input():
    profile = config.PROFILES["cpu"]
    two, sixteen = (runner.estimate_run(profile, 720, 504, ["06"], cpu_count=cores) for cores in (2, 16))
    assert sixteen["low_seconds"] < two["low_seconds"] and sixteen["high_seconds"] == two["high_seconds"]
    with pytest.raises(ValueError, match="train_images"):
        runner.estimate_run(profile, 10, 20, ["06"])
    assert runner.format_duration(45) == "45 s" and runner.format_duration(1800) == "30 min"
    assert runner.format_duration(4 * 3600) == "4.0 h"


def test_estimate_is_printed_before_the_first_training_notebook_and_recorded(notebook_dir, tmp_path):
    paths = config.OutputPaths(tmp_path / "out")
    (notebook_dir / "02_second.ipynb").unlink()
    (notebook_dir / "03_third.ipynb").rename(notebook_dir / "05_train_third.ipynb")
    report = {"counts": {"images": 720, "per_split": {"train": 504}}, "leakage_audit": {"shipped": None}}
    write_notebook(notebook_dir / "01_first.ipynb", f"import json\nopen({str(paths.ingestion_report)!r}, 'w')"
                                                    f".write(json.dumps({report!r}))")
    paths.root.mkdir(parents=True)
    messages = []
    summary = runner.run_pipeline(runner.discover_notebooks(notebook_dir), paths, {**parameters(), "PROFILE": "cpu"},
                                  echo=messages.append)
    assert messages[2].startswith("estimated ") and " for 05 on this machine" in messages[2]
    assert "05_train_third: running" in messages[3]
    recorded = storage.read_json(paths.run_summary)["estimate"]
    assert recorded["images"] == 720 and recorded["actual_seconds"] == summary["notebooks"][1]["seconds"]


def test_run_all_refuses_a_notebook_after_01_on_another_data_set(tmp_path, monkeypatch, capsys):
    from alzlib import freshness

    monkeypatch.setenv("ALZ_OUTPUTS_DIR", str(tmp_path / "outputs"))
    # Same folder name, so the same run folder (<name>-<split>): the manifest's fingerprint tells them apart.
    first, second = tmp_path / "one" / "data", tmp_path / "two" / "data"
    for folder in (first, second):
        (folder / "NonDemented").mkdir(parents=True)
    settings = config.load_settings("smoke", 42, first)
    storage.write_parquet(settings.paths.manifest, runner.pipeline.pd.DataFrame({"path": ["a.jpg"]}))
    storage.write_json(settings.paths.ingestion_report, {"fingerprint": freshness.manifest_fingerprint(settings)})
    assert run_all.main(["--profile", "smoke", "--only", "02", "--data", str(second)]) == 2
    error = capsys.readouterr().err
    assert f"made from {first.resolve()} (split subject, seed 42), not {second.resolve()}" in error
    assert f"python run_all.py --from 01 --profile smoke --data {second}" in error and error.count("\n") == 1


def test_run_all_on_another_data_set_uses_its_own_run_folder_and_leaves_the_first_intact(tmp_path, monkeypatch,
                                                                                         capsys):
    from alzlib import freshness

    monkeypatch.setenv("ALZ_OUTPUTS_DIR", str(tmp_path / "outputs"))
    first, second = tmp_path / "A", tmp_path / "B"
    for folder in (first, second):
        (folder / "NonDemented").mkdir(parents=True)
    settings = config.load_settings("smoke", 42, first)
    storage.write_parquet(settings.paths.manifest, runner.pipeline.pd.DataFrame({"path": ["a.jpg"]}))
    storage.write_json(settings.paths.ingestion_report, {"fingerprint": freshness.manifest_fingerprint(settings)})
    assert run_all.main(["--profile", "smoke", "--only", "02", "--data", str(second)]) == 2
    error = capsys.readouterr().err
    assert f"{tmp_path / 'outputs' / 'smoke' / 'B-subject' / 'manifest.parquet'} does not exist" in error
    assert settings.paths.root == tmp_path / "outputs" / "smoke" / "A-subject" and settings.paths.manifest.is_file()


def test_speed_factor_is_the_probe_against_the_reference_and_bounded():
    assert runner.speed_factor(runner.SPEED_REFERENCE_SECONDS) == 1.0
    assert runner.speed_factor(2 * runner.SPEED_REFERENCE_SECONDS) == pytest.approx(2.0)
    assert runner.speed_factor(100.0) == runner.SPEED_FACTOR_BOUNDS[1]
    assert runner.speed_factor(0.0) == runner.SPEED_FACTOR_BOUNDS[0]


def test_a_pipeline_run_leaves_the_callers_profile_as_it_was(tmp_path, monkeypatch):
    monkeypatch.setenv("ALZ_PROFILE", "smoke")
    seen = {}

    def fake_steps(steps, paths, parameters, kernel, resume, echo):
        seen["profile"] = os.environ["ALZ_PROFILE"]
        return {}

    monkeypatch.setattr(runner, "_run_steps", fake_steps)
    runner.run_pipeline([], config.OutputPaths(tmp_path), {"PROFILE": "cpu"})
    assert seen["profile"] == "cpu" and os.environ["ALZ_PROFILE"] == "smoke"


def design_steps(folder):
    """Write notebooks 05-09 and the system notebook into `folder` (empty code); return the discovered steps."""
    for number, name in (("05", "train_baseline_cnn"), ("06", "train_resnet50"), ("07", "train_resnet50_attention"),
                         ("08", "train_efficientnetb0"), ("09", "evaluation")):
        write_notebook(folder / f"{number}_{name}.ipynb", "pass")
    write_notebook(folder / "08s_train_system.ipynb", "pass")
    return runner.discover_notebooks(folder)


def test_models_choose_the_training_notebooks_and_run_the_system_notebook_once_per_system(tmp_path):
    steps = design_steps(tmp_path)
    assert runner.with_models(steps, config.parse_models(None), tmp_path) == steps  # the 08s notebook is not a step
    chosen = runner.with_models(steps, config.parse_models("alexnet,vit"), tmp_path)
    assert [step.name for step in chosen] == ["05_train_baseline_cnn", "08_train_alexnet", "08_train_vit",
                                              "09_evaluation"]
    assert chosen[1].parameters == {"MODEL": "alexnet"} and chosen[1].path.name == "08s_train_system.ipynb"
    every = [step.name for step in runner.with_models(steps, config.parse_models("all"), tmp_path)]
    assert every[:4] == [step.name for step in steps[:4]] and every[-1] == "09_evaluation" and len(every) == 9
    assert runner.with_models(runner.select_notebooks(steps, start="09"), config.parse_models("all"), tmp_path) \
        == steps[-1:]
    (tmp_path / "08s_train_system.ipynb").unlink()
    with pytest.raises(FileNotFoundError, match="08s_train_system.ipynb does not exist"):
        runner.with_models(steps, config.parse_models("vit"), tmp_path)


def test_a_step_runs_with_its_own_parameters_added_to_the_runs(tmp_path):
    log = tmp_path / "log.txt"
    write_notebook(tmp_path / "08s_train_system.ipynb", f"open({str(log)!r}, 'a').write(MODEL + ' ' + PROFILE)")
    notebook = nbformat.read(tmp_path / "08s_train_system.ipynb", as_version=4)
    notebook.cells[0].source += '\nMODEL = "alexnet"'
    nbformat.write(notebook, tmp_path / "08s_train_system.ipynb")
    step = runner.NotebookStep("08", "08_train_vit", tmp_path / "08s_train_system.ipynb", {"MODEL": "vit"})
    summary = runner.run_pipeline([step], config.OutputPaths(tmp_path / "out"), parameters(), echo=lambda _: None)
    assert log.read_text() == "vit smoke" and summary["notebooks"][0]["name"] == "08_train_vit"


def test_estimate_adds_each_system_after_08_and_scores_every_trained_model():
    profile = config.get_profile("cpu")
    base = runner.estimate_run(profile, 1440, 1008, ["08", "09"], folds=1)
    more = runner.estimate_run(profile, 1440, 1008, ["08", "09"], folds=1, systems=("alexnet", "vit"))
    assert list(more["notebooks"]) == ["08", "08 alexnet", "08 vit", "09"]
    assert more["notebooks"]["09"] > base["notebooks"]["09"] and more["notebooks"]["08"] == base["notebooks"]["08"]


def test_estimate_names_the_epoch_budget_of_each_selected_system_with_its_own():
    profile = config.get_profile("cpu")
    chosen = runner.estimate_run(profile, 1440, 1008, ["08", "09"], folds=1, systems=("alexnet", "convnext_scratch"))
    assert chosen["model_epochs"] == {"baseline_cnn": 24, "convnext_scratch": 16}  # alexnet runs the common 4
    assert "resnet50_frozen" not in runner.estimate_run(profile, 1440, 1008, ["09"], folds=1)["model_epochs"]

"""Issue #14 item 7: MultiProc workers die with a killed run; one run per work dir and
participant at a time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bids_app.run import main
from fmrilm_bids.errors import EXIT_TEMP_FAIL

_WORKFLOW = """
import sys
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe
from bids_app.execution import multiproc_plugin

def sleeper(pid_file):
    import os, time
    with open(pid_file, "w") as handle:
        handle.write(str(os.getpid()))
    time.sleep(120)
    return pid_file

wf = pe.Workflow(name="wf", base_dir=sys.argv[2])
node = pe.Node(niu.Function(function=sleeper, input_names=["pid_file"], output_names=["out"]),
               name="sleep")
node.inputs.pid_file = sys.argv[1]
wf.add_nodes([node])
wf.run(plugin=multiproc_plugin({"n_procs": 1}))
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state  # a zombie has exited


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal: Linux")
def test_workers_die_when_the_main_process_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "worker.pid"
    script = tmp_path / "run_wf.py"
    script.write_text(_WORKFLOW)
    main_process = subprocess.Popen([sys.executable, str(script), str(pid_file),
                                     str(tmp_path / "work")], cwd=tmp_path)
    try:
        deadline = time.monotonic() + 90
        while not (pid_file.is_file() and pid_file.read_text()):
            assert time.monotonic() < deadline and main_process.poll() is None
            time.sleep(0.2)
        worker = int(pid_file.read_text())
        assert worker != main_process.pid and _alive(worker)
        main_process.send_signal(signal.SIGKILL)
        main_process.wait(10)
        deadline = time.monotonic() + 10
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(worker), "the worker outlived the killed run"
    finally:
        main_process.kill()
        if pid_file.is_file() and pid_file.read_text() and _alive(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_a_second_run_on_the_same_participant_and_work_dir_is_refused(
        tiny_bids: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "work"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from fmrilm_bids.utils.locks import acquire_run_locks
        acquire_run_locks({str(work)!r}, ["sub-01"])
        print("locked", flush=True)
        time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        out = tmp_path / "out"
        code = main([str(tiny_bids), str(out), "participant", "-w", str(work),
                     "--skip-bids-validation", "--participant-label", "01", "02"])
        lines = [line for line in capsys.readouterr().err.splitlines()
                 if line.startswith("fmrilm-bids:")]
        assert code == EXIT_TEMP_FAIL and len(lines) == 1
        assert f"pid {holder.pid}" in lines[0] and str(work / "locks" / "sub-01.lock") in lines[0]
        assert "another -w/--work-dir" in lines[0]
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    # Once the holder is gone, the lock is free again (the kernel releases it).
    from fmrilm_bids.utils.locks import acquire_run_locks, release_run_locks

    assert acquire_run_locks(work, ["sub-01", "sub-02"]) == [
        work / "locks" / "sub-01.lock", work / "locks" / "sub-02.lock"]
    release_run_locks()

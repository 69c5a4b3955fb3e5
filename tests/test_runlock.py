import os
import signal
import subprocess
import sys

import pytest

import runlock
from conftest import ROOT

HOLDER = """
import sys, time
import runlock
with runlock.hold(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def _holder(path):
    """A process holding the lock of `path` (killed by the caller)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_is_refused_with_the_owners_pid_and_kill_9_leaves_no_stale_lock(tmp_path):
    proc = _holder(tmp_path)
    try:
        with pytest.raises(runlock.Busy, match=f"in use by another process \\(pid {proc.pid}\\)"):
            with runlock.hold(tmp_path):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert (tmp_path / ".lock").exists()  # left behind by kill -9, and not stale: the kernel dropped the lock
    with runlock.hold(tmp_path):
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
    assert not (tmp_path / ".lock").exists()


def test_a_file_is_locked_beside_it_and_the_lock_is_released_on_error(tmp_path):
    target = tmp_path / "submission.csv"
    with pytest.raises(ZeroDivisionError):
        with runlock.hold(target):
            assert (tmp_path / ".submission.csv.lock").exists() and not target.exists()
            1 / 0
    proc = _holder(target)  # free again: another process takes it at once
    proc.kill()
    proc.wait(timeout=30)


def test_one_process_holding_twice_is_refused_too(tmp_path):
    """flock locks belong to open files: a second hold in the same process is a second owner."""
    with runlock.hold(tmp_path):
        with pytest.raises(runlock.Busy, match=f"pid {os.getpid()}"):
            with runlock.hold(tmp_path):
                pass

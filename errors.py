"""The errors of a training a user can fix, which the command lines print as one line, and how a
command ends on Ctrl-C: while it loads (quiet_ctrl_c_while_loading) and while it drives child
processes (run_child)."""

import signal
import subprocess
import sys


class TrainError(Exception):
    """A problem the user can fix: bad settings, missing data, an unusable run folder."""


class DamagedRun(TrainError):
    """A file of a run folder cannot be read or contradicts the others; nothing in the folder was changed."""


# What a command that trains several runs prints on Ctrl-C: every run resumes from its own folder.
SERIES_INTERRUPTED = ("interrupted; run the same command again: finished runs are read back, the interrupted one "
                      "resumes after its last completed epoch")

# In a series' OUT: which command's series of which model the folder holds (series.check_owner).
SERIES_OWNER_FILE = "series.json"


def why(error):
    """`error` as "Type: message" (or its type alone), for an error line that names its cause."""
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


# A child's exit status for "stopped by Ctrl-C" (what a shell gives 128 + SIGINT); see run_child.
INTERRUPTED = 130


def run_child(command, env=None, grace_seconds=10.0):
    """Runs `command`, a process of this repository's that exits INTERRUPTED on Ctrl-C without a
    word, and returns its exit status; a child interrupted so raises KeyboardInterrupt here, once.

    Ctrl-C at a terminal interrupts the child as well; where only this process was interrupted, the
    child is sent SIGINT after `grace_seconds`. Either way it is waited for, so the files it is
    writing are left whole and the caller prints the one line that says what is kept.
    """
    with subprocess.Popen(command, env=env) as child:
        try:
            code = child.wait()
        except KeyboardInterrupt:
            try:
                child.wait(grace_seconds)
            except subprocess.TimeoutExpired:
                child.send_signal(signal.SIGINT)
                child.wait()
            raise
    if code in (INTERRUPTED, -signal.SIGINT):
        raise KeyboardInterrupt
    return code


def quiet_ctrl_c_while_loading():
    """For a command's start, before its heavy imports (TensorFlow takes seconds): Ctrl-C there ends the
    process with one line and exit INTERRUPTED, not a traceback from inside an import. ctrl_c_raises()
    ends it. A process that ignores SIGINT (a background job of a script) keeps ignoring it."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupted_while_loading)


def _interrupted_while_loading(signum, frame):
    print("\ninterrupted while loading; nothing was started", file=sys.stderr)
    raise SystemExit(INTERRUPTED)


def ctrl_c_raises():
    """Ctrl-C raises KeyboardInterrupt again, for the command's own handling (after its imports)."""
    if signal.getsignal(signal.SIGINT) is _interrupted_while_loading:
        signal.signal(signal.SIGINT, signal.default_int_handler)

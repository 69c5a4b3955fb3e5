"""One process at a time per output folder or file: an OS lock that dies with its process.

`hold(path)` takes an exclusive `flock` on a hidden lock file beside what it guards (`RUN/.lock`
for a folder, `.NAME.lock` for a file) and writes the owner's pid into it. The kernel releases the
lock when the process ends, however it ends (`kill -9` included), so a lock is never stale: a lock
file left behind by a killed process is simply taken by the next one. A second process gets
`Busy`, naming the owner's pid, at once instead of waiting.
"""

import contextlib
import fcntl
import os
from pathlib import Path


class Busy(Exception):
    """Another live process holds the lock; the message names it."""


def lock_path(path):
    path = Path(path)
    return path / ".lock" if path.is_dir() else path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def hold(path, what="folder"):
    """Holds the lock of `path` (an existing folder, or a file that may not exist yet) while inside."""
    lock = lock_path(path)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise Busy(f"{path} is in use by another process (pid {owner}), which holds {lock}; wait for it to "
                       f"finish or stop it, or use another {what}") from None
        # The file may have been removed by its previous owner between our open and our lock.
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)  # while still held, so no other process can be holding this file
        os.close(fd)

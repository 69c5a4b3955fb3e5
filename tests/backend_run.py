"""Runs train.py in a process where TensorFlow cannot be imported, as on a machine that has none
(the GPU machine of DEVELOPERS.md has JAX and PyTorch only):

    KERAS_BACKEND=jax PYTHONPATH=. python tests/backend_run.py [--kill-after N] TRAIN_ARGS...

`--kill-after N` kills the process with SIGKILL once epoch N is committed, as `kill -9` would.
"""

import os
import signal
import sys


def main(argv):
    sys.modules["tensorflow"] = None  # Python's mark of a module that cannot be imported: as if not installed
    import train

    kill_after = None
    if argv[:1] == ["--kill-after"]:
        kill_after, argv = int(argv[1]), argv[2:]

    def on_epoch(times):
        if times["epoch"] == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    status = train.main(argv, on_epoch=on_epoch)
    if sys.modules["tensorflow"] is not None:
        print("error: TensorFlow was imported", file=sys.stderr)
        return 3
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""A run folder and the commit protocol that makes a training resumable.

A run folder holds:
  config.json      resolved settings, their sources, versions, data source
  state.json       the commit point of the last completed epoch (what resume reads)
  history.csv      one row per completed epoch, with the learning rate it started at
  tensorboard/     the same per-epoch figures for TensorBoard
  last.keras       the model after the last completed epoch, with optimizer state (to resume)
  best.keras       the model of the epoch with the highest validation accuracy, for inference
                   (architecture and weights: loads with plain keras.saving.load_model)
  checkpoints/     the files state.json names; last.keras and best.keras are links to them
  inference.keras  written when the run is finished: uint8 images -> probabilities (inference.py)
  metrics.json     written once, when the run is finished: accuracies, which model the test
                   accuracy belongs to, epochs, seconds, throughput, devices, machines
Every file is written to a temporary name and renamed into place, so killing the process at any
moment leaves each file either old or new, never half-written. Running the same command again
resumes after the last completed epoch; re-running a finished run leaves it as it is.
"""

import contextlib
import csv
import errno
import hashlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import tfenv  # noqa: F401  (before keras: TensorFlow reads its settings when it loads)
import keras
import numpy as np

import runlock
import settings as settings_
from errors import DamagedRun, TrainError, why


def _damaged_advice(run):
    return (f"nothing in {run.path} was changed. This run cannot resume from it: start it again in another "
            f"--run-dir (best.keras and history.csv here, if present, are left as they are)")


def read_json_object(path):
    """The JSON object in the file `path`; ValueError saying why where it cannot be read or is not an object."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(why(e)) from None
    if not isinstance(obj, dict):
        raise ValueError(f"holds a {type(obj).__name__}, not an object")
    return obj


def _fsync_replace(tmp, path):
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_atomic(path, text):
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        _fsync_replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write leaves neither a half file nor its temporary
        raise


def save_figure(fig, path, dpi=120):
    """A matplotlib figure saved as `path` (its format from the suffix) as write_atomic writes text: a
    failed or interrupted save leaves the old file and no temporary."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, dpi=dpi, format=path.suffix[1:] or None)
        _fsync_replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def input_holding(path, inputs):
    """The first of the folders or files `inputs` that is `path` or holds it (resolved), or None: an output
    a command must not write, since it would replace one of the command's own inputs."""
    target = Path(path).resolve()
    return next((Path(i) for i in inputs if Path(i).resolve() == target or Path(i).resolve() in target.parents),
                None)


def write_json(path, obj):
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_model(model, path):
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    _fsync_replace(tmp, path)


def link_atomic(src, dst):
    """Makes `dst` the same file as `src` (a hard link where possible, a copy otherwise)."""
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    _fsync_replace(tmp, dst)


HISTORY_FIELDS = ("epoch", "lr", "loss", "accuracy", "val_loss", "val_accuracy",
                  "train_seconds", "epoch_seconds")


def history_csv(rows):
    out = io.StringIO()
    writer = csv.DictWriter(out, HISTORY_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


class RunFolder:
    """The files of one run, and the commit protocol that makes it resumable.

    `state.json` is the commit point: an epoch is complete once the state naming its checkpoint
    has been renamed into place. Everything else (last.keras, best.keras, history.csv) is derived
    from the state and rebuilt from it on resume, so a kill between two writes loses nothing.
    """

    OWN = {"config.json", "state.json", "history.csv", "metrics.json", "last.keras", "best.keras",
           "inference.keras", "checkpoints", "tensorboard"}

    def __init__(self, path):
        self.path = Path(path)
        self.ckpt_dir = self.path / "checkpoints"

    def create(self):
        """The folder itself (and its parents), so that it can be locked before anything is read; not
        inside another run's folder, whose commits prune its checkpoints/ and own its files."""
        host = next((p for p in self.path.resolve().parents if (p / "config.json").is_file()
                     and ((p / "state.json").is_file() or (p / "checkpoints").is_dir())), None)
        if host is not None:
            raise TrainError(f"run folder {self.path} is inside the run folder {host}; give a folder outside it")
        if self.path.exists() and not self.path.is_dir():
            raise TrainError(f"run folder {self.path} is a file, not a folder; give a folder's path")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TrainError(f"cannot write to run folder {self.path}: {e.strerror or e}") from None

    def remove_if_unstarted(self):
        """Removes this folder where it holds nothing yet but an empty checkpoints/ and its lock (a start
        refused before its first file); anything else in it is left."""
        try:
            names = {p.name for p in self.path.iterdir()}
            empty = not self.ckpt_dir.is_dir() or not any(self.ckpt_dir.iterdir())
        except OSError:
            return
        if names <= {self.ckpt_dir.name, runlock.lock_path(self.path).name} and empty:
            shutil.rmtree(self.path, ignore_errors=True)

    def prepare(self):
        try:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise TrainError(f"cannot write to run folder {self.path}: {e.strerror or e}") from None

    def read_json(self, name, advice=_damaged_advice):
        """The object in `name`, None where the file does not exist; DamagedRun where it is not a JSON object."""
        path = self.path / name
        if not path.is_file():
            return None
        try:
            return read_json_object(path)
        except ValueError as e:
            raise DamagedRun(f"{path} is damaged ({e}); {advice(self)}") from None

    def load_state(self, total_epochs):
        """The commit point, checked against the checkpoints it names before anything relies on it."""
        state = self.read_json("state.json")
        if state is None:
            return None
        where = self.path / "state.json"
        kinds = {"epochs_completed": int, "checkpoint": str, "history": list, "wall_seconds": (int, float),
                 "best": (dict, type(None))}
        missing = [k for k in kinds if k not in state]
        wrong = [k for k in kinds if k in state and (isinstance(state[k], bool) or not isinstance(state[k], kinds[k]))]
        if missing or wrong:
            what = "; ".join([*(f"lacks {k!r}" for k in missing), *(f"{k!r} has the wrong type" for k in wrong)])
            raise DamagedRun(f"{where} is damaged ({what}); {_damaged_advice(self)}")
        done = state["epochs_completed"]
        if not 1 <= done <= total_epochs or len(state["history"]) != done:
            raise DamagedRun(f"{where} is damaged ({done} epochs completed of {total_epochs}, "
                             f"{len(state['history'])} history rows); {_damaged_advice(self)}")
        bad_row = next((i for i, row in enumerate(state["history"], start=1)
                        if not isinstance(row, dict) or row.get("epoch") != i), None)
        if bad_row is not None:
            raise DamagedRun(f"{where} is damaged (history row {bad_row} is not epoch {bad_row}'s figures); "
                             f"{_damaged_advice(self)}")
        best = state["best"]
        if best is not None and not (isinstance(best.get("checkpoint"), str) and isinstance(best.get("epoch"), int)
                                     and isinstance(best.get("val_accuracy"), (int, float))):
            raise DamagedRun(f"{where} is damaged (its 'best' entry is incomplete); {_damaged_advice(self)}")
        for name in [state["checkpoint"], *([best["checkpoint"]] if best else [])]:
            if Path(name).name != name or not (self.ckpt_dir / name).is_file():
                raise DamagedRun(f"{self.ckpt_dir / name}, which {where} names, is missing; {_damaged_advice(self)}")
        return state

    def load_model(self, name, **kwargs):
        """The model file `name` (relative to the folder) as Keras loads it; DamagedRun where it cannot be read."""
        path = self.path / name
        try:
            return keras.saving.load_model(path, **kwargs)
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as e:
            # Keras says "File not found" for a truncated file that exists: say what it is instead.
            raise DamagedRun(f"{path} is damaged (not a readable .keras file: {why(e)}); "
                             f"{_damaged_advice(self)}") from None

    def check_archive(self, name):
        """DamagedRun unless `name` is a whole zip archive (every member's checksum read), as .keras files are."""
        path = self.path / name
        try:
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
        except (OSError, zipfile.BadZipFile, EOFError) as e:
            bad = why(e)
        if bad is not None:
            raise DamagedRun(f"{path} is damaged (not a whole .keras file: {bad}); {_damaged_advice(self)}")

    def discard_uncommitted(self):
        """After a failed write: removes temporary files and checkpoints the committed state does not name."""
        try:
            state = json.loads((self.path / "state.json").read_text())
            keep = {state["checkpoint"], (state.get("best") or {}).get("checkpoint")}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            keep = None  # nothing committed yet (or unreadable): keep every checkpoint there is
        for folder in (self.path, self.ckpt_dir):
            for f in folder.glob(".*.tmp*"):
                f.unlink(missing_ok=True)
        if keep is not None and self.ckpt_dir.is_dir():
            for f in self.ckpt_dir.iterdir():
                if f.name not in keep:
                    f.unlink(missing_ok=True)

    def foreign_files(self):
        if not self.path.is_dir():
            return []
        return sorted(p.name for p in self.path.iterdir() if p.name not in self.OWN and not p.name.startswith("."))

    def commit(self, model, state, row, is_best):
        """Saves the epoch's checkpoint(s), then renames the state naming them into place.

        A write that fails (a full disk, say) leaves the folder at its last committed epoch: what this
        epoch had written is removed, and the error says where and what to do.
        """
        epoch = row["epoch"]
        new = {**state, "history": [*state["history"], row], "epochs_completed": epoch,
               "checkpoint": f"epoch-{epoch:04d}.keras"}
        try:
            save_model(model, self.ckpt_dir / new["checkpoint"])
            if is_best:
                # best.keras is for inference: architecture and weights, no optimizer, so it loads with
                # plain keras.saving.load_model in any process (the schedules are this project's classes).
                best = f"best-{epoch:04d}.keras"
                save_model(keras.Model(model.inputs, model.outputs, name=model.name), self.ckpt_dir / best)
                new["best"] = {"epoch": epoch, "val_accuracy": row["val_accuracy"], "checkpoint": best}
            write_json(self.path / "state.json", new)
        except OSError as e:
            self.discard_uncommitted()
            raise self.write_error(e, state["epochs_completed"]) from None
        state.update(new)
        try:
            self.sync(state)
        except OSError as e:  # committed: the derived files are rebuilt from the state on resume
            raise self.write_error(e, epoch) from None

    def write_error(self, error, committed):
        """The TrainError for a failed write, saying which file, why, and that the folder is consistent."""
        what = error.filename or "a file"
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            try:
                free = f"{shutil.disk_usage(self.path).free / 2**20:.0f} MiB free"
            except OSError:
                free = "free space unknown"
            cause = f"the disk holding {self.path} is full ({free}): could not write {what}"
        else:
            cause = f"could not write {what} ({error.strerror or error})"
        return TrainError(f"{cause}. The run folder is as it was after epoch {committed} (its last committed "
                          "epoch); make room and run the same command again to resume from there")

    def sync(self, state):
        """Brings the derived files in line with `state` and removes what it no longer names."""
        keep = {state["checkpoint"]}
        link_atomic(self.ckpt_dir / state["checkpoint"], self.path / "last.keras")
        if state.get("best"):
            keep.add(state["best"]["checkpoint"])
            link_atomic(self.ckpt_dir / state["best"]["checkpoint"], self.path / "best.keras")
        write_atomic(self.path / "history.csv", history_csv(state["history"]))
        for f in self.ckpt_dir.iterdir():
            if f.name not in keep:
                f.unlink()
        for f in self.path.glob(".*.tmp*"):
            f.unlink()


def default_run_dir(settings):
    return Path("runs") / f"{settings['model']}-seed{settings['seed']}"


@contextlib.contextmanager
def hold(path, what):
    """runlock.hold, its refusal as a TrainError."""
    try:
        with runlock.hold(path, what):
            yield
    except runlock.Busy as e:
        raise TrainError(str(e)) from None


def other_settings(run, config, settings):
    """How `settings` differ from those of the run whose config.json is `config`: [] for none; TrainError
    where the run has committed an epoch of its own (it resumes with those only), DamagedRun for a
    config.json without settings."""
    if not isinstance(config.get("settings"), dict):
        raise DamagedRun(f"{run.path / 'config.json'} is damaged (it lacks 'settings'); {_damaged_advice(run)}")
    diffs = settings_.describe_differences(config["settings"], settings)
    # metrics.json without state.json: a finished run's small files, as results/runs keeps them
    if diffs and any((run.path / f).exists() for f in ("state.json", "metrics.json")):
        raise TrainError(f"{run.path} holds a run with other settings ({'; '.join(diffs)}); use another --run-dir")
    return diffs


def existing_run(run, settings):
    """The metrics of a finished run in `run`, None for a new or unfinished one; TrainError if unrelated."""
    old_config = run.read_json("config.json")
    if old_config is None:
        if run.foreign_files():
            raise TrainError(f"run folder {run.path} is not empty and holds no run "
                             f"({', '.join(run.foreign_files()[:3])}, ...); use an empty or new folder")
        return None
    diffs = other_settings(run, old_config, settings)
    if diffs:
        # The earlier attempt committed no epoch (it stopped in its first): there is nothing to keep.
        print(f"{run.path}: no epoch of its earlier settings was committed; starting with the new ones "
              f"({'; '.join(diffs)})", flush=True)
        (run.path / "config.json").unlink()
        return None
    metrics = run.read_json("metrics.json", advice=lambda r: (
        f"the run is finished and its models are in {r.path}: delete that file and run the same command "
        "again to evaluate them anew"))
    if metrics is not None and not all(k in metrics for k in ("epochs_completed", "test_accuracy")):
        raise DamagedRun(f"{run.path / 'metrics.json'} is damaged (it lacks the test accuracy); delete it and "
                         "run the same command again to evaluate the finished run anew")
    return metrics


def worker_folder(home, index):
    """A temporary run folder for a non-chief worker, holding what it needs to resume like the chief."""
    run = RunFolder(tempfile.mkdtemp(prefix=f"cifar10-worker{index}-"))
    state = home.read_json("state.json")
    if state is not None:
        run.ckpt_dir.mkdir()
        for name in {state["checkpoint"], (state.get("best") or {}).get("checkpoint")} - {None}:
            shutil.copyfile(home.ckpt_dir / name, run.ckpt_dir / name)
        write_json(run.path / "state.json", state)
    return run


def data_fingerprint(dataset):
    """sha256 over the data set's arrays (images and labels, training then test): the data itself, not its path."""
    digest = hashlib.sha256()
    for array in (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test):
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def indices_fingerprint(indices):
    """sha256 of a list of image indices (the validation split), to tell whether two runs share it."""
    return hashlib.sha256(np.asarray(indices, np.int64).tobytes()).hexdigest()


def check_same_data(run, old, new):
    """Refuses to resume on other data than the run started on; a moved copy of the same data is fine."""
    keys = [k for k in ("sha256", "train_images", "val_images", "test_images", "val_indices_sha256")
            if k in old and old[k] != new[k]]
    if keys:
        diffs = "; ".join(f"{k}: {old[k]!r} there, {new[k]!r} now" for k in keys)
        raise TrainError(f"{run.path} was trained on other data ({diffs}); it was started on {old.get('source')}: "
                         "give that data set again (--data-dir), or use another --run-dir")

"""Run folders on disk: finding them, reading their files, naming and copying the finished ones.

A run folder is what train.py writes: config.json when the run starts, state.json after each epoch,
metrics.json once it has finished. Only finished runs are copied into OUT/runs/, and only their small
files: checkpoints, weights and TensorBoard logs are large and no table needs them. This module
needs no TensorFlow, so that bad input is refused before anything slow is imported.
"""

import csv
import hashlib
import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

SMALL_FILES = ("config.json", "history.csv", "metrics.json")
PARTIAL_FIELDS = ("name", "run_id", "model", "epochs_completed", "epochs", "seen")


class ResultsError(Exception):
    """Input the user can fix: a missing path, a folder holding no run, a garbled file."""


@dataclass
class Run:
    """One run folder as read: its config, its metrics (None until it has finished) and its state."""

    path: Path
    config: dict
    metrics: dict | None
    state: dict | None
    run_id: str

    @property
    def settings(self):
        return self.config["settings"]

    @property
    def model(self):
        return self.settings["model"]

    @property
    def finished(self):
        return self.metrics is not None

    def history(self):
        """history.csv as a list of {column: float or None}; [] where the file is absent."""
        path = self.path / "history.csv"
        if not path.is_file():
            return []
        try:
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
            for line, row in enumerate(rows, start=2):
                if None in row or None in row.values():
                    raise ValueError(f"line {line} has {'more' if None in row else 'fewer'} fields than its header")
                if row.get("epoch", "") == "":
                    raise ValueError(f"line {line} has no epoch")
            return [{k: float(v) if v != "" else None for k, v in row.items()} for row in rows]
        except (OSError, ValueError, csv.Error) as e:
            raise ResultsError(f"{path} is not a history.csv train.py wrote ({e})") from None


def read_json(path):
    """The JSON object in `path`; ResultsError (one line) for an unreadable or garbled file."""
    try:
        value = json.loads(Path(path).read_text())
    except OSError as e:
        raise ResultsError(f"cannot read {path}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ResultsError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise ResultsError(f"{path} holds a JSON {type(value).__name__}, not an object")
    return value


def run_id(config_path):
    """sha256 of config.json's bytes: train.py writes it once, when the run starts, and never again,
    so it tells one run from another even when their folders have the same name."""
    return hashlib.sha256(Path(config_path).read_bytes()).hexdigest()[:16]


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def is_accuracy(value):
    """A number from 0 to 1 (not a bool, not NaN): what an accuracy in metrics.json must be."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1  # NaN fails too


ACCURACIES = ("test_accuracy", "val_accuracy", "last_epoch_test_accuracy")


def load_run(path):
    """The run in folder `path`, its files checked enough that a table can be made from them: the
    settings a row is keyed and labelled by, the accuracies (fractions, not NaN), and for a finished
    run its history.csv, so that nothing garbled is copied."""
    path = Path(path)
    config = read_json(path / "config.json")
    settings = config.get("settings")
    if not isinstance(settings, dict) or not isinstance(settings.get("model"), str) or "epochs" not in settings:
        raise ResultsError(f"{path / 'config.json'} is not the config.json of a train.py run "
                           "(no settings.model and settings.epochs)")
    if not _is_int(settings["epochs"]) or settings["epochs"] < 1 or not _is_int(settings.get("seed", 0)):
        raise ResultsError(f"{path / 'config.json'}: settings.epochs must be a whole number >= 1 and "
                           f"settings.seed a whole number, not {settings['epochs']!r} and {settings.get('seed')!r}")
    metrics = read_json(path / "metrics.json") if (path / "metrics.json").is_file() else None
    if metrics is not None:
        if "test_accuracy" not in metrics:
            raise ResultsError(f"{path / 'metrics.json'} has no test_accuracy; not the metrics.json of a finished run")
        bad = [k for k in ACCURACIES if k in metrics and metrics[k] is not None and not is_accuracy(metrics[k])]
        if bad or metrics["test_accuracy"] is None:
            k = (bad or ["test_accuracy"])[0]
            raise ResultsError(f"{path / 'metrics.json'}: {k} is {metrics[k]!r}, not an accuracy between 0 and 1")
    state = None
    if metrics is None and (path / "state.json").is_file():
        state = read_json(path / "state.json")
    run = Run(path, config, metrics, state, run_id(path / "config.json"))
    if run.finished:
        run.history()  # a garbled history.csv is refused here, before it is copied anywhere
    return run


def find_run_folders(path):
    """The run folders at or below `path` (each holds a config.json)."""
    path = Path(path)
    if not path.exists():
        raise ResultsError(f"{path} does not exist")
    if (path / "config.json").is_file():
        return [path]
    if not path.is_dir():
        raise ResultsError(f"{path} is not a run folder or a folder of runs (no config.json)")
    found = sorted(p.parent for p in path.rglob("config.json"))
    if not found:
        raise ResultsError(f"{path} holds no run (no config.json in it or below it)")
    return found


def load_given(paths):
    """Every run in the folders the user named, read and checked before anything is copied."""
    runs, seen = [], set()
    for given in paths:
        for folder in find_run_folders(given):
            if folder.resolve() not in seen:
                seen.add(folder.resolve())
                runs.append(load_run(folder))
    return runs


def base_name(path, model):
    """`model-context-folder` (e.g. lenet-tricks-dp_da-seed0 for runs/tricks/runs/dp_da-seed0): the
    context is the nearest folder above not called "runs" (series and train.py --seeds put their runs
    in OUT/runs/), left out where it is the model's name; the model is not repeated where the folder's
    name starts with it (train.py's default MODEL-seedSEED). From the absolute path, so the same folder
    gets the same name from any working directory."""
    path = Path(path).resolve()
    folder = path.name
    context = next((p.name for p in path.parents if p.name and p.name != "runs"), "")
    rest = folder[len(model):].lstrip("-_") if folder.startswith(model) else folder
    parts = [model] + ([context] if context and context != model else []) + ([rest] if rest else [])
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "-".join(parts))


def variant_of(name, model):
    """What a copied run's name says beyond its model and seed: lenet-tricks-dp_da-seed0 -> tricks-dp_da."""
    rest = name[len(model):].lstrip("-") if name.startswith(model) else name
    return re.sub(r"(^|-)seed\d+(-\d+)?$", "", rest)


def copied_ids(runs_dir):
    """{run_id: folder name} of the runs already copied into `runs_dir` (not the hidden folder of a copy
    an interrupted build left unfinished: copy_small_files)."""
    if not runs_dir.is_dir():
        return {}
    return {run_id(d / "config.json"): d.name for d in sorted(runs_dir.iterdir())
            if not d.name.startswith(".") and (d / "config.json").is_file()}


def destination_name(run, runs_dir, taken):
    """The folder name under OUT/runs for a finished `run`. A run copied before (the same config.json)
    keeps its name and is refreshed; a different run whose name is already used gets -2, -3, ...

    `taken` maps the run ids copied so far (before and during this build) to their names."""
    if run.run_id in taken:
        return taken[run.run_id]
    base = base_name(run.path, run.model)
    used = set(taken.values())
    if runs_dir.is_dir():
        used |= {d.name for d in runs_dir.iterdir()}
    name, k = base, 1
    while name in used:
        k += 1
        name = f"{base}-{k}"
    return name


def check_copy(run, dest):
    """A run copied before (dest holds its config.json) must still hold what was copied: a finished
    run's small files do not change, so a file that differs from its copy, or is gone, means another
    folder or a damaged one, and the copy (often committed) is kept rather than overwritten."""
    if not dest.is_dir() or dest.resolve() == run.path.resolve():
        return
    for name in SMALL_FILES:
        src, dst = run.path / name, dest / name
        if dst.is_file() and (not src.is_file() or src.read_bytes() != dst.read_bytes()):
            what = "has no" if not src.is_file() else "has another"
            raise ResultsError(f"{run.path} {what} {name} than its copy {dst}, a run of the same config.json; "
                               f"the copy is kept: remove {dest} to copy the run again")


def copy_small_files(run, dest):
    """config.json, history.csv and metrics.json of `run` into `dest` (check_copy has passed), nothing else.

    A new copy is made in a hidden folder beside `dest` and renamed into place, so an interrupted build
    leaves no copy without its metrics.json (load_copied skips hidden folders); an existing copy has each
    file replaced whole."""
    if dest.is_dir() and dest.resolve() == run.path.resolve():
        return
    target = dest
    if not dest.is_dir():
        target = dest.with_name(f".{dest.name}.tmp")
        shutil.rmtree(target, ignore_errors=True)  # left by an interrupted build
        target.mkdir(parents=True)
    for name in SMALL_FILES:
        src, dst = run.path / name, target / name
        if src.is_file():
            tmp = dst.with_name(f".{name}.tmp")
            shutil.copyfile(src, tmp)
            tmp.replace(dst)
    if target != dest:
        target.rename(dest)


def partial_entry(run, name):
    """One row of partial.csv: how far an unfinished run got, and what it is to reach."""
    done = (run.state or {}).get("epochs_completed", 0)
    return {"name": name, "run_id": run.run_id, "model": run.model, "epochs_completed": done,
            "epochs": run.settings["epochs"], "seen": time.strftime("%Y-%m-%d")}


def read_partial(path):
    """partial.csv: the unfinished runs named in earlier builds ([] where there is none)."""
    if not path.is_file():
        return []
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error) as e:
        raise ResultsError(f"cannot read {path}: {e}") from None
    if rows and set(PARTIAL_FIELDS) - set(rows[0]):
        raise ResultsError(f"{path} lacks the columns {', '.join(sorted(set(PARTIAL_FIELDS) - set(rows[0])))}")
    return rows


def write_csv(path, fields, rows):
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fields, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def check_forget(forget, partial, given):
    """The run ids of the rows of partial.csv that `build --forget` names: each RUN names exactly one row
    (by name or run id), not also a run folder of this build."""
    ids = set()
    for key in forget:
        matches = [row for row in partial if key in (row["name"], row["run_id"])]
        if len(matches) != 1:
            listed = ", ".join(f"{r['name']} ({r['run_id']})" for r in partial) or "none"
            what = "no" if not matches else "more than one"
            raise ResultsError(f"--forget {key}: {what} unfinished run has that name or id "
                               f"(partial.csv lists: {listed})")
        if any(run.run_id == matches[0]["run_id"] for run in given):
            raise ResultsError(f"--forget {key}: that run is also named as a RUN_DIR of this build")
        ids.add(matches[0]["run_id"])
    return ids


def update_out(given, out, forget_ids=()):
    """Copies the finished runs of `given` into OUT/runs, records the unfinished ones in
    OUT/partial.csv and drops the rows of the run ids `forget_ids`; returns (copied names, partial
    rows of this build)."""
    runs_dir = out / "runs"
    taken = copied_ids(runs_dir)
    partial = {row["run_id"]: row for row in read_partial(out / "partial.csv")
               if row["run_id"] not in forget_ids}
    for run in given:  # every copy checked before any is written
        if run.finished and run.run_id in taken:
            check_copy(run, runs_dir / taken[run.run_id])
    copied, seen_partial = [], []
    for run in given:
        if run.finished:
            name = destination_name(run, runs_dir, taken)
            copy_small_files(run, runs_dir / name)
            taken[run.run_id] = name
            partial.pop(run.run_id, None)
            copied.append(name)
        elif run.run_id not in taken:  # an unfinished copy of a run that finished is not news
            entry = partial_entry(run, base_name(run.path, run.model))
            partial[run.run_id] = entry
            seen_partial.append(entry)
    out.mkdir(parents=True, exist_ok=True)
    rows = sorted(partial.values(), key=lambda r: (r["model"], r["name"]))
    if rows or (out / "partial.csv").exists():
        write_csv(out / "partial.csv", PARTIAL_FIELDS, rows)
    return copied, seen_partial


def load_copied(out):
    """The runs in OUT/runs, each checked: everything a table is made from."""
    runs_dir = out / "runs"
    if not runs_dir.is_dir():
        return []
    runs = []
    for folder in sorted(d for d in runs_dir.iterdir() if d.is_dir() and not d.name.startswith(".")):
        run = load_run(folder)
        if not run.finished:
            raise ResultsError(f"{folder} holds no metrics.json; OUT/runs holds finished runs only")
        runs.append(run)
    return runs

"""Train a CIFAR-10 model: `python train.py --model resnet20`.

The one training loop of the project. `train(...)` is what the ablation series, the schedule
comparison, the benchmarks and the tests call; `main(argv)` is the command line around it.

Settings resolve in three layers: the model's recipe (models/, next to each family), then any
flag given; what the recipe does not set falls back to DEFAULTS. `config.json` records each
value and where it came from.

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

import argparse
import contextlib
import csv
import errno
import hashlib
import io
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import tfenv  # noqa: E402  (first: TensorFlow reads its settings when it loads)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import data  # noqa: E402
import distribute  # noqa: E402
import fused  # noqa: E402
import inference  # noqa: E402
import models  # noqa: E402
import padded  # noqa: E402
import runlock  # noqa: E402
from htd import schedules  # noqa: E402

# What a recipe does not say. Flags override both.
DEFAULTS = dict(
    epochs=200, batch_size=128, lr=0.1, momentum=0.9, nesterov=False, weight_decay=0.0,
    schedule="step", lr_milestones=None, lr_factor=[0.1], htd_bounds=[-6.0, 3.0], warmup_epochs=0,
    min_lr=0.0, lr_gamma=None, schedule_per="step", lr_scaling="linear",
    preprocess="standardize", augment="standard", cutout=0, mixup=0.0, label_smoothing=0.0,
    val_split=5000, split_seed=0, seed=0, mixed_precision=False, init_from=None,
    dataset="cifar10", labels="fine",
)
LR_SCALING = ("linear", "none")
MAX_SEED = 2**32 - 1  # numpy's and keras.utils.set_random_seed's range
SETTINGS = tuple(DEFAULTS)


class TrainError(Exception):
    """A problem the user can fix: bad settings, missing data, an unusable run folder."""


class DamagedRun(TrainError):
    """A file of a run folder cannot be read or contradicts the others; nothing in the folder was changed."""


def _damaged_advice(run):
    return (f"nothing in {run.path} was changed. This run cannot resume from it: start it again in another "
            f"--run-dir (best.keras and history.csv here, if present, are left as they are)")


def _why(error):
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


# --------------------------------------------------------------------------- settings

def _scale_milestones(milestones, factor, recipe_epochs, epochs):
    """The recipe's milestones stretched to `epochs`, dropping those that fall outside."""
    scaled = [round(m * epochs / recipe_epochs) for m in milestones]
    keep = [i for i, m in enumerate(scaled) if 0 < m < epochs and (i == 0 or m > scaled[i - 1])]
    factor = [factor[i] for i in keep] if len(factor) == len(milestones) > 1 else factor
    return [scaled[i] for i in keep], factor


def resolve_settings(model, **overrides):
    """(settings, sources): the recipe of `model`, with `overrides` (None = not given) on top."""
    try:
        recipe = models.get_recipe(model)
    except ValueError as e:
        raise TrainError(str(e)) from None
    unknown = set(overrides) - set(SETTINGS)
    if unknown:
        raise TrainError(f"unknown settings {sorted(unknown)}; known: {', '.join(SETTINGS)}")
    settings, sources = {"model": model}, {"model": "flag"}
    for key in SETTINGS:
        if overrides.get(key) is not None:
            settings[key], sources[key] = overrides[key], "flag"
        elif key in recipe:
            settings[key], sources[key] = recipe[key], "recipe"
        else:
            settings[key], sources[key] = DEFAULTS[key], "default"
    for key in ("lr_milestones", "lr_factor", "htd_bounds"):
        if settings[key] is not None and not isinstance(settings[key], list):
            settings[key] = list(settings[key]) if isinstance(settings[key], tuple) else [settings[key]]
    if (sources["epochs"] == "flag" and sources["lr_milestones"] == "recipe"
            and settings["epochs"] != recipe.get("epochs")):
        settings["lr_milestones"], factor = _scale_milestones(
            settings["lr_milestones"], settings["lr_factor"], recipe["epochs"], settings["epochs"])
        if sources["lr_factor"] == "recipe":
            settings["lr_factor"] = factor
        sources["lr_milestones"] = f"recipe, scaled from {recipe['epochs']} to {settings['epochs']} epochs"
    # Linear scaling (Goyal et al. 2017): the recipe's lr is for the recipe's batch; a flag's lr is taken as is.
    reference_batch = recipe.get("batch_size", DEFAULTS["batch_size"])
    if (settings["lr_scaling"] == "linear" and sources["lr"] != "flag"
            and settings["batch_size"] != reference_batch and isinstance(settings["batch_size"], int)):
        base = settings["lr"]
        settings["lr"] = base * settings["batch_size"] / reference_batch
        sources["lr"] = (f"{sources['lr']} {base}, scaled linearly from batch {reference_batch} to "
                         f"{settings['batch_size']}")
    _validate(settings)
    return settings, sources


def _validate(s):
    def positive_int(key):
        if isinstance(s[key], bool) or not isinstance(s[key], int) or s[key] <= 0:
            raise TrainError(f"{key.replace('_', ' ')} must be a positive whole number; got {s[key]!r}")

    for key, value in s.items():  # inf and nan pass the range checks below; no setting means them
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise TrainError(f"{key.replace('_', ' ')} must be a finite number; got {value!r}")
    positive_int("epochs")
    positive_int("batch_size")
    _validate_seed(s["seed"])
    _validate_seed(s["split_seed"], "split_seed")
    if not s["lr"] > 0:
        raise TrainError(f"lr must be positive; got {s['lr']!r}")
    if not 0 <= s["momentum"] < 1:
        raise TrainError(f"momentum must be in [0, 1); got {s['momentum']!r}")
    if not s["weight_decay"] >= 0:
        raise TrainError(f"weight decay must be >= 0; got {s['weight_decay']!r}")
    try:
        classes = data.get_spec(s["dataset"]).num_classes(s["labels"])
    except data.DataError as e:
        raise TrainError(str(e)) from None
    if (isinstance(s["val_split"], bool) or not isinstance(s["val_split"], int)
            or not (s["val_split"] == 0 or classes <= s["val_split"] < data.OFFICIAL_COUNTS["train"])):
        # Stratified: every class needs an image on each side of the split.
        raise TrainError(f"val split must be 0 (none) or a whole number of images from {classes} (one per "
                         f"class) to {data.OFFICIAL_COUNTS['train'] - 1}; got {s['val_split']!r}")
    if s["preprocess"] not in data.PREPROCESSING:
        raise TrainError(f"preprocess must be one of {', '.join(data.PREPROCESSING)}; got {s['preprocess']!r}")
    if not 0 <= s["label_smoothing"] < 1:
        raise TrainError(f"label smoothing must be in [0, 1); got {s['label_smoothing']!r}")
    if isinstance(s["cutout"], bool) or not isinstance(s["cutout"], int) or not 0 <= s["cutout"] <= 32:
        raise TrainError(f"cutout must be a square side from 0 (off) to 32; got {s['cutout']!r}")
    if not s["mixup"] >= 0:
        raise TrainError(f"mixup alpha must be >= 0 (0 = off); got {s['mixup']!r}")
    if s["lr_scaling"] not in LR_SCALING:
        raise TrainError(f"lr scaling must be one of {', '.join(LR_SCALING)}; got {s['lr_scaling']!r}")
    if s["augment"] not in data.AUGMENTATIONS:
        raise TrainError(f"augment must be one of {', '.join(data.AUGMENTATIONS)}; got {s['augment']!r}")
    try:  # the schedule checks its own parameters; steps_per_epoch does not matter here
        make_schedule(s, steps_per_epoch=1)
    except ValueError as e:
        raise TrainError(f"schedule: {e}") from None


def check_seeds(seeds):
    """The seeds of a series: each a valid seed, none twice (a repeated seed is the same run counted twice)."""
    for seed in seeds:
        _validate_seed(seed)
    repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if repeated:
        raise TrainError(f"seeds must differ (each is one run); {', '.join(map(str, repeated))} given more than once")


def _validate_seed(seed, key="seed"):
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise TrainError(f"{key.replace('_', ' ')} must be a whole number from 0 to {MAX_SEED}; got {seed!r}")


def make_schedule(s, steps_per_epoch):
    return schedules.make_schedule(s["schedule"], base_lr=s["lr"], epochs=s["epochs"],
                                   steps_per_epoch=steps_per_epoch,
                                   **schedules.schedule_kwargs(argparse.Namespace(**s)))


# --------------------------------------------------------------------------- files

def _fsync_replace(tmp, path):
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_atomic(path, text):
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    _fsync_replace(tmp, path)


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
        """The folder itself (and its parents), so that it can be locked before anything is read."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TrainError(f"cannot write to run folder {self.path}: {e.strerror or e}") from None

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
            obj = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DamagedRun(f"{path} is damaged ({_why(e)}); {advice(self)}") from None
        if not isinstance(obj, dict):
            raise DamagedRun(f"{path} is damaged (holds a {type(obj).__name__}, not an object); {advice(self)}")
        return obj

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
            raise DamagedRun(f"{path} is damaged (not a readable .keras file: {_why(e)}); "
                             f"{_damaged_advice(self)}") from None

    def check_archive(self, name):
        """DamagedRun unless `name` is a whole zip archive (every member's checksum read), as .keras files are."""
        path = self.path / name
        try:
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
        except (OSError, zipfile.BadZipFile, EOFError) as e:
            bad = _why(e)
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
            why = f"the disk holding {self.path} is full ({free}): could not write {what}"
        else:
            why = f"could not write {what} ({error.strerror or error})"
        return TrainError(f"{why}. The run folder is as it was after epoch {committed} (its last committed "
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


# --------------------------------------------------------------------------- training

# Training steps per call into TensorFlow: fewer returns to Python, the same steps. It makes a
# LeNet epoch about 13 % faster here and does not change the larger models' speed (BENCHMARKS.md).
STEPS_PER_EXECUTION = 16
BATCHES = ("auto", "precomputed", "streamed")
CHANNEL_PADDING = ("auto", "on", "off")


def build_model(settings, steps_per_epoch, jit=False, fused_batch_norm=True, steps_per_execution=1,
                pad_channels=False):
    keras.utils.set_random_seed(settings["seed"])
    model = models.create_model(settings["model"], num_classes=num_classes(settings),
                                weight_decay=settings["weight_decay"])
    if keras.mixed_precision.global_policy().compute_dtype != "float32":
        # Logits, softmax and loss in float32: float16 logits overflow and lose small probabilities.
        outputs = keras.layers.Activation("linear", dtype="float32", name="logits_float32")(model.output)
        model = keras.Model(model.input, outputs, name=model.name)
    if fused_batch_norm:
        fused.use_fused_batch_norm(model)
    if pad_channels:
        padded.pad_channels(model)
    optimizer = keras.optimizers.SGD(
        learning_rate=make_schedule(settings, steps_per_epoch),
        momentum=settings["momentum"], nesterov=settings["nesterov"])
    model.compile(optimizer=optimizer,
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True,
                                                            label_smoothing=settings["label_smoothing"]),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")], jit_compile=jit,
                  steps_per_execution=steps_per_execution)
    return model


def num_classes(settings):
    """The classes of the run's data set and label set (CIFAR-10: 10; CIFAR-100: 100 fine, 20 coarse)."""
    return data.get_spec(settings["dataset"]).num_classes(settings["labels"])


def current_lr(model):
    """The lr of the optimizer's next step (Keras evaluates the schedule at its iteration count)."""
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


class Progress(keras.callbacks.ProgbarLogger):
    """Keras' progress bar, counting epochs out of the whole run (fit is called once an epoch)."""

    def __init__(self, total_epochs):
        super().__init__()
        self.total_epochs = total_epochs

    def set_params(self, params):
        super().set_params(params)
        self.epochs = self.total_epochs


class EpochTimer(keras.callbacks.Callback):
    """Times the training part of an epoch (up to the start of validation) and the whole epoch."""

    def on_epoch_begin(self, epoch, logs=None):
        self.start, self.train_seconds = time.perf_counter(), None

    def on_test_begin(self, logs=None):
        if self.train_seconds is None:
            self.train_seconds = time.perf_counter() - self.start

    def on_epoch_end(self, epoch, logs=None):
        if self.train_seconds is None:
            self.train_seconds = time.perf_counter() - self.start
        self.epoch_seconds = time.perf_counter() - self.start


def machine():
    """The CPU this process runs on: model, cores and its widest vector units (kernels differ by them)."""
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            info = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines() if ":" in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
        cpu, flags = info.get("model name", cpu), set(info.get("flags", "").split())
    except OSError:
        pass
    vectors = next((label for flag, label in (("amx_tile", "AMX"), ("avx512_bf16", "AVX512-BF16"),
                                              ("avx512f", "AVX-512"), ("avx2", "AVX2")) if flag in flags), None)
    return ", ".join([cpu, f"{os.cpu_count()} cores", *([vectors] if vectors else [])])


def _versions():
    return {"python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "numpy": np.__version__}


def _describe_differences(old, new):
    """The settings that differ; a setting an older version did not record counts as its default."""
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in keys
            if old.get(k, DEFAULTS.get(k)) != new.get(k)]


def default_run_dir(settings):
    return Path("runs") / f"{settings['model']}-seed{settings['seed']}"


def _existing_run(run, settings):
    """The metrics of a finished run in `run`, None for a new or unfinished one; TrainError if unrelated."""
    old_config = run.read_json("config.json")
    if old_config is None:
        if run.foreign_files():
            raise TrainError(f"run folder {run.path} is not empty and holds no run "
                             f"({', '.join(run.foreign_files()[:3])}, ...); use an empty or new folder")
        return None
    if not isinstance(old_config.get("settings"), dict):
        raise DamagedRun(f"{run.path / 'config.json'} is damaged (it lacks 'settings'); {_damaged_advice(run)}")
    diffs = _describe_differences(old_config["settings"], settings)
    if diffs:
        if (run.path / "state.json").exists():
            raise TrainError(f"{run.path} holds a run with other settings ({'; '.join(diffs)}); "
                             "use another --run-dir")
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


def _worker_folder(home, index):
    """A temporary run folder for a non-chief worker, holding what it needs to resume like the chief."""
    run = RunFolder(tempfile.mkdtemp(prefix=f"cifar10-worker{index}-"))
    state = home.read_json("state.json")
    if state is not None:
        run.ckpt_dir.mkdir()
        for name in {state["checkpoint"], (state.get("best") or {}).get("checkpoint")} - {None}:
            shutil.copyfile(home.ckpt_dir / name, run.ckpt_dir / name)
        write_json(run.path / "state.json", state)
    return run


def train(model="resnet20", *, run_dir=None, data_dir=None, loaded=None, verbose="auto",
          command=None, devices=None, jit=False, deterministic=False, keras_batch_norm=False,
          steps_per_execution=None, batches="auto", channel_padding="auto", **overrides):
    """Trains `model` with its recipe and `overrides`; returns the run's metrics.

    `loaded` (a data.Cifar10 of the run's data set) skips loading; `verbose` is Keras' fit verbosity; `devices` and
    `jit` choose where and how the steps run (see distribute.py), and may change when a run is
    resumed; `deterministic` turns on TensorFlow's op determinism (for the rest of the process);
    `keras_batch_norm` keeps Keras' own batch-norm ops instead of the fused kernel (fused.py);
    `steps_per_execution` training steps run per call into TensorFlow (the same steps, fewer calls;
    default STEPS_PER_EXECUTION on one replica, 1 on several); `batches` where each epoch's
    training batches are computed (BATCHES: see choose_batches); `channel_padding` whether
    convolutions with a channel count the CPU's vectors do not divide compute with zero channels
    added (CHANNEL_PADDING: see choose_channel_padding and padded.py).
    Raises TrainError for anything the user can fix.
    """
    if keras.backend.backend() != "tensorflow":
        # tfenv makes TensorFlow the default; only an explicit KERAS_BACKEND gets here.
        raise TrainError(f"train.py trains on Keras' TensorFlow backend (tf.data, tf.distribute, TensorFlow's "
                         f"kernels), not {keras.backend.backend()!r}: unset KERAS_BACKEND (the models themselves are "
                         f"backend-neutral; bench/train_speed.py measures them on other backends)")
    settings, sources = resolve_settings(model, **overrides)
    if steps_per_execution is not None and not (isinstance(steps_per_execution, int) and steps_per_execution >= 1):
        raise TrainError(f"--steps-per-execution must be a whole number >= 1, not {steps_per_execution!r}")
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    try:
        placement = distribute.place(devices)
        if jit:
            distribute.check_jit(placement)
        policy = distribute.mixed_precision_policy() if settings["mixed_precision"] else "float32"
    except distribute.DistributeError as e:
        raise TrainError(str(e)) from None
    if placement.replicas > 1 and (steps_per_execution or 1) > 1:
        # Keras 3 fails inside the step with several replicas (keras-team/keras#19246).
        raise TrainError(f"--steps-per-execution {steps_per_execution} does not work with several replicas "
                         f"({placement.replicas} here) in Keras {keras.__version__}; leave it out")
    if steps_per_execution is None:
        steps_per_execution = STEPS_PER_EXECUTION if placement.replicas == 1 else 1
    batches = choose_batches(batches, settings, placement)
    channel_padding = choose_channel_padding(channel_padding, placement)
    if settings["batch_size"] % placement.replicas:
        raise TrainError(f"batch size {settings['batch_size']} does not split evenly over "
                         f"{placement.replicas} replicas")
    home = RunFolder(run_dir or default_run_dir(settings))
    with contextlib.ExitStack() as owned:
        if placement.is_chief:  # only the chief writes the run folder, and it owns it while it runs
            home.create()
            owned.enter_context(hold(home.path, "--run-dir"))
        return _train_in(home, settings, sources, placement, policy, loaded, data_dir, verbose, command,
                         jit=jit, keras_batch_norm=keras_batch_norm, deterministic=deterministic,
                         steps_per_execution=steps_per_execution, batches=batches, channel_padding=channel_padding)


@contextlib.contextmanager
def hold(path, what):
    """runlock.hold, its refusal as a TrainError."""
    try:
        with runlock.hold(path, what):
            yield
    except runlock.Busy as e:
        raise TrainError(str(e)) from None


def _train_in(home, settings, sources, placement, policy, dataset, data_dir, verbose, command, *, jit,
              keras_batch_norm, deterministic, steps_per_execution, batches, channel_padding):
    finished = _existing_run(home, settings)
    if finished is not None:
        print(f"{home.path} is already finished ({finished['epochs_completed']} epochs, test accuracy "
              f"{finished['test_accuracy']:.4f}); nothing to do. Use another --run-dir to train again.")
        return finished
    # Other workers of a cluster keep a temporary folder.
    run = home if placement.is_chief else _worker_folder(home, placement.worker_index)
    run.prepare()
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        execution = {"strategy": placement.kind, "replicas": placement.replicas, "workers": placement.num_workers,
                     "devices": placement.devices, "global_batch": settings["batch_size"],
                     "per_replica_batch": settings["batch_size"] // placement.replicas,
                     "lr": settings["lr"], "lr_source": sources["lr"], "precision": policy, "jit": bool(jit),
                     "batch_norm": "keras" if keras_batch_norm else "fused",
                     "steps_per_execution": steps_per_execution, "batches": batches,
                     "channel_padding": channel_padding,
                     "onednn": tfenv.onednn_enabled(),
                     "deterministic": bool(deterministic)}
        with placement.strategy.scope():
            return _run(run, settings, sources, execution, dataset, data_dir, verbose, command)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
        if run is not home:
            shutil.rmtree(run.path, ignore_errors=True)


def choose_batches(batches, settings, placement):
    """Where each epoch's training batches are computed: "precomputed" (all at once before the
    epoch, data.EpochBatches) or "streamed" (by tf.data beside the training step, data.make_dataset);
    the same batches either way. "auto" precomputes them where the step runs on the CPU alone (one
    device, no GPU): there a pipeline beside the step takes a core from its kernels (LeNet's epoch
    on 2 cores: BENCHMARKS.md). On a GPU the pipeline's CPU work hides behind the step: streamed."""
    if batches not in BATCHES:
        raise TrainError(f"--batches must be one of {', '.join(BATCHES)}, not {batches!r}")
    covered = settings["augment"] in data.EpochBatches.AUGMENTATIONS and not settings["cutout"] and not settings["mixup"]
    if batches == "precomputed":
        if not covered:
            raise TrainError(f"--batches precomputed computes --augment {' or '.join(data.EpochBatches.AUGMENTATIONS)} "
                             f"without --cutout or --mixup; this run has --augment {settings['augment']}, --cutout "
                             f"{settings['cutout']}, --mixup {settings['mixup']}: use --batches streamed")
        if placement.replicas > 1 or placement.kind == "multi_worker":
            raise TrainError(f"--batches precomputed feeds one device; this run has {placement.replicas} replicas "
                             f"({placement.kind}): use --batches streamed")
        return batches
    if batches == "auto":
        return "precomputed" if covered and placement.kind == "default" else "streamed"
    return batches


def choose_channel_padding(channel_padding, placement):
    """"on" or "off": whether padded.pad_channels runs on the model. "auto" pads where the step runs
    on CPUs, where it was measured faster (LeNet's step 1.10x on the 2-core AVX2 machine:
    BENCHMARKS.md, "Padded channels"; DenseNet-BC-100-12's: "Padded batch norms"); GPUs' libraries
    choose their own layouts, and it is not measured there. LeNet's convolutions (6 filters) and the
    DenseNets' batch norms are padded; the other models have nothing to pad and run as before."""
    if channel_padding not in CHANNEL_PADDING:
        raise TrainError(f"--channel-padding must be one of {', '.join(CHANNEL_PADDING)}, not {channel_padding!r}")
    if channel_padding == "auto":
        return "on" if all("CPU" in d.upper() for d in placement.devices) else "off"
    return channel_padding


def _run(run, settings, sources, execution, dataset, data_dir, verbose, command):
    # How the step runs comes from the execution record, so the record is what ran.
    jit, fuse = execution["jit"], execution["batch_norm"] == "fused"
    steps_per_execution, batches = execution["steps_per_execution"], execution["batches"]
    pad = execution["channel_padding"] == "on"
    # The folder is checked before the data is read: a damaged one fails at once, and changes nothing.
    state = run.load_state(settings["epochs"])
    if state is not None:
        model_ = run.load_model(Path("checkpoints") / state["checkpoint"])
        if state["best"] is not None:
            run.check_archive(Path("checkpoints") / state["best"]["checkpoint"])
    if dataset is None:
        try:
            dataset = data.load(settings["dataset"], settings["labels"], data_dir)
        except data.DataError as e:
            raise TrainError(str(e)) from None
    elif (dataset.dataset, dataset.labels) != (settings["dataset"], settings["labels"]):
        raise TrainError(f"the data set given is {dataset.dataset} ({dataset.labels} labels); the run's settings "
                         f"say {settings['dataset']} ({settings['labels']} labels)")
    try:
        train_idx, val_idx = data.stratified_split(dataset.y_train, settings["val_split"], settings["split_seed"])
    except ValueError as e:
        raise TrainError(str(e)) from None
    x_train, y_train = dataset.x_train[train_idx], dataset.y_train[train_idx]
    x_val, y_val = dataset.x_train[val_idx], dataset.y_train[val_idx]
    # Made once: each epoch's pipeline reads these instead of copying 138 MB into TensorFlow again.
    train_images, train_labels = tf.constant(x_train), tf.constant(y_train)
    steps_per_epoch = math.ceil(len(x_train) / settings["batch_size"])

    data_record = {"source": dataset.source, "train_images": len(x_train), "val_images": len(x_val),
                   "test_images": len(dataset.x_test), "val_indices_sha256": indices_fingerprint(val_idx),
                   "sha256": data_fingerprint(dataset)}
    init_from = None  # a new model's starting weights, recorded in config.json: None is a random initialisation
    if state is None:  # built before config.json is written, so that weights that do not fit leave no run behind
        model_ = build_model(settings, steps_per_epoch, jit=jit, fused_batch_norm=fuse,
                             steps_per_execution=steps_per_execution, pad_channels=pad)
        if settings.get("init_from"):  # on resume the weights come from the run's own checkpoint, never from here
            try:
                source = models.weights_file(settings["init_from"])
                init_from = {"path": str(source), **models.load_weights(model_, source, reinit_head=True)}
            except models.WeightsError as e:
                raise TrainError(f"--init-from {settings['init_from']}: {e}") from None
    config = run.read_json("config.json")
    if config is not None:
        _check_same_data(run, config.get("data") or {}, data_record)
    if config is None or (init_from is not None and config.get("init_from") != init_from):
        # A new run, or an attempt that committed no epoch and started from a file that has changed since.
        try:
            write_json(run.path / "config.json", {
                "settings": settings, "sources": sources, "command": command, "execution": execution,
                "data": data_record, "init_from": init_from, "versions": _versions(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            })
        except OSError as e:
            run.discard_uncommitted()
            raise run.write_error(e, 0) from None

    if state is None:
        state = {"epochs_completed": 0, "checkpoint": None, "best": None, "history": [],
                 "wall_seconds": 0.0}
    else:
        run.sync(state)
        if fuse:
            fused.use_fused_batch_norm(model_)
        if pad:
            padded.pad_channels(model_)
        model_.jit_compile = bool(jit)
        model_.steps_per_execution = steps_per_execution
        print(f"Resuming {run.path} after epoch {state['epochs_completed']}/{settings['epochs']}", flush=True)

    fit_verbose = (1 if sys.stdout.isatty() else 2) if verbose == "auto" else verbose
    eval_batch = max(settings["batch_size"], 256)
    pipeline = dict(preprocess_mode=settings["preprocess"], dataset=settings["dataset"],
                    num_classes=num_classes(settings))
    if batches == "precomputed":
        # Normalised once per run; each epoch's batches are then one crop of the whole epoch.
        epoch_batches = data.EpochBatches(train_images, train_labels, augment=settings["augment"], **pipeline)
        val_ds = data.EpochBatches(x_val, y_val, **pipeline).dataset(eval_batch) if len(x_val) else None
    else:
        val_ds = data.make_dataset(x_val, y_val, eval_batch, **pipeline) if len(x_val) else None
    timer = EpochTimer()
    callbacks = [timer, keras.callbacks.TerminateOnNaN()]
    if fit_verbose:
        callbacks.append(Progress(settings["epochs"]))
    writer = tf.summary.create_file_writer(str(run.path / "tensorboard"))
    session_start = time.perf_counter()
    wall_before = state["wall_seconds"]
    here = machine()

    for epoch in range(state["epochs_completed"], settings["epochs"]):
        train_ds = None  # the last epoch's batches go before this epoch's are made
        if batches == "precomputed":
            train_ds = epoch_batches.dataset(settings["batch_size"], shuffle=True, seed=settings["seed"], epoch=epoch)
        else:
            train_ds = data.make_dataset(train_images, train_labels, settings["batch_size"], augment=settings["augment"],
                                         cutout=settings["cutout"], mixup=settings["mixup"], shuffle=True,
                                         seed=settings["seed"], epoch=epoch, **pipeline)
        lr = float(f"{current_lr(model_):.6g}")  # the float32 value, without its binary noise
        history = model_.fit(train_ds, validation_data=val_ds, epochs=epoch + 1, initial_epoch=epoch,
                             verbose=fit_verbose, shuffle=False, callbacks=callbacks)
        logs = {k: float(v[-1]) for k, v in history.history.items()}
        if not all(math.isfinite(v) for v in logs.values()) or model_.stop_training:
            kept = state["epochs_completed"]
            advice = (f"The last good model (epoch {kept}) is kept in {run.path}; to try a lower --lr or a warm-up, "
                      "use another --run-dir (this one resumes only with the settings it has)" if kept else
                      "No epoch was committed, so the same --run-dir takes other settings: try a lower --lr or "
                      "a warm-up")
            raise TrainError(f"loss became {logs.get('loss')} in epoch {epoch + 1}; stopped. {advice}.")
        row = {"epoch": epoch + 1, "lr": lr, **logs, "train_seconds": timer.train_seconds,
               "epoch_seconds": timer.epoch_seconds}
        best = state["best"]
        is_best = val_ds is not None and (best is None or row["val_accuracy"] > best["val_accuracy"])
        state["wall_seconds"] = wall_before + time.perf_counter() - session_start
        # A resumed run may continue on another machine: epochs per machine, for honest timings.
        state.setdefault("machines", {})
        state["machines"][here] = state["machines"].get(here, 0) + 1
        run.commit(model_, state, row, is_best)
        try:
            with writer.as_default(step=epoch + 1):
                for key in HISTORY_FIELDS[1:]:
                    if key in row:
                        tf.summary.scalar(key, row[key])
            writer.flush()
        except tf.errors.OpError as e:  # TensorFlow's own error for a full disk, after the epoch's commit
            full = "No space left" in str(e)
            raise run.write_error(OSError(errno.ENOSPC if full else errno.EIO, "TensorBoard's log could not be written",
                                          str(run.path / "tensorboard")), epoch + 1) from None

    metrics = _final_evaluation(run, state, settings, dataset, len(x_train), len(x_val), eval_batch, fuse, pad)
    metrics["wall_seconds"] = wall_before + time.perf_counter() - session_start
    metrics["execution"] = execution
    metrics["machines"] = state.get("machines") or {here: 0}
    try:  # inference.keras before metrics.json: a finished run always has it
        metrics["inference_model"] = inference.save_inference_model(run.path, "best" if state["best"] else "last").name
    except inference.InferenceError as e:
        raise TrainError(f"{e}; the run folder keeps its {state['epochs_completed']} committed epochs: run the "
                         "same command again to finish it") from None
    try:
        write_json(run.path / "metrics.json", metrics)
    except OSError as e:
        run.discard_uncommitted()
        raise run.write_error(e, state["epochs_completed"]) from None
    print(f"Finished {run.path}: val accuracy {metrics['val_accuracy']}, test accuracy "
          f"{metrics['test_accuracy']:.4f} ({metrics['test_model']})", flush=True)
    return metrics


def data_fingerprint(dataset):
    """sha256 over the data set's arrays (images and labels, training then test): the data itself, not its path."""
    digest = hashlib.sha256()
    for array in (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test):
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def _check_same_data(run, old, new):
    """Refuses to resume on other data than the run started on; a moved copy of the same data is fine."""
    keys = [k for k in ("sha256", "train_images", "val_images", "test_images", "val_indices_sha256")
            if k in old and old[k] != new[k]]
    if keys:
        diffs = "; ".join(f"{k}: {old[k]!r} there, {new[k]!r} now" for k in keys)
        raise TrainError(f"{run.path} was trained on other data ({diffs}); it was started on {old.get('source')}: "
                         "give that data set again (--data-dir), or use another --run-dir")


def indices_fingerprint(indices):
    """sha256 of a list of image indices (the validation split), to tell whether two runs share it."""
    return hashlib.sha256(np.asarray(indices, np.int64).tobytes()).hexdigest()


def _final_evaluation(run, state, settings, dataset, n_train, n_val, eval_batch, fuse, pad):
    """The test set is used here, once, on the model the validation split chose."""
    if state["best"] is not None:
        kept, epoch = "best.keras", state["best"]["epoch"]
        why = "highest validation accuracy"
    else:
        kept, epoch = "last.keras", state["epochs_completed"]
        why = "no validation split, so the last epoch"
    labels = dataset.y_test.astype(int)

    def probabilities(name):
        model = run.load_model(name, compile=False)
        if fuse:
            fused.use_fused_batch_norm(model)
        if pad:
            padded.pad_channels(model)
        test = {}
        for flip in (False, True):
            ds = data.make_dataset(dataset.x_test, dataset.y_test, eval_batch, preprocess_mode=settings["preprocess"],
                                   flip=flip, dataset=settings["dataset"], num_classes=num_classes(settings))
            test[flip] = np.asarray(keras.ops.softmax(model.predict(ds, verbose=0).astype(np.float32)))
        return test[False], (test[False] + test[True]) / 2

    plain, tta = probabilities(kept)
    # Peers quote either the chosen epoch or the last one; both are reported, each named.
    last_plain = plain if epoch == state["epochs_completed"] else probabilities("last.keras")[0]
    history = state["history"]
    speeds = [n_train / r["train_seconds"] for r in history if r.get("train_seconds")]
    return {
        "model": settings["model"],
        "val_accuracy": state["best"]["val_accuracy"] if state["best"] else None,
        "test_accuracy": float(np.mean(plain.argmax(1) == labels)),
        "test_loss": float(-np.mean(np.log(np.maximum(plain[np.arange(len(labels)), labels], 1e-12)))),
        # The same model on each test image and its mirror image, softmax outputs averaged.
        "test_accuracy_flip_tta": float(np.mean(tta.argmax(1) == labels)),
        "test_model": f"{kept} (epoch {epoch}, {why})",
        "best_epoch": epoch,
        "last_epoch_test_accuracy": float(np.mean(last_plain.argmax(1) == labels)),
        "last_val_accuracy": history[-1].get("val_accuracy"),
        "last_train_accuracy": history[-1]["accuracy"],
        "epochs_completed": state["epochs_completed"],
        "train_images": n_train, "val_images": n_val, "test_images": len(dataset.x_test),
        # The median over epochs, so the first epoch's tracing does not count once there are 3+.
        "train_images_per_second": float(np.median(speeds)) if speeds else None,
        "splits": f"val: {n_val} images held out of the {n_train + n_val} training images (stratified, "
                  f"split seed {settings['split_seed']}); test: the {len(dataset.x_test)} test images, "
                  "evaluated once, at the end",
    }


# --------------------------------------------------------------------------- command line

def _train_seeds(model, seeds, out, execution, overrides):
    """One run per seed (resumable, as any run), then RUN_DIR/summary.{json,md}."""
    import series  # series builds on this module

    try:
        results = series.run_grid(model, {model: {}}, seeds, out, **execution, **overrides)
    except data.DataError as e:
        raise TrainError(str(e)) from None
    row = series.summary_rows(results)[0]
    runs = [{"run_dir": str(d), "seed": s, "val_accuracy": m["val_accuracy"], "test_accuracy": m["test_accuracy"],
             "test_accuracy_flip_tta": m.get("test_accuracy_flip_tta")} for s, (d, m) in zip(seeds, results[model])]
    write_json(out / "summary.json", {"model": model, "seeds": seeds, **row, "runs_detail": runs})
    text = (f"{model}, {row['runs']} runs (seeds {', '.join(map(str, seeds))}), {row['epochs']} epochs: "
            f"validation accuracy {row['val_mean']:.2f} ± {row['val_std']:.2f} %, test accuracy "
            f"{row['test_mean']:.2f} ± {row['test_std']:.2f} % (mean ± sample std; test measured once per run "
            "on the model its validation split chose)\n")
    write_atomic(out / "summary.md", text)
    print(text, end="")


def build_parser():
    p = argparse.ArgumentParser(
        description="Train a CIFAR-10 model with its reference recipe; any flag overrides the recipe.")
    p.add_argument("--model", default="resnet20", help="registered model name (see --list-models)")
    p.add_argument("--list-models", action="store_true", help="print the registered model names and exit")
    p.add_argument("--describe", nargs="?", const="*", metavar="PATTERN",
                   help="print the table of models matching PATTERN (default all): trainable parameters, "
                        "mult-adds per image, paper, the paper's count; builds each model once")
    p.add_argument("--describe-recipe", action="store_true",
                   help="print the resolved settings and their sources as JSON, and exit")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="global batch size")
    p.add_argument("--lr", type=float, help="base learning rate")
    p.add_argument("--momentum", type=float)
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--weight-decay", type=float,
                   help="coupled L2 weight decay on kernels, as in the papers: w -= lr * (grad + wd * w)")
    schedules.add_schedule_arguments(p)
    p.add_argument("--lr-scaling", choices=LR_SCALING,
                   help="linear (default): a recipe's lr scales with --batch-size / the recipe's batch; "
                        "an --lr given is used as is")
    p.add_argument("--preprocess", choices=data.PREPROCESSING)
    p.add_argument("--augment", choices=data.AUGMENTATIONS,
                   help="standard: pad-4 crop + flip; kaggle: random-resized crop, flip, brightness, hue")
    p.add_argument("--cutout", type=int, help="cutout square side (DeVries & Taylor: 16 for CIFAR-10; 0 = off)")
    p.add_argument("--mixup", type=float, help="mixup alpha (Zhang et al.; 0 = off)")
    p.add_argument("--label-smoothing", type=float, help="label smoothing epsilon (0 = off)")
    p.add_argument("--val-split", type=int, help="training images held out for validation (0: none)")
    p.add_argument("--split-seed", type=int, help="seed of the validation split (default 0, shared by all runs)")
    p.add_argument("--seed", type=int, help="seed of initialisation, shuffling and augmentation")
    p.add_argument("--seeds", type=int, nargs="+",
                   help="one run per seed, in RUN_DIR/runs/MODEL-seedS (RUN_DIR default runs/MODEL), and "
                        "RUN_DIR/summary.md with mean and std of the accuracies")
    p.add_argument("--deterministic", action="store_true",
                   help="TensorFlow op determinism: the same seed on the same machine gives the same numbers")
    p.add_argument("--mixed-precision", action="store_true", default=None,
                   help="float16 on GPUs, bfloat16 on CPUs that compute it natively; refused elsewhere")
    p.add_argument("--devices", type=int,
                   help="local devices: the first N GPUs, or N logical CPU devices where there is no GPU "
                        "(default: all GPUs, or the CPU); several machines: set TF_CONFIG")
    p.add_argument("--jit", action="store_true", help="compile the training step with XLA")
    p.add_argument("--keras-batch-norm", action="store_true",
                   help="Keras' own batch-norm ops instead of TensorFlow's fused kernel (slower; the "
                        "same arithmetic, see fused.py)")
    p.add_argument("--steps-per-execution", type=int, metavar="N",
                   help=f"training steps per call into TensorFlow: the same steps with less per-step "
                        f"overhead, progress shown per N steps (default {STEPS_PER_EXECUTION} on one "
                        f"device; 1, the only value Keras supports, on several)")
    p.add_argument("--batches", choices=BATCHES, default="auto",
                   help="where each epoch's training batches are computed: precomputed, all at once before the "
                        "epoch (memory: ~2 GB more for CIFAR-10), or streamed, beside the training step; the same "
                        "batches either way (default auto: precomputed on the CPU alone, streamed on GPUs and "
                        "where --augment kaggle, --cutout or --mixup is used)")
    p.add_argument("--channel-padding", choices=CHANNEL_PADDING, default="auto",
                   help="compute convolutions and batch norms whose channels the CPU's vectors do not divide "
                        "(LeNet's 6, DenseNet's 36, 60, ...) with zero channels added: the same outputs, a faster "
                        "step on CPUs (default auto: on where the step runs on CPUs, off on GPUs; see padded.py)")
    p.add_argument("--dataset", choices=tuple(data.DATASETS),
                   help="cifar10 (default) or cifar100 (the official cifar-100-python archive)")
    p.add_argument("--labels", choices=data.LABELS,
                   help="CIFAR-100's 100 fine classes (default) or its 20 coarse superclasses")
    p.add_argument("--data-dir", help="the data set's archive, or a folder holding it or its batch folder "
                                      "(cifar-10-batches-py/, cifar-100-python/)")
    p.add_argument("--run-dir", help="run folder (default runs/MODEL-seedSEED); rerun to resume")
    p.add_argument("--init-from", metavar="RUN_DIR_OR_FILE",
                   help="start a new run from trained weights: a run folder (its best.keras, else last.keras) or a "
                        ".keras / .weights.h5 file, loaded by layer name; a classifier for another class count is "
                        "initialised afresh. Part of the run's settings; a resume reads its own checkpoint")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.init_from is not None:  # compared on resume: the same file named from another folder is the same
        args.init_from = os.path.abspath(args.init_from)
    if args.list_models:
        print("\n".join(models.list_models()))
        return 0
    if args.describe:
        from models import describe
        names = models.list_models(args.describe)
        if not names:
            print(f"error: no model matches {args.describe!r}; see --list-models", file=sys.stderr)
            return 2
        print(describe.markdown_table(describe.describe(names)), end="")
        return 0
    overrides = {k: v for k, v in vars(args).items() if k in SETTINGS and v is not None}
    try:
        if args.describe_recipe:
            settings, sources = resolve_settings(args.model, **overrides)
            print(json.dumps({"settings": settings, "sources": sources}, indent=2))
            return 0
        execution = dict(data_dir=args.data_dir, devices=args.devices, jit=args.jit,
                         deterministic=args.deterministic, keras_batch_norm=args.keras_batch_norm,
                         steps_per_execution=args.steps_per_execution, batches=args.batches,
                         channel_padding=args.channel_padding,
                         command=["train.py", *(sys.argv[1:] if argv is None else argv)])
        if args.init_from is not None:
            # The file is checked before a run folder is made (with h5py alone: TensorFlow must not start before
            # distribute.place); whether it fits the model, once the model is built. A resumed run reads its own
            # checkpoint instead, so the file may be gone by then.
            out = Path(args.run_dir or Path("runs") / args.model)
            runs = ([out / "runs" / f"{args.model}-seed{seed}" for seed in args.seeds] if args.seeds else
                    [Path(args.run_dir or default_run_dir(resolve_settings(args.model, **overrides)[0]))])
            if not all((run / "state.json").exists() for run in runs):
                try:
                    models.weights_layout(models.weights_file(args.init_from))
                except models.WeightsError as e:
                    raise TrainError(f"--init-from {args.init_from}: {e}") from None
        if args.seeds:
            if args.seed is not None:
                raise TrainError("give --seed or --seeds, not both")
            check_seeds(args.seeds)
            _train_seeds(args.model, args.seeds, Path(args.run_dir or Path("runs") / args.model), execution,
                         overrides)
        else:
            train(args.model, run_dir=args.run_dir, **execution, **overrides)
    except TrainError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a write outside an epoch's commit (a summary, TensorBoard's log): nothing is lost
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}; the run folders keep their committed epochs: run the same "
              "command again to resume", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to resume after the last completed epoch",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

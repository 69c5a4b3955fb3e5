"""The training loop: `train(...)`, which train.py, the series, the benchmarks and the tests call.

Each epoch is one call to Keras' `fit`, then a commit of the run folder (runfolder.py): kill the
process at any moment and the same call resumes after the last committed epoch. The test set is
used once, at the end, on the model the validation split chose.
"""

import contextlib
import errno
import importlib
import math
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import tfenv  # noqa: F401  (before keras: TensorFlow reads its settings when it loads)
import keras
import numpy as np

import data
import distribute
import execution as execution_
import inference
import models
import numpy_pipeline
import settings as settings_
from errors import TrainError
from runfolder import (HISTORY_FIELDS, RunFolder, check_same_data, data_fingerprint, default_run_dir, existing_run,
                       hold, indices_fingerprint, other_settings, worker_folder, write_json)

if distribute.BACKEND == "tensorflow":  # the other backends' processes may have no TensorFlow installed
    import tensorflow as tf


def train(model="resnet20", *, run_dir=None, data_dir=None, loaded=None, verbose="auto", command=None,
          devices=None, jit=False, deterministic=False, keras_batch_norm=False, steps_per_execution=None,
          batches="auto", channel_padding="auto", callbacks=(), on_epoch=None, **overrides):
    """Trains `model` with its recipe and `overrides` (settings.py); returns the run's metrics.

    `loaded` (a data.Cifar10 of the run's data set) skips loading; `verbose` is Keras' fit
    verbosity; `command` the command line recorded in config.json; the execution options
    (`devices` ... `channel_padding`: execution.plan) choose where and how the steps run, and may
    change when a run is resumed. `callbacks` are more Keras callbacks for every epoch's `fit`;
    `on_epoch(times)`, if given, is called after each epoch's commit with the loop's own
    perf_counter times of it (pipeline seconds, fit start and end, commit seconds and end), so a
    benchmark can see the loop's parts without replacing any of them.
    The backend is Keras' (KERAS_BACKEND; tfenv makes TensorFlow the default): distribute.py says
    which devices each one trains on, execution.plan what else differs.
    Raises TrainError for anything the user can fix.
    """
    settings, sources = settings_.resolve_settings(model, **overrides)
    execution = execution_.plan(settings, sources, devices=devices, jit=jit, deterministic=deterministic,
                                keras_batch_norm=keras_batch_norm, steps_per_execution=steps_per_execution,
                                batches=batches, channel_padding=channel_padding)
    home = RunFolder(run_dir or default_run_dir(settings))
    created = execution.placement.is_chief and not home.path.exists()
    with contextlib.ExitStack() as owned:
        if execution.placement.is_chief:  # only the chief writes the run folder, and it owns it while it runs
            home.create()
            owned.enter_context(hold(home.path, "--run-dir"))
        try:
            return _train_in(home, settings, sources, execution, loaded, data_dir, verbose, command, callbacks,
                             on_epoch)
        except TrainError:
            if created:  # a start refused (no data, say) leaves no empty folder behind; still under the lock
                home.remove_if_unstarted()
            raise


def _train_in(home, settings, sources, execution, loaded, data_dir, verbose, command, callbacks, on_epoch):
    """train() inside its folder `home` (held): a finished run read back, or _run."""
    finished = existing_run(home, settings)
    if finished is not None:
        print(f"{home.path} is already finished ({finished['epochs_completed']} epochs, test accuracy "
              f"{finished['test_accuracy']:.4f}); nothing to do. Use another --run-dir to train again.")
        return finished
    # Other workers of a cluster keep a temporary folder.
    placement = execution.placement
    run = home if placement.is_chief else worker_folder(home, placement.worker_index)
    run.prepare()
    try:
        with execution_.scope(execution):
            return _run(run, settings, sources, execution, loaded, data_dir, verbose, command, callbacks, on_epoch)
    finally:
        if run is not home:
            shutil.rmtree(run.path, ignore_errors=True)


def check_folder(model, run_dir, loaded, **overrides):
    """What train() would refuse in an existing run folder, checked without training or writing
    anything: a damaged config.json or metrics.json, other settings once an epoch is committed, other
    data than `loaded` (where the settings match). A series checks each of its folders with it before
    its first run, so that a refusal comes before hours of training, not after."""
    settings, _ = settings_.resolve_settings(model, **{k: v for k, v in overrides.items() if k in settings_.SETTINGS})
    run = RunFolder(run_dir)
    if not run.path.is_dir():
        return
    config = run.read_json("config.json")
    if config is None:
        existing_run(run, settings)  # refuses a folder of other files
        return
    if other_settings(run, config, settings):
        return  # train() starts it anew: no epoch of its other settings was committed
    check_same_data(run, config.get("data") or {}, _split(settings, loaded, None).record)
    existing_run(run, settings)  # a finished run's metrics.json checked as train() reads it back


@dataclass
class Split:
    """The run's images: training and validation (held out of the training set), and the data set's test set."""

    dataset: data.Cifar10
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    record: dict  # config.json's "data": where the images came from and which they are


def _split(settings, dataset, data_dir):
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
    record = {"source": dataset.source, "train_images": len(train_idx), "val_images": len(val_idx),
              "test_images": len(dataset.x_test), "val_indices_sha256": indices_fingerprint(val_idx),
              "sha256": data_fingerprint(dataset)}
    return Split(dataset, dataset.x_train[train_idx], dataset.y_train[train_idx], dataset.x_train[val_idx],
                 dataset.y_train[val_idx], record)


def _build(settings, execution, steps_per_epoch):
    """A new run's model, from its recipe or --init-from's weights; and where those weights came from."""
    model = execution_.build_model(settings, execution, steps_per_epoch)
    if not settings.get("init_from"):  # on resume the weights come from the run's own checkpoint, never from here
        return model, None
    try:
        source = models.weights_file(settings["init_from"])
        return model, {"path": str(source), **models.load_weights(model, source, reinit_head=True)}
    except models.WeightsError as e:
        raise TrainError(f"--init-from {settings['init_from']}: {e}") from None


def _write_config(run, settings, sources, execution, split, init_from, command):
    """config.json, where the folder has none (a new run, or a worker's copy) or where an attempt that
    committed no epoch started from a weights file that has changed since; the data checked against it."""
    config = run.read_json("config.json")
    if config is not None:
        check_same_data(run, config.get("data") or {}, split.record)
    if config is None or (init_from is not None and config.get("init_from") != init_from):
        try:
            write_json(run.path / "config.json", {
                "settings": settings, "sources": sources, "command": command, "execution": execution.record,
                "data": split.record, "init_from": init_from, "versions": _versions(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            })
        except OSError as e:
            run.discard_uncommitted()
            raise run.write_error(e, 0) from None


def _open(run, settings, sources, execution, dataset, data_dir, command):
    """The run's model, its state (the last commit, or a new one) and its images, config.json written."""
    # The folder is checked before the data is read: a damaged one fails at once, and changes nothing.
    state = run.load_state(settings["epochs"])
    if state is not None:
        model = run.load_model(Path("checkpoints") / state["checkpoint"])
        if state["best"] is not None:
            run.check_archive(Path("checkpoints") / state["best"]["checkpoint"])
    split = _split(settings, dataset, data_dir)
    if settings["batch_size"] > len(split.x_train):  # one short step an epoch, at an lr scaled for the batch given
        raise TrainError(f"--batch-size {settings['batch_size']} is larger than the {len(split.x_train)} training "
                         "images; give a batch of at most that many")
    steps_per_epoch = math.ceil(len(split.x_train) / settings["batch_size"])
    init_from = None
    if state is None:  # built before config.json is written, so that weights that do not fit leave no run behind
        model, init_from = _build(settings, execution, steps_per_epoch)
    _write_config(run, settings, sources, execution, split, init_from, command)
    if state is None:
        return model, {"epochs_completed": 0, "checkpoint": None, "best": None, "history": [], "wall_seconds": 0.0}, split
    run.sync(state)
    execution_.adapt(model, execution)
    print(f"Resuming {run.path} after epoch {state['epochs_completed']}/{settings['epochs']}", flush=True)
    return model, state, split


def _pipeline(settings):
    return dict(preprocess_mode=settings["preprocess"], dataset=settings["dataset"],
                num_classes=settings_.num_classes(settings))


def _eval_batches(execution, images, labels, batch_size, settings, flip=False):
    """Evaluation batches (no augmentation, the data's order), from the execution's pipeline."""
    if execution.batches == "numpy":
        return numpy_pipeline.Images(images, labels, flip=flip, **_pipeline(settings)).epoch(batch_size)
    return data.make_dataset(images, labels, batch_size, flip=flip, **_pipeline(settings))


class _Batches:
    """Each epoch's training batches, and the validation batches, where the execution computes them."""

    def __init__(self, settings, execution, split):
        self.settings, self.precomputed = settings, execution.batches == "precomputed"
        self.eval_batch = max(settings["batch_size"], 256)
        self.pipeline = _pipeline(settings)
        if execution.batches == "numpy":
            self.numpy = numpy_pipeline.Images(split.x_train, split.y_train, augment=settings["augment"],
                                               cutout=settings["cutout"], mixup=settings["mixup"], **self.pipeline)
            self.val = _eval_batches(execution, split.x_val, split.y_val, self.eval_batch, settings) \
                if len(split.x_val) else None
            return
        self.numpy = None
        # Made once: each epoch's pipeline reads these instead of copying 138 MB into TensorFlow again.
        self.images, self.labels = tf.constant(split.x_train), tf.constant(split.y_train)
        x_val, y_val = split.x_val, split.y_val
        if self.precomputed:
            # Normalised once per run; each epoch's batches are then one crop of the whole epoch.
            self.epochs = data.EpochBatches(self.images, self.labels, augment=settings["augment"], **self.pipeline)
            self.val = data.EpochBatches(x_val, y_val, **self.pipeline).dataset(self.eval_batch) if len(x_val) else None
        else:
            self.val = data.make_dataset(x_val, y_val, self.eval_batch, **self.pipeline) if len(x_val) else None

    def epoch(self, epoch):
        s = self.settings
        if self.numpy is not None:
            return self.numpy.epoch(s["batch_size"], shuffle=True, seed=s["seed"], epoch=epoch)
        if self.precomputed:
            return self.epochs.dataset(s["batch_size"], shuffle=True, seed=s["seed"], epoch=epoch)
        return data.make_dataset(self.images, self.labels, s["batch_size"], augment=s["augment"], cutout=s["cutout"],
                                 mixup=s["mixup"], shuffle=True, seed=s["seed"], epoch=epoch, **self.pipeline)


def _run(run, settings, sources, execution, dataset, data_dir, verbose, command, callbacks, on_epoch):
    model, state, split = _open(run, settings, sources, execution, dataset, data_dir, command)
    batches = _Batches(settings, execution, split)
    fit_verbose = (1 if sys.stdout.isatty() else 2) if verbose == "auto" else verbose
    timer = EpochTimer()
    callbacks = [timer, keras.callbacks.TerminateOnNaN(), *callbacks]
    if fit_verbose:
        callbacks.append(Progress(settings["epochs"]))
    # TensorBoard's log is TensorFlow's; on the other backends history.csv is the log.
    writer = tf.summary.create_file_writer(str(run.path / "tensorboard")) if distribute.BACKEND == "tensorflow" else None
    session_start, wall_before, here = time.perf_counter(), state["wall_seconds"], execution_.machine()

    for epoch in range(state["epochs_completed"], settings["epochs"]):
        train_ds = None  # the last epoch's batches go before this epoch's are made
        started = time.perf_counter()
        train_ds = batches.epoch(epoch)
        lr = float(f"{current_lr(model):.6g}")  # the float32 value, without its binary noise
        times = {"epoch": epoch + 1, "pipeline": time.perf_counter() - started, "fit_start": time.perf_counter()}
        history = model.fit(train_ds, validation_data=batches.val, epochs=epoch + 1, initial_epoch=epoch,
                            verbose=fit_verbose, shuffle=False, callbacks=callbacks)
        times["fit_end"] = time.perf_counter()
        logs = {k: float(v[-1]) for k, v in history.history.items()}
        if not all(math.isfinite(v) for v in logs.values()) or model.stop_training:
            raise _diverged(run, state, logs, epoch)
        row = {"epoch": epoch + 1, "lr": lr, **logs, "train_seconds": timer.train_seconds,
               "epoch_seconds": timer.epoch_seconds}
        best = state["best"]
        is_best = batches.val is not None and (best is None or row["val_accuracy"] > best["val_accuracy"])
        state["wall_seconds"] = wall_before + time.perf_counter() - session_start
        # A resumed run may continue on another machine: epochs per machine, for honest timings.
        state.setdefault("machines", {})
        state["machines"][here] = state["machines"].get(here, 0) + 1
        backends = state.setdefault("backends", {})  # epochs per backend: a run may resume on another one
        backends[distribute.BACKEND] = backends.get(distribute.BACKEND, 0) + 1
        run.commit(model, state, row, is_best)
        times["commit_end"] = time.perf_counter()
        times["commit"] = times["commit_end"] - times["fit_end"]
        if writer is not None:
            _log(writer, run, row)
        if on_epoch is not None:
            on_epoch(times)

    metrics = _final_evaluation(run, state, settings, split.dataset, len(split.x_train), len(split.x_val),
                                batches.eval_batch, execution)
    metrics["wall_seconds"] = wall_before + time.perf_counter() - session_start
    metrics["execution"] = execution.record
    metrics["machines"] = state.get("machines") or {here: 0}
    metrics["backends"] = state.get("backends") or {distribute.BACKEND: 0}
    return _finish(run, state, metrics)


def _diverged(run, state, logs, epoch):
    kept = state["epochs_completed"]
    advice = (f"The last good model (epoch {kept}) is kept in {run.path}; to try a lower --lr or a warm-up, "
              "use another --run-dir (this one resumes only with the settings it has)" if kept else
              "No epoch was committed, so the same --run-dir takes other settings: try a lower --lr or a warm-up")
    return TrainError(f"loss became {logs.get('loss')} in epoch {epoch + 1}; stopped. {advice}.")


def _log(writer, run, row):
    """The epoch's row for TensorBoard, after its commit (a full disk here loses nothing)."""
    try:
        with writer.as_default(step=row["epoch"]):
            for key in HISTORY_FIELDS[1:]:
                if key in row:
                    tf.summary.scalar(key, row[key])
        writer.flush()
    except tf.errors.OpError as e:  # TensorFlow's own error for a full disk
        full = "No space left" in str(e)
        raise run.write_error(OSError(errno.ENOSPC if full else errno.EIO, "TensorBoard's log could not be written",
                                      str(run.path / "tensorboard")), row["epoch"]) from None


def _finish(run, state, metrics):
    """inference.keras, then metrics.json: the run is finished once both are written."""
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


def _final_evaluation(run, state, settings, dataset, n_train, n_val, eval_batch, execution):
    """The test set is used here, once, on the model the validation split chose."""
    if state["best"] is not None:
        kept, epoch = "best.keras", state["best"]["epoch"]
        why = "highest validation accuracy"
    else:
        kept, epoch = "last.keras", state["epochs_completed"]
        why = "no validation split, so the last epoch"
    labels = dataset.y_test.astype(int)

    def probabilities(name):
        model = execution_.adapt(run.load_model(name, compile=False), execution, training=False)
        test = {}
        for flip in (False, True):
            ds = _eval_batches(execution, dataset.x_test, dataset.y_test, eval_batch, settings, flip)
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


def _versions():
    backend = distribute.BACKEND
    return {"python": platform.python_version(), backend: importlib.import_module(backend).__version__,
            "keras": keras.__version__, "numpy": np.__version__}



"""Using a trained model: uint8 images in, class probabilities out, the run's preprocessing inside.

    python -m inference RUN_DIR                              # (re)writes RUN_DIR/inference.keras
    python -m inference RUN_DIR --export savedmodel|tflite|onnx --out PATH [--checkpoint best|last]

`inference_model(run_dir)` puts a finished run's model between the preprocessing its config.json
names and a softmax, all stock Keras layers. The model is the one its metrics.json reports
(best.keras, or last.keras for a run without a validation split), or the other checkpoint where
asked for; RUN_DIR/inference.keras is always the reported one, so another checkpoint is exported:

    uint8 images (N, 32, 32, 3) -> Rescaling(1/255) -> [standardize: Rescaling(1/std, -mean/std)]
        -> the trained model (logits) -> softmax in float32 -> probabilities (N, classes)

so RUN_DIR/inference.keras loads with plain `keras.saving.load_model(path)` (safe mode on, nothing
of this project imported) and nobody has to remember the normalisation constants. ensemble.py
computes its members' probabilities with the same layers (`build_inference_model`).

Standardisation is a Rescaling by 1/std with offset -mean/std rather than Keras' Normalization
layer: Normalization holds its mean and variance as captured constant tensors, which tf2onnx (what
Keras' ONNX export runs) turns into extra graph inputs; Rescaling's become constants of the graph,
so every export has the one uint8 input. Either way the arithmetic is not data.preprocess's
((x / 255 - mean) / std) operation for operation: the inputs agree to float32 rounding (tested).

Exports go through Keras' own `model.export`: SavedModel (`tf_saved_model`, a `serve` signature
on uint8 images), LiteRT (`litert`, TensorFlow's TFLite converter) and ONNX (`onnx`, which needs
tf2onnx and onnx, left out of requirements.txt). Every file is written under a temporary name
and renamed into place, so an interrupted or failed command leaves nothing half-written.
"""

import argparse
import importlib.util
import os
import shutil
import sys
import zipfile
from pathlib import Path

import errors

if __name__ == "__main__":
    errors.quiet_ctrl_c_while_loading()

import tfenv  # noqa: F401  (first: TensorFlow reads its settings when it loads)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import data  # noqa: E402
import runfolder  # noqa: E402
import runlock  # noqa: E402

CHECKPOINTS = ("best", "last")
FILE_NAME = "inference.keras"
# --export name -> (Keras' format name, what it is for, the packages it needs beyond requirements.txt)
FORMATS = {
    "savedmodel": ("tf_saved_model", "TensorFlow Serving and other TensorFlow runtimes", ()),
    "tflite": ("litert", "LiteRT (TensorFlow Lite) on mobile and edge devices", ()),
    "onnx": ("onnx", "ONNX Runtime and other frameworks", ("tf2onnx", "onnx")),
}
# What `pip install` brings the missing packages of a format; the versions tested here.
INSTALL = {"onnx": "pip install tf2onnx==1.17.0 onnx==1.23.2 (and onnxruntime to run the file)"}


class InferenceError(Exception):
    """A problem the user can fix: no run folder, an unfinished run, a damaged file, a bad --out."""


def _one_line(error):
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}" if text else type(error).__name__


# --------------------------------------------------------------------------- the model

def normalisation(config):
    """(mean, std) per channel (R, G, B; [0, 1] units) a run standardised its images with, or None
    for preprocess "scale": from its config.json, keyed by its data set. The one lookup of the
    constants; a data set without them is an error."""
    settings = config.get("settings") if isinstance(config, dict) else None
    if not isinstance(settings, dict):
        raise InferenceError("config.json has no settings")
    try:
        spec = data.get_spec(settings.get("dataset", "cifar10"))
    except data.DataError as e:
        raise InferenceError(str(e)) from None
    mode = settings.get("preprocess")
    if mode not in data.PREPROCESSING:
        raise InferenceError(f"settings.preprocess must be one of {', '.join(data.PREPROCESSING)}; got {mode!r}")
    return (spec.mean, spec.std) if mode == "standardize" else None


def build_inference_model(model, config):
    """`model` (float images -> logits) between the preprocessing of `config` (a run's config.json)
    and a float32 softmax: uint8 images (N, 32, 32, 3) -> probabilities. The one definition of a
    run's images -> probabilities; ensemble.py's members use it too.

    The model returned refuses other dtypes and shapes (its input spec). A copy loaded from a file
    has Keras' default spec instead, which converts any input to uint8: give it uint8 images."""
    stats = normalisation(config)
    images = keras.Input(data.IMAGE_SHAPE, dtype="uint8", name="images")
    # Explicit float32: train.py may call this under a mixed-precision global policy.
    x = keras.layers.Rescaling(1 / 255, dtype="float32", name="unit_range")(images)
    if stats is not None:
        mean, std = stats
        x = keras.layers.Rescaling([1 / s for s in std], [-m / s for m, s in zip(mean, std)],
                                   dtype="float32", name="standardize")(x)
    logits = model(x)
    if isinstance(logits, (list, tuple)):  # train.py saves best.keras with outputs=[logits]
        (logits,) = logits
    probs = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(logits)
    inference = keras.Model(images, probs, name=f"{model.name}_inference")
    inference.input_spec = keras.InputSpec(shape=(None, *data.IMAGE_SHAPE), dtype="uint8", name="images")
    return inference


def _read_json(path):
    try:
        return runfolder.read_json_object(path)
    except ValueError as e:
        raise InferenceError(f"{path} is damaged ({e})") from None


def read_finished_run(run_dir):
    """The config.json of a finished run (every epoch committed in its state.json); InferenceError otherwise."""
    run = Path(run_dir)
    if run.exists() and not run.is_dir():
        raise InferenceError(f"{run} is a file, not a run folder")
    if not run.is_dir():
        raise InferenceError(f"run folder {run} does not exist")
    if not (run / "config.json").is_file():
        raise InferenceError(f"{run} holds no config.json; not a run folder written by train.py")
    config = _read_json(run / "config.json")
    normalisation(config)  # a run we cannot preprocess for is refused before anything is loaded
    epochs = config["settings"].get("epochs")
    if not (run / "state.json").is_file() and (run / "metrics.json").is_file():
        raise InferenceError(f"{run} holds a finished run's small files only (config.json, history.csv, "
                             "metrics.json: a copy such as results/runs/ keeps), not its models; use the run "
                             "folder it was trained in")
    state = _read_json(run / "state.json") if (run / "state.json").is_file() else {}
    done = state.get("epochs_completed", 0)
    if not isinstance(done, int) or not isinstance(epochs, int) or done < epochs:
        raise InferenceError(f"{run} is not finished ({done} of {epochs} epochs completed); run its train.py "
                             "command again to finish it")
    return config


def reported_checkpoint(config):
    """The checkpoint whose test accuracy a finished run's metrics.json reports: best.keras, the epoch its
    validation split chose, or last.keras for a run trained without one (--val-split 0)."""
    return "best" if config["settings"].get("val_split") else "last"


def inference_model(run_dir, checkpoint=None):
    """The keras.Model from uint8 images (N, 32, 32, 3) to float32 class probabilities of a finished
    run: its preprocessing, its `checkpoint` model (best.keras or last.keras; by default the one its
    metrics.json reports, see reported_checkpoint), a softmax."""
    config, model = load_run_model(run_dir, checkpoint)
    return build_inference_model(model, config)


def load_run_model(run_dir, checkpoint=None):
    """(config, model) of a finished run: its config.json and its `checkpoint` model (float images ->
    logits), checked to take CIFAR images and give its data set's classes; InferenceError otherwise."""
    if checkpoint is not None and checkpoint not in CHECKPOINTS:
        raise InferenceError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}; got {checkpoint!r}")
    config = read_finished_run(run_dir)
    checkpoint = checkpoint or reported_checkpoint(config)
    path = Path(run_dir) / f"{checkpoint}.keras"
    if not path.is_file():
        hint = (" (a run trained with --val-split 0 keeps only last.keras: use --checkpoint last)"
                if checkpoint == "best" and reported_checkpoint(config) == "last" else
                ", which train.py keeps in such a finished run: the folder is damaged")
        raise InferenceError(f"{Path(run_dir)} has no {path.name}{hint}")
    if not zipfile.is_zipfile(path):  # Keras would call it "File not found"
        raise InferenceError(f"cannot load {path}: damaged or not a Keras model file (not a zip archive)")
    try:
        # compile=False: last.keras holds an optimizer whose schedule classes live in htd/.
        model = keras.saving.load_model(path, compile=False)
    except Exception as e:  # a damaged or foreign file fails in many ways; all mean "cannot use it"
        raise InferenceError(f"cannot load {path}: damaged or not a Keras model file ({_one_line(e)})") from None
    settings = config["settings"]
    try:
        classes = data.get_spec(settings.get("dataset", "cifar10")).num_classes(settings.get("labels", "fine"))
    except data.DataError as e:
        raise InferenceError(f"{Path(run_dir) / 'config.json'}: {e}") from None
    shapes = (tuple(model.input_shape), tuple(model.output_shape))
    if shapes != ((None, *data.IMAGE_SHAPE), (None, classes)):
        raise InferenceError(f"{path}: expected a model from (None, 32, 32, 3) images to (None, {classes}) logits "
                             f"(config.json: {settings.get('dataset', 'cifar10')}); got {shapes[0]} -> {shapes[1]}")
    return config, model


def save_inference_model(run_dir, checkpoint=None):
    """Writes RUN_DIR/inference.keras (see inference_model) atomically; returns its path.

    Takes no lock: train.py calls it while it holds the run folder's; the command line takes it."""
    model = inference_model(run_dir, checkpoint)
    path = Path(run_dir) / FILE_NAME
    try:
        runfolder.save_model(model, path)
    except OSError as e:
        for tmp in path.parent.glob(f".{path.stem}.tmp*"):
            tmp.unlink(missing_ok=True)
        raise InferenceError(f"cannot write {path}: {e.strerror or e}") from None
    return path


# --------------------------------------------------------------------------- exports

def missing_packages(fmt):
    """The packages `--export fmt` needs that are not installed."""
    return [p for p in FORMATS[fmt][2] if importlib.util.find_spec(p) is None]


def check_export(fmt, out):
    """Refuses, before any slow work, an unknown format, a format whose packages are missing, or an --out
    that exists or has no folder."""
    if fmt not in FORMATS:
        raise InferenceError(f"export format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    missing = missing_packages(fmt)
    if missing:
        raise InferenceError(f"--export {fmt} needs {' and '.join(missing)}, which requirements.txt leaves out: "
                             f"{INSTALL[fmt]}")
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise InferenceError(f"{out} exists; remove it or choose another --out (nothing was written)")
    if not out.parent.is_dir():
        raise InferenceError(f"cannot write {out}: folder {out.parent} does not exist")


def _remove(path):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync_tree(path):
    for f in [path] if path.is_file() else (p for p in path.rglob("*") if p.is_file()):
        with open(f, "rb") as handle:
            os.fsync(handle.fileno())


def export(model, fmt, out):
    """Exports `model` (an inference model) with Keras' `model.export` as `fmt` (a FORMATS key) to
    `out`: a folder for savedmodel, a file for tflite and onnx. Written under a temporary name in
    the same folder and renamed into place; an existing `out` is refused. Returns `out`."""
    out = Path(out)
    check_export(fmt, out)
    # Keras' LiteRT export insists on a name ending in .tflite.
    tmp = out.with_name(f".{out.name}.tmp" + (".tflite" if fmt == "tflite" else ""))
    _remove(tmp)  # left by a killed earlier export to the same --out
    try:
        model(np.zeros((1, *data.IMAGE_SHAPE), np.uint8))  # Keras exports only a model that has been called
        try:
            model.export(str(tmp), format=FORMATS[fmt][0], verbose=False)
        except Exception as e:  # the converters fail in many ways; none leaves a usable file
            raise InferenceError(f"--export {fmt} failed: {_one_line(e)}") from None
        _fsync_tree(tmp)
        if out.exists():
            raise InferenceError(f"{out} appeared while exporting; nothing was written")
        os.replace(tmp, out)
    except OSError as e:
        raise InferenceError(f"cannot write {out}: {e.strerror or e}") from None
    finally:
        _remove(tmp)
    return out


# --------------------------------------------------------------------------- command line

class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise InferenceError(message)


def build_parser():
    p = _Parser(prog="python -m inference",
                description="Write RUN_DIR/inference.keras (uint8 images -> class probabilities, the run's "
                            "preprocessing inside), or export that model for other runtimes.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run folder written by train.py")
    p.add_argument("--checkpoint", choices=CHECKPOINTS,
                   help="the model to export: best.keras (the epoch the validation split chose) or last.keras; "
                        "default: the one the run's metrics.json reports (inference.keras is always that one)")
    p.add_argument("--export", choices=FORMATS, metavar="FORMAT",
                   help="; ".join(f"{k}: for {v[1]}" for k, v in FORMATS.items()) + " (needs --out)")
    p.add_argument("--out", metavar="PATH", help="the export's path: a folder for savedmodel, a file for tflite and onnx; "
                                 "must not exist")
    return p


def run(args):
    run_dir = Path(args.run_dir)
    if args.export is None:
        if args.out:
            raise InferenceError("--out needs --export FORMAT (inference.keras is always written into RUN_DIR)")
        reported = reported_checkpoint(read_finished_run(run_dir))  # before the lock, which needs the folder
        if args.checkpoint not in (None, reported):
            raise InferenceError(f"{run_dir / FILE_NAME} is the model of {reported}.keras, whose test accuracy the "
                                 f"run's metrics.json reports; export {args.checkpoint}.keras instead "
                                 f"(--checkpoint {args.checkpoint} --export FORMAT --out PATH)")
        try:
            with runlock.hold(run_dir, "run folder"):
                path = save_inference_model(run_dir, args.checkpoint)
        except runlock.Busy as e:
            raise InferenceError(str(e)) from None
        print(f"Wrote {path}: {reported}.keras between its preprocessing and a softmax; "
              "load it with keras.saving.load_model and give it uint8 images (N, 32, 32, 3)")
        return 0
    if not args.out:
        raise InferenceError(f"--export {args.export} needs --out PATH")
    check_export(args.export, args.out)  # before the model is loaded
    checkpoint = args.checkpoint or reported_checkpoint(read_finished_run(run_dir))
    model = inference_model(run_dir, checkpoint)
    try:
        with runlock.hold(args.out, "--out"):
            out = export(model, args.export, args.out)
    except runlock.Busy as e:
        raise InferenceError(str(e)) from None
    print(f"Wrote {out}: {args.export} of {run_dir / (checkpoint + '.keras')} with its preprocessing, "
          f"for {FORMATS[args.export][1]}; input uint8 (N, 32, 32, 3), output float32 probabilities")
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:  # --help
            return e.code or 0
        return run(args)
    except InferenceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the lock file of an unwritable folder, say
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; nothing half-written was left behind", file=sys.stderr)
        return 130


if __name__ == "__main__":
    errors.ctrl_c_raises()
    sys.exit(main())

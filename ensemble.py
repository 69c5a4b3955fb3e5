"""Combine trained runs: evaluate an ensemble, predict images, write a Kaggle submission.

    python ensemble.py runs/resnet20-seed0 runs/lenet-seed1            # table + ensemble.json
    python ensemble.py RUN ... --weights accuracy --tta --select greedy
    python ensemble.py RUN ... --kaggle-test-dir kaggle/test --submission submission.csv
    python ensemble.py RUN ... --predict some.png          # or a folder of PNGs

Each member is a run folder written by train.py: its model (best.keras, or last.keras with
`--checkpoint last`) and, from config.json, the preprocessing it was trained with, so members
of different architectures and preprocessing mix freely. Each member's probabilities come from
its inference model (inference.build_inference_model: uint8 images, the run's preprocessing, its
model, a softmax), the model `python -m inference` saves. The ensemble is the weighted mean of
the members' probabilities. Weights are `uniform`,
`accuracy` (proportional to each run's validation accuracy from metrics.json; the test set never
weighs anything) or given numbers; they are normalised to sum to 1.

`--select greedy` picks a subset by forward selection without replacement, scored on the
validation images the runs held out (reproduced with data.stratified_split from their config;
all members must share it). The test set is then used once, on the subset chosen.

Every mode but --predict evaluates on the CIFAR-10 test set and writes the table as JSON
(`--out`). `--kaggle-test-dir` then predicts each `<id>.png` of Kaggle's CIFAR-10 test folder a
batch at a time and writes `id,label` rows in id order. The folder is checked before anything
else (names and PNG headers: 32x32, 8-bit RGB) and every image again as it is decoded; bad files
are all listed by name and nothing is written, unless `--skip-bad` leaves them out. The CSV is
written under a temporary name and renamed when complete.
"""

import argparse
import contextlib
import csv
import math
import os
import re
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import errors

if __name__ == "__main__":
    errors.quiet_ctrl_c_while_loading()

import tfenv  # noqa: E402,F401  (first: TensorFlow reads its settings when it loads)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import data  # noqa: E402
import inference  # noqa: E402
import runfolder  # noqa: E402
import runlock  # noqa: E402

CHECKPOINTS = ("best", "last")
WEIGHT_MODES = ("accuracy", "uniform")
SELECTIONS = ("all", "greedy")
TTA_DESCRIPTION = {False: "none", True: "mean of the image and its horizontal flip"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_COLOUR_TYPES = {0: "greyscale", 2: "RGB", 3: "palette", 4: "greyscale with alpha", 6: "RGBA"}
KAGGLE_NAME = re.compile(r"(0|[1-9][0-9]*)\.png")


class EnsembleError(Exception):
    """A problem the user can fix: a missing run, bad weights, mismatched splits, bad images."""


# --------------------------------------------------------------------------- members

@dataclass
class Member:
    name: str  # the run folder as given
    run_dir: Path
    checkpoint: str  # "best" or "last"
    model: keras.Model  # the run's model: float images -> logits
    config: dict
    metrics: dict | None  # None while the run is unfinished
    inference: keras.Model = field(default=None, repr=False)  # uint8 images -> probabilities
    _forward: dict = field(default_factory=dict, repr=False)

    @property
    def settings(self):
        return self.config["settings"]

    @property
    def preprocess(self):
        return self.settings["preprocess"]

    @property
    def data_set(self):
        """(dataset, labels) the run was trained on; runs from before CIFAR-100 are CIFAR-10's."""
        return self.settings.get("dataset", "cifar10"), self.settings.get("labels", "fine")

    @property
    def class_names(self):
        return data.get_spec(self.data_set[0]).class_names(self.data_set[1])

    @property
    def val_accuracy(self):
        """The validation accuracy training measured for this checkpoint, or None."""
        if self.metrics is None:
            return None
        return self.metrics.get("val_accuracy" if self.checkpoint == "best" else "last_val_accuracy")


def _read_json(path):
    try:
        return runfolder.read_json_object(path)
    except ValueError as e:
        raise EnsembleError(f"cannot read {path}: {e}") from None


def load_member(run_dir, checkpoint="best"):
    """The model and settings of one finished run folder; raises EnsembleError when it is unusable."""
    if checkpoint not in CHECKPOINTS:
        raise EnsembleError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}; got {checkpoint!r}")
    path = Path(run_dir)
    try:  # what inference refuses (missing, not a run, damaged, unfinished, no such checkpoint, a foreign model)
        config, model = inference.load_run_model(path, checkpoint)
    except inference.InferenceError as e:
        raise EnsembleError(str(e) if str(path) in str(e) else f"{path / 'config.json'}: {e}") from None
    try:
        probabilities = inference.build_inference_model(model, config)
    except inference.InferenceError as e:
        raise EnsembleError(f"{path / 'config.json'}: {e}") from None
    metrics_file = path / "metrics.json"
    metrics = _read_json(metrics_file) if metrics_file.is_file() else None
    for key in ("val_accuracy", "last_val_accuracy"):
        value = (metrics or {}).get(key)
        if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                      and 0 <= value <= 1):  # NaN fails too
            raise EnsembleError(f"{metrics_file}: {key} is {value!r}, not an accuracy between 0 and 1")
    return Member(str(run_dir), path, checkpoint, model, config, metrics, inference=probabilities)


def _forward_fn(member, tta):
    """A traced function: uint8 images -> softmax probabilities (float32), by the member's inference
    model, the one definition of a run's images -> probabilities (its preprocessing inside)."""
    if tta not in member._forward:
        model = member.inference

        @tf.function(input_signature=[tf.TensorSpec([None, *data.IMAGE_SHAPE], tf.uint8)])
        def forward(images):
            probs = model(images, training=False)
            if tta:  # the mirror image: the preprocessing is per pixel, so flipping before it is the same
                return (probs + model(tf.reverse(images, axis=[2]), training=False)) / 2
            return probs

        member._forward[tta] = forward
    return member._forward[tta]


def predict_probs(member, images, *, batch_size=256, tta=False):
    """Softmax probabilities (N, 10) of `member` for uint8 images (N, 32, 32, 3), batch by batch.

    Each member sees its own preprocessing (the mode of its config.json), inside its inference model.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != data.IMAGE_SHAPE:
        raise ValueError(f"images must be uint8 with shape (N, 32, 32, 3); got {images.dtype} {images.shape}")
    forward = _forward_fn(member, tta)
    out = [forward(images[i:i + batch_size]).numpy() for i in range(0, len(images), batch_size)]
    if not all(np.isfinite(batch).all() for batch in out):  # else argmax would say class 0, silently
        raise EnsembleError(f"{member.name} gives non-finite probabilities ({member.checkpoint}.keras holds NaN "
                            "or infinite weights, or overflows): leave it out")
    return np.concatenate(out) if out else np.zeros((0, member.model.output_shape[-1]), np.float32)


# --------------------------------------------------------------------------- combining

def normalise_weights(weights, count):
    """`weights` (None: uniform) as float64 summing to 1; raises ValueError when unusable."""
    if weights is None:
        return np.full(count, 1.0 / count)
    w = np.asarray(weights, np.float64)
    if w.shape != (count,):
        raise ValueError(f"{count} weights needed; got {w.size}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be finite, >= 0 and not all 0; got {w.tolist()}")
    return w / w.sum()


def combine(probs, weights=None):
    """The weighted mean of the members' probabilities: a list of (N, C) arrays -> (N, C)."""
    if len(probs) == 0:
        raise ValueError("no probabilities to combine")
    stacked = np.stack([np.asarray(p, np.float64) for p in probs])
    if stacked.ndim != 3:
        raise ValueError(f"each member's probabilities must be (N, C); got {stacked.shape[1:]}")
    return np.tensordot(normalise_weights(weights, len(probs)), stacked, axes=1)


def accuracy(probs, labels):
    return float(np.mean(np.argmax(probs, axis=1) == np.asarray(labels))) if len(labels) else float("nan")


def _nll(probs, labels):
    picked = probs[np.arange(len(labels)), np.asarray(labels, np.int64)]
    return float(-np.mean(np.log(np.maximum(picked, 1e-12))))


def parse_weights(spec, count):
    """The --weights string: "accuracy", "uniform" or `count` comma-separated numbers (a list)."""
    if spec in WEIGHT_MODES:
        return spec
    try:
        numbers = [float(s) for s in spec.split(",")]
    except ValueError:
        raise EnsembleError(f"--weights must be accuracy, uniform or comma-separated numbers "
                            f"(e.g. 0.6,0.4); got {spec!r}") from None
    if len(numbers) != count:
        raise EnsembleError(f"--weights {spec} gives {len(numbers)} weights for {count} run(s)")
    if not all(math.isfinite(n) and n >= 0 for n in numbers) or sum(numbers) <= 0:
        raise EnsembleError(f"--weights must be finite numbers >= 0, not all 0; got {spec}")
    return numbers


def resolve_weights(spec, val_accuracies, names=None):
    """Normalised weights for `spec` (see parse_weights); `accuracy` uses validation accuracies."""
    names = names or [f"member {i + 1}" for i in range(len(val_accuracies))]
    spec = parse_weights(spec, len(val_accuracies)) if isinstance(spec, str) else spec
    if spec == "uniform":
        return normalise_weights(None, len(val_accuracies))
    if spec == "accuracy":
        missing = [n for n, a in zip(names, val_accuracies) if a is None]
        if missing:
            raise EnsembleError(f"--weights accuracy needs each run's validation accuracy (metrics.json); "
                                f"{', '.join(missing)} has none (unfinished, or trained with --val-split 0). "
                                "Use --weights uniform or give the weights")
        if not all(a > 0 for a in val_accuracies):
            raise EnsembleError(f"validation accuracies {val_accuracies} cannot serve as weights (one is 0)")
        return normalise_weights(val_accuracies, len(val_accuracies))
    return normalise_weights(spec, len(val_accuracies))


@dataclass
class Selection:
    chosen: list  # member indices, in the order they were added
    val_accuracy: float
    steps: list  # one dict per addition: index added, accuracy and NLL of the subset so far


def greedy_select(val_probs, labels, weights=None):
    """Forward selection without replacement on validation probabilities (Caruana et al. 2004).

    Starting from nothing, each step adds the member that gives the best subset: highest
    accuracy, then lowest negative log-likelihood (accuracy on a few thousand images ties
    often), then the earliest given. Every member is added once; the best subset seen along
    the way (by the same order) is returned. Subsets are combined with `weights`, restricted to
    the subset and renormalised; a member of weight 0 is never added.
    """
    count = len(val_probs)
    weights = normalise_weights(weights, count)
    pool = [i for i in range(count) if weights[i] > 0]
    chosen, steps = [], []

    def score(subset):
        p = combine([val_probs[i] for i in subset], weights[subset])
        return accuracy(p, labels), _nll(p, labels)

    best = None
    while len(chosen) < len(pool):
        candidates = []
        for i in pool:
            if i not in chosen:
                acc, nll = score(chosen + [i])
                candidates.append((-acc, nll, i))
        neg_acc, nll, i = min(candidates)
        chosen.append(i)
        steps.append({"added": i, "val_accuracy": -neg_acc, "val_nll": nll})
        if best is None or (neg_acc, nll) < best[0]:
            best = ((neg_acc, nll), len(chosen))
    return Selection(chosen[:best[1]], -best[0][0], steps)


# --------------------------------------------------------------------------- validation split

def validation_split(members, dataset):
    """The validation indices all members held out; raises EnsembleError unless they share them."""
    described = []
    for m in members:
        s = m.settings
        if not s.get("val_split"):
            raise EnsembleError(f"{m.name} was trained without a validation split (val_split "
                                f"{s.get('val_split')!r}); greedy selection needs one")
        recorded = m.config.get("data", {})
        if not isinstance(recorded, dict):
            raise EnsembleError(f"{m.name}/config.json is damaged (its data entry holds {type(recorded).__name__}, "
                                "not an object)")
        described.append((s["val_split"], s.get("split_seed"), recorded.get("val_indices_sha256")))
    if len(set(described)) > 1:
        listing = "; ".join(f"{m.name}: val_split {v}, split_seed {seed}, indices sha256 {str(sha)[:12]}"
                            for m, (v, seed, sha) in zip(members, described))
        raise EnsembleError(f"the runs do not share one validation split ({listing}); greedy selection "
                            "scores every member on the same held-out images")
    val_split, split_seed, sha = described[0]
    try:
        _, val_idx = data.stratified_split(dataset.y_train, val_split, split_seed)
    except ValueError as e:
        raise EnsembleError(f"cannot reproduce the validation split of {members[0].name}: {e}") from None
    if sha is not None and runfolder.indices_fingerprint(val_idx) != sha:
        raise EnsembleError(f"the validation split recomputed from {dataset.source} differs from the one "
                            f"{members[0].name} held out (val_indices_sha256): the runs were trained on other "
                            "data; pass the same --data-dir")
    return val_idx


# --------------------------------------------------------------------------- image folders

def png_problem(path):
    """Why `path` is not a 32x32 8-bit RGB PNG, judged from its header; None when it is one."""
    try:
        with open(path, "rb") as f:
            head = f.read(33)
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    if len(head) < 33 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        return "not a PNG file"
    width, height, depth, colour = struct.unpack(">IIBB", head[16:26])
    problems = []
    if (width, height) != data.IMAGE_SHAPE[:2]:
        problems.append(f"{width}x{height}, not 32x32")
    if colour != 2:
        problems.append(f"{PNG_COLOUR_TYPES.get(colour, f'colour type {colour}')}, not RGB")
    if depth != 8:
        problems.append(f"{depth}-bit, not 8-bit")
    return "; ".join(problems) or None


def _natural_key(name):
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name)]


def scan_images(path, kaggle_names=False):
    """(good, bad): good is [(key, path)] in order, bad is [(name, reason)] for every unusable entry.

    `path` is a PNG file or a folder. With `kaggle_names`, names must be `<integer>.png`, the key
    is that integer and the order numeric; otherwise the key is the name, in natural order.
    """
    path = Path(path)
    if path.is_file() and not kaggle_names:
        entries = [(path.name, path, True)]
    elif path.is_dir():
        try:
            with os.scandir(path) as it:  # a DirEntry knows whether it is a file without a stat
                entries = [(e.name, Path(e.path), e.is_file()) for e in it]
        except OSError as e:
            raise EnsembleError(f"cannot list {path}: {e.strerror or e}") from None
    else:
        raise EnsembleError(f"{path} is not a {'folder' if kaggle_names else 'PNG file or folder'}")
    good, bad = [], []
    for name, entry, is_file in entries:
        if not is_file:
            bad.append((name, "not a file"))
            continue
        if kaggle_names and not KAGGLE_NAME.fullmatch(name):
            bad.append((name, "name is not <integer>.png"))
            continue
        problem = png_problem(entry)
        if problem:
            bad.append((name, problem))
        else:
            good.append((int(name[:-4]) if kaggle_names else (name if path.is_dir() else str(path)), entry))
    good.sort(key=(lambda e: e[0]) if kaggle_names else (lambda e: _natural_key(e[0])))
    bad.sort(key=lambda e: _natural_key(e[0]))
    return good, bad


def describe_bad(bad):
    return ", ".join(f"{name} ({reason})" for name, reason in bad)


def decode_batches(paths, batch_size):
    """Yields (positions, uint8 images) a batch at a time, in order; records what fails to decode.

    PNGs are read and decoded by a parallel tf.data map; an image that does not decode to
    32x32x3 is dropped from the stream, and its position lands in the returned generator's
    `failed` list (read it after the loop).
    """
    failed = []

    def load(position, file):
        image = tf.io.decode_png(tf.io.read_file(file), channels=0, dtype=tf.uint8)
        return position, tf.ensure_shape(image, data.IMAGE_SHAPE)  # raises at run time if not

    def generate():
        ds = tf.data.Dataset.from_tensor_slices((np.arange(len(paths), dtype=np.int64),
                                                 [str(p) for p in paths]))
        ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.ignore_errors().batch(batch_size).prefetch(2)
        expected = 0
        for positions, images in ds.as_numpy_iterator():
            for p in positions:
                failed.extend(range(expected, int(p)))
                expected = int(p) + 1
            yield positions, images
        failed.extend(range(expected, len(paths)))

    return generate(), failed


class Progress:
    """One line updated in place on a terminal (a new line every 10 s otherwise); `what` None: silent."""

    def __init__(self, total, what, stream=None):
        self.total, self.what, self.stream = total, what, stream or sys.stdout
        self.start = self.last = time.perf_counter()
        self.tty = self.stream.isatty() and what is not None

    def rate(self, done):
        return done / max(time.perf_counter() - self.start, 1e-9)

    def update(self, done):
        now = time.perf_counter()
        if self.what is not None and now - self.last >= (0.5 if self.tty else 10.0):
            self.last = now
            line = (f"  {self.what}: {done:,} / {self.total:,} images ({100 * done / self.total:.1f}%), "
                    f"{self.rate(done):,.0f} img/s")
            print(f"\r{line}" if self.tty else line, end="" if self.tty else "\n", file=self.stream, flush=True)

    def finish(self, done):
        if self.tty:
            print(file=self.stream)
        return time.perf_counter() - self.start


def predict_images(members, weights, files, *, batch_size=256, tta=False, on_batch=None, what="predicting"):
    """Ensemble probabilities for each PNG in `files`, a batch at a time.

    Calls `on_batch(positions, probs)` for every batch and returns (positions that failed to
    decode, seconds). Only a few batches of images are in memory at any time.
    """
    weights = normalise_weights(weights, len(members))
    batches, failed = decode_batches(files, batch_size)
    progress, done = Progress(len(files), what), 0
    for positions, images in batches:
        probs = combine([predict_probs(m, images, batch_size=batch_size, tta=tta) for m in members], weights)
        if on_batch is not None:
            on_batch(positions, probs)
        done += len(positions)
        progress.update(done)
    return failed, progress.finish(done)


# --------------------------------------------------------------------------- Kaggle

def check_kaggle_folder(folder, skip_bad=False):
    """The usable `<id>.png` files of `folder` as [(id, path)]; bad ones fail unless `skip_bad`."""
    good, bad = scan_images(folder, kaggle_names=True)
    if bad and not skip_bad:
        raise EnsembleError(f"{len(bad)} bad file(s) in {folder}: {describe_bad(bad)}. Each must be a 32x32 "
                            "RGB PNG named <id>.png; fix or remove them, or pass --skip-bad to leave them out")
    if not good:
        raise EnsembleError(f"{folder} holds no usable <id>.png images"
                            + (f" (skipped: {describe_bad(bad)})" if bad else ""))
    return good, bad


def write_submission(members, weights, folder, out_path, *, batch_size=256, tta=False, skip_bad=False,
                     files=None):
    """Writes the Kaggle CSV (`id,label`, ids in numeric order) for every `<id>.png` of `folder`.

    `files` is check_kaggle_folder's answer, when the caller has checked the folder already.
    Returns a summary (images, skipped files, seconds, images per second). Raises EnsembleError,
    writing nothing, when a file is bad and not `skip_bad`.
    """
    out_path = Path(out_path)
    good, bad = files if files is not None else check_kaggle_folder(folder, skip_bad)
    if bad:
        print(f"Skipping {len(bad)} bad file(s): {describe_bad(bad)}")
    if not out_path.parent.is_dir():
        raise EnsembleError(f"cannot write {out_path}: folder {out_path.parent} does not exist")
    ids = [i for i, _ in good]
    common_data_set(members)  # one data set, so one list of class names
    names = members[0].class_names
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    failed = []
    try:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["id", "label"])

            def write_rows(positions, probs):
                labels = np.argmax(probs, axis=1)
                writer.writerows((ids[p], names[c]) for p, c in zip(positions, labels))

            failed, seconds = predict_images(members, weights, [p for _, p in good], batch_size=batch_size,
                                             tta=tta, on_batch=write_rows, what=f"predicting {folder}")
            f.flush()
            os.fsync(f.fileno())
        decode_bad = [(good[p][1].name, "does not decode to a 32x32 RGB image") for p in failed]
        if decode_bad and not skip_bad:
            raise EnsembleError(f"{len(decode_bad)} bad file(s) in {folder}: {describe_bad(decode_bad)}; "
                                f"nothing was written to {out_path}. Fix or remove them, or pass --skip-bad")
        if len(failed) == len(good):
            raise EnsembleError(f"no image of {folder} could be decoded; nothing was written to {out_path}")
        os.replace(tmp, out_path)
    except OSError as e:
        raise EnsembleError(f"cannot write {out_path}: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)
    if decode_bad:
        print(f"Skipped {len(decode_bad)} file(s) that did not decode: {describe_bad(decode_bad)}")
    written_ids = set(ids) - {ids[p] for p in failed}
    written = len(written_ids)
    if written_ids != set(range(1, written + 1)):
        print(f"note: the ids written are not exactly 1..{written}; Kaggle expects every id of its test set")
    summary = {"path": str(out_path), "folder": str(folder), "images": written,
               "skipped": [{"file": n, "reason": r} for n, r in bad + decode_bad],
               "seconds": seconds, "images_per_second": written / seconds if seconds > 0 else None}
    print(f"Wrote {out_path}: {written:,} rows in {seconds:.1f} s ({summary['images_per_second']:,.0f} img/s)")
    return summary


# --------------------------------------------------------------------------- evaluation

def _fmt(value, spec=".4f"):
    return "-" if value is None else format(value, spec)


def print_table(report):
    measured = report["selection"] is not None  # validation accuracy measured here, as selected on
    rows = [("member", "model", "preprocess", "weight", "val acc", *(("val acc here",) if measured else ()),
             "test acc")]
    for m in report["members"]:
        rows.append((m["run_dir"], m["model"], m["preprocess"], _fmt(m["weight"], ".3f"), _fmt(m["val_accuracy"]),
                     *((_fmt(m["val_accuracy_measured"]),) if measured else ()), _fmt(m["test_accuracy"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    ens = report["ensemble"]
    sel = report["selection"]
    if sel:
        print(f"greedy selection on {sel['val_images']} validation images: {', '.join(sel['chosen'])} "
              f"(val accuracy {sel['val_accuracy']:.4f})")
    print(f"ensemble of {len(ens['members'])} ({report['weights']} weights, test-time augmentation: "
          f"{report['tta']}): test accuracy {ens['test_accuracy']:.4f} on {report['test_images']} images")


def evaluate(members, weights, dataset, *, select="all", tta=False, batch_size=256, weights_mode=""):
    """The report: each member's and the ensemble's test accuracy, after any selection on validation."""
    selection, val_measured = None, [None] * len(members)
    chosen = list(range(len(members)))
    if select == "greedy":
        val_idx = validation_split(members, dataset)
        x_val, y_val = dataset.x_train[val_idx], dataset.y_train[val_idx]
        val_probs = [predict_probs(m, x_val, batch_size=batch_size, tta=tta) for m in members]
        val_measured = [accuracy(p, y_val) for p in val_probs]
        sel = greedy_select(val_probs, y_val, weights)
        chosen = sel.chosen
        selection = {"method": "greedy forward selection without replacement (best prefix; ties: lower NLL)",
                     "val_images": len(val_idx), "chosen": [members[i].name for i in chosen],
                     "val_accuracy": sel.val_accuracy,
                     "steps": [{**s, "added": members[s["added"]].name} for s in sel.steps]}
    # The test set, once, after every choice has been made.
    test_probs = [predict_probs(m, dataset.x_test, batch_size=batch_size, tta=tta) for m in members]
    used = normalise_weights(np.asarray(weights)[chosen], len(chosen))
    ensemble_probs = combine([test_probs[i] for i in chosen], used)
    final = dict(zip(chosen, used))
    return {
        "members": [{"run_dir": m.name, "model": m.settings.get("model"), "preprocess": m.preprocess,
                     "checkpoint": f"{m.checkpoint}.keras", "weight": float(final[i]) if i in final else None,
                     "val_accuracy": m.val_accuracy, "val_accuracy_measured": val_measured[i],
                     "test_accuracy": accuracy(test_probs[i], dataset.y_test)}
                    for i, m in enumerate(members)],
        "weights": weights_mode, "tta": TTA_DESCRIPTION[tta], "selection": selection,
        "ensemble": {"members": [members[i].name for i in chosen], "weights": [float(w) for w in used],
                     "test_accuracy": accuracy(ensemble_probs, dataset.y_test)},
        "test_images": len(dataset.y_test), "data_source": dataset.source,
    }


# --------------------------------------------------------------------------- command line

class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise EnsembleError(message)


def build_parser():
    p = _Parser(description="Evaluate an ensemble of trained runs, predict images, write a Kaggle submission.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders written by train.py")
    p.add_argument("--weights", default="uniform",
                   help="accuracy (validation accuracy of each run), uniform (default) or W1,W2,...")
    p.add_argument("--checkpoint", choices=CHECKPOINTS, default="best", help="model file of each run")
    p.add_argument("--tta", action="store_true", help="average each image's prediction with its mirror image's")
    p.add_argument("--select", choices=SELECTIONS, default="all",
                   help="greedy: choose a subset by forward selection on the runs' validation split")
    p.add_argument("--data-dir", help="CIFAR-10 archive, or a folder holding it or cifar-10-batches-py/")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", help="report as JSON (default ensemble.json; with --predict, only if given)")
    p.add_argument("--kaggle-test-dir", help="Kaggle's CIFAR-10 test folder of <id>.png images")
    p.add_argument("--submission", help="Kaggle CSV to write (default submission.csv)")
    p.add_argument("--skip-bad", action="store_true", help="list and leave out unusable images instead of failing")
    p.add_argument("--predict", metavar="PATH", help="print class and probability for a PNG or a folder of PNGs")
    return p


def _check_args(args):
    if args.predict and args.kaggle_test_dir:
        raise EnsembleError("--predict and --kaggle-test-dir cannot be combined")
    if args.submission and not args.kaggle_test_dir:
        raise EnsembleError("--submission needs --kaggle-test-dir")
    if args.predict and args.select != "all":
        raise EnsembleError("--select greedy chooses on validation data; it does not combine with --predict")
    if args.batch_size <= 0:
        raise EnsembleError(f"--batch-size must be positive; got {args.batch_size}")
    resolved = [Path(r).resolve() for r in args.runs]
    twice = sorted({r for r, p in zip(args.runs, resolved) if resolved.count(p) > 1})
    if twice:
        raise EnsembleError(f"run folder given twice: {', '.join(twice)} (use --weights to weigh a run more)")


def run_predict(args, members, weights):
    good, bad = scan_images(args.predict)
    if bad and not args.skip_bad:
        raise EnsembleError(f"{len(bad)} bad file(s) in {args.predict}: {describe_bad(bad)}. Each must be a "
                            "32x32 RGB PNG; fix or remove them, or pass --skip-bad")
    if not good:
        raise EnsembleError(f"no usable PNG in {args.predict}")
    names = [k for k, _ in good]
    classes = members[0].class_names  # every member's (run() checked that they share a data set)
    width = max(len(n) for n in names + ["file"])
    print(f"{'file'.ljust(width)}  {'class'.ljust(10)}  probability")
    results = []

    def show(positions, probs):
        for p, row in zip(positions, probs):
            c = int(np.argmax(row))
            results.append({"file": names[p], "class": classes[c], "probability": float(row[c])})
            print(f"{names[p].ljust(width)}  {classes[c].ljust(10)}  {row[c]:.4f}")

    failed, _ = predict_images(members, weights, [p for _, p in good], batch_size=args.batch_size,
                               tta=args.tta, on_batch=show, what=None)  # the rows show the progress
    bad = bad + [(names[p], "does not decode to a 32x32 RGB image") for p in failed]
    if bad:
        if not args.skip_bad:
            raise EnsembleError(f"{len(bad)} bad file(s): {describe_bad(bad)}")
        print(f"Skipped {len(bad)} bad file(s): {describe_bad(bad)}")
    if args.out:
        _write_json(args.out, {"members": [m.name for m in members], "weights": weights.tolist(),
                               "tta": TTA_DESCRIPTION[args.tta], "predictions": results,
                               "skipped": [{"file": n, "reason": r} for n, r in bad]})
    return 0


def run(args):
    _check_args(args)
    spec = parse_weights(args.weights, len(args.runs))  # before anything slow
    out = Path(args.out or "ensemble.json")
    submission = Path(args.submission or "submission.csv")
    targets = ([out] if args.out or not args.predict else []) + ([submission] if args.kaggle_test_dir else [])
    runs = [Path(r).resolve() for r in args.runs]
    for path in targets:  # before any slow work
        if not path.parent.is_dir():
            raise EnsembleError(f"cannot write {path}: folder {path.parent} does not exist")
        if path.is_dir():
            raise EnsembleError(f"cannot write {path}: it is a folder; give a file name")
        _refuse_writing_an_input(path, runs, args)
    if len(targets) == 2 and targets[0].resolve() == targets[1].resolve():
        raise EnsembleError(f"--out and --submission are the same file ({out}); give two names")
    with contextlib.ExitStack() as owned:  # one process at a time writes each output
        for path in targets:
            try:
                owned.enter_context(runlock.hold(path, "output file"))
            except runlock.Busy as e:
                raise EnsembleError(str(e)) from None
            except OSError as e:
                raise EnsembleError(f"cannot write {path}: {e.strerror or e}") from None
        return _run_owned(args, spec, out, submission)


def _refuse_writing_an_input(path, runs, args):
    """EnsembleError where the output `path` is one of the command's inputs or lies inside one."""
    inputs = [(r, "the run folder") for r in runs]
    inputs += [(Path(v).resolve(), f"the {flag} input") for flag, v in (
        ("--predict", args.predict), ("--kaggle-test-dir", args.kaggle_test_dir), ("--data-dir", args.data_dir)) if v]
    for source, what in inputs:
        if runfolder.input_holding(path, [source]) is None:
            continue
        if path.resolve() == source:
            raise EnsembleError(f"cannot write {path}: it is {what} itself; write it elsewhere")
        raise EnsembleError(f"cannot write {path}: it is inside {what} {source}, whose files it could "
                            "replace; write it elsewhere")


def _run_owned(args, spec, out, submission):
    kaggle_files = None
    if args.kaggle_test_dir:
        kaggle_files = check_kaggle_folder(args.kaggle_test_dir, args.skip_bad)
    members = [load_member(r, args.checkpoint) for r in args.runs]
    data_set = common_data_set(members)
    if args.kaggle_test_dir and data_set[0] != "cifar10":
        raise EnsembleError(f"the Kaggle submission is for CIFAR-10; these runs were trained on {data_set[0]}")
    weights = resolve_weights(spec, [m.val_accuracy for m in members], [m.name for m in members])
    weights_mode = spec if isinstance(spec, str) else "given"
    if args.predict:
        return run_predict(args, members, weights)

    try:
        dataset = data.load(*data_set, args.data_dir)
    except data.DataError as e:
        raise EnsembleError(str(e)) from None
    report = evaluate(members, weights, dataset, select=args.select, tta=args.tta,
                      batch_size=args.batch_size, weights_mode=weights_mode)
    report["command"] = ["ensemble.py", *args.argv]
    print_table(report)
    if args.kaggle_test_dir:  # the report is written once the submission is: a failed one leaves both as they were
        chosen = [members[[m.name for m in members].index(n)] for n in report["ensemble"]["members"]]
        report["submission"] = write_submission(
            chosen, report["ensemble"]["weights"], args.kaggle_test_dir, submission,
            batch_size=args.batch_size, tta=args.tta, skip_bad=args.skip_bad, files=kaggle_files)
    _write_json(out, report)
    print(f"Wrote {out}")
    return 0


def common_data_set(members):
    """The (dataset, labels) every member was trained on; EnsembleError when they differ."""
    sets = {m.data_set for m in members}
    if len(sets) > 1:
        raise EnsembleError("the members were trained on different data sets: " +
                            "; ".join(f"{m.name}: {m.data_set[0]} ({m.data_set[1]} labels)" for m in members))
    return sets.pop()


def _write_json(path, obj):
    try:
        runfolder.write_json(path, obj)
    except OSError as e:
        raise EnsembleError(f"cannot write {path}: {e.strerror or e}") from None


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:  # --help
            return e.code or 0
        args.argv = argv
        return run(args)
    except EnsembleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file the checks above could not foresee (permissions, a full disk)
        print(f"error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; nothing half-written was left behind", file=sys.stderr)
        return 130


if __name__ == "__main__":
    errors.ctrl_c_raises()
    sys.exit(main())

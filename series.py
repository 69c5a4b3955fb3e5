"""A series of trainings: one model under several named sets of overrides, over seeds.

The LeNet tricks ablation (tricks/) and the schedule comparison (`python -m htd compare`) are
both a series. Each (variant, seed) is its own run folder OUT/runs/VARIANT-seedSEED trained by
loop.train(), so an interrupted series resumes: finished runs are read back, not retrained, and a
run cut off mid-way resumes after its last completed epoch.
"""

import csv
import io
from pathlib import Path

import numpy as np

import data
import loop
import runfolder
import settings as settings_
from errors import SERIES_OWNER_FILE, TrainError
from runfolder import hold


def run_grid(model, variants, seeds, out, *, kind, loaded=None, data_dir=None, verbose="auto", **common):
    """Trains (or reads back) every (variant, seed); returns {variant: [(run folder, metrics), ...]}.

    `variants` maps a name to the settings it overrides; `common` (settings, or train()'s other
    keyword arguments) applies to all of them. `kind` names the command (e.g. "htd compare"): OUT
    holds one command's series of one model, whose reports it rewrites (see check_owner).
    """
    settings_.check_seeds(list(seeds))
    resolved = [settings_.resolve_settings(model, **{k: v for k, v in {**common, **overrides}.items()
                                                     if k in settings_.SETTINGS})[0]
                for overrides in variants.values()]  # bad settings fail now, not after hours of training
    datasets = {(s["dataset"], s["labels"]) for s in resolved}
    if len(datasets) > 1:
        raise TrainError(f"a series trains on one data set; its variants name {sorted(datasets)}")
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrainError(f"cannot write to {out}: {e.strerror or e}") from None
    with hold(out, "--out folder"):  # one process at a time runs a series
        check_owner(out, kind, model)
        if loaded is None:
            loaded = data.load(*datasets.pop(), data_dir)
        for name, overrides in variants.items():  # every folder checked before the first run trains
            for seed in seeds:
                folder = run_dir(out, name, seed)
                loop.check_folder(model, folder, loaded, seed=seed, **{**common, **overrides})
                if (folder / "metrics.json").is_file():
                    history(folder)  # a finished run's curves are read back for the report
        results = {}
        for name, overrides in variants.items():
            results[name] = []
            for seed in seeds:
                print(f"== {name}, seed {seed}", flush=True)
                run_dir_ = run_dir(out, name, seed)
                metrics = loop.train(model, run_dir=run_dir_, loaded=loaded, verbose=verbose, seed=seed,
                                      **{**common, **overrides})
                results[name].append((run_dir_, metrics))
    return results


def check_owner(out, kind, model):
    """Makes OUT the folder of `kind`'s series of `model`, or refuses it (TrainError) where it is another's:
    another command's or model's series, whose reports this one would overwrite and mix with its own, or a
    results table (`python -m results build`'s folder)."""
    out = Path(out)
    if (out / "table.csv").exists():
        raise TrainError(f"{out} holds a results table (table.csv); a series needs a folder of its own")
    owner = {"series": kind, "model": model}
    if (out / SERIES_OWNER_FILE).exists():
        try:
            recorded = runfolder.read_json_object(out / SERIES_OWNER_FILE)
        except ValueError as e:
            raise TrainError(f"{out / SERIES_OWNER_FILE} is damaged ({e}); it names the series the folder "
                             "holds") from None
        if {k: recorded.get(k) for k in owner} != owner:
            raise TrainError(f"{out} holds the {recorded.get('series')} series of {recorded.get('model')}, not "
                             f"{kind} of {model}; use another --out")
    else:
        runfolder.write_json(out / SERIES_OWNER_FILE, owner)


def run_dir(out, variant, seed):
    """The run folder of one (variant, seed) of a series in `out`."""
    return Path(out) / "runs" / f"{variant}-seed{seed}"


def percent_stats(values):
    """(mean, sample std, median) of accuracies in percent; std 0 for a single run."""
    values = np.asarray(values, float) * 100
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return float(values.mean()), std, float(np.median(values))


def summary_rows(results):
    """One dict per variant: val and test accuracy statistics (%), runs, wall minutes; the val ones
    None where a run has no validation split."""
    rows = []
    for name, runs in results.items():
        metrics = [m for _, m in runs]
        vals = [m.get("val_accuracy") for m in metrics]
        val = (None, None) if None in vals else [round(v, 2) for v in percent_stats(vals)[:2]]  # no split: none
        test = percent_stats([m["test_accuracy"] for m in metrics])
        rows.append(dict(variant=name, val_mean=val[0], val_std=val[1],
                         test_mean=round(test[0], 2), test_std=round(test[1], 2), test_median=round(test[2], 2),
                         runs=len(metrics), epochs=metrics[0]["epochs_completed"],
                         wall_minutes=round(sum(m["wall_seconds"] for m in metrics) / 60, 1)))
    return rows


def stat_text(mean, std, runs=None):
    """"mean ± std" of a summary row's figures; the mean alone for a single run (whose std is
    undefined, not 0); "n/a" where there are none (no validation split)."""
    if mean is None:
        return "n/a"
    return f"{mean:.2f}" if runs == 1 else f"{mean:.2f} ± {std:.2f}"


def history(run_dir):
    """history.csv of a run as {column: numpy array}; TrainError where it is missing or damaged."""
    path = Path(run_dir) / "history.csv"
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            raise ValueError("no epoch in it")
        return {k: np.array([float(r[k]) if r[k] != "" else np.nan for r in rows]) for k in rows[0]}
    except (OSError, ValueError, TypeError, csv.Error) as e:
        raise TrainError(f"{path} is missing or damaged ({e.strerror if isinstance(e, OSError) else e}); "
                         f"its epochs are in {path.parent / 'state.json'}: restore the file, or train that run "
                         "anew in another folder") from None


def mean_curve(runs, column):
    """The mean over runs of a history column, cut to the shortest run; None where no run has the
    column's values (validation accuracy without a validation split)."""
    curves = [history(run_dir).get(column) for run_dir, _ in runs]
    if any(c is None or np.isnan(c).all() for c in curves):
        return None
    length = min(len(c) for c in curves)
    return np.mean([c[:length] for c in curves], axis=0)


def write_report(out, rows, markdown):
    """A series' OUT/results.csv (the rows) and OUT/results.md (`markdown`), each written atomically;
    TrainError naming the file that cannot be written (the runs are kept: the same command writes it again)."""
    for path, write in ((Path(out) / "results.csv", lambda p: write_csv(p, rows)),
                        (Path(out) / "results.md", lambda p: runfolder.write_atomic(p, markdown))):
        _written(path, write)


def save_figure(fig, path, dpi=120):
    """A matplotlib figure saved as `path` atomically (its format from the suffix); TrainError as write_report."""
    _written(Path(path), lambda p: runfolder.save_figure(fig, p, dpi))


def _written(path, write):
    try:
        write(path)
    except OSError as e:
        raise TrainError(f"cannot write {path}: {e.strerror or e}; the runs are kept: once it can be written, "
                         "the same command writes the reports without training again") from None


def write_csv(path, rows):
    """The rows as CSV at `path`, written atomically (runfolder.write_atomic): a failed write leaves the old file."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    runfolder.write_atomic(path, text.getvalue())

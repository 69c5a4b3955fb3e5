"""The accuracy table: finished runs grouped into rows, one per model and recipe, and a row for
every registered model that has none, with its reference recipe's training time estimated from a
measured throughput.

A row's key is the model and every setting of config.json except the seed, so the runs of a row
differ in their seed only and their mean and spread mean something.
"""

import functools
import json
import re
import shlex

import numpy as np

import data
import models
import settings as settings_
from htd import schedules
from models import describe
from results import throughput
from results.runs import ResultsError, variant_of

FIELDS = (
    "status", "model", "variant", "parameters", "epochs", "schedule", "batch", "weight_decay", "precision",
    "runs", "seeds", "val_accuracy_mean", "val_accuracy_std", "test_accuracy_mean", "test_accuracy_std",
    "last_epoch_test_accuracy_mean", "last_epoch_test_accuracy_std", "last_epoch_test_runs",
    "wall_seconds_mean", "train_images_per_second_median", "machine", "data", "command",
    "estimated_hours_cpu", "cpu_measurement", "estimated_hours_gpu", "gpu_measurement", "run_names",
)
NOT_RECORDED = "not recorded"


# --------------------------------------------------------------------------- grouping

def normalised_settings(settings):
    """The settings with those an older train.py did not record filled in with their defaults, as
    train.py itself reads an older config.json, so old and new runs of one recipe share a row."""
    return {**{k: v for k, v in settings_.DEFAULTS.items() if k not in settings}, **settings}


def recipe_key(run):
    rest = {k: v for k, v in normalised_settings(run.settings).items() if k != "seed"}
    return run.model, json.dumps(rest, sort_keys=True)


def group_runs(runs):
    """Lists of runs sharing a recipe_key, ordered by model, then by the variant their names give."""
    groups = {}
    for run in runs:
        groups.setdefault(recipe_key(run), []).append(run)
    for members in groups.values():
        members.sort(key=lambda r: (r.settings.get("seed", 0), r.path.name))
    return sorted(groups.values(), key=lambda g: (g[0].model, variant(g), recipe_key(g[0])[1]))


def check_one_run_per_seed(runs):
    """ResultsError where two runs of one row have the same seed: the same training twice (a copy of a
    folder, or a rerun elsewhere), which would count as two runs and shrink the spread."""
    for members in group_runs(list(runs)):
        first = {}
        for run in members:
            seed = run.settings.get("seed", 0)
            if seed in first:
                raise ResultsError(f"{first[seed].path} and {run.path} are runs of the same model, recipe and "
                                   f"seed {seed}: a row averages runs that differ in their seed; name one of them "
                                   "(or remove its copy from OUT/runs)")
            first[seed] = run


def variant(runs):
    """What the copied runs' names say beyond model and seed (lenet-tricks-dp_da-seed0: tricks-dp_da)."""
    return ", ".join(sorted({variant_of(r.path.name, r.model) for r in runs} - {""}))


def label(row):
    return f"{row['model']} ({row['variant']})" if row.get("variant") else row["model"]


# --------------------------------------------------------------------------- columns

def percent_stats(values):
    """(mean, sample std) in percent, rounded to 2 decimals; std None for one run (it has none)."""
    values = np.asarray([v for v in values if v is not None], float) * 100
    if not len(values):
        return None, None
    std = round(float(values.std(ddof=1)), 2) if len(values) > 1 else None
    return round(float(values.mean()), 2), std


@functools.lru_cache(maxsize=None)
def trainable_parameters(name):
    """Counted on the model as built (models/describe.py's count); None for a name no longer registered."""
    try:
        models.get_entry(name)
    except ValueError:
        return None
    import keras

    with describe.deep_graphs():
        model = models.create_model(name)
        count = describe.trainable_params(model)
    del model
    keras.backend.clear_session()  # frees a big model before the next one is built
    return count


def _num(x):
    return f"{x:g}" if isinstance(x, float) else str(x)


def schedule_text(s):
    """The schedule with its parameters, short: 'step 0.1, x0.1 at 81, 122', 'cosine 0.1 -> 0'."""
    name, lr = s["schedule"], _num(s["lr"])
    if name == "step":
        milestones = s.get("lr_milestones")
        if milestones is None:
            milestones = schedules.default_milestones(s["epochs"], s.get("warmup_epochs") or 0)
        factor = s.get("lr_factor") or [0.1]
        factor = factor if isinstance(factor, list) else [factor]
        if len(factor) == len(milestones) > 1:
            steps = ", ".join(f"x{_num(f)} at {m}" for f, m in zip(factor, milestones))
        else:
            steps = f"x{_num(factor[0])} at {', '.join(map(str, milestones))}" if milestones else "no steps"
        text = f"step {lr}, {steps}"
    elif name == "cosine":
        text = f"cosine {lr} -> {_num(s.get('min_lr') or 0.0)}"
    elif name == "htd":
        low, high = s.get("htd_bounds") or settings_.DEFAULTS["htd_bounds"]
        text = f"htd {lr}, tanh {_num(low)} to {_num(high)}"
    elif name == "exponential":
        text = f"exponential {lr}, x{_num(s.get('lr_gamma') or 0.95)} per epoch"
    elif name == "onecycle":
        text = f"onecycle, peak {lr}"
    else:
        text = f"{name} {lr}"
    if s.get("warmup_epochs"):
        text += f", warm-up {_num(s['warmup_epochs'])} epochs"
    if s.get("schedule_per") == "epoch":
        text += ", per epoch"
    return text


def _flag_tokens(key, value):
    """A setting as train.py's flag: --nesterov / --no-nesterov, lists as several values, floats by
    repr (which reads back as the same float)."""
    flag = "--" + key.replace("_", "-")
    if isinstance(value, bool):
        if key == "nesterov":
            return [flag if value else "--no-nesterov"]
        return [flag] if value else []  # store_true flags: False is what leaving them out gives
    if value is None:
        return []
    values = value if isinstance(value, (list, tuple)) else [value]
    return [flag, *(repr(float(v)) if isinstance(v, float) else str(v) for v in values)]


def reconstructed_command(config):
    """`train.py --model M <the settings given as flags> --seed N`: what a series-started run (which
    records no command) is equivalent to; it resolves to the run's settings (tests/test_results.py)."""
    settings, sources = config["settings"], config.get("sources") or {}
    tokens = ["train.py", "--model", settings["model"]]
    for key, value in settings.items():
        if sources.get(key) == "flag" and key not in ("model", "seed"):
            tokens += _flag_tokens(key, value)
    return tokens + ["--seed", str(settings.get("seed", 0))]


def run_command(config):
    recorded = config.get("command")
    if isinstance(recorded, list) and recorded and all(isinstance(t, str) for t in recorded):
        return list(recorded)
    return reconstructed_command(config)


def _seed_as_s(tokens, seed):
    out = []
    for i, tok in enumerate(tokens):
        if i and tokens[i - 1] == "--seed" and tok == str(seed):
            out.append("S")
        else:  # run folders named after the seed (MODEL-seed0, VARIANT-seed1)
            out.append(re.sub(rf"(?<=seed){seed}(?!\d)", "S", tok))
    return out


def row_commands(runs):
    """The commands of a row's runs: one where they are the same (train.py --seeds), one with S for
    the seed where they differ in the seed only, else one per run."""
    commands = [run_command(r.config) for r in runs]
    if all(c == commands[0] for c in commands):
        return ["python " + shlex.join(commands[0])]
    seeds = [r.settings.get("seed", 0) for r in runs]
    templates = [_seed_as_s(c, s) for c, s in zip(commands, seeds)]
    if all(t == templates[0] for t in templates):
        return [f"python {shlex.join(templates[0])} (S = {', '.join(map(str, seeds))})"]
    return ["python " + shlex.join(c) for c in commands]


def machine_text(runs):
    """The machines that trained the row's runs, with epochs each where there are several."""
    epochs, unrecorded = {}, 0
    for run in runs:
        machines = run.metrics.get("machines")
        if not isinstance(machines, dict) or not machines:
            unrecorded += 1
            continue
        for name, count in machines.items():
            epochs[name] = epochs.get(name, 0) + (count or 0)
    parts = list(epochs) if len(epochs) == 1 else [f"{m} ({n} epochs)" for m, n in epochs.items()]
    if unrecorded:
        parts.append(NOT_RECORDED if not epochs else f"{NOT_RECORDED} ({unrecorded} run{'s' * (unrecorded > 1)})")
    return "; ".join(parts)


def data_text(config):
    """The data copy: its file name, its train/val/test image counts, the start of any checksum
    recorded for it, and the start of the validation split's fingerprint (equal: the same split)."""
    d = config.get("data") or {}
    source = str(d.get("source") or NOT_RECORDED).rstrip("/").replace("\\", "/").rsplit("/", 1)[-1]
    parts = [source]
    if all(isinstance(d.get(k), int) for k in ("train_images", "val_images", "test_images")):
        parts.append(f"{d['train_images']}/{d['val_images']}/{d['test_images']} train/val/test images")
    parts += [f"{k} {v[:12]}" for k, v in sorted(d.items())
              if isinstance(v, str) and k != "val_indices_sha256" and ("md5" in k or "sha" in k)]
    if d.get("val_images") == 0:
        parts.append("no val split")  # its fingerprint would be the empty list's, shared by every such run
    elif isinstance(d.get("val_indices_sha256"), str):
        parts.append(f"val split {d['val_indices_sha256'][:8]}")
    return ", ".join(parts)


def _unique(values):
    return "; ".join(dict.fromkeys(values))


def finished_row(runs):
    first = runs[0]
    s = normalised_settings(first.settings)
    metrics = [r.metrics for r in runs]
    val = percent_stats(m.get("val_accuracy") for m in metrics)
    test = percent_stats(m["test_accuracy"] for m in metrics)
    last_values = [m.get("last_epoch_test_accuracy") for m in metrics]
    last = percent_stats(last_values)
    walls = [m["wall_seconds"] for m in metrics if isinstance(m.get("wall_seconds"), (int, float))]
    speeds = [m["train_images_per_second"] for m in metrics
              if isinstance(m.get("train_images_per_second"), (int, float))]
    return {
        "status": "finished", "model": first.model, "variant": variant(runs),
        "parameters": trainable_parameters(first.model), "epochs": s["epochs"], "schedule": schedule_text(s),
        "batch": s["batch_size"], "weight_decay": _num(s["weight_decay"]),
        "precision": _unique((r.config.get("execution") or {}).get("precision", NOT_RECORDED) for r in runs),
        "runs": len(runs), "seeds": " ".join(str(r.settings.get("seed", 0)) for r in runs),
        "val_accuracy_mean": val[0], "val_accuracy_std": val[1],
        "test_accuracy_mean": test[0], "test_accuracy_std": test[1],
        "last_epoch_test_accuracy_mean": last[0], "last_epoch_test_accuracy_std": last[1],
        "last_epoch_test_runs": sum(v is not None for v in last_values),
        "wall_seconds_mean": round(float(np.mean(walls)), 1) if walls else None,
        "train_images_per_second_median": round(float(np.median(speeds)), 1) if speeds else None,
        "machine": machine_text(runs), "data": _unique(data_text(r.config) for r in runs),
        "command": " ; ".join(row_commands(runs)), "run_names": " ".join(r.path.name for r in runs),
    }


def rate_text(images_per_second):
    """Whole images per second, or two significant figures below ten (a 1.7 images/s model is not a
    2 images/s one, nor a 0.14 images/s one a 0.1 images/s one)."""
    return f"{images_per_second:.2g}" if images_per_second < 10 else f"{images_per_second:,.0f}"


def not_yet_run_row(name, measured):
    """A registered model without a finished run: its reference recipe, and how long that would
    train on a CPU and on one GPU at the throughput measured for it (throughput.csv)."""
    s, _ = settings_.resolve_settings(name)
    train_images = data.OFFICIAL_COUNTS["train"] - s["val_split"]
    row = {"status": "not yet run", "model": name, "variant": "", "epochs": s["epochs"],
           "schedule": schedule_text(s), "batch": s["batch_size"], "weight_decay": _num(s["weight_decay"]),
           "precision": "float32", "runs": 0, "command": f"python train.py --model {name}"}
    for kind in throughput.KINDS:
        found = throughput.latest(measured, name, kind)
        key = kind.lower()
        if found is None:
            row[f"estimated_hours_{key}"], row[f"{key}_measurement"] = None, "not measured"
        else:
            ips = float(found["images_per_second"])
            batch = throughput.measured_batch(found)
            at = "" if batch in (None, s["batch_size"]) else f" at batch {batch}, not the recipe's {s['batch_size']}"
            row[f"estimated_hours_{key}"] = round(s["epochs"] * train_images / ips / 3600, 2)
            row[f"{key}_measurement"] = f"{rate_text(ips)} images/s{at}, {found['machine']}, {found['measured']}"
    return row


def table_rows(runs, measured, all_models=True):
    """The finished rows, then (with `all_models`) a not-yet-run row per registered model without one."""
    rows = [finished_row(g) for g in group_runs(runs)]
    if all_models:
        done = {r["model"] for r in rows}
        rows += [not_yet_run_row(name, measured) for name in models.list_models() if name not in done]
    return rows

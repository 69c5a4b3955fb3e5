"""The settings of a training run: their schema, how they resolve, and their checks.

One table (SCHEMA) names every setting with its default, its command-line flag and its help. The
command lines (train.py, `python -m htd`), the recipes (models/, next to each family), config.json
and the schedule helpers all read it.

Settings resolve in three layers: the model's recipe, then any flag given; what the recipe does
not set falls back to the schema's default. `config.json` records each value and where it came from.
"""

import argparse
import math
from dataclasses import dataclass, field

import data
import models
from errors import TrainError
from htd import schedules

LR_SCALING = ("linear", "none")
MAX_SEED = 2**32 - 1  # numpy's and keras.utils.set_random_seed's range


@dataclass(frozen=True)
class Setting:
    """One setting: its default (what a recipe does not say) and its flag. `argparse` holds
    add_argument's keyword arguments; `schedule_arg` the make_schedule argument it feeds."""

    name: str
    default: object
    help: str = None
    argparse: dict = field(default_factory=dict)
    group: str = "training"
    schedule_arg: str = None
    schedules: tuple = None

    @property
    def flag(self):
        return "--" + self.name.replace("_", "-")


SCHEMA = (
    Setting("epochs", 200, argparse=dict(type=int)),
    Setting("batch_size", 128, "global batch size", dict(type=int)),
    Setting("lr", 0.1, "base learning rate", dict(type=float)),
    Setting("momentum", 0.9, argparse=dict(type=float)),
    Setting("nesterov", False, argparse=dict(action=argparse.BooleanOptionalAction)),
    Setting("weight_decay", 0.0, "coupled L2 weight decay on kernels, as in the papers: w -= lr * (grad + wd * w)",
            dict(type=float)),
    Setting("schedule", "step", "learning-rate schedule", dict(choices=schedules.SCHEDULES), "schedule"),
    Setting("lr_milestones", None, "step: epochs at which the lr is multiplied by --lr-factor "
            "(default: 50%% and 75%% of the epochs after warm-up)", dict(type=int, nargs="+", metavar="EPOCH"),
            "schedule", "milestones", ("step",)),
    Setting("lr_factor", [0.1], "step: one multiplier for every milestone, or one per milestone (default 0.1)",
            dict(type=float, nargs="+", metavar="F"), "schedule", "factor", ("step",)),
    Setting("htd_bounds", [-6.0, 3.0], "htd: tanh bounds L < U (default -6 3)",
            dict(type=float, nargs=2, metavar=("L", "U")), "schedule", "bounds", ("htd",)),
    Setting("warmup_epochs", 0, "linear warm-up over the first N epochs (default 0)",
            dict(type=float, metavar="N"), "schedule", "warmup_epochs"),
    Setting("min_lr", 0.0, "cosine: final lr (default 0)", dict(type=float), "schedule", "min_lr", ("cosine",)),
    Setting("lr_gamma", None, "exponential: lr factor per epoch (default 0.95)", dict(type=float), "schedule",
            "gamma", ("exponential",)),
    Setting("schedule_per", "step", "change the lr every step (default) or once per epoch",
            dict(choices=schedules.PER), "schedule", "per"),
    Setting("lr_scaling", "linear", "linear (default): a recipe's lr scales with --batch-size / the recipe's batch; "
            "an --lr given is used as is", dict(choices=LR_SCALING)),
    Setting("preprocess", "standardize", argparse=dict(choices=data.PREPROCESSING)),
    Setting("augment", "standard", "standard: pad-4 crop + flip; kaggle: random-resized crop, flip, brightness, hue; "
            "shift: flip + continuous shifts up to 4 px, border 0 after preprocessing (Keras 2's ImageDataGenerator)",
            dict(choices=data.AUGMENTATIONS)),
    Setting("cutout", 0, "cutout square side (DeVries & Taylor: 16 for CIFAR-10; 0 = off)", dict(type=int)),
    Setting("mixup", 0.0, "mixup alpha (Zhang et al.; 0 = off)", dict(type=float)),
    Setting("label_smoothing", 0.0, "label smoothing epsilon (0 = off)", dict(type=float)),
    Setting("val_split", 5000, "training images held out for validation (0: none)", dict(type=int)),
    Setting("split_seed", 0, "seed of the validation split (default 0, shared by all runs)", dict(type=int)),
    Setting("seed", 0, "seed of initialisation, shuffling and augmentation", dict(type=int)),
    Setting("mixed_precision", False, "float16 on GPUs, bfloat16 on CPUs that compute it natively; refused elsewhere",
            dict(action="store_true")),
    Setting("init_from", None, "start a new run from trained weights: a run folder (its best.keras, else last.keras) "
            "or a .keras / .weights.h5 file, loaded by layer name; a classifier for another class count is initialised "
            "afresh. Part of the run's settings; a resume reads its own checkpoint", dict(metavar="RUN_DIR_OR_FILE")),
    Setting("dataset", "cifar10", "cifar10 (default) or cifar100 (the official cifar-100-python archive)",
            dict(choices=tuple(data.DATASETS))),
    Setting("labels", "fine", "CIFAR-100's 100 fine classes (default) or its 20 coarse superclasses",
            dict(choices=data.LABELS)),
)
BY_NAME = {s.name: s for s in SCHEMA}
DEFAULTS = {s.name: s.default for s in SCHEMA}
SETTINGS = tuple(DEFAULTS)
SCHEDULE_SETTINGS = tuple(s.name for s in SCHEMA if s.group == "schedule" and s.name != "schedule")


def add_arguments(parser, names, *, aliases=None):
    """Adds the flags of the settings `names` to `parser`, each with default None (not given), so
    that resolve_settings can layer the recipe under them; the schedule's in their own group.
    `aliases` maps a setting to more flag spellings (`python -m htd`'s --per)."""
    groups = {}
    for name in names:
        s = BY_NAME[name]
        if s.group not in groups:
            groups[s.group] = parser if s.group == "training" else parser.add_argument_group("learning-rate schedule")
        options = {"default": None, **s.argparse, **({"help": s.help} if s.help else {})}
        groups[s.group].add_argument(s.flag, *(aliases or {}).get(name, ()), dest=name, **options)
    return parser


def given(namespace):
    """The settings a parsed command line gave (those not None)."""
    return {k: v for k, v in vars(namespace).items() if k in BY_NAME and v is not None}


def schedule_kwargs(values):
    """`htd.make_schedule` keyword arguments from the schedule settings in `values` (a dict; None or
    absent = not given, left to the schedule's own default); the schedule's name is not included."""
    kwargs = {}
    for name in SCHEDULE_SETTINGS:
        value = values.get(name)
        if value is None:
            continue
        if name == "lr_factor" and isinstance(value, (list, tuple)) and len(value) == 1:
            value = value[0]
        elif name == "htd_bounds":
            value = tuple(value)
        elif name == "warmup_epochs" and isinstance(value, float) and value.is_integer():
            value = int(value)
        kwargs[BY_NAME[name].schedule_arg] = value
    return kwargs


def check_schedule_flags(given, schedule_names):
    """TrainError for a setting in `given` (names of settings given as flags) that none of the
    schedules `schedule_names` reads: it would be recorded in config.json and silently unused.
    Command lines call it; resolve_settings does not, as a run's recorded settings hold every
    schedule's values."""
    names = list(dict.fromkeys(schedule_names))
    for name in given:
        readers = BY_NAME[name].schedules if name in BY_NAME else None
        if readers and not set(readers) & set(names):
            which = "schedules " + ", ".join(names) if len(names) > 1 else "schedule " + names[0]
            raise TrainError(f"{BY_NAME[name].flag} is read by the {' / '.join(readers)} schedule only, "
                             f"not by the {which}; leave it out or give --schedule {readers[0]}")


def make_schedule(s, steps_per_epoch):
    """The learning-rate schedule of the resolved settings `s`."""
    return schedules.make_schedule(s["schedule"], base_lr=s["lr"], epochs=s["epochs"],
                                   steps_per_epoch=steps_per_epoch, **schedule_kwargs(s))


def num_classes(settings):
    """The classes of the run's data set and label set (CIFAR-10: 10; CIFAR-100: 100 fine, 20 coarse)."""
    return data.get_spec(settings["dataset"]).num_classes(settings["labels"])


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
    validate(settings)
    return settings, sources


def validate(s):
    """TrainError naming the first setting of `s` that is out of range."""
    def positive_int(key):
        if isinstance(s[key], bool) or not isinstance(s[key], int) or s[key] <= 0:
            raise TrainError(f"{key.replace('_', ' ')} must be a positive whole number; got {s[key]!r}")

    for key, value in s.items():  # inf and nan pass the range checks below; no setting means them
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise TrainError(f"{key.replace('_', ' ')} must be a finite number; got {value!r}")
    positive_int("epochs")
    positive_int("batch_size")
    validate_seed(s["seed"])
    validate_seed(s["split_seed"], "split_seed")
    if not s["lr"] > 0:
        raise TrainError(f"lr must be positive; got {s['lr']!r}")
    if not 0 <= s["momentum"] < 1:
        raise TrainError(f"momentum must be in [0, 1); got {s['momentum']!r}")
    if not s["weight_decay"] >= 0:
        raise TrainError(f"weight decay must be >= 0; got {s['weight_decay']!r}")
    try:
        classes = num_classes(s)
    except data.DataError as e:
        raise TrainError(str(e)) from None
    if (isinstance(s["val_split"], bool) or not isinstance(s["val_split"], int)
            or not (s["val_split"] == 0 or classes <= s["val_split"] < data.OFFICIAL_COUNTS["train"])):
        # Stratified: every class needs an image on each side of the split.
        raise TrainError(f"val split must be 0 (none) or a whole number of images from {classes} (one per "
                         f"class) to {data.OFFICIAL_COUNTS['train'] - 1}; got {s['val_split']!r}")
    if not 0 <= s["label_smoothing"] < 1:
        raise TrainError(f"label smoothing must be in [0, 1); got {s['label_smoothing']!r}")
    if isinstance(s["cutout"], bool) or not isinstance(s["cutout"], int):
        raise TrainError(f"cutout must be a square side from 0 (off) to 32; got {s['cutout']!r}")
    try:  # the pipeline's own checks, so that its messages are written once
        data.check_pipeline_options(preprocess_mode=s["preprocess"], augment=s["augment"], cutout=s["cutout"],
                                    mixup=s["mixup"])
    except ValueError as e:
        raise TrainError(str(e)) from None
    if s["lr_scaling"] not in LR_SCALING:
        raise TrainError(f"lr scaling must be one of {', '.join(LR_SCALING)}; got {s['lr_scaling']!r}")
    try:  # the schedule checks its own parameters; steps_per_epoch does not matter here
        make_schedule(s, steps_per_epoch=1)
    except ValueError as e:
        raise TrainError(f"schedule: {e}") from None


def validate_seed(seed, key="seed"):
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise TrainError(f"{key.replace('_', ' ')} must be a whole number from 0 to {MAX_SEED}; got {seed!r}")


def check_seeds(seeds):
    """The seeds of a series: each a valid seed, none twice (a repeated seed is the same run counted twice)."""
    for seed in seeds:
        validate_seed(seed)
    repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if repeated:
        raise TrainError(f"seeds must differ (each is one run); {', '.join(map(str, repeated))} given more than once")


def describe_differences(old, new):
    """The settings that differ; a setting an older version did not record counts as its default."""
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in keys
            if old.get(k, DEFAULTS.get(k)) != new.get(k)]

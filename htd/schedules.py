"""Learning-rate schedules as serializable Keras 3 `LearningRateSchedule` objects.

    schedule = make_schedule("htd", base_lr=0.1, epochs=200, steps_per_epoch=391)
    optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=0.9)
    lr_per_epoch(schedule, 200, 391)      # [0.09999939, 0.0999992, ...]

Time. The optimizer calls a schedule with its iteration count `step` (0 for the first update).
With per="step" (the default) the schedule sees the fractional epoch `u = step / steps_per_epoch`
and changes at every step; with per="epoch" it sees the whole epoch `u = floor(step /
steps_per_epoch)` and is constant within an epoch, like a `LearningRateScheduler` callback.
Epochs are counted from 0: epoch e is the (e+1)-th pass over the data, and a milestone at epoch 100
changes the lr from the first step of epoch 100 on (after 100 completed epochs).

Warm-up. With `warmup_epochs = W > 0` the decay below starts after W epochs; before that the lr
rises linearly to `target`, the value the decay has at its own start:

    lr = target * (k + 1) / (K + 1)      for k = 0, ..., K - 1

where k counts steps and K = round(W * steps_per_epoch) (per="step"), or k counts epochs and K = W
(per="epoch", W must be whole). The line runs from 0 (at k = -1) to `target` at k = K, the first
step or epoch after warm-up, so the first update already moves the weights (by target / (K + 1)).
Every decay then runs over T = epochs - W epochs in its own time t = u - W, clipped to [0, T] (W
taken as K / steps_per_epoch when per="step"): past the end of training the lr stays at its final
value. Step milestones stay absolute epochs and must lie after the warm-up.

Decays (base_lr = b, time t and length T in epochs as above):

    constant     b
    step         b times the product of the factors of the milestones m <= u; factor is one
                 number for every milestone or one multiplier per milestone
                 (LeNet's 0.01 -> 0.005 at 100 -> 0.001 at 150: milestones [100, 150],
                 factor [0.5, 0.2])
    cosine       min_lr + (b - min_lr) * (1 + cos(pi * t / T)) / 2          (Loshchilov & Hutter 2017)
    htd          b / 2 * (1 - tanh(L + (U - L) * t / T)), (L, U) = bounds    (Hsueh et al., WACV 2019)
    exponential  b * gamma ** t, gamma per epoch
    onecycle     the cosine variant of 1cycle (Smith & Topin 2017, as fastai and PyTorch's
                 OneCycleLR anneal): over the first pct_start * T epochs a half cosine from
                 b / div_factor up to b, then a half cosine down to b / final_div at t = T.
                 Smith & Topin ramp linearly; the cosine variant is the one in common use.
                 It is its own warm-up: warmup_epochs must be 0.

Only the arguments of the chosen schedule are read (and validated); the others are ignored, so a
caller can pass a recipe's full set of settings whichever schedule it names.

Saving. Every class is registered as "cifar10_keras>ClassName", so a `.keras` file of a model
compiled with one of these schedules reloads with `keras.saving.load_model` (safe_mode on, no
custom_objects) in any process that has imported `htd`: the schedule, its configuration and the
optimizer's iteration count come back, so `model.optimizer.learning_rate` is the value at the step
training stopped. Measured with Keras 3.15.1 / TF 2.21: in a process that has *not* imported
`htd`, `keras.saving.load_model(path)` raises; there is no warning-and-uncompiled-model fallback,
because the optimizer is rebuilt as part of the model:

    TypeError: <class 'keras.src.optimizers.sgd.SGD'> could not be deserialized properly. ...
    Exception encountered: Could not locate class 'HTDSchedule'. Make sure custom classes and
    functions are decorated with `@keras.saving.register_keras_serializable()`. ...

`load_model(path, compile=False)` still loads the architecture and weights (uncompiled, no
optimizer). `import htd` (or `import htd.schedules`) before loading makes the plain call work
(tests/test_schedules.py checks all three cases).
"""

import math
import numbers

import tfenv  # noqa: F401  (before keras: TensorFlow reads its settings when it loads)
import keras
import numpy as np
from keras import ops

_PACKAGE = "cifar10_keras"
PER = ("step", "epoch")


def _whole(name, value, minimum=None):
    """`value` as an int >= `minimum`; whole floats (200.0 from a JSON file) are accepted."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) \
            and float(value).is_integer() and (minimum is None or value >= minimum):
        return int(value)
    at_least = "" if minimum is None else f" >= {minimum}"
    raise ValueError(f"{name} must be a whole number{at_least}; got {value!r}")


def _real(name, value, low=None, high=None, *, low_open=False, high_open=False):
    """`value` as a finite float in the interval given; the message names the interval."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        interval = "{}{}, {}{}".format("(" if low_open or low is None else "[",
                                       "-inf" if low is None else f"{low:g}",
                                       "inf" if high is None else f"{high:g}",
                                       ")" if high_open or high is None else "]")
        raise ValueError(f"{name} must be a finite number in {interval}; got {value!r}")
    return float(value)


MAX_STEPS = 2**31 - 1  # the largest step the schedules' int32 step counter holds


class EpochSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Base class: step -> (warm-up, clipped time since warm-up) -> `_decay(t, u)`.

    Subclasses define `_decay(t, units)` with t the float32 epochs since warm-up (clipped to
    [0, T]) and `units` the float32 step or epoch count (per-step or per-epoch), plus `get_config`.
    """

    def __init__(self, base_lr, epochs, steps_per_epoch, per="step", warmup_epochs=0):
        self.base_lr = _real("base_lr", base_lr, 0.0, low_open=True)
        self.epochs = _whole("epochs", epochs, 1)
        self.steps_per_epoch = _whole("steps_per_epoch", steps_per_epoch, 1)
        if self.epochs * self.steps_per_epoch > MAX_STEPS:  # __call__ counts steps in int32
            raise ValueError(f"epochs x steps_per_epoch must be at most {MAX_STEPS:,} (the step counter is a 32-bit "
                             f"integer); got {self.epochs} x {self.steps_per_epoch}")
        if per not in PER:
            raise ValueError(f"per must be one of {', '.join(PER)}; got {per!r}")
        self.per = per
        warmup = _real("warmup_epochs", warmup_epochs, 0.0, self.epochs, high_open=True)
        if per == "epoch" and not warmup.is_integer():
            raise ValueError(f"warmup_epochs must be whole with per='epoch'; got {warmup_epochs!r}")
        self.warmup_epochs = int(warmup) if warmup.is_integer() else warmup
        # Units: what the schedule counts (steps or epochs), how many per epoch, warm-up and total.
        self._units_per_epoch = self.steps_per_epoch if per == "step" else 1
        self._warmup_units = round(warmup * self._units_per_epoch)
        self._total_units = self.epochs * self._units_per_epoch
        # T: the length of the decay in epochs.
        self.decay_epochs = (self._total_units - self._warmup_units) / self._units_per_epoch
        if self.decay_epochs <= 0:
            raise ValueError(f"warmup_epochs ({warmup_epochs}) leaves no epoch of {self.epochs} "
                             f"to decay over")

    def __call__(self, step):
        step = ops.cast(step, "int32")
        if self.per == "epoch":
            step = ops.floor_divide(step, self.steps_per_epoch)
        units = ops.cast(step, "float32")
        t = ops.clip((units - self._warmup_units) / self._units_per_epoch, 0.0, self.decay_epochs)
        lr = self._decay(t, units)
        if self._warmup_units:
            target = self._decay(ops.zeros_like(t), ops.full_like(units, self._warmup_units))
            ramp = target * (units + 1.0) / (self._warmup_units + 1.0)
            lr = ops.where(units < self._warmup_units, ramp, lr)
        return lr

    def _decay(self, t, units):
        raise NotImplementedError

    def get_config(self):
        return dict(base_lr=self.base_lr, epochs=self.epochs, steps_per_epoch=self.steps_per_epoch,
                    per=self.per, warmup_epochs=self.warmup_epochs)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ConstantSchedule(EpochSchedule):
    """lr = base_lr (after the optional warm-up)."""

    def _decay(self, t, units):
        return ops.full_like(t, self.base_lr)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class StepSchedule(EpochSchedule):
    """lr = base_lr times the factors of the milestones reached (milestones in absolute epochs)."""

    def __init__(self, base_lr, epochs, steps_per_epoch, milestones, factor=0.1, per="step",
                 warmup_epochs=0):
        super().__init__(base_lr, epochs, steps_per_epoch, per, warmup_epochs)
        if isinstance(milestones, (str, bytes)) or not isinstance(milestones, (list, tuple)):
            raise ValueError(f"milestones must be a list of epochs; got {milestones!r}")
        milestones = [_whole("each milestone", m) for m in milestones]
        low = self.warmup_epochs
        if any(b <= a for a, b in zip(milestones, milestones[1:])) or any(
                not low < m < self.epochs for m in milestones):
            raise ValueError(f"milestones must be strictly increasing epochs in ({low}, "
                             f"{self.epochs}){' (after the warm-up)' if low else ''}; "
                             f"got {milestones}")
        if isinstance(factor, (list, tuple)):
            if len(factor) != len(milestones):
                raise ValueError(f"factor has {len(factor)} values for {len(milestones)} "
                                 f"milestones {milestones}; give one per milestone or a single one")
            factors = [_real("each factor", f, 0.0, 1.0, low_open=True) for f in factor]
            factor = list(factors)
        else:
            factor = _real("factor", factor, 0.0, 1.0, low_open=True)
            factors = [factor] * len(milestones)
        self.milestones = milestones
        self.factor = factor
        # lr after each milestone, multiplied in float64 and rounded once.
        self._levels = [float(level) for level in self.base_lr * np.cumprod(factors)]

    def _decay(self, t, units):
        lr = ops.full_like(t, self.base_lr)
        for milestone, level in zip(self.milestones, self._levels):
            lr = ops.where(units >= milestone * self._units_per_epoch, level, lr)
        return lr

    def get_config(self):
        return {**super().get_config(), "milestones": list(self.milestones), "factor": self.factor}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CosineSchedule(EpochSchedule):
    """lr = min_lr + (base_lr - min_lr) * (1 + cos(pi * t / T)) / 2."""

    def __init__(self, base_lr, epochs, steps_per_epoch, min_lr=0.0, per="step", warmup_epochs=0):
        super().__init__(base_lr, epochs, steps_per_epoch, per, warmup_epochs)
        self.min_lr = _real("min_lr", min_lr, 0.0, self.base_lr)

    def _decay(self, t, units):
        # (1 + cos x) / 2 as cos(x / 2) ** 2: no cancellation in float32 near the end.
        return self.min_lr + (self.base_lr - self.min_lr) * ops.square(
            ops.cos(0.5 * math.pi * t / self.decay_epochs))

    def get_config(self):
        return {**super().get_config(), "min_lr": self.min_lr}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class HTDSchedule(EpochSchedule):
    """Hyperbolic-tangent decay, Hsueh et al. WACV 2019: base_lr / 2 * (1 - tanh(L + (U - L) t / T))."""

    def __init__(self, base_lr, epochs, steps_per_epoch, bounds=(-6.0, 3.0), per="step",
                 warmup_epochs=0):
        super().__init__(base_lr, epochs, steps_per_epoch, per, warmup_epochs)
        if isinstance(bounds, (str, bytes)) or not isinstance(bounds, (list, tuple)) or len(bounds) != 2:
            raise ValueError(f"bounds must be two numbers (L, U); got {bounds!r}")
        lower, upper = _real("bound L", bounds[0]), _real("bound U", bounds[1])
        if lower >= upper:
            raise ValueError(f"bounds must have L < U; got L={lower:g}, U={upper:g}")
        self.bounds = (lower, upper)

    def _decay(self, t, units):
        lower, upper = self.bounds
        # (1 - tanh x) / 2 == sigmoid(-2x), which keeps float32's relative precision where tanh
        # is near 1 (1 - tanh(2.9) in float32 is off by ~1e-5 relative).
        return self.base_lr * ops.sigmoid(-2.0 * (lower + (upper - lower) * t / self.decay_epochs))

    def get_config(self):
        return {**super().get_config(), "bounds": list(self.bounds)}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ExponentialSchedule(EpochSchedule):
    """lr = base_lr * gamma ** t, gamma per epoch."""

    def __init__(self, base_lr, epochs, steps_per_epoch, gamma=0.95, per="step", warmup_epochs=0):
        super().__init__(base_lr, epochs, steps_per_epoch, per, warmup_epochs)
        self.gamma = _real("gamma", gamma, 0.0, 1.0, low_open=True)

    def _decay(self, t, units):
        return self.base_lr * ops.exp(math.log(self.gamma) * t)

    def get_config(self):
        return {**super().get_config(), "gamma": self.gamma}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class OneCycleSchedule(EpochSchedule):
    """1cycle, cosine variant: base_lr / div_factor -> base_lr -> base_lr / final_div."""

    def __init__(self, base_lr, epochs, steps_per_epoch, pct_start=0.3, div_factor=25.0,
                 final_div=1e4, per="step", warmup_epochs=0):
        if warmup_epochs:
            raise ValueError(f"onecycle ramps up by itself (pct_start); warmup_epochs must be 0, "
                             f"got {warmup_epochs!r}")
        super().__init__(base_lr, epochs, steps_per_epoch, per, warmup_epochs)
        self.pct_start = _real("pct_start", pct_start, 0.0, 1.0, low_open=True, high_open=True)
        self.div_factor = _real("div_factor", div_factor, 1.0)
        self.final_div = _real("final_div", final_div, 1.0)

    def _decay(self, t, units):
        peak, up = self.base_lr, self.pct_start * self.decay_epochs
        start, end = peak / self.div_factor, peak / self.final_div
        # (1 -+ cos x) / 2 as sin or cos(x / 2) ** 2, without cancellation near the ends.
        rise = start + (peak - start) * ops.square(ops.sin(0.5 * math.pi * t / up))
        fall = end + (peak - end) * ops.square(
            ops.cos(0.5 * math.pi * (t - up) / (self.decay_epochs - up)))
        return ops.where(t < up, rise, fall)

    def get_config(self):
        return {**super().get_config(), "pct_start": self.pct_start, "div_factor": self.div_factor,
                "final_div": self.final_div}


_CLASSES = {
    "step": StepSchedule,
    "cosine": CosineSchedule,
    "htd": HTDSchedule,
    "constant": ConstantSchedule,
    "exponential": ExponentialSchedule,
    "onecycle": OneCycleSchedule,
}
SCHEDULES = tuple(_CLASSES)


def default_milestones(epochs, warmup_epochs=0):
    """Halfway and three quarters through the epochs after warm-up: [100, 150] of 200, [82, 123]
    of 164 (He et al.'s CIFAR ResNet schedule). Repeats and ends are dropped for tiny runs."""
    start = math.ceil(warmup_epochs)
    span = epochs - start
    return sorted({m for m in (start + span // 2, start + span * 3 // 4) if warmup_epochs < m < epochs})


def make_schedule(name, *, base_lr, epochs, steps_per_epoch, per="step", warmup_epochs=0,
                  milestones=None, factor=0.1, bounds=(-6.0, 3.0), min_lr=0.0, gamma=0.95,
                  pct_start=0.3, div_factor=25.0, final_div=1e4):
    """The schedule `name` (one of SCHEDULES) as a `LearningRateSchedule`.

    Common: base_lr > 0; epochs and steps_per_epoch whole and positive; per "step" or "epoch";
    warmup_epochs in [0, epochs). step: milestones (epochs; default `default_milestones`) and
    factor (one number or one per milestone, each in (0, 1]). cosine: min_lr in [0, base_lr].
    htd: bounds (L, U), L < U. exponential: gamma in (0, 1] per epoch. onecycle: pct_start in
    (0, 1), div_factor >= 1 (start = base_lr / div_factor), final_div >= 1 (end = base_lr /
    final_div). Arguments of other schedules are ignored. Raises ValueError on a bad value.
    """
    if name not in _CLASSES:
        raise ValueError(f"unknown schedule {name!r}; known schedules: {', '.join(SCHEDULES)}")
    common = dict(base_lr=base_lr, epochs=epochs, steps_per_epoch=steps_per_epoch, per=per,
                  warmup_epochs=warmup_epochs)
    if name == "step":
        if milestones is None:
            _whole("epochs", epochs, 1)
            milestones = default_milestones(epochs, _real("warmup_epochs", warmup_epochs, 0.0))
        return StepSchedule(milestones=milestones, factor=factor, **common)
    extra = {"cosine": dict(min_lr=min_lr), "htd": dict(bounds=bounds), "constant": {},
             "exponential": dict(gamma=gamma),
             "onecycle": dict(pct_start=pct_start, div_factor=div_factor, final_div=final_div)}[name]
    return _CLASSES[name](**common, **extra)


def evaluate(schedule, steps):
    """The lr at each of `steps` (a sequence of ints) as a float64 numpy array.

    Schedules of this module are evaluated in one vectorised call (TF's SIMD and scalar paths
    can differ in the last bit from the value the optimizer sees); any other
    `LearningRateSchedule` one step at a time.
    """
    steps = np.asarray(steps, dtype=np.int64)
    if isinstance(schedule, EpochSchedule):
        values = ops.convert_to_numpy(schedule(steps))
    else:
        values = [ops.convert_to_numpy(schedule(int(s))) for s in steps]
    return np.asarray(values, dtype=np.float64).reshape(steps.shape)


def lr_per_epoch(schedule, epochs, steps_per_epoch):
    """The lr at the first step of each epoch 0, ..., epochs - 1, as numpy float64 scalars."""
    return list(evaluate(schedule, np.arange(epochs) * steps_per_epoch))

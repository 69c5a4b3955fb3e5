"""Tests of htd/: schedule values against their formulas, saving, and the command line."""

import csv
import io
import json
import math
from contextlib import redirect_stderr, redirect_stdout

import keras
import numpy as np
import pytest

import htd
from htd.__main__ import main
from htd.schedules import SCHEDULES, evaluate, lr_per_epoch, make_schedule

EPOCHS, SPE, BASE = 12, 5, 0.1
END = EPOCHS * SPE  # the step after the last one
# Non-default settings for every schedule, so that a lost setting changes the values.
SETTINGS = {
    "constant": {},
    "step": dict(milestones=[4, 9], factor=[0.5, 0.2]),
    "cosine": dict(min_lr=0.001),
    "htd": dict(bounds=(-5.0, 2.5)),
    "exponential": dict(gamma=0.8),
    "onecycle": dict(pct_start=0.25, div_factor=25.0, final_div=1e4),
}
DECREASING = ("step", "cosine", "htd", "exponential")


def schedule(name, per="step", warmup_epochs=0, **overrides):
    return make_schedule(name, base_lr=BASE, epochs=EPOCHS, steps_per_epoch=SPE, per=per,
                         warmup_epochs=warmup_epochs, **{**SETTINGS[name], **overrides})


def htd_lr(t, T=EPOCHS, lower=-5.0, upper=2.5):
    return BASE / 2 * (1 - math.tanh(lower + (upper - lower) * t / T))


def cos_lr(t, T=EPOCHS, low=0.001):
    return low + (BASE - low) * (1 + math.cos(math.pi * t / T)) / 2


def onecycle_lr(t, T=EPOCHS, pct=0.25):
    up, start, end = pct * T, BASE / 25, BASE / 1e4
    if t < up:
        return start + (BASE - start) * (1 - math.cos(math.pi * t / up)) / 2
    return end + (BASE - end) * (1 + math.cos(math.pi * (t - up) / (T - up))) / 2


# (schedule, per, step, expected): t = 0, the milestones or the turn, the last step, the end.
# Per-step time is step / SPE; per-epoch time is step // SPE.
EXACT = [
    *[("constant", per, s, BASE) for per in ("step", "epoch") for s in (0, END - 1, END)],
    *[("step", per, s, v) for per in ("step", "epoch") for s, v in
      [(0, BASE), (4 * SPE - 1, BASE), (4 * SPE, 0.05), (9 * SPE - 1, 0.05), (9 * SPE, 0.01),
       (END - 1, 0.01), (END + 50, 0.01)]],
    ("cosine", "step", 0, BASE), ("cosine", "epoch", 0, BASE),
    ("cosine", "step", 6 * SPE, 0.0505), ("cosine", "epoch", 6 * SPE + 4, 0.0505),
    ("cosine", "step", END - 1, cos_lr(11.8)), ("cosine", "epoch", END - 1, cos_lr(11)),
    ("cosine", "step", END, 0.001), ("cosine", "step", END + 50, 0.001),
    ("htd", "step", 0, htd_lr(0)), ("htd", "epoch", SPE - 1, htd_lr(0)),
    ("htd", "step", 7, htd_lr(1.4)), ("htd", "epoch", 7, htd_lr(1)),
    ("htd", "step", END - 1, htd_lr(11.8)), ("htd", "epoch", END - 1, htd_lr(11)),
    ("htd", "step", END, BASE / 2 * (1 - math.tanh(2.5))), ("htd", "step", END + 50, htd_lr(12)),
    ("exponential", "step", 0, BASE), ("exponential", "epoch", 0, BASE),
    ("exponential", "step", 7, BASE * 0.8 ** 1.4), ("exponential", "epoch", 7, BASE * 0.8),
    ("exponential", "step", END - 1, BASE * 0.8 ** 11.8),
    ("exponential", "epoch", END - 1, BASE * 0.8 ** 11),
    ("onecycle", "step", 0, BASE / 25), ("onecycle", "epoch", 0, BASE / 25),
    ("onecycle", "step", 3 * SPE, BASE), ("onecycle", "epoch", 3 * SPE + 2, BASE),
    ("onecycle", "step", 7, onecycle_lr(1.4)), ("onecycle", "epoch", 7, onecycle_lr(1)),
    ("onecycle", "step", END - 1, onecycle_lr(11.8)), ("onecycle", "epoch", END - 1, onecycle_lr(11)),
    ("onecycle", "step", END, BASE / 1e4),
]


@pytest.mark.parametrize("name, per, step, expected", EXACT)
def test_value_matches_formula(name, per, step, expected):
    assert float(evaluate(schedule(name, per), [step])[0]) == pytest.approx(expected, rel=1e-5)


def reference(name, step, per, warmup_epochs):
    """The documented definition, in float64, written independently of the module."""
    units_per_epoch = SPE if per == "step" else 1
    k = step if per == "step" else step // SPE
    K = round(warmup_epochs * units_per_epoch)
    T = (EPOCHS * units_per_epoch - K) / units_per_epoch

    def decay(k):
        t = min(max((k - K) / units_per_epoch, 0.0), T)
        if name == "constant":
            return BASE
        if name == "step":
            passed = [f for m, f in zip([4, 9], [0.5, 0.2]) if k >= m * units_per_epoch]
            return BASE * math.prod(passed)
        if name == "cosine":
            return cos_lr(t, T)
        if name == "htd":
            return htd_lr(t, T)
        if name == "exponential":
            return BASE * 0.8 ** t
        return onecycle_lr(t, T)

    return decay(K) * (k + 1) / (K + 1) if k < K else decay(k)


STEPS = np.arange(END + 3)


@pytest.mark.parametrize("per", ["step", "epoch"])
@pytest.mark.parametrize("name, warmup_epochs", [  # onecycle takes no warm-up (test_bad_values)
    (name, warmup) for name in SCHEDULES for warmup in (0, 2) if not (name == "onecycle" and warmup)])
def test_every_step_matches_reference(name, per, warmup_epochs):
    got = evaluate(schedule(name, per, warmup_epochs), STEPS)
    want = [reference(name, int(s), per, warmup_epochs) for s in STEPS]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("per", ["step", "epoch"])
def test_htd_default_bounds_are_the_papers(per):
    s = make_schedule("htd", base_lr=BASE, epochs=EPOCHS, steps_per_epoch=SPE, per=per)
    assert s.bounds == (-6.0, 3.0)
    start, last, end = evaluate(s, [0, END - 1, END])
    assert start == pytest.approx(BASE / 2 * (1 - math.tanh(-6)), rel=1e-6)
    t_last = 11.8 if per == "step" else 11
    assert last == pytest.approx(BASE / 2 * (1 - math.tanh(-6 + 9 * t_last / EPOCHS)), rel=1e-5)
    assert end == pytest.approx(BASE / 2 * (1 - math.tanh(3)), rel=1e-5)


def test_lenet_recipe_per_epoch():
    lenet = make_schedule("step", base_lr=0.01, epochs=200, steps_per_epoch=391,
                          milestones=[100, 150], factor=[0.5, 0.2])
    lrs = lr_per_epoch(lenet, 200, 391)
    assert len(lrs) == 200 and isinstance(lrs[0], np.floating)
    np.testing.assert_allclose([lrs[i] for i in (0, 99, 100, 149, 150, 199)],
                               [0.01, 0.01, 0.005, 0.005, 0.001, 0.001], rtol=1e-6)


def test_single_factor_applies_at_every_milestone():
    s = schedule("step", milestones=[3, 6, 9], factor=0.1)
    np.testing.assert_allclose(lr_per_epoch(s, EPOCHS, SPE)[::3], [0.1, 0.01, 0.001, 0.0001],
                               rtol=1e-5)


def test_default_milestones_are_half_and_three_quarters():
    assert htd.default_milestones(200) == [100, 150]
    assert htd.default_milestones(164) == [82, 123]
    assert make_schedule("step", base_lr=0.1, epochs=200, steps_per_epoch=1).milestones == [100, 150]
    assert htd.default_milestones(1) == []


@pytest.mark.parametrize("per", ["step", "epoch"])
@pytest.mark.parametrize("name", DECREASING)
def test_non_increasing_after_warmup(name, per):
    lrs = evaluate(schedule(name, per, warmup_epochs=2), np.arange(END + 10))
    after = lrs[2 * SPE:]
    # Up to float32 rounding: TF computes vector elements in SIMD blocks and the tail apart, and
    # the two paths can differ by an ulp for the same input.
    assert np.all(np.diff(after) <= 2 * np.finfo(np.float32).eps * after[1:])
    assert after[-1] < after[0]
    assert np.all(np.diff(lrs[:2 * SPE + 1]) >= 0) and lrs[0] < after[0]


@pytest.mark.parametrize("per", ["step", "epoch"])
def test_onecycle_rises_then_falls(per):
    lrs = evaluate(schedule("onecycle", per), STEPS)
    peak = int(np.argmax(lrs))
    assert peak == 3 * SPE
    ulp = 2 * np.finfo(np.float32).eps * lrs[1:]  # see test_non_increasing_after_warmup
    assert np.all(np.diff(lrs)[:peak] >= -ulp[:peak]) and np.all(np.diff(lrs)[peak:] <= ulp[peak:])
    assert lrs[0] < lrs[peak] / 20 and lrs[-1] < lrs[peak] / 1000


def test_warmup_per_epoch_is_linear_to_the_target():
    lrs = lr_per_epoch(schedule("htd", "epoch", warmup_epochs=4), EPOCHS, SPE)
    target = htd_lr(0, T=EPOCHS - 4)
    np.testing.assert_allclose(lrs[:5], [target * k / 5 for k in (1, 2, 3, 4, 5)], rtol=1e-6)
    # within an epoch the lr does not move
    within = evaluate(schedule("htd", "epoch", warmup_epochs=4), np.arange(SPE, 2 * SPE))
    assert np.all(within == within[0])


def test_warmup_per_step_starts_near_zero():
    s = make_schedule("cosine", base_lr=0.1, epochs=10, steps_per_epoch=100, warmup_epochs=1.5)
    lrs = evaluate(s, [0, 1, 149, 150, 151])
    np.testing.assert_allclose(lrs[:4], [0.1 / 151, 0.2 / 151, 0.1 * 150 / 151, 0.1], rtol=1e-6)
    assert lrs[4] < lrs[3]
    # the cosine runs over the 8.5 epochs after warm-up
    assert float(evaluate(s, [150 + 425])[0]) == pytest.approx(0.05, rel=1e-5)


def test_step_milestones_are_absolute_epochs_with_warmup():
    lrs = lr_per_epoch(schedule("step", "step", warmup_epochs=2), EPOCHS, SPE)
    np.testing.assert_allclose(lrs[2:11], [0.1, 0.1] + [0.05] * 5 + [0.01] * 2, rtol=1e-6)


def test_step_dtypes_and_variable():
    s = schedule("htd")
    want = htd_lr(7 / SPE)
    for step in (7, np.int64(7), np.int32(7), keras.Variable(7, dtype="int64", trainable=False)):
        assert float(keras.ops.convert_to_numpy(s(step))) == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("name", SCHEDULES)
def test_config_round_trip(name):
    warmup = 0 if name == "onecycle" else 2
    original = schedule(name, "epoch", warmup_epochs=warmup)
    config = original.get_config()
    assert json.loads(json.dumps(config)) == config
    copy = type(original).from_config(config)
    assert copy.get_config() == config
    np.testing.assert_array_equal(evaluate(copy, STEPS), evaluate(original, STEPS))
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(original))
    assert type(revived) is type(original) and revived.get_config() == config


def small_model(lr):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, name="dense")])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=lr, momentum=0.9), loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


@pytest.mark.parametrize("name", SCHEDULES)
def test_saved_model_restores_schedule(name, tmp_path):
    per = "epoch" if name in ("htd", "step") else "step"
    original = schedule(name, per, warmup_epochs=0 if name == "onecycle" else 1)
    model = small_model(original)
    model.optimizer.iterations.assign(23)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    restored = loaded.optimizer._learning_rate
    assert type(restored) is type(original) and restored.get_config() == original.get_config()
    assert int(loaded.optimizer.iterations) == 23
    assert float(loaded.optimizer.learning_rate) == float(model.optimizer.learning_rate)
    assert float(loaded.optimizer.learning_rate) == pytest.approx(
        reference(name, 23, per, 0 if name == "onecycle" else 1), rel=1e-5)
    np.testing.assert_array_equal(evaluate(restored, STEPS), evaluate(original, STEPS))


def test_load_without_htd_registered_raises(tmp_path, monkeypatch):
    model = small_model(schedule("htd"))
    path = tmp_path / "htd.keras"
    model.save(path)
    with monkeypatch.context() as patch:
        # What a process that never imported htd sees: no registered classes.
        registered = keras.saving.get_custom_objects()
        for key in [k for k in registered if k.startswith("cifar10_keras>")]:
            patch.delitem(registered, key)
        with pytest.raises(TypeError, match="Could not locate class 'HTDSchedule'"):
            keras.saving.load_model(path)
        weights_only = keras.saving.load_model(path, compile=False)
        assert not weights_only.compiled
        np.testing.assert_array_equal(weights_only.get_layer("dense").kernel.numpy(),
                                      model.get_layer("dense").kernel.numpy())
    assert isinstance(keras.saving.load_model(path).optimizer._learning_rate, htd.HTDSchedule)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_compiled_training_applies_the_schedule_per_step(jit_compile):
    # loss = mean(x . w) with x = 1 has gradient 1 for every weight, so plain SGD moves each weight
    # by -lr(k) at step k: the weights sum the lr of the steps taken.
    s = make_schedule("htd", base_lr=0.1, epochs=4, steps_per_epoch=3, per="epoch", warmup_epochs=1)
    model = keras.Sequential([keras.Input((4,)),
                              keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=s),
                  loss=lambda y_true, y_pred: keras.ops.mean(y_pred), jit_compile=jit_compile)
    x, y = np.ones((12, 4), "float32"), np.zeros((12, 1), "float32")
    model.fit(x, y, batch_size=4, epochs=4, shuffle=False, verbose=0)
    assert int(model.optimizer.iterations) == 12
    expected = -sum(reference_htd_epoch(k // 3) for k in range(12))
    np.testing.assert_allclose(model.layers[0].kernel.numpy(), np.full((4, 1), expected), rtol=1e-5)


def reference_htd_epoch(epoch):
    # warm-up of 1 epoch to htd_lr(0) over T = 3, then htd_lr(epoch - 1)
    return htd_lr(0, 3, -6, 3) / 2 if epoch == 0 else htd_lr(epoch - 1, 3, -6, 3)


BAD = [
    (dict(name="linear"), "unknown schedule 'linear'; known schedules: step, cosine, htd"),
    (dict(name="htd", bounds=(3.0, -6.0)), "L < U"),
    (dict(name="htd", bounds=(1.0, 1.0)), "L < U"),
    (dict(name="htd", bounds=(1.0,)), "two numbers"),
    (dict(name="step", milestones=[8, 4]), "strictly increasing"),
    (dict(name="step", milestones=[4, 4]), "strictly increasing"),
    (dict(name="step", milestones=[0, 4]), r"in \(0, 12\)"),
    (dict(name="step", milestones=[4, 12]), r"in \(0, 12\)"),
    (dict(name="step", milestones=[2, 4], warmup_epochs=2), r"in \(2, 12\) \(after the warm-up\)"),
    (dict(name="step", milestones=[2.5]), "whole number"),
    (dict(name="step", milestones=[4, 8], factor=[0.5]), "factor has 1 values for 2 milestones"),
    (dict(name="step", milestones=[4], factor=2.0), "factor must be"),
    (dict(name="step", milestones=[4], factor=[0.0]), "each factor must be"),
    (dict(name="cosine", base_lr=-0.1), "base_lr must be"),
    (dict(name="htd", base_lr=0.0), "base_lr must be"),
    (dict(name="cosine", min_lr=-1e-3), "min_lr must be"),
    (dict(name="cosine", min_lr=0.2), "min_lr must be"),
    (dict(name="exponential", gamma=0.0), "gamma must be"),
    (dict(name="exponential", gamma=1.5), "gamma must be"),
    (dict(name="onecycle", pct_start=1.0), "pct_start must be"),
    (dict(name="onecycle", warmup_epochs=1), "warmup_epochs must be 0"),
    (dict(name="htd", per="batch"), "per must be one of step, epoch"),
    (dict(name="htd", warmup_epochs=12), "warmup_epochs must be"),
    (dict(name="htd", warmup_epochs=-1), "warmup_epochs must be"),
    (dict(name="htd", per="epoch", warmup_epochs=1.5), "whole with per='epoch'"),
    (dict(name="htd", epochs=0), "epochs must be a whole number >= 1"),
    (dict(name="htd", steps_per_epoch=2.5), "steps_per_epoch must be"),
    (dict(name="htd", base_lr=float("nan")), "base_lr must be"),
    # 4 x 10**9 steps would wrap the int32 step counter: cosine's lr would restart, silently
    (dict(name="cosine", epochs=4, steps_per_epoch=10**9), r"at most 2,147,483,647 .*got 4 x 1000000000"),
]


@pytest.mark.parametrize("kwargs, message", BAD, ids=[m for _, m in BAD])
def test_bad_values(kwargs, message):
    kwargs = {**dict(base_lr=BASE, epochs=EPOCHS, steps_per_epoch=SPE), **kwargs}
    with pytest.raises(ValueError, match=message) as error:
        make_schedule(kwargs.pop("name"), **kwargs)
    assert "\n" not in str(error.value)


def test_other_schedules_settings_are_ignored():
    # A recipe's step settings must not stop a switch to htd.
    s = make_schedule("htd", base_lr=BASE, epochs=EPOCHS, steps_per_epoch=SPE, milestones=[99, 1],
                      factor=[7.0], min_lr=5.0, gamma=9.0)
    assert isinstance(s, htd.HTDSchedule)


def run(argv):
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("per", ["step", "epoch"])
def test_show_prints_one_row_per_epoch(per):
    code, out, err = run(["show", "--schedule", "htd", "--epochs", "30", "--lr", "0.1",
                          "--htd-bounds", "-4", "2", "--warmup-epochs", "3", "--per", per,
                          "--steps-per-epoch", "7"])
    assert code == 0 and err == ""
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == ["epoch", "lr"] and len(rows) == 30
    assert [int(r["epoch"]) for r in rows] == list(range(30))
    want = lr_per_epoch(make_schedule("htd", base_lr=0.1, epochs=30, steps_per_epoch=7, per=per,
                                      bounds=(-4, 2), warmup_epochs=3), 30, 7)
    np.testing.assert_allclose([float(r["lr"]) for r in rows], want, rtol=1e-7)


def test_show_lenet_milestones():
    code, out, _ = run(["show", "--schedule", "step", "--epochs", "200", "--lr", "0.01",
                        "--lr-milestones", "100", "150", "--lr-factor", "0.5", "0.2"])
    lrs = {int(r["epoch"]): r["lr"] for r in csv.DictReader(io.StringIO(out))}
    assert code == 0
    assert (lrs[0], lrs[99], lrs[100], lrs[149], lrs[150], lrs[199]) == (
        "0.01", "0.01", "0.005", "0.005", "0.001", "0.001")


def test_plot_writes_png(tmp_path):
    out = tmp_path / "lr.png"
    code, stdout, err = run(["plot", "--schedules", "step", "cosine", "htd", "--epochs", "200",
                             "--lr", "0.1", "--out", str(out)])
    assert code == 0, err
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    assert str(out) in stdout


@pytest.mark.parametrize("argv, message", [
    (["show", "--schedule", "htd", "--epochs", "10", "--lr", "0.1", "--htd-bounds", "3", "-6"],
     "L < U"),
    (["show", "--schedule", "nope", "--epochs", "10", "--lr", "0.1"], "invalid choice: 'nope'"),
    (["show", "--epochs", "10", "--lr", "0.1"], "required: --schedule"),
    (["show", "--schedule", "htd", "--lr", "0.1"], "required: --epochs"),
    (["show", "--schedule", "htd", "--epochs", "ten", "--lr", "0.1"], "invalid int value"),
    (["show", "--schedule", "step", "--epochs", "10", "--lr", "0.1", "--lr-milestones", "5", "3"],
     "strictly increasing"),
    (["show", "--schedule", "step", "--epochs", "10", "--lr", "0.1", "--lr-milestones", "3", "5",
      "--lr-factor", "0.1", "0.2", "0.3"], "factor has 3 values"),
    (["show", "--schedule", "cosine", "--epochs", "10", "--lr", "-0.1"], "base_lr must be"),
    (["show", "--schedule", "htd", "--epochs", "10", "--lr", "0.1", "--per", "batch"],
     "invalid choice: 'batch'"),
    (["plot", "--schedules", "htd", "--epochs", "10", "--lr", "0.1", "--out", "/no/such/dir/lr.png"],
     "the folder /no/such/dir does not exist"),
    (["plot", "--epochs", "10", "--lr", "0.1", "--out", "x.png"], "required: --schedules"),
    ([], "required: COMMAND"),
])
def test_bad_arguments_exit_nonzero_with_one_line_error(argv, message):
    code, out, err = run(argv)
    assert code != 0 and out == ""
    last = err.strip().splitlines()[-1]
    assert last.startswith("python -m htd") and "error:" in last and message in last
    assert "Traceback" not in err

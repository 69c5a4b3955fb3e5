"""settings.py: the schema that the command lines, recipes, config.json and the schedule helpers read."""

import argparse
import json

import pytest

import models
import settings
import train
from errors import TrainError
from htd import __main__ as htd_cli
from htd.schedules import make_schedule


def test_every_setting_is_a_flag_of_train_py_and_nothing_else_is():
    parser = train.build_parser()
    parsed = parser.parse_args([])
    dests = {a.dest for a in parser._actions}
    assert set(settings.SETTINGS) <= dests
    assert all(getattr(parsed, name) is None for name in settings.SETTINGS)  # not given: the recipe decides
    assert settings.given(parsed) == {}
    flags = {a.dest: a.option_strings for a in parser._actions}
    assert all(flags[s.name][0] == s.flag for s in settings.SCHEMA)
    given = settings.given(parser.parse_args(["--lr", "0.2", "--no-nesterov", "--mixed-precision", "--seed", "3"]))
    assert given == {"lr": 0.2, "nesterov": False, "mixed_precision": True, "seed": 3}


def test_resolved_settings_are_the_schema_and_every_recipe_names_only_settings():
    s, sources = settings.resolve_settings("lenet")
    assert list(s) == ["model", *settings.SETTINGS] and set(sources) == set(s)
    for name in models.list_models():
        unknown = set(models.get_recipe(name)) - {"source", *settings.SETTINGS}  # source: the recipe's paper
        assert not unknown, f"{name}'s recipe names {sorted(unknown)}, which are not settings"
    with pytest.raises(TrainError, match=r"unknown settings \['lr_decay'\]"):
        settings.resolve_settings("lenet", lr_decay=0.1)


def test_htd_reads_the_same_schedule_flags():
    """`python -m htd show` and train.py parse the schedule flags into the same make_schedule arguments."""
    argv = "--schedule cosine --min-lr 0.001 --warmup-epochs 2 --per epoch".split()
    shown = htd_cli.build_parser().parse_args(["show", "--epochs", "10", "--lr", "0.1", *argv])
    trained = train.build_parser().parse_args([a if a != "--per" else "--schedule-per" for a in argv])
    assert settings.schedule_kwargs(vars(shown)) == settings.schedule_kwargs(settings.given(trained)) == dict(
        min_lr=0.001, warmup_epochs=2, per="epoch")


def test_recipe_flags_and_scaled_milestones():
    s, sources = settings.resolve_settings("resnet20", epochs=100, lr=0.05)
    assert s["lr"] == 0.05 and sources["lr"] == "flag"
    assert s["weight_decay"] == 1e-4 and sources["weight_decay"] == "recipe"
    assert s["lr_milestones"] == [40, 61] and "scaled from 200 to 100" in sources["lr_milestones"]
    s, sources = settings.resolve_settings("resnet20", epochs=100, lr_milestones=[10, 20])
    assert s["lr_milestones"] == [10, 20] and sources["lr_milestones"] == "flag"
    s, _ = settings.resolve_settings("lenet", epochs=4)
    assert s["lr_milestones"] == [2, 3] and s["lr_factor"] == [0.5, 0.2]
    s, _ = settings.resolve_settings("lenet", epochs=2)
    assert s["lr_milestones"] == [1] and s["lr_factor"] == [0.5]


def test_schedule_arguments():
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser, ("schedule", *settings.SCHEDULE_SETTINGS))
    empty = parser.parse_args([])
    for dest in ("schedule", "lr_milestones", "lr_factor", "htd_bounds", "warmup_epochs", "min_lr",
                 "lr_gamma", "schedule_per"):
        assert getattr(empty, dest) is None
    assert settings.schedule_kwargs(vars(empty)) == {}
    full = parser.parse_args(
        "--schedule step --lr-milestones 100 150 --lr-factor 0.5 0.2 --htd-bounds -4 2 "
        "--warmup-epochs 5 --min-lr 0.001 --lr-gamma 0.9 --schedule-per epoch".split())
    kwargs = settings.schedule_kwargs(vars(full))
    assert kwargs == dict(milestones=[100, 150], factor=[0.5, 0.2], bounds=(-4.0, 2.0),
                          warmup_epochs=5, min_lr=0.001, gamma=0.9, per="epoch")
    assert settings.schedule_kwargs(vars(parser.parse_args(["--lr-factor", "0.1"]))) == dict(factor=0.1)
    assert make_schedule(full.schedule, base_lr=0.1, epochs=200, steps_per_epoch=10,
                         **kwargs).milestones == [100, 150]


def test_a_schedule_flag_that_the_schedule_does_not_read_is_refused():
    """--lr-milestones with --schedule cosine would be recorded in config.json and change nothing."""
    for schedule, flag, value in [("cosine", "lr_milestones", [5]), ("htd", "lr_factor", [0.5]),
                                  ("step", "htd_bounds", [-4.0, 4.0]), ("htd", "min_lr", 0.001),
                                  ("cosine", "lr_gamma", 0.9)]:
        with pytest.raises(TrainError, match=f"--{flag.replace('_', '-')} is read by the .* schedule only, "
                                             f"not by the schedule {schedule}; leave it out"):
            settings.check_schedule_flags(["schedule", flag], [schedule])
    # the flags every schedule reads, and those the schedule reads, stay accepted
    settings.check_schedule_flags(["schedule", "min_lr", "warmup_epochs", "schedule_per"], ["cosine"])
    settings.check_schedule_flags(["lr_milestones", "lr_factor"], ["step"])
    # a run's recorded settings hold every schedule's values; resolving them back is no command line
    recorded, _ = settings.resolve_settings("resnet20", schedule="cosine")
    s, _ = settings.resolve_settings("resnet20", **{k: v for k, v in recorded.items() if k != "model"})
    assert s == recorded


def test_train_py_and_htd_refuse_an_unread_schedule_flag_in_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert train.main(["--model", "lenet", "--schedule", "cosine", "--lr-milestones", "5", "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --lr-milestones is read by the step schedule only") and err.count("\n") == 1
    assert not run.exists()
    assert htd_cli.main(["show", "--schedule", "step", "--epochs", "10", "--lr", "0.1", "--min-lr", "0.01"]) == 2
    assert htd_cli.main(["plot", "--schedules", "cosine", "step", "--epochs", "10", "--lr", "0.1",
                         "--htd-bounds", "-4", "4", "--out", str(tmp_path / "lr.png")]) == 2
    assert htd_cli.main(["compare", "--model", "lenet", "--schedules", "cosine", "htd", "--lr-milestones", "5",
                         "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert [line.split(": error: ")[1].split(" is read")[0] for line in err] == ["--min-lr", "--htd-bounds",
                                                                                "--lr-milestones"]
    assert "not by the schedules cosine, step" in err[1] and "not by the schedules cosine, htd" in err[2]
    assert not (tmp_path / "lr.png").exists() and not (tmp_path / "cmp").exists()


def test_htd_compare_gives_a_schedule_flag_to_the_schedules_that_read_it(tiny_cifar, tmp_path):
    out = tmp_path / "cmp"
    assert htd_cli.main(["compare", "--model", "lenet", "--schedules", "step", "cosine", "--epochs", "1",
                         "--val-split", "40", "--batch-size", "50", "--lr-factor", "0.3", "--min-lr", "0.001",
                         "--data-dir", str(tiny_cifar[0]), "--out", str(out)]) == 0
    step = json.loads((out / "runs" / "step-seed0" / "config.json").read_text())["settings"]
    cosine = json.loads((out / "runs" / "cosine-seed0" / "config.json").read_text())["settings"]
    recipe, _ = settings.resolve_settings("lenet", epochs=1)
    assert step["lr_factor"] == [0.3] and step["min_lr"] == recipe["min_lr"]
    assert cosine["min_lr"] == 0.001 and cosine["lr_factor"] == recipe["lr_factor"] != [0.3]
    # one run per schedule: its accuracy alone, no "± 0.00" (a single run's spread is unknown, not 0)
    metrics = json.loads((out / "runs" / "step-seed0" / "metrics.json").read_text())
    (step_row,) = [line for line in (out / "results.md").read_text().splitlines() if line.startswith("| step |")]
    assert step_row.split(" | ")[2:4] == [f"{metrics['test_accuracy'] * 100:.2f}", f"{metrics['val_accuracy'] * 100:.2f}"]

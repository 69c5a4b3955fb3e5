"""settings.py: the schema that the command lines, recipes, config.json and the schedule helpers read."""

import argparse

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



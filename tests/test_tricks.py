import csv

import pytest

from settings import resolve_settings
from tricks import lenet_ablation as ablation


def test_each_variant_adds_exactly_one_thing():
    names = list(ablation.VARIANTS)
    assert names[:4] == ["base", "dp", "dp_da", "dp_da_wd"]
    for name, (parent, change, _) in ablation.VARIANTS.items():
        if parent is None:
            continue
        mine, theirs = ablation.variant_overrides(name), ablation.variant_overrides(parent)
        assert [k for k in mine if mine[k] != theirs.get(k)] == list(change) and len(change) == 1


def test_base_really_has_none_of_the_tricks():
    settings, _ = resolve_settings("lenet", **ablation.variant_overrides("base"))
    assert settings["preprocess"] == "scale" and settings["augment"] == "none" and settings["weight_decay"] == 0
    full, _ = resolve_settings("lenet", **ablation.variant_overrides("dp_da_wd"))
    assert full["preprocess"] == "standardize" and full["augment"] == "standard" and full["weight_decay"] == 1e-4
    reference, _ = resolve_settings("lenet", **ablation.variant_overrides("dp_da_shift_wd"))
    assert reference["augment"] == "shift" and reference["weight_decay"] == 2e-4
    assert reference["preprocess"] == "standardize"
    with pytest.raises(ValueError, match="unknown variant 'bn'"):
        ablation.variant_overrides("bn")


def test_series_writes_reports_and_resumes(tiny_cifar, tmp_path, capsys):
    root, _ = tiny_cifar
    args = ["--data-dir", str(root), "--out", str(tmp_path), "--epochs", "1", "--val-split", "40",
            "--batch-size", "32"]
    assert ablation.main(args) == 0
    for name in ("results.csv", "results.md", "curves.png", "bars.png"):
        assert (tmp_path / name).stat().st_size > 0
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["variant"] for r in rows] == list(ablation.DEFAULT_VARIANTS)
    assert all(r["runs"] == "1" and r["epochs"] == "1" for r in rows)
    assert (tmp_path / "results.md").read_text().count("\n") == 2 + len(rows)
    checkpoints = sorted((tmp_path / "runs").glob("*/last.keras"))
    assert len(checkpoints) == 4
    stamps = [p.stat().st_mtime_ns for p in checkpoints]
    capsys.readouterr()
    assert ablation.main(args) == 0
    assert capsys.readouterr().out.count("already finished") == 4
    assert [p.stat().st_mtime_ns for p in checkpoints] == stamps

    (tmp_path / "results.md").unlink()
    (tmp_path / "results.md").mkdir()  # a report that cannot be written: one line, the runs kept
    assert ablation.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot write {tmp_path / 'results.md'}: ") and "\n" not in err
    assert "the same command writes the reports without training again" in err
    assert [p.stat().st_mtime_ns for p in checkpoints] == stamps
    assert not list(tmp_path.glob(".*.tmp"))


def test_bad_flags_leave_no_output_folder(tmp_path, capsys):
    out = tmp_path / "out"
    assert ablation.main(["--out", str(out), "--epochs", "0"]) == 2
    assert ablation.main(["--out", str(out), "--seeds", "-1"]) == 2
    err = capsys.readouterr().err
    assert "epochs must be a positive whole number" in err and "seed must be a whole number from 0" in err
    assert not out.exists()

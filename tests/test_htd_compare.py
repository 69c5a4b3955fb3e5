import csv

from htd.__main__ import main


def test_compare_writes_table_and_chart_and_resumes(tiny_cifar, tmp_path, capsys):
    root, _ = tiny_cifar
    args = ["compare", "--model", "lenet", "--schedules", "step", "cos", "htd", "--seeds", "0", "1",
            "--epochs", "2", "--data-dir", str(root), "--out", str(tmp_path), "--val-split", "40",
            "--batch-size", "32", "--htd-bounds", "-4", "4"]
    assert main(args) == 0
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["variant"] for r in rows] == ["step", "cosine", "htd"]
    assert all(r["runs"] == "2" and r["epochs"] == "2" for r in rows)
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert "| htd |" in (tmp_path / "results.md").read_text()
    htd_config = (tmp_path / "runs" / "htd-seed1" / "config.json").read_text()
    assert '"schedule": "htd"' in htd_config and '"htd_bounds": [\n      -4.0,\n      4.0\n    ]' in htd_config
    capsys.readouterr()
    assert main(args) == 0
    assert capsys.readouterr().out.count("already finished") == 6


def test_compare_reports_bad_input_in_one_line(tmp_path, capsys):
    assert main(["compare", "--model", "nonet", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "error: unknown model 'nonet'" in err and err.count("\n") == 1


def test_bad_flags_leave_no_output_folder(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["compare", "--model", "lenet", "--epochs", "0", "--out", str(out)]) == 2
    assert main(["compare", "--model", "lenet", "--seeds", "1", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "epochs must be a positive whole number" in err and "seeds must differ" in err
    assert not out.exists()

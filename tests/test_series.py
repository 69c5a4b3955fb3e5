"""series.run_grid (train.py --seeds, the ablation, the schedule comparison): every existing run
folder is checked before the first run trains, and a series without a validation split reports
none rather than NaN."""

import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

import errors
import train
from cifar_files import write_cifar_folder
from htd.__main__ import main as htd_main

TINY = ["--model", "lenet", "--epochs", "1", "--val-split", "40", "--batch-size", "50"]


@pytest.fixture(scope="module")
def other_data(tmp_path_factory):
    """Another tiny CIFAR-10: other images, 30 a class."""
    root = tmp_path_factory.mktemp("other-cifar")
    write_cifar_folder(root, train_per_class=30, seed=5)
    return root


def one_line_error(capsys):
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def trained(out):
    return sorted(p.name for p in (out / "runs").iterdir())


def test_a_series_refuses_a_finished_run_of_other_data_before_training(tiny_cifar, other_data, tmp_path, capsys):
    out = tmp_path / "series"
    assert train.main([*TINY, "--data-dir", str(tiny_cifar[0]), "--seeds", "0", "--run-dir", str(out)]) == 0
    capsys.readouterr()
    assert train.main([*TINY, "--data-dir", str(other_data), "--seeds", "0", "1", "--run-dir", str(out)]) == 2
    assert "seed0 was trained on other data" in one_line_error(capsys)
    assert trained(out) == ["lenet-seed0"]  # seed 1 was not trained on the way to the refusal


def test_a_changed_setting_is_refused_before_the_other_runs_train(tiny_cifar, tmp_path, capsys):
    out = tmp_path / "series"
    data = ["--data-dir", str(tiny_cifar[0]), "--run-dir", str(out)]
    assert train.main([*TINY, *data, "--seeds", "1"]) == 0
    capsys.readouterr()
    assert train.main([*TINY, "--epochs", "2", *data, "--seeds", "0", "1"]) == 2  # the last --epochs counts
    assert "seed1 holds a run with other settings (epochs: 1 there, 2 now;" in one_line_error(capsys)
    assert trained(out) == ["lenet-seed1"]


def test_a_finished_run_without_its_history_is_refused_before_training(tiny_cifar, tmp_path, capsys):
    out = tmp_path / "series"
    data = ["--data-dir", str(tiny_cifar[0]), "--run-dir", str(out)]
    assert train.main([*TINY, *data, "--seeds", "1"]) == 0
    (out / "runs" / "lenet-seed1" / "history.csv").unlink()
    capsys.readouterr()
    assert train.main([*TINY, *data, "--seeds", "0", "1"]) == 2
    assert "history.csv is missing or damaged" in one_line_error(capsys)
    assert trained(out) == ["lenet-seed1"]


def test_without_a_validation_split_the_summary_says_so(tiny_cifar, tmp_path, capsys):
    out = tmp_path / "series"
    argv = [*TINY, "--val-split", "0", "--data-dir", str(tiny_cifar[0]), "--seeds", "0", "1", "--run-dir", str(out)]
    assert train.main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())  # strict JSON: no NaN in it
    assert summary["val_mean"] is None and summary["runs"] == 2
    text = (out / "summary.md").read_text()
    assert "validation accuracy n/a %" in text and "on the last epoch's model" in text and "nan" not in text
    shutil.rmtree(out / "runs" / "lenet-seed0")  # the comparison's chart has no validation curve to draw
    assert htd_main(["compare", "--model", "lenet", "--schedules", "step", "--seeds", "0", "--epochs", "1",
                     "--val-split", "0", "--batch-size", "50", "--data-dir", str(tiny_cifar[0]),
                     "--out", str(tmp_path / "htd")]) == 0
    assert "| n/a |" in (tmp_path / "htd" / "results.md").read_text()


def test_htd_plot_writes_the_file_it_names(tmp_path, capsys):
    assert htd_main(["plot", "--schedules", "htd", "--epochs", "10", "--lr", "0.1", "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert htd_main(["plot", "--schedules", "htd", "--epochs", "10", "--lr", "0.1",
                     "--out", str(tmp_path / "none" / "lr.png")]) == 2
    assert f"the folder {tmp_path / 'none'} does not exist" in capsys.readouterr().err
    assert htd_main(["plot", "--schedules", "htd", "--epochs", "10", "--lr", "0.1", "--out", str(tmp_path / "lr")]) == 0
    assert capsys.readouterr().out == f"wrote {tmp_path / 'lr.png'}\n" and (tmp_path / "lr.png").is_file()


def test_a_chart_is_replaced_whole_or_not_at_all(tmp_path, capsys, monkeypatch):
    """Every chart goes through runfolder.save_figure: a save that fails half-way (here, Ctrl-C after
    the first bytes) leaves the old file as it was and no temporary beside it."""
    path = tmp_path / "lr.png"
    assert htd_main(["plot", "--schedules", "htd", "--epochs", "10", "--lr", "0.1", "--out", str(path)]) == 0
    before = path.read_bytes()

    def interrupted(self, fname, **kwargs):
        Path(fname).write_bytes(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr("matplotlib.figure.Figure.savefig", interrupted)
    assert htd_main(["plot", "--schedules", "step", "--epochs", "10", "--lr", "0.1", "--out", str(path)]) == 130
    assert capsys.readouterr().err.strip() == "interrupted"
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["lr.png"]


def _ablation(root, out):
    from tricks.lenet_ablation import main
    return main(["--data-dir", str(root), "--out", str(out), "--epochs", "1", "--variants", "base", "dp",
                 "--val-split", "40", "--batch-size", "50"])


def _compare(root, out):
    return htd_main(["compare", *TINY, "--schedules", "step", "htd", "--data-dir", str(root), "--out", str(out)])


def _zoo(root, out):
    from results.__main__ import main
    return main(["zoo", "--models", "lenet", "--seeds", "0", "1", "--epochs", "1", "--val-split", "40",
                 "--batch-size", "50", "--data-dir", str(root), "--runs-dir", str(out / "runs"),
                 "--out", str(out / "table")])


@pytest.mark.parametrize("command", [_ablation, _compare, _zoo], ids=["ablation", "htd-compare", "zoo"])
def test_ctrl_c_in_a_series_says_how_to_resume_and_the_rerun_keeps_the_finished_run(command, tiny_cifar, tmp_path,
                                                                                     monkeypatch, capsys):
    import loop
    real_train, calls = loop.train, []

    def interrupted_on_the_second_run(*args, **kwargs):
        calls.append(kwargs["run_dir"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr(loop, "train", interrupted_on_the_second_run)
    out = tmp_path / "series"
    assert command(tiny_cifar[0], out) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines() == [errors.SERIES_INTERRUPTED]
    monkeypatch.setattr(loop, "train", real_train)
    assert command(tiny_cifar[0], out) == 0
    assert capsys.readouterr().out.count("already finished") == 1  # the first run, read back


CHILD = ("import signal, sys, time\n"
         "signal.signal(signal.SIGINT, lambda *a: sys.exit(130))\n"
         "open(sys.argv[1], 'w').close()\n"
         "time.sleep(60)\n")


@pytest.mark.parametrize("code", [0, 3])
def test_run_child_returns_the_childs_exit_status(code):
    assert errors.run_child([sys.executable, "-c", f"import sys; sys.exit({code})"]) == code


def test_a_child_interrupted_by_ctrl_c_raises_keyboard_interrupt_in_its_parent():
    with pytest.raises(KeyboardInterrupt):
        errors.run_child([sys.executable, "-c", f"import sys; sys.exit({errors.INTERRUPTED})"])


def test_a_parent_interrupted_alone_waits_for_its_child_then_passes_ctrl_c_on(tmp_path):
    """Ctrl-C sent to the parent only (a terminal sends it to both): the child is sent SIGINT after the
    grace time, is waited for, and the parent raises KeyboardInterrupt."""
    started = tmp_path / "started"

    def interrupt_the_parent_once_the_child_runs():
        deadline = time.monotonic() + 60
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_the_parent_once_the_child_runs, daemon=True).start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        errors.run_child([sys.executable, "-c", CHILD, str(started)], grace_seconds=0.2)
    assert started.exists() and time.monotonic() - t0 < 50  # not the child's 60 s sleep


def test_an_out_folder_holds_one_commands_series_of_one_model(tiny_cifar, tmp_path, capsys):
    import series
    from results.__main__ import main as results_main

    out = tmp_path / "series"
    out.mkdir()
    series.check_owner(out, "tricks ablation", "lenet")
    assert json.loads((out / errors.SERIES_OWNER_FILE).read_text()) == {"series": "tricks ablation", "model": "lenet"}
    series.check_owner(out, "tricks ablation", "lenet")  # the same series again: its own folder
    for kind, model in (("htd compare", "lenet"), ("tricks ablation", "resnet20")):
        with pytest.raises(errors.TrainError, match=f"holds the tricks ablation series of lenet, not {kind} of "):
            series.check_owner(out, kind, model)
    # on the command line, before anything trains: another command's series would overwrite its reports
    assert htd_main(["compare", "--out", str(out), "--schedules", "step", "--data-dir", str(tiny_cifar[0]), *TINY]) == 2
    assert "holds the tricks ablation series of lenet, not htd compare of lenet" in capsys.readouterr().err
    assert not (out / "runs").exists()
    # nor is a series' OUT a results table's, or the other way round
    assert results_main(["build", "--out", str(out)]) == 2
    assert f"--out {out} holds a series (series.json)" in one_line_error(capsys)
    (tmp_path / "table").mkdir()
    (tmp_path / "table" / "table.csv").write_text("")
    with pytest.raises(errors.TrainError, match="holds a results table"):
        series.check_owner(tmp_path / "table", "htd compare", "lenet")
    (out / errors.SERIES_OWNER_FILE).write_text("[")
    with pytest.raises(errors.TrainError, match="series.json is damaged"):
        series.check_owner(out, "tricks ablation", "lenet")

"""The arithmetic of bench/profile_step.py, bench/side_by_side.py, bench/epoch_time.py and
bench/epoch_parts.py (the measurements run in bench/), bench/train_speed.py and
bench/pipeline_speed.py on a few steps, bench/cifar_subset.py, and bench/gpu_check.py on a CPU."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import data
import distribute
from bench import (cifar_subset, epoch_parts, epoch_time, gpu_check, pipeline_speed, profile_step, side_by_side,
                   train_speed)
from conftest import ROOT


def kernel(start, duration):
    return ("scope", "Op", start, duration)


def test_busy_time_is_the_union_of_overlapping_kernels():
    assert profile_step.busy_time([]) == 0
    # [0, 10) and [5, 12) overlap -> 12; [20, 25) apart -> 5; [21, 22) inside it -> 0
    assert profile_step.busy_time([kernel(20, 5), kernel(0, 10), kernel(21, 1), kernel(5, 7)]) == 17
    assert profile_step.busy_time([kernel(0, 10), kernel(10, 3)]) == 13  # touching, not overlapping


def test_kernels_are_attributed_to_their_layer_loss_optimizer_or_input():
    layers = {"conv1": "Conv2D", "bn1": "BatchNormalization", "conv2d_1": "Conv2D"}
    classify = lambda scope, op="Mul": profile_step.classify(scope, op, layers, "sgd")  # noqa: E731
    assert classify("StatefulPartitionedCall/resnet_1/conv1_1/convolution") == ("Conv2D", "forward")
    assert classify("StatefulPartitionedCall/gradient_tape/resnet_1/bn1_1/FusedBatchNormGradV3") == \
        ("BatchNormalization", "backward")
    assert classify("StatefulPartitionedCall/model_1/conv2d_1/Relu") == ("Conv2D", "forward")
    assert classify("StatefulPartitionedCall/compile_loss/sparse_categorical_crossentropy/Sum") == ("loss", "forward")
    assert classify("StatefulPartitionedCall/sgd_1/AssignSubVariableOp") == ("optimizer", "")
    assert classify("StatefulPartitionedCall/IteratorGetNext", "IteratorGetNext") == \
        ("input (waiting for the batch)", "")
    assert classify("StatefulPartitionedCall/Add_2") == ("other", "forward")


def test_variants_split_into_flags_and_environment():
    assert side_by_side.split_variant("") == ([], {})
    assert side_by_side.split_variant("--keras-batch-norm TF_ENABLE_ONEDNN_OPTS=0 --steps-per-execution 1") == \
        (["--keras-batch-norm", "--steps-per-execution", "1"], {"TF_ENABLE_ONEDNN_OPTS": "0"})
    assert side_by_side.split_variant("--lr=0.1") == (["--lr=0.1"], {})  # a flag with a value stays a flag


def test_epoch_time_variants_name_a_script_flags_and_environment(tmp_path):
    assert epoch_time.split("") == (ROOT / "train.py", [], {})
    other = tmp_path / "train.py"
    assert epoch_time.split(f"{other} --steps-per-execution 1 TF_ENABLE_ONEDNN_OPTS=0") == \
        (other.resolve(), ["--steps-per-execution", "1"], {"TF_ENABLE_ONEDNN_OPTS": "0"})
    with pytest.raises(ValueError, match="more than one script"):
        epoch_time.split("a/train.py b/train.py")


def test_epoch_wall_times_are_the_gaps_between_epoch_lines():
    assert epoch_time.epoch_walls([10.0, 16.5, 22.0, 32.5]) == [6.5, 5.5, 10.5]
    assert epoch_time.epoch_walls([3.0]) == []
    for line, ends_epoch in (("352/352 - 6s - 16ms/step - accuracy: 0.4242", True), ("Epoch 2/4", False),
                             ("Finished /tmp/run: val accuracy 0.51", False)):
        assert bool(epoch_time.EPOCH_END.match(line)) is ends_epoch


def test_steady_rate_leaves_out_the_first_and_last_executions():
    # executions of 16 steps of 128 images end at steps 15, 31, 47, 63; the last is left out, and
    # the rate runs from the end of the first to the end of the next-to-last: 32 steps in 0.5 s
    ticks = [(15, 10.0), (31, 10.25), (47, 10.5), (63, 99.0)]
    assert epoch_parts.steady_rate(ticks, 128) == 32 * 128 / 0.5
    assert epoch_parts.steady_rate(ticks[:2], 128) is None


def test_epoch_time_summary_pools_runs_and_counts_stalls_and_epochs_within_the_goal():
    runs = [{"fit": [5.0, 6.5], "wall": [5.3, 10.6]}, {"fit": [5.5, 5.9], "wall": [5.8, 6.1]}]
    summary = epoch_time.summarise(runs, goal=6.0)
    assert summary["epochs"] == 4
    assert summary["fit_median"] == 5.7 and summary["wall_median"] == (5.8 + 6.1) / 2
    assert summary["wall_mean"] == (5.3 + 10.6 + 5.8 + 6.1) / 4
    assert (summary["fit_within_goal"], summary["wall_within_goal"]) == (3, 2)
    assert summary["stalls"] == 1  # 10.6 - 6.5 > 2 s; the others differ by 0.3


def test_rates_keep_three_significant_figures_below_a_hundred():
    assert [train_speed.rate(x) for x in (21416.27, 338.04, 99.87, 1.7123, 0.13749, 0.0)] == \
        [21416.3, 338.0, 99.9, 1.71, 0.137, 0.0]


def test_train_speed_measures_train_py_step_and_names_the_backend():
    result = train_speed.measure("lenet", batch=8, steps=2, warmup=1, steps_per_execution=1)
    assert (result["backend"], result["jit"], result["batch_norm"], result["steps_timed"]) == ("tensorflow", False,
                                                                                             "fused", 2)
    assert result["img_per_s"] > 0 and result["framework"].startswith("keras 3.")
    assert len(result["execution_img_per_s"]) == 2  # one rate per timed execution (one step each here)
    assert result["batches"] == "precomputed"  # train.py's choice on the CPU alone
    streamed = train_speed.measure("lenet", batch=8, steps=2, warmup=1, steps_per_execution=1, batches="streamed")
    assert streamed["batches"] == "streamed" and streamed["img_per_s"] > 0


def test_train_speed_trains_on_the_real_sets_first_images_in_order(tiny_cifar, tmp_path, capsys):
    root, (x_train, y_train, _, _) = tiny_cifar
    images, labels, what = train_speed.images_and_labels(250, seed=0, data_dir=root)
    np.testing.assert_array_equal(images[:200], x_train)
    np.testing.assert_array_equal(images[200:], x_train[:50])  # from the first again past the 200
    np.testing.assert_array_equal(labels, np.concatenate([y_train, y_train[:50]]))
    assert what.startswith("the first 200 training images of ")
    result = train_speed.measure("lenet", batch=8, steps=2, warmup=1, steps_per_execution=1, data_dir=root)
    assert result["images"].startswith("the first 24 training images of ") and result["img_per_s"] > 0
    assert train_speed.measure("lenet", batch=8, steps=2, warmup=1, steps_per_execution=1)["images"] == "random uint8"
    with pytest.raises(SystemExit, match="^error: ") as e:
        train_speed.main(["--model", "lenet", "--steps", "2", "--data-dir", str(tmp_path / "none")])
    assert "\n" not in str(e.value)


def test_a_measurement_too_big_for_memory_is_refused_before_anything_is_made(capsys, monkeypatch):
    from results import __main__ as results_cli
    for argv in (["--model", "lenet", "--batch", "10000000", "--steps", "2"],
                 ["--model", "lenet", "--batch", "128", "--steps", "100000"]):
        with pytest.raises(SystemExit) as e:
            train_speed.main(argv)
        assert "images, more than the 250,000" in str(e.value) and "\n" not in str(e.value)
    capsys.readouterr()
    assert results_cli.main(["throughput", "--models", "lenet", "--batch", "10000000", "--steps", "2"]) != 0
    err = capsys.readouterr().err.strip()
    assert "more than the 250,000" in err and "\n" not in err and "Traceback" not in err
    monkeypatch.setattr(train_speed, "MAX_IMAGES", 24)  # the bound itself is allowed
    assert train_speed.prepare("lenet", batch=8, steps=2, warmup=1, steps_per_execution=1)[2]["steps_timed"] == 2
    with pytest.raises(SystemExit, match="1 \\+ 3 steps .* are 32 images, more than the 24"):
        train_speed.prepare("lenet", batch=8, steps=3, warmup=1, steps_per_execution=1)


def test_benchmarks_refuse_what_needs_tensorflow_on_another_backend(monkeypatch):
    monkeypatch.setattr(train_speed.keras.backend, "backend", lambda: "jax")
    monkeypatch.setattr(distribute, "BACKEND", "torch")  # the loop's own refusals, before any device is touched
    with pytest.raises(SystemExit, match="--devices 2: Keras' PyTorch backend trains on one device"):
        train_speed.prepare("lenet", batch=8, steps=2, warmup=1, devices=2)
    with pytest.raises(SystemExit, match="profile_step.py reads TensorFlow's profiler trace"):
        profile_step.profile("lenet", batch=8, steps=2, warmup=1, top=3)


FAKE_TRAIN = '''
import argparse, json, sys, time
from pathlib import Path
import numpy as np
p = argparse.ArgumentParser()
for flag in ("--model", "--epochs", "--data-dir", "--run-dir", "--exit"):
    p.add_argument(flag)
a = p.parse_args()
if a.exit:
    print("error: told to fail", file=sys.stderr)
    sys.exit(int(a.exit))
held = np.ones(300 * 2**20 // 8)  # 300 MiB, touched
rows = []
for epoch in range(int(a.epochs)):
    time.sleep(0.05 * (epoch + 1))
    print(f"352/352 - 1s - 3ms/step - accuracy: 0.5", flush=True)
    rows.append(f"{epoch + 1},{0.5 + epoch}")
run = Path(a.run_dir)
(run / "history.csv").write_text("epoch,epoch_seconds\\n" + "\\n".join(rows) + "\\n")
(run / "metrics.json").write_text(json.dumps({"val_accuracy": 0.25}))
'''


def test_epoch_time_runs_a_fresh_process_and_reads_its_epochs_and_peak_memory(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(FAKE_TRAIN)
    r = epoch_time.run_once(script, "lenet", 3, tmp_path, [], {})
    assert r["fit"] == [1.5, 2.5] and r["val_accuracy"] == 0.25  # epochs 2.. of history.csv
    assert len(r["wall"]) == 2 and all(w > 0.05 for w in r["wall"])
    assert r["first"] > 0.05 and 300 < r["peak_rss_mib"] < 2000
    with pytest.raises(SystemExit, match="exit status 3 from .*: error: told to fail"):
        epoch_time.run_once(script, "lenet", 3, tmp_path, ["--exit", "3"], {})


@pytest.mark.parametrize("batches", ["streamed", "precomputed"])
def test_pipeline_speed_counts_every_image_of_each_epoch(batches, capsys, monkeypatch):
    counted = []
    reduce = pipeline_speed.tf.data.Dataset.reduce

    def counting(self, *args):
        counted.append(int(reduce(self, *args)))
        return counted[-1]

    monkeypatch.setattr(pipeline_speed.tf.data.Dataset, "reduce", counting)
    pipeline_speed.main(["--images", "300", "--batch", "64", "--repeats", "2", "--batches", batches])
    result = json.loads(capsys.readouterr().out)
    assert counted == [300] * 3 and result["batches"] == batches and len(result["runs"]) == 2
    assert result["img_per_s"] > 0 and ("setup_seconds" in result) == (batches == "precomputed")


def test_pipeline_speed_refuses_what_precomputed_epochs_do_not_compute(capsys):
    with pytest.raises(SystemExit):
        pipeline_speed.main(["--images", "300", "--augment", "kaggle", "--batches", "precomputed"])
    assert "--batches precomputed computes --augment standard or none" in capsys.readouterr().err


def test_cifar_subset_keeps_the_first_images_of_each_batch(real_archive, tmp_path):
    cifar_subset.main(["--data-dir", str(real_archive), "--out", str(tmp_path), "--train-per-batch", "30",
                       "--test", "100"])
    full, cut = data.load_cifar10(real_archive, verbose=False), data.load_cifar10(tmp_path, verbose=False)
    rows = np.concatenate([np.arange(30) + i * 10_000 for i in range(5)])
    np.testing.assert_array_equal(cut.x_train, full.x_train[rows])
    np.testing.assert_array_equal(cut.y_train, full.y_train[rows])
    np.testing.assert_array_equal(cut.x_test, full.x_test[:100])
    np.testing.assert_array_equal(cut.y_test, full.y_test[:100])
    with pytest.raises(SystemExit) as e:  # the first 20 test images miss two classes: refused, nothing left
        cifar_subset.main(["--data-dir", str(real_archive), "--out", str(tmp_path / "few"), "--test", "20"])
    assert e.value.code == 2 and not (tmp_path / "few" / "cifar-10-batches-py").exists()


def test_cifar_subset_refuses_a_set_that_is_not_the_full_one(tiny_cifar, tmp_path, capsys):
    root, _ = tiny_cifar
    with pytest.raises(SystemExit) as e:
        cifar_subset.main(["--data-dir", str(root), "--out", str(tmp_path)])
    assert e.value.code == 2 and "training images, not the official set's 50000" in capsys.readouterr().err
    assert not (tmp_path / "cifar-10-batches-py").exists()


# `python -m bench.gpu_check`, with TensorFlow unimportable as on the GPU machine, which has none.
GPU_CHECK = ("import runpy, sys; sys.modules['tensorflow'] = None; "
             "runpy.run_module('bench.gpu_check', run_name='__main__', alter_sys=True)")


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_gpu_check_trains_and_measures_both_precisions_on_jax_without_tensorflow(tiny_cifar, tmp_path):
    """bench/gpu_check.py as bench/gpu_check.sh runs it, here on a CPU and with LeNet for speed. Mixed
    precision runs where the CPU computes bfloat16 natively and is skipped, with the reason, elsewhere."""
    root, _ = tiny_cifar
    out = tmp_path / "out"
    env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "KERAS_BACKEND": "jax", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", GPU_CHECK, out, "--data-dir", root, "--model", "lenet", "--epochs",
                             "1", "--steps", "2", "--warmup", "1", "--val-split", "40", "--batch-size", "32"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.md"]
    report = json.loads((out / "gpu_check.json").read_text())
    assert {"jax", "keras", "numpy"} <= set(report["versions"]) and report["devices"] and report["default_backend"]
    fp32 = report["precisions"]["fp32"]
    assert 0 <= fp32["test_accuracy"] <= 1 and 0 <= fp32["val_accuracy"] <= 1
    assert (fp32["epochs"], fp32["train_images"], fp32["val_images"], fp32["test_images"]) == (1, 160, 40, 40)
    assert fp32["execution"]["backend"] == "jax" and fp32["execution"]["precision"] == "float32"
    assert fp32["train_images_per_second"] > 0 and fp32["throughput"]["img_per_s"] > 0 and fp32["wall_seconds"] > 0
    assert [row["epoch"] for row in fp32["history"]] == [1]
    mixed = report["precisions"]["mixed"]
    if "skipped" in mixed:
        assert mixed["skipped"].startswith("--mixed-precision")
    else:
        assert mixed["execution"]["precision"].startswith("mixed_") and mixed["throughput"]["img_per_s"] > 0
    table = (out / "gpu_check.md").read_text()
    assert "| fp32 | float32 |" in table and "| mixed | " in table


def test_gpu_check_records_refused_mixed_precision_as_skipped(tmp_path, monkeypatch):
    import train

    def refusing(argv):
        print("error: --mixed-precision: no GPU here", file=sys.stderr)
        return 2

    monkeypatch.setattr(train, "main", refusing)
    a = gpu_check.parse([str(tmp_path), "--data-dir", str(tmp_path)])
    assert gpu_check.train_once(a, "mixed", tmp_path) == {"skipped": "--mixed-precision: no GPU here"}
    assert gpu_check.train_once(a, "fp32", tmp_path) == {  # refused settings, not a precision the machine lacks
        "failed": "train.py exit status 2: error: --mixed-precision: no GPU here", "exit_status": 2}
    report = {"model": "lenet", "machine": "here", "default_backend": "cpu", "devices": [{"kind": "cpu"}],
              "versions": {"jax": "0", "keras": "3", "numpy": "2", "python": "3"}, "command": "c", "data": "d",
              "epochs": 1, "batch_size": 32, "steps": 2, "warmup": 1,
              "precisions": {"mixed": {"skipped": "--mixed-precision: no GPU here"}}}
    table = gpu_check.markdown(report)
    assert "| fp32 | not run |" in table and "| mixed | skipped: --mixed-precision: no GPU here |" in table


def test_gpu_check_refuses_bad_input_with_one_line(tiny_cifar, tmp_path, monkeypatch, capsys):
    root, _ = tiny_cifar
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    assert gpu_check.main([str(tmp_path / "out"), "--data-dir", str(root)]) == 2
    assert capsys.readouterr().err.startswith("error: KERAS_BACKEND is tensorflow; this checks train.py on JAX")
    monkeypatch.setenv("KERAS_BACKEND", "jax")  # the checks below come before Keras loads
    (tmp_path / "file").write_text("")
    assert gpu_check.main([str(tmp_path / "file" / "out"), "--data-dir", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: OUT {tmp_path / 'file' / 'out'} is not a writable folder") and err.count("\n") == 1
    assert gpu_check.main([str(tmp_path / "out"), "--data-dir", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --data-dir {tmp_path / 'missing'}: ") and err.count("\n") == 1


def test_side_by_side_passes_its_flags_to_each_side_alternating(monkeypatch, tmp_path, capsys):
    reference = tmp_path / "torch_reference.py"
    reference.write_text("")
    commands = []

    def fake_run(command, env=None):
        commands.append((command, env))
        if command[2] == "bench.flops":
            return {"train_gflop_per_image": 1.0, "gemm_gflop_per_s_median": 100.0}
        return {"img_per_s": 50.0 if command[1] == str(reference) else 60.0, "peak_rss_mib": 1}

    monkeypatch.setattr(side_by_side, "run", fake_run)
    side_by_side.main(["--models", "resnet20", "--steps", "8", "--repeats", "2", "--torch-python", "py",
                       "--reference", str(reference), "--variant=--mixed-precision",
                       "--reference-flags=--channels-last --bf16"])
    sides = [c for c, _ in commands if c[2] != "bench.flops"]
    assert [c[:3] for c in sides] == [[sys.executable, "-m", "bench.train_speed"], ["py", str(reference), "--model"]] * 2
    assert sides[0][-1] == "--mixed-precision" and sides[1][-2:] == ["--channels-last", "--bf16"]
    out = capsys.readouterr().out
    assert "PyTorch reference flags: --channels-last --bf16" in out
    assert "| resnet20 | 128 | --mixed-precision | 60.0 | 50.0 | 1.20 | 60 |" in out


def test_batch_norm_speed_times_each_channel_count_and_precision(capsys):
    from bench import batch_norm_speed
    batch_norm_speed.main(["--channels", "6", "16", "--precisions", "float32", "mixed_bfloat16", "--batch", "2",
                           "--size", "4", "--repeats", "2"])
    lines = capsys.readouterr().out.splitlines()
    results = [json.loads(line) for line in lines if line.startswith("{")]
    assert [(r["channels"], r["precision"]) for r in results] == [
        (6, "float32"), (6, "mixed_bfloat16"), (16, "float32"), (16, "mixed_bfloat16")]
    assert all(r["ms"] > 0 for r in results)
    assert "| channels | float32 ms | mixed_bfloat16 ms |" in lines
    assert any(line.startswith("| 16 | ") for line in lines)


@pytest.mark.parametrize("module, argv", [
    ("bench.flops", ["--model", "lenet5", "--repeats", "1"]),
    ("bench.data_load", ["--data-dir", "{empty}"]),
    ("bench.cifar_subset", ["--data-dir", "{empty}", "--out", "{out}"])])
def test_a_benchmark_refuses_bad_input_with_one_line(module, argv, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    argv = [a.format(empty=tmp_path / "empty", out=tmp_path / "out") for a in argv]
    with pytest.raises(SystemExit) as e:
        importlib.import_module(module).main(argv)
    message = str(e.value.code) if isinstance(e.value.code, str) else capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code != 0 and "error: " in message and ("lenet5" in message or "no CIFAR-10 there" in message)
    assert not (tmp_path / "out").exists()

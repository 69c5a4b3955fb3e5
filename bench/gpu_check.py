"""The GPU machine's check: a model trained by train.py on Keras' JAX backend, in float32 and in mixed precision.

    KERAS_BACKEND=jax python -m bench.gpu_check OUT --data-dir DIR [--epochs 4] [--val-split 1000]
        [--model resnet20] [--batch-size B] [--steps 50] [--warmup 5]

bench/gpu_check.sh runs it on the GPU machine (its header says how), then the tests marked `gpu`.
Per precision (fp32, then mixed): `train.main` with the model's recipe but --epochs, --val-split
and --batch-size (default the recipe's), in a run folder under a temporary folder that is removed
at the end; then `bench.train_speed.measure` of the same step at the same batch, --steps timed
after --warmup. Mixed precision where this machine has none (no GPU and a CPU without native
bfloat16: train.py refuses it with an error line) is recorded as skipped, with that line.

Writes OUT/gpu_check.json (the machine, JAX's devices, the versions, and per precision the test
and validation accuracy, epochs, wall seconds, train.py's images/s, train_speed's images/s, the
execution record and the per-epoch history) and OUT/gpu_check.md (a table of the same), both
rewritten after each part, so a check stopped at its time limit leaves what it measured. Exit
status 0 when everything ran (mixed skipped included), 1 when a part failed, 2 for bad input.
"""

import argparse
import contextlib
import csv
import io
import json
import os
import platform
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

import data  # (no Keras at import)

# The modules that load Keras are imported in the functions that main calls after its backend check: under
# another backend, on a machine without TensorFlow, Keras would fail to load before the check could say why.

PRECISIONS = ("fp32", "mixed")


class _Tee(io.TextIOBase):
    """Writes to a stream and keeps a copy: train.main's error line, while the log still shows it."""

    def __init__(self, stream):
        self.stream, self.copy = stream, io.StringIO()

    def write(self, text):
        self.copy.write(text)
        return self.stream.write(text)

    def flush(self):
        self.stream.flush()


def error_line(text):
    return next((line for line in reversed(text.splitlines()) if line.startswith("error: ")), None)


def history(run_dir):
    with open(run_dir / "history.csv") as f:
        return [{k: float(v) if k != "epoch" else int(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def train_once(a, precision, runs):
    """train.main for one precision: its figures, or {"skipped": why} / {"failed": why}."""
    import train

    run_dir = runs / f"{a.model}-{precision}"
    argv = ["--model", a.model, "--data-dir", a.data_dir, "--run-dir", str(run_dir), "--epochs", str(a.epochs),
            "--val-split", str(a.val_split), "--batch-size", str(a.batch_size)]
    if precision == "mixed":
        argv.append("--mixed-precision")
    print(f"== train.py {' '.join(argv)}", flush=True)
    tee = _Tee(sys.stderr)
    started = time.perf_counter()
    with contextlib.redirect_stderr(tee):
        try:
            status = train.main(argv)
        except Exception:  # recorded, and the other precision still runs
            traceback.print_exc()
            status = None
    seconds = time.perf_counter() - started
    if status != 0:
        line = error_line(tee.copy.getvalue())
        if precision == "mixed" and status == 2 and line and line.startswith("error: --mixed-precision"):
            return {"skipped": line.removeprefix("error: ")}
        why = f"exit status {status}: {line or 'no error line'}" if status else "raised (traceback above)"
        return {"failed": f"train.py {why}", "exit_status": status}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {
        "test_accuracy": metrics["test_accuracy"],
        "val_accuracy": metrics["val_accuracy"],
        "test_accuracy_flip_tta": metrics["test_accuracy_flip_tta"],
        "test_model": metrics["test_model"],
        "epochs": metrics["epochs_completed"],
        "train_images": metrics["train_images"], "val_images": metrics["val_images"],
        "test_images": metrics["test_images"],
        "wall_seconds": round(metrics["wall_seconds"], 2),  # the loop's: epochs and the final evaluation
        "train_py_seconds": round(seconds, 2),  # train.main's whole call: loading, building, tracing too
        "train_images_per_second": metrics["train_images_per_second"],  # median over the epochs
        "execution": metrics["execution"],
        "history": history(run_dir),
        "command": json.loads((run_dir / "config.json").read_text()).get("command"),
    }


def measure_once(a, precision):
    """bench.train_speed.measure of train.py's step: its figures, or {"failed": why}."""
    from bench import train_speed

    print(f"== train_speed {a.model} batch {a.batch_size}, {a.steps} steps after {a.warmup} ({precision})", flush=True)
    try:
        r = train_speed.measure(a.model, a.batch_size, a.steps, a.warmup, mixed_precision=precision == "mixed")
    except SystemExit as e:  # prepare's refusal: "error: ..."
        return {"failed": str(e.code)}
    except Exception:
        traceback.print_exc()
        return {"failed": "train_speed.measure raised (traceback above)"}
    print(json.dumps(r), flush=True)
    return {k: r[k] for k in ("img_per_s", "median_step_img_per_s", "precision", "batch", "steps_timed",
                              "warmup_steps", "steps_per_execution", "replicas", "jit", "params")}


def devices():
    import jax

    return {"default_backend": jax.default_backend(),
            "devices": [{"id": d.id, "platform": d.platform, "kind": d.device_kind} for d in jax.devices()]}


def versions():
    import jax
    import jaxlib
    import keras

    return {"python": platform.python_version(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "keras": keras.__version__, "numpy": np.__version__}


def _cell(value, digits=4):
    return "" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown(report):
    timed = next((r["throughput"] for r in report["precisions"].values() if "img_per_s" in r.get("throughput", {})),
                 None)
    steps = (f"{timed['steps_timed']} steps timed after {timed['warmup_steps']} (whole executions of "
             f"{timed['steps_per_execution']} steps)" if timed else
             f"--steps {report['steps']} after --warmup {report['warmup']}")
    epochs = f"{report['epochs']} epoch{'s' if report['epochs'] != 1 else ''}"
    lines = [f"# GPU check: {report['model']} on Keras' JAX backend", "",
             f"{report['machine']}; JAX {report['versions']['jax']} ({report['default_backend']}: "
             f"{', '.join(sorted({d['kind'] for d in report['devices']}))}), Keras {report['versions']['keras']}, "
             f"numpy {report['versions']['numpy']}, Python {report['versions']['python']}.", "",
             f"`{report['command']}`: {epochs} of train.py's recipe on {report['data']}; throughput: "
             f"bench.train_speed at batch {report['batch_size']}, {steps}.", "",
             "| precision | policy | test accuracy | val accuracy | epochs | wall s | train.py img/s | train_speed img/s |",
             "|---|---|---|---|---|---|---|---|"]
    for name in PRECISIONS:
        r = report["precisions"].get(name)
        if r is None:
            lines.append(f"| {name} | not run | | | | | | |")
        elif "skipped" in r or "failed" in r:
            word = "skipped" if "skipped" in r else "FAILED"
            lines.append(f"| {name} | {word}: {r.get('skipped') or r.get('failed')} | | | | | | |")
        else:
            speed = r.get("throughput", {})
            lines.append(f"| {name} | {r['execution']['precision']} | {_cell(r['test_accuracy'])} | "
                         f"{_cell(r['val_accuracy'])} | {r['epochs']} | {_cell(r['wall_seconds'], 1)} | "
                         f"{_cell(r['train_images_per_second'], 0)} | "
                         f"{speed.get('failed') or _cell(speed.get('img_per_s'), 0)} |")
    return "\n".join(lines) + "\n"


def write(out, report):
    from runfolder import write_atomic, write_json

    write_json(out / "gpu_check.json", report)
    write_atomic(out / "gpu_check.md", markdown(report))


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", help="folder for gpu_check.json and gpu_check.md (made if missing)")
    p.add_argument("--data-dir", required=True, help="CIFAR-10 in the official format (bench/cifar_subset.py cuts one)")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--val-split", type=int, default=1000, help="validation images held out of the training images")
    p.add_argument("--batch-size", type=int, help="for training and throughput (default the recipe's)")
    p.add_argument("--steps", type=int, default=50, help="timed steps of the throughput measurement")
    p.add_argument("--warmup", type=int, default=5, help="steps before those, the first of which traces the step")
    a = p.parse_args(argv)
    if a.epochs < 1 or a.val_split < 1 or a.steps < 2 or a.warmup < 1 or (a.batch_size or 1) < 1:
        p.error("--epochs, --val-split, --warmup and --batch-size must be >= 1, --steps >= 2")
    return a


def _stop(signum, frame):
    raise SystemExit(128 + signum)  # `timeout`'s SIGTERM: the run folders' temporary folder is still removed


def main(argv=None):
    a = parse(argv)
    backend = os.environ.get("KERAS_BACKEND")
    if backend != "jax":
        print(f"error: KERAS_BACKEND is {backend}; this checks train.py on JAX: run it under KERAS_BACKEND=jax",
              file=sys.stderr)
        return 2
    out = Path(a.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        print(f"error: OUT {out} is not a writable folder: {e.strerror or e}", file=sys.stderr)
        return 2
    try:
        cifar = data.load_cifar10(a.data_dir, allow_download=False, verbose=False)
    except data.DataError as e:
        print(f"error: --data-dir {a.data_dir}: {e}", file=sys.stderr)
        return 2

    import execution
    import settings

    if a.batch_size is None:
        a.batch_size = settings.resolve_settings(a.model)[0]["batch_size"]
    found = devices()
    print(f"JAX {found['default_backend']}: " + ", ".join(f"{d['platform']}:{d['id']} {d['kind']}"
                                                          for d in found["devices"]), flush=True)
    given = " ".join(sys.argv[1:] if argv is None else argv)
    report = {
        "model": a.model, "machine": f"{platform.node()}: {execution.machine()}", **found, "versions": versions(),
        "command": f"python -m bench.gpu_check {given}",
        "data": f"{cifar.source} ({len(cifar.x_train)} training images, {a.val_split} of them held out for "
                f"validation; {len(cifar.x_test)} test images)",
        "epochs": a.epochs, "batch_size": a.batch_size, "steps": a.steps, "warmup": a.warmup, "precisions": {},
    }
    write(out, report)
    signal.signal(signal.SIGTERM, _stop)
    failed = False
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as runs:
        for precision in PRECISIONS:
            r = report["precisions"][precision] = train_once(a, precision, Path(runs))
            write(out, report)
            if "failed" in r and precision == "fp32" and r["exit_status"] == 2:
                return 2  # train.py refused the settings: its error line is printed
            if "skipped" in r or "failed" in r:
                print(f"== {precision}: {'skipped' if 'skipped' in r else 'FAILED'}: {r.get('skipped') or r['failed']}",
                      flush=True)
                failed |= "failed" in r
                continue
            r["throughput"] = measure_once(a, precision)
            failed |= "failed" in r["throughput"]
            write(out, report)
    print(markdown(report), end="", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

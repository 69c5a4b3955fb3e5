"""The ResNet-20 recipe in plain PyTorch, on train.py's data and split: to tell the code from the data.

    python -m results.crosscheck --data-dir ../shared/data --run-dir RUN [--epochs 200]
        [--milestones 81 122] [--seed 0] [--bf16] [--decay all|kernels]

When train.py's ResNet-20 lands below the published figures, the cause is either this repository
(its model, loop, optimizer, batch norm, augmentation) or what it trained on. This is a second,
independent implementation that shares nothing with the first but the data loader and the
stratified split (data.py, so the same 45,000 / 5,000 images): He et al.'s ResNet-20 as the PyTorch
ports that reach 91.7 % build it (option A shortcuts, Kaiming-normal convolutions and classifier,
PyTorch's batch norm: momentum 0.1, epsilon 1e-5), torch.optim.SGD (momentum 0.9, weight decay
1e-4 on every parameter, or with --decay kernels on convolution and dense kernels only, as
train.py), MultiStepLR, and the pad-4 crop and flip done on the batch. Trained side by side with
train.py on the same data, the two agreeing says the code is not the cause.

Each epoch is validated; the test set is evaluated at the end, once with the weights of the epoch
of the highest validation accuracy and once with the last. RUN gets config.json, history.csv and
metrics.json (train.py's names where they mean the same), and checkpoint.pt after every epoch:
run the same command again to resume a killed run.

    python -m results.crosscheck summary RUN [RUN ...] [--csv FILE]

prints the runs given (this module's and train.py's run folders alike) as one Markdown table, a
row per implementation, precision and length: mean ± sample std over the row's runs, and each run.
"""

import argparse
import csv
import io
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

import data
from results.runs import is_accuracy

PAD = 4
EVAL_BATCH = 1000


def build_resnet(depth=20, num_classes=10):
    """CIFAR ResNet-`depth` (6n+2), option A shortcuts: 0.27M parameters for depth 20."""
    import torch.nn as nn
    import torch.nn.functional as F

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.stride, self.extra = stride, cout - cin

        def forward(self, x):
            y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
            s = x
            if self.stride != 1 or self.extra:  # option A: subsample, pad the new channels with zeros
                s = F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, 0, self.extra))
            return F.relu(y + s)

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            n = (depth - 2) // 6
            self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
            self.bn = nn.BatchNorm2d(16)
            blocks, cin = [], 16
            for stage, width in enumerate((16, 32, 64)):
                for b in range(n):
                    blocks.append(Block(cin, width, 2 if stage and b == 0 else 1))
                    cin = width
            self.blocks = nn.Sequential(*blocks)
            self.fc = nn.Linear(64, num_classes)
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.kaiming_normal_(m.weight)

        def forward(self, x):
            x = self.blocks(F.relu(self.bn(self.conv(x))))
            return self.fc(x.mean((2, 3)))

    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6n+2; got {depth!r}")
    return ResNet()


def crop_flip(torch, images, generator):
    """Pad-4 (black) random 32x32 crops, half mirrored: uint8 NHWC in, uint8 NHWC out."""
    n, h, w, _ = images.shape
    padded = torch.nn.functional.pad(images, (0, 0, PAD, PAD, PAD, PAD))
    offsets = torch.randint(0, 2 * PAD + 1, (n, 2), generator=generator)
    flip = torch.randint(0, 2, (n,), generator=generator).bool()
    rows = offsets[:, :1] + torch.arange(h)
    cols = offsets[:, 1:] + torch.arange(w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    return padded[torch.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


class Normalize:
    def __init__(self, torch, spec):
        self.torch = torch
        self.mean = torch.tensor(spec.mean).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(spec.std).view(1, 3, 1, 1) * 255

    def __call__(self, images):
        """uint8 NHWC -> float32 NCHW (channels-last memory), standardized."""
        x = images.permute(0, 3, 1, 2).float()
        return ((x - self.mean) / self.std).contiguous(memory_format=self.torch.channels_last)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m results.crosscheck", description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", required=True, help="the run's folder; rerun the same command to resume")
    p.add_argument("--data-dir", help="as train.py's")
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--milestones", type=int, nargs="+", default=[81, 122], help="epochs after which lr /= 10")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--decay", choices=("all", "kernels"), default="all",
                   help="all: every parameter, as the PyTorch ports; kernels: convolution and dense kernels, as train.py")
    p.add_argument("--val-split", type=int, default=5000)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bf16", action="store_true", help="torch.autocast to bfloat16 (train.py's --mixed-precision)")
    p.add_argument("--threads", type=int, default=0, help="0: PyTorch's default")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or not args.lr > 0 or args.weight_decay < 0 or args.threads < 0:
        p.error("--epochs and --batch-size must be >= 1, --lr > 0, --weight-decay and --threads >= 0")
    if any(b <= a for a, b in zip(args.milestones, args.milestones[1:])) or any(m < 1 for m in args.milestones):
        p.error(f"--milestones must be strictly increasing epochs >= 1; got {args.milestones}")
    try:
        build_resnet(args.depth)
    except ValueError as e:
        p.error(str(e))
    return args


CONFIG_KEYS = ("depth", "epochs", "milestones", "lr", "batch_size", "weight_decay", "decay", "val_split",
               "split_seed", "seed", "bf16")


SUMMARY_KEYS = ("val_accuracy", "test_accuracy", "last_epoch_test_accuracy")


def _finished(run):
    """(config, metrics) of a finished train.py or crosscheck run folder, their fields checked."""
    try:
        metrics = json.loads((run / "metrics.json").read_text())
        config = json.loads((run / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {run} is not a finished run folder ({e.__class__.__name__}: {e})") from None
    if not (isinstance(metrics, dict) and isinstance(config, dict) and isinstance(config.get("settings"), dict)):
        raise SystemExit(f"error: {run} is not a finished run folder (its config.json or metrics.json is not an object)")
    precision = metrics.get("precision") or (metrics.get("execution") or {}).get("precision")
    bad = [k for k in SUMMARY_KEYS if not is_accuracy(metrics.get(k))]
    bad += [k for k in ("best_epoch", "epochs_completed", "wall_seconds")
            if not isinstance(metrics.get(k), (int, float)) or isinstance(metrics.get(k), bool)]
    if bad or not isinstance(precision, str):
        raise SystemExit(f"error: {run / 'metrics.json'} has no usable {', '.join(bad or ['precision'])} "
                         "(runs finished before metrics.json recorded it cannot be tabulated here)")
    return config, {**metrics, "precision": precision}


def summary(run_dirs):
    """Rows of finished runs grouped by implementation, precision and epochs (see the module docstring).
    The runs of a row must differ in their seed only: other settings, a seed twice or a folder named
    twice is refused, as a mean over them would mean nothing."""
    groups, seen = {}, set()
    for run in map(Path, run_dirs):
        if run.resolve() in seen:
            continue
        seen.add(run.resolve())
        config, metrics = _finished(run)
        implementation = "PyTorch (results.crosscheck)" if "torch" in config else "Keras (train.py)"
        settings = {k: v for k, v in config["settings"].items() if k != "seed"}
        seed = config["settings"].get("seed", 0)
        group = groups.setdefault((implementation, metrics["precision"], metrics["epochs_completed"]),
                                  {"settings": settings, "first": run, "runs": []})
        if settings != group["settings"]:
            changed = sorted(k for k in settings.keys() | group["settings"].keys()
                             if settings.get(k) != group["settings"].get(k))
            raise SystemExit(f"error: {group['first']} and {run} differ in {', '.join(changed)}, not only the seed: "
                             "summarise them apart")
        if any(seed == s for s, _ in group["runs"]):
            raise SystemExit(f"error: {run} repeats seed {seed} of another run of its row: the same run twice?")
        group["runs"].append((seed, metrics))
    rows = []
    for (implementation, precision, epochs), group in sorted(groups.items(), key=lambda kv: kv[0]):
        runs = sorted(group["runs"], key=lambda r: r[0])
        row = dict(implementation=implementation, precision=precision, epochs=epochs, runs=len(runs))
        for key in SUMMARY_KEYS:  # as series.percent_stats, which would load TensorFlow here
            values = np.asarray([m[key] for _, m in runs], float) * 100
            row[f"{key}_mean"] = round(float(values.mean()), 2)
            row[f"{key}_std"] = round(float(values.std(ddof=1)), 2) if len(values) > 1 else 0.0
        row["single_runs"] = "; ".join(f"seed {seed}: {100 * m['val_accuracy']:.2f} / {100 * m['test_accuracy']:.2f} "
                                       f"(epoch {m['best_epoch']}) / {100 * m['last_epoch_test_accuracy']:.2f}"
                                       for seed, m in runs)
        row["wall_minutes_per_run"] = round(sum(m["wall_seconds"] for _, m in runs) / len(runs) / 60, 1)
        rows.append(row)
    return rows


def summary_table(rows):
    lines = ["| implementation | precision | epochs | runs | val acc % (chosen epoch) | test acc %, val-chosen epoch "
             "| test acc %, last epoch | single runs: val / test (chosen epoch) / last-epoch test | wall min per run |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['implementation']} | {r['precision']} | {r['epochs']} | {r['runs']} | "
              + " | ".join(f"{r[k + '_mean']:.2f}" + (f" ± {r[k + '_std']:.2f}" if r["runs"] > 1 else "")
                           for k in ("val_accuracy", "test_accuracy", "last_epoch_test_accuracy"))
              + f" | {r['single_runs']} | {r['wall_minutes_per_run']} |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["summary"]:
        p = argparse.ArgumentParser(prog="python -m results.crosscheck summary")
        p.add_argument("run_dirs", nargs="+", metavar="RUN")
        p.add_argument("--csv", help="also write the rows to this CSV file")
        a = p.parse_args(argv[1:])
        if a.csv:
            if Path(a.csv).is_dir():
                sys.exit(f"error: --csv {a.csv} is a folder; give a file name")
            target = Path(a.csv).resolve()  # runfolder.input_holding's test; runfolder needs Keras, this file does not
            holding = next((r for r in a.run_dirs if Path(r).resolve() in target.parents), None)
            if holding is not None:
                sys.exit(f"error: --csv {a.csv} is in the run folder {holding}, whose files it could replace; "
                         "write it elsewhere")
        rows = summary(a.run_dirs)
        if a.csv:
            try:
                _write_csv(Path(a.csv), rows)
            except OSError as e:
                sys.exit(f"error: cannot write --csv {a.csv}: {e.strerror or e}")
        print(summary_table(rows), end="")
        return 0
    args = parse_args(argv)
    run = Path(args.run_dir)
    config = {k: getattr(args, k) for k in CONFIG_KEYS}
    saved = run / "config.json"
    if run.exists() and not run.is_dir():
        sys.exit(f"error: --run-dir {run} is a file, not a folder")
    if run.is_dir() and not saved.is_file() and any(run.iterdir()):  # config.json is a run's first file
        sys.exit(f"error: --run-dir {run} is not empty and holds no results.crosscheck run; give an empty or new "
                 "folder")
    if saved.is_file():
        try:
            before = {k: json.loads(saved.read_text())["settings"].get(k) for k in CONFIG_KEYS}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            sys.exit(f"error: {saved} is not the config.json of a results.crosscheck run "
                     f"({e.__class__.__name__}: {e}); give another --run-dir")
        if before != config:
            changed = ", ".join(k for k in CONFIG_KEYS if before[k] != config[k])
            sys.exit(f"error: {run} holds a run of other settings ({changed}); give another --run-dir")
    if (run / "metrics.json").is_file():
        print(f"{run} is finished: {run / 'metrics.json'}")
        return 0
    try:
        dataset = data.load(data_dir=args.data_dir)
    except data.DataError as e:
        sys.exit(f"error: {e}")
    if not 0 < args.val_split < len(dataset.y_train):
        sys.exit(f"error: --val-split must be between 1 and {len(dataset.y_train) - 1}")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train_idx, val_idx = data.stratified_split(dataset.y_train, args.val_split, args.split_seed)
    x_train, y_train = torch.from_numpy(dataset.x_train[train_idx]), torch.from_numpy(dataset.y_train[train_idx].astype(np.int64))
    x_val, y_val = torch.from_numpy(dataset.x_train[val_idx]), torch.from_numpy(dataset.y_train[val_idx].astype(np.int64))
    x_test, y_test = torch.from_numpy(dataset.x_test), torch.from_numpy(dataset.y_test.astype(np.int64))
    normalize = Normalize(torch, data.get_spec("cifar10"))

    model = build_resnet(args.depth).to(memory_format=torch.channels_last)
    if args.decay == "all":
        groups = [{"params": list(model.parameters())}]
    else:
        kernels = [p for name, p in model.named_parameters() if name.endswith("weight") and p.dim() > 1]
        rest = [p for name, p in model.named_parameters() if not (name.endswith("weight") and p.dim() > 1)]
        groups = [{"params": kernels}, {"params": rest, "weight_decay": 0.0}]
    optimizer = torch.optim.SGD(groups, lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, args.milestones, gamma=0.1)
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16)  # noqa: E731

    def evaluate(images, labels):
        model.eval()
        correct, loss = 0, 0.0
        with torch.no_grad(), autocast():
            for i in range(0, len(images), EVAL_BATCH):
                logits = model(normalize(images[i:i + EVAL_BATCH])).float()
                loss += torch.nn.functional.cross_entropy(logits, labels[i:i + EVAL_BATCH], reduction="sum").item()
                correct += (logits.argmax(1) == labels[i:i + EVAL_BATCH]).sum().item()
        return loss / len(images), correct / len(images)

    state = {"epoch": 0, "history": [], "best": None, "best_val": -1.0, "best_epoch": 0, "wall": 0.0, "train": 0.0}
    checkpoint = run / "checkpoint.pt"
    if checkpoint.is_file():
        saved_state = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(saved_state.pop("model"))
        optimizer.load_state_dict(saved_state.pop("optimizer"))
        schedule.load_state_dict(saved_state.pop("schedule"))
        state = saved_state
        print(f"resuming {run} after epoch {state['epoch']}", flush=True)
    else:
        run.mkdir(parents=True, exist_ok=True)
        _write_atomic(saved, json.dumps({"settings": config, "command": "python -m results.crosscheck " + " ".join(argv), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "machine": machine()}, indent=2) + "\n")

    n = len(x_train)
    for epoch in range(state["epoch"] + 1, args.epochs + 1):
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(args.seed * 100003 + epoch)
        order = torch.randperm(n, generator=generator)
        model.train()
        seen, correct, total_loss, lr = 0, 0, 0.0, optimizer.param_groups[0]["lr"]
        for i in range(0, n, args.batch_size):  # the last, smaller batch too, as train.py
            idx = order[i:i + args.batch_size]
            x, y = normalize(crop_flip(torch, x_train[idx], generator)), y_train[idx]
            with autocast():
                logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(idx)
            total_loss += loss.item() * len(idx)
            correct += (logits.argmax(1) == y).sum().item()
        schedule.step()
        train_seconds = time.perf_counter() - start
        if not np.isfinite(total_loss):
            sys.exit(f"error: the loss diverged in epoch {epoch}; {run} keeps the epochs before it")
        val_loss, val_acc = evaluate(x_val, y_val)
        epoch_seconds = time.perf_counter() - start
        state["history"].append(dict(epoch=epoch, lr=lr, loss=total_loss / seen, accuracy=correct / seen,
                                     val_loss=val_loss, val_accuracy=val_acc, train_seconds=train_seconds,
                                     epoch_seconds=epoch_seconds))
        if val_acc > state["best_val"]:
            state.update(best={k: v.clone() for k, v in model.state_dict().items()}, best_val=val_acc, best_epoch=epoch)
        state.update(epoch=epoch, wall=state["wall"] + epoch_seconds, train=state["train"] + train_seconds)
        _write_csv(run / "history.csv", state["history"])
        tmp = checkpoint.with_suffix(".tmp")
        torch.save({**state, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict()}, tmp)
        os.replace(tmp, checkpoint)
        print(f"epoch {epoch}/{args.epochs} lr {lr:g} loss {total_loss / seen:.4f} acc {correct / seen:.4f} "
              f"val_acc {val_acc:.4f} ({epoch_seconds:.0f} s)", flush=True)

    last_test_loss, last_test_acc = evaluate(x_test, y_test)
    last_val = state["history"][-1]["val_accuracy"]
    model.load_state_dict(state["best"])
    test_loss, test_acc = evaluate(x_test, y_test)
    metrics = dict(model=f"resnet{args.depth} (PyTorch, results/crosscheck.py)", val_accuracy=state["best_val"],
                   test_accuracy=test_acc, test_loss=test_loss, best_epoch=state["best_epoch"],
                   test_model=f"epoch {state['best_epoch']}, highest validation accuracy",
                   last_epoch_test_accuracy=last_test_acc, last_val_accuracy=last_val,
                   epochs_completed=state["epoch"], train_images=n, val_images=len(x_val), test_images=len(x_test),
                   train_images_per_second=n * state["epoch"] / state["train"], wall_seconds=state["wall"],
                   precision="bfloat16 autocast" if args.bf16 else "float32", machine=machine())
    _write_atomic(run / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    print(f"val {state['best_val']:.4f} (epoch {state['best_epoch']}), test {test_acc:.4f}; "
          f"last epoch test {last_test_acc:.4f}", flush=True)
    return 0


def _write_atomic(path, text):
    """`text` as the file `path`, written under a temporary name and renamed into place (runfolder.write_atomic's
    way; runfolder needs Keras, which the PyTorch venv this file runs in does not have)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_csv(path, rows):
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    _write_atomic(path, text.getvalue())


def machine():
    """CPU model and cores, as execution.machine() words them but without its vector units: execution
    imports Keras and TensorFlow, which this PyTorch process does not load."""
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        name = None
    return f"{name or platform.machine()}, {os.cpu_count()} cores"


if __name__ == "__main__":
    sys.exit(main())

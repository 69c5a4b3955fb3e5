"""Where a training step's time goes: TensorFlow's profiler over train.py's own step, summed by layer.

    python -m bench.profile_step --model resnet20 --batch 128 --steps 32 [--keras-batch-norm]
        [--steps-per-execution N] [--devices N] [--top 12]

Builds the model, optimizer and pipeline with bench/train_speed.py's `prepare` (execution.py's functions), runs the warm-up steps,
then records --steps steps with `tf.profiler.experimental` and reads the trace it writes (the
XSpace protocol buffer TensorFlow ships). Every kernel the step runs is named after its place in
the graph; the name tells its layer (and whether it belongs to the gradient) or the loss, the
optimizer, or the wait for the next input batch. Per step, it prints:

- wall: milliseconds per step, the profiler running;
- kernels busy: the time during which at least one kernel ran; the rest of the wall time is spent
  outside TensorFlow's kernels (Python, Keras' per-call work, dispatch, idle threads);
- by layer type, forward and backward: milliseconds of kernel time (kernels can overlap, so the
  sum can exceed "kernels busy"), and the top operation types.

Prints a readable table, then one JSON line with the same figures.
"""

import collections
import json
import re
import tempfile
import time
from pathlib import Path

import tensorflow as tf
from tensorflow.tsl.profiler.protobuf import xplane_pb2

from bench import train_speed

# Events that contain other kernels (function calls, loops) or are bookkeeping, not work.
CONTAINERS = {"PartitionedCall", "StatefulPartitionedCall", "While", "StatelessWhile", "If", "StatelessIf",
              "_Arg", "_Retval", "NoOp", "Identity"}


def read_trace(logdir):
    """(name, op type, start ps, duration ps) of every kernel the executor threads ran."""
    files = sorted(Path(logdir).rglob("*.xplane.pb"))
    if not files:
        raise SystemExit(f"the profiler wrote no trace under {logdir}")
    space = xplane_pb2.XSpace()
    space.ParseFromString(files[-1].read_bytes())
    kernels = []
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if "::" in name:  # the executor's own events (ExecutorState::Process, ...) wrap kernels
                    continue
                scope, sep, op = name.rpartition(":")
                if sep and op not in CONTAINERS:
                    start = line.timestamp_ns * 1000 + event.offset_ps
                    kernels.append((scope, op, start, event.duration_ps))
    return kernels


def busy_time(kernels):
    """Length of the union of the kernels' intervals, in ps."""
    total, end = 0, None
    for start, stop in sorted((s, s + d) for _, _, s, d in kernels):
        if end is None or start > end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return total


def classify(scope, op, layer_types, optimizer_name):
    """(what, direction): the layer type, loss, optimizer or input wait a kernel belongs to."""
    if op in ("IteratorGetNext", "IteratorGetNextAsOptional", "OptionalGetValue"):
        return "input (waiting for the batch)", ""
    parts = scope.split("/")
    direction = "backward" if "gradient_tape" in parts else "forward"
    for part in reversed(parts):  # innermost first
        for name in (part, re.sub(r"_\d+$", "", part)):
            if name in layer_types:
                return layer_types[name], direction
    if "compile_loss" in parts:
        return "loss", direction
    if any(re.sub(r"_\d+$", "", p) == optimizer_name for p in parts):
        return "optimizer", ""
    return "other", direction


def _layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _layers(layer)


def profile(model_name, batch, steps, warmup, top, **options):
    backend = train_speed.keras.backend.backend()
    if backend != "tensorflow":
        raise SystemExit(f"profile_step.py reads TensorFlow's profiler trace; it runs on the TensorFlow backend, "
                         f"not {backend!r} (unset KERAS_BACKEND)")
    model, dataset, setup = train_speed.prepare(model_name, batch, steps, warmup, **options)
    warm, timed = dataset.take(setup["warmup_steps"]), dataset.skip(setup["warmup_steps"])
    model.fit(warm, epochs=1, verbose=0, shuffle=False)
    layer_types = {layer.name: type(layer).__name__ for layer in _layers(model)}
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir, options=tf.profiler.experimental.ProfilerOptions(python_tracer_level=0))
        start = time.perf_counter()
        model.fit(timed, epochs=1, verbose=0, shuffle=False)
        wall = time.perf_counter() - start
        tf.profiler.experimental.stop()
        kernels = read_trace(logdir)
    n = setup["steps_timed"]
    per_step = lambda ps: round(ps / 1e9 / n, 3)  # noqa: E731  ps in total -> ms per step
    by_group = collections.defaultdict(lambda: collections.Counter())
    by_op = collections.Counter()
    for scope, op, _, duration in kernels:
        what, direction = classify(scope, op, layer_types, model.optimizer.name)
        by_group[what][direction or "all"] += duration
        by_op[op] += duration
    summed = sum(by_op.values())
    groups = sorted(by_group.items(), key=lambda item: -sum(item[1].values()))
    return {
        **setup,
        "wall_ms_per_step": round(wall * 1e3 / n, 3),
        "kernels_busy_ms_per_step": per_step(busy_time(kernels)),
        "kernel_ms_per_step": per_step(summed),
        "by_layer_type": {what: {d: per_step(ps) for d, ps in sorted(c.items())} for what, c in groups},
        "top_ops": {op: per_step(ps) for op, ps in by_op.most_common(top)},
    }


def print_table(result):
    wall, busy = result["wall_ms_per_step"], result["kernels_busy_ms_per_step"]
    print(f"{result['model']}, batch {result['batch']}, {result['steps_timed']} steps, batch norm "
          f"{result['batch_norm']}, {result['steps_per_execution']} steps per execution, oneDNN "
          f"{'on' if result['onednn'] else 'off'}")
    print(f"wall {wall:.2f} ms/step; kernels busy {busy:.2f} ms ({100 * busy / wall:.0f} %); "
          f"outside kernels {wall - busy:.2f} ms ({100 * (wall - busy) / wall:.0f} %)")
    total = result["kernel_ms_per_step"]
    print(f"\n{'kernel time by layer type':34} {'forward':>9} {'backward':>9} {'other':>9} {'share':>6}")
    for what, parts in result["by_layer_type"].items():
        cells = [f"{parts[d]:9.2f}" if d in parts else f"{'':9}" for d in ("forward", "backward", "all")]
        print(f"{what:34} {' '.join(cells)} {100 * sum(parts.values()) / total:5.0f}%")
    print(f"\n{'top operation types':34} {'ms/step':>9} {'share':>6}")
    for op, ms in result["top_ops"].items():
        print(f"{op:34} {ms:9.2f} {100 * ms / total:5.0f}%")


def main(argv=None):
    p = train_speed.parser(__doc__.split("\n")[0], steps=32, what="profiled")
    p.add_argument("--top", type=int, default=12, help="operation types to list")
    a, options = train_speed.parse(p, argv, min_steps=1)
    result = profile(a.model, a.batch, a.steps, a.warmup, a.top, **options)
    print_table(result)
    print(json.dumps(result), flush=True)

if __name__ == "__main__":
    main()

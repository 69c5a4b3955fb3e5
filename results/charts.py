"""The two charts of the table: test accuracy against training time, and validation curves.

Colours mark a row (one model and recipe), so the seeds of a row read as one family; legends sit
outside the axes, where they cover no data however many runs there are.
"""

import matplotlib

matplotlib.use("Agg")  # files only: no display on the machines this runs on
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogFormatter, MaxNLocator  # noqa: E402

import runfolder  # noqa: E402
from results import table  # noqa: E402

MARKERS = "os^DvP*X<>"
LINESTYLES = ("-", "--", ":", "-.")


def _time_unit(seconds):
    """The unit that keeps the axis' numbers readable for the longest run."""
    longest = max(seconds)
    if longest >= 2 * 3600:
        return 3600, "hours"
    if longest >= 2 * 60:
        return 60, "minutes"
    return 1, "seconds"


def _colour(i):
    """tab20's dark tones for the first ten rows, its light ones for the next ten, so neighbouring
    rows never share a hue's two tones; a row has the same colour in both charts."""
    return plt.cm.tab20((2 * i) % 20 + (i // 10) % 2)


def _style(i):
    return dict(color=_colour(i), marker=MARKERS[(i // 20) % len(MARKERS)])


def _legend(ax, count):
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0, fontsize="small",
              ncol=1 + count // 25, frameon=False)


def _figure(count):
    """Wider and taller as the legend beside the axes grows."""
    columns = 1 + count // 25
    return plt.subplots(figsize=(7 + 2.6 * columns, max(4.5, 0.22 * min(count, 25) + 1)))


def accuracy_vs_time(groups, path):
    """One point per run: the test accuracy of its validation-chosen epoch against its wall time.
    Returns the legend's labels, one per row."""
    points = [(g, r) for g in groups for r in g if isinstance(r.metrics.get("wall_seconds"), (int, float))]
    unit, unit_name = _time_unit([r.metrics["wall_seconds"] for _, r in points] or [1])
    fig, ax = _figure(len(groups))
    for i, runs in enumerate(groups):
        timed = [r for r in runs if isinstance(r.metrics.get("wall_seconds"), (int, float))]
        if not timed:
            continue
        row = {"model": runs[0].model, "variant": table.variant(runs)}
        precisions = sorted({(r.config.get("execution") or {}).get("precision") for r in runs}
                            - {"float32", None})  # float32 unless said, as in the tables
        said = "".join(f", {p}" for p in precisions)
        ax.scatter([r.metrics["wall_seconds"] / unit for r in timed], [r.metrics["test_accuracy"] * 100 for r in timed],
                   s=36, alpha=0.85, label=f"{table.label(row)}, {len(timed)} run{'s' * (len(timed) > 1)}{said}",
                   **_style(i))
    ax.set_xscale("log")
    # Plain numbers (4, 40, 400), not powers of ten: the axis spans few decades, and a narrow span
    # gets labelled minor ticks that would otherwise read 4.4x10^0.
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.5)))
    ax.set(xlabel=f"training wall time per run ({unit_name}, log scale)",
           ylabel="test accuracy (%), validation-chosen epoch",
           title="CIFAR-10: test accuracy against training time")
    ax.grid(alpha=0.3, which="both")
    _legend(ax, len(groups))
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    fig.tight_layout()
    runfolder.save_figure(fig, path)
    plt.close(fig)
    return labels


def curves(groups, path):
    """Each run's validation accuracy per epoch (history.csv); runs without a validation split have none."""
    fig, ax = _figure(sum(len(g) for g in groups))
    lines = 0
    for i, runs in enumerate(groups):
        for j, run in enumerate(runs):
            history = [h for h in run.history() if h.get("val_accuracy") is not None]
            if not history:
                continue
            epochs = np.array([h["epoch"] for h in history])
            accuracy = np.array([h["val_accuracy"] for h in history]) * 100
            ax.plot(epochs, accuracy, color=_colour(i), linestyle=LINESTYLES[j % len(LINESTYLES)],
                    marker="." if len(epochs) < 20 else None, label=run.path.name)
            lines += 1
    ax.set(xlabel="epoch", ylabel="validation accuracy (%)", title="CIFAR-10: validation accuracy per epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if lines:
        _legend(ax, lines)
    fig.tight_layout()
    runfolder.save_figure(fig, path)
    plt.close(fig)

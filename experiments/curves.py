"""Validation mAP per epoch of each model of a comparison, read from the logs its training wrote, and one
plot of them all: where a model has flattened, a longer budget will not change its standing.

Each curve is its trainer's own validation on the same val images (ours: pycocotools through the deploy
pre/post-processing, `log.csv`; Ultralytics: its validator, `results.csv`), so a curve shows a model's trend;
the comparison's table scores every final model one way.
"""

from __future__ import annotations

import csv
from pathlib import Path


def read_curve(path: Path, epoch_key: str, map_key: str) -> list[tuple[int, float]]:
    """[(epoch, mAP@[.5:.95])] from a CSV log (Ultralytics pads its column names with spaces)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(f)]
    return [(int(float(r[epoch_key])), float(r[map_key])) for r in rows if r.get(map_key) not in (None, "")]


def is_ours(model: str) -> bool:
    """A comparison's model of ours: `ours`, or `ours-<preset>[-int8]` of compare-yolo --presets / --int8."""
    return model == "ours" or model.startswith("ours-")


def model_curve(name: str, folder: Path) -> list[tuple[int, float]]:
    """A compare-yolo model folder -> its validation curve."""
    if is_ours(name):
        return read_curve(folder / "detector" / "log.csv", "epoch", "map")
    return read_curve(folder / "train" / "results.csv", "epoch", "metrics/mAP50-95(B)")


def flattened(curve: list[tuple[int, float]], last: int = 5, gain: float = 0.005) -> bool | None:
    """Whether the best mAP of the last `last` epochs is within `gain` of the best before them (None: too short)."""
    if len(curve) <= last:
        return None
    before, tail = max(m for _, m in curve[:-last]), max(m for _, m in curve[-last:])
    return tail - before < gain


def plot_curves(curves: dict[str, dict[str, list]], path: Path, title: str) -> Path:
    """{budget: {model: curve}} -> one PNG, a colour per model, a line style per budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = {}
    budgets = sorted(curves, key=int)
    for i, budget in enumerate(budgets):
        # the longest budget solid, the shorter ones dashed and dotted in turn
        style = "-" if budget == budgets[-1] else ("--", ":")[i % 2]
        for name, curve in curves[budget].items():
            if not curve:
                continue
            colour = colours.setdefault(name, f"C{len(colours)}")
            ax.plot(*zip(*curve, strict=True), color=colour, linestyle=style, label=f"{name}, {budget} epochs")
    ax.set_xlabel("epoch")
    ax.set_ylabel("val mAP@[.5:.95] (each trainer's own validation)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_pareto(budgets: dict[str, dict[str, dict]], path: Path, title: str) -> Path:
    """{budget: {model: {"map", "latency_ms": {"1t", "2t"}}}} -> one PNG, a panel per thread count: mAP against
    latency, ours' models joined into one curve per budget (fastest to slowest; their INT8 files, `-int8`, into
    a dashed one), each peer a marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    markers = {}
    for ax, threads in zip(axes, ("1t", "2t"), strict=True):
        for i, (budget, models) in enumerate(sorted(budgets.items(), key=lambda kv: int(kv[0]))):
            colour = f"C{i}"
            for int8, style in ((False, "-o"), (True, "--^")):
                ours = sorted((m["latency_ms"][threads], m["map"], n) for n, m in models.items()
                              if is_ours(n) and n.endswith("-int8") == int8)
                if not ours:
                    continue
                ax.plot([o[0] for o in ours], [o[1] for o in ours], style, color=colour,
                        label=f"ours{' INT8' if int8 else ''}, {budget} epochs")
                for x, y, n in ours:
                    ax.annotate(n.removeprefix("ours-").removesuffix("-int8"), (x, y), textcoords="offset points",
                                xytext=(4, -10), fontsize=7)
            for n, m in models.items():
                if is_ours(n):
                    continue
                marker = markers.setdefault(n, "sDv^<>"[len(markers) % 6])
                ax.plot(m["latency_ms"][threads], m["map"], marker, color=colour, markersize=8, linestyle="none",
                        label=f"{n}, {budget} epochs")
        ax.set_xlabel(f"ONNX Runtime latency, {threads[0]} thread{'s' if threads != '1t' else ''} (ms, p50)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mAP@[.5:.95] (val)")
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

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


def model_curve(name: str, folder: Path) -> list[tuple[int, float]]:
    """A compare-yolo model folder -> its validation curve."""
    if name == "ours":
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

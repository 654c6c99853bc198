"""Plots: latency vs accuracy per model (Pareto front marked), the detector's precision-recall curve, and the
robustness heat maps."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; CI and devices have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated by another (lower latency and higher accuracy are better)."""
    front = []
    for i, (lat, acc) in enumerate(points):
        if not any((l2 <= lat and a2 >= acc) and (l2, a2) != (lat, acc) for l2, a2 in points):
            front.append(i)
    return front


def plot_pareto(task: str, variants: dict, metric: str, threads: str, out: Path) -> Path:
    names = [n for n, v in variants.items() if v.get("latency_ms", {}).get(threads) and v.get(metric) is not None]
    pts = [(variants[n]["latency_ms"][threads]["p50"], variants[n][metric]) for n in names]
    front = set(pareto_front(pts))
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for i, (n, (lat, acc)) in enumerate(zip(names, pts, strict=True)):
        ax.scatter(lat, acc, marker="o" if i in front else "x", color="C0" if i in front else "C3")
        ax.annotate(n, (lat, acc), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if front:
        f = sorted(pts[i] for i in front)
        ax.plot([p[0] for p in f], [p[1] for p in f], "C0--", lw=1)
    ax.set_xlabel(f"p50 latency ms ({threads})")
    ax.set_ylabel(metric)
    ax.set_title(f"{task}: latency vs {metric} (o = Pareto front)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / f"{task}_pareto.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_pr(task: str, curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str, out: Path) -> Path:
    """curves: name -> (recall, precision) -> <task>_pr.png."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, (recall, prec) in curves.items():
        ax.plot(recall, prec, label=name)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / f"{task}_pr.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_robustness(task: str, result: dict, path: Path) -> Path:
    """Heat map of the relative drop vs clean (%): corruption x severity, then the shifted splits, per metric."""
    metrics, sev = result["metrics"], [k for k in next(iter(result["corruptions"].values()), {}) if k.isdigit()]
    rows = list(result["corruptions"]) + list(result["shifted"])
    size = (2.5 + 0.8 * len(metrics) * (len(sev) + 1), 1.2 + 0.32 * len(rows))
    fig, axes = plt.subplots(1, len(metrics), figsize=size, squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        clean = result["clean"][metric] or float("nan")  # a model that scores 0 clean has no relative drop
        grid = np.full((len(rows), len(sev) + 1), np.nan)
        for i, name in enumerate(rows):
            r = result["corruptions"].get(name)
            if r is not None:
                grid[i, : len(sev)] = [100 * (clean - r[s][metric]) / clean for s in sev]
                grid[i, -1] = 100 * (clean - r["mean"][metric]) / clean
            else:  # a shifted split has one value: the mean column
                grid[i, -1] = 100 * (clean - result["shifted"][name][metric]) / clean
        top = float(np.nanmax(grid)) if np.isfinite(grid).any() else 0.0
        im = ax.imshow(grid, cmap="Reds", vmin=0, vmax=max(10.0, top), aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            if np.isfinite(v):
                ax.text(j, i, f"{int(round(v))}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(sev) + 1), [*sev, "mean"], fontsize=8)
        ax.set_yticks(range(len(rows)), rows, fontsize=8)
        ax.set_xlabel("severity")
        ax.set_title(f"{task}: {metric} drop vs clean (%), clean {clean:.3f}", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

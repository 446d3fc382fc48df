"""The report's PNG plots (matplotlib's Agg canvas, no pyplot state, no GUI backend)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from alignlab.report.blocks import format_number

Bounds = tuple[float, float] | None


def new_figure(width: float, height: float) -> Any:
    # Figure + Agg canvas directly: no pyplot global state, no GUI backend, thread-safe.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def set_margins(fig: Any, left: float = 0.8, bottom: float = 0.6, top: float = 0.4) -> None:
    """Fixed margins in inches: tight_layout measures every tick label and costs ~0.5 s per
    figure, which adds up over the reports of a whole sweep."""
    width, height = fig.get_size_inches()
    fig.subplots_adjust(
        left=left / width,
        right=1 - 0.25 / width,
        bottom=bottom / height,
        top=1 - top / height,
        wspace=0.35,
        hspace=0.6,
    )


def curves(series: Mapping[str, tuple[list[float], list[float]]], out: Path) -> None:
    cols = min(3, len(series))
    rows = math.ceil(len(series) / cols)
    fig = new_figure(4.2 * cols, 3.0 * rows)
    for i, (key, (xs, ys)) in enumerate(series.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.plot(xs, ys, marker="o" if len(xs) < 20 else None, markersize=3)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    set_margins(fig, left=0.7, bottom=0.5)
    fig.savefig(out, format="png")


def _error_bars(ax: Any, xs: list[float], values: list[float], intervals: list[Bounds]) -> bool:
    shown = [(x, v, iv) for x, v, iv in zip(xs, values, intervals, strict=True)
             if iv is not None]
    if shown:
        ax.errorbar([x for x, _, _ in shown], [v for _, v, _ in shown],
                    yerr=[[v - lo for _, v, (lo, _) in shown], [hi - v for _, v, (_, hi) in shown]],
                    fmt="none", ecolor="#222222", capsize=4, linewidth=1)
    return bool(shown)


def bars(labels: list[str], values: list[float], title: str, ylabel: str, out: Path,
         intervals: list[Bounds] | None = None) -> None:
    """Bar chart; ``intervals`` (per bar: (low, high) or None) are drawn as error bars."""
    fig = new_figure(max(4.0, 1.2 * len(labels) + 1.5), 3.5)
    ax = fig.add_subplot(1, 1, 1)
    drawn = ax.bar(labels, values, color="#4c72b0")
    shown = _error_bars(ax, list(range(len(values))), values, intervals or [None] * len(values))
    # With error bars the value sits inside the bar, where no error bar crosses it.
    ax.bar_label(drawn, labels=[format_number(v) for v in values], fontsize=8,
                 label_type="center" if shown else "edge", color="white" if shown else None)
    ax.margins(y=0.12)  # head-room for the value labels
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    set_margins(fig)
    fig.savefig(out, format="png")


def grouped_bars(groups: list[str], series: Mapping[str, tuple[list[float], list[Bounds]]],
                 title: str, ylabel: str, out: Path) -> None:
    """Side-by-side bars per group (e.g. start and trained per category), error bars from
    each value's interval, the value printed above its bar."""
    colours = ("#a0a0a0", "#4c72b0", "#dd8452", "#55a868")
    fig = new_figure(max(5.0, 1.6 * len(groups) + 2.0), 3.8)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(series))
    for i, (name, (values, intervals)) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, values, width * 0.95, label=name, color=colours[i % len(colours)])
        _error_bars(ax, xs, values, intervals)
        for x, v, iv in zip(xs, values, intervals, strict=True):
            top = iv[1] if iv is not None else v
            ax.annotate(f"{v:.2f}", (x, top), textcoords="offset points", xytext=(0, 3),
                        ha="center", fontsize=8)
    ax.set_xticks(list(range(len(groups))), groups)
    ax.margins(y=0.15)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    set_margins(fig, top=0.4)
    fig.subplots_adjust(right=1 - 1.3 / fig.get_size_inches()[0])  # room for the legend
    fig.savefig(out, format="png")


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both axes (lower KL and higher y), sorted by KL."""
    best: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not best or y > best[-1][1]:
            best.append((x, y))
    return best


def frontier(points: list[tuple[float, float, str]], ylabel: str, out: Path) -> None:
    fig = new_figure(6.0, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    ax.scatter([p[0] for p in points], [p[1] for p in points], color="#4c72b0", zorder=3)
    xs = [p[0] for p in points]
    mid = (min(xs) + max(xs)) / 2
    for x, y, label in points:
        # Right-half labels go left of their point so they are not cut off by the figure edge.
        right = x > mid
        ax.annotate(
            label,
            (x, y),
            textcoords="offset points",
            xytext=(-5 if right else 5, 5),
            ha="right" if right else "left",
            fontsize=8,
        )
    ax.margins(x=0.1, y=0.1)
    front = pareto([(x, y) for x, y, _ in points])
    if len(front) > 1:
        ax.plot(
            [p[0] for p in front],
            [p[1] for p in front],
            "--",
            color="#dd8452",
            label="Pareto frontier",
            zorder=2,
        )
        ax.legend(fontsize=8)
    ax.set_xlabel("KL to reference")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{ylabel} vs KL")
    ax.grid(alpha=0.3)
    set_margins(fig)
    fig.savefig(out, format="png")

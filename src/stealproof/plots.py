"""Trade-off plots (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.lines import Line2D


def tradeoff_scatter(
    names: Sequence[str],
    defender_acc: Sequence[float],
    clone_acc: Sequence[float],
    label_only_acc: Sequence[float] | None,
    *,
    victim_acc: float,
    title: str,
    path: str | Path,
) -> Path:
    """Defender accuracy (x) against clone accuracy (y), one coloured point per defense.

    Good defenses sit bottom-right: the defender keeps accuracy, the thief's clone loses it.
    """
    fig, ax = plt.subplots(figsize=(9.0, 5.5), dpi=120)
    cmap = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    handles: list[Line2D] = []
    for i, name in enumerate(names):
        color = cmap(i % cmap.N)
        ax.scatter(100 * defender_acc[i], 100 * clone_acc[i], color=color, s=60, zorder=3)
        if label_only_acc is not None:
            ax.scatter(
                100 * defender_acc[i], 100 * label_only_acc[i], color=color, marker="x", s=50
            )
        handles.append(Line2D([], [], color=color, marker="o", linestyle="", label=name))
    ax.axvline(100 * victim_acc, color="grey", linestyle=":", linewidth=1)
    # at least a 3-point window so that 0.1-point differences do not look dramatic
    lo, hi = 100 * min([*defender_acc, victim_acc]), 100 * max([*defender_acc, victim_acc])
    pad = max(0.0, 3.0 - (hi - lo)) / 2
    ax.set_xlim(lo - pad - 0.2, hi + pad + 0.2)
    handles.append(
        Line2D([], [], color="black", marker="o", linestyle="", label="soft-label thief")
    )
    if label_only_acc is not None:
        handles.append(
            Line2D([], [], color="black", marker="x", linestyle="", label="label-only thief")
        )
    handles.append(Line2D([], [], color="grey", linestyle=":", label="undefended victim"))
    ax.set_xlabel("defender accuracy on its test set (%)")
    ax.set_ylabel("clone accuracy on the victim's test set (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    p = Path(path)
    fig.savefig(p)
    plt.close(fig)
    return p


@dataclass
class TradeoffCurve:
    """One defense's sweep, points ordered by its knob (means over seeds)."""

    name: str
    defender_acc: list[float]
    l1: list[float]
    clone_acc: list[float | None]
    label_only_acc: list[float | None] = field(default_factory=list)


def _pct(values: Sequence[float | None]) -> list[float]:
    return [float("nan") if v is None else 100.0 * v for v in values]


#: Defender-accuracy window (points below the undefended victim) of the accuracy panel; settings
#: that cost more are off the scale (a note says how many), so they do not squash the rest.
ACCURACY_WINDOW = 12.0


def _zoom_accuracy_axis(
    ax: Axes, curves: Sequence[TradeoffCurve], undefended: TradeoffCurve | None
) -> None:
    """Limit the x-axis to the informative range and say how many settings fall outside it."""
    xs = [100.0 * v for c in curves for v in c.defender_acc]
    top = max([*xs, *(100.0 * v for v in (undefended.defender_acc if undefended else []))])
    low = top - ACCURACY_WINDOW
    hidden = sum(x < low for x in xs)
    if not hidden:
        return
    ax.set_xlim(low, top + 0.5)
    ax.text(
        0.02,
        0.02,
        f"{hidden} setting(s) cost more than {ACCURACY_WINDOW:g} points: off the scale",
        transform=ax.transAxes,
        fontsize=8,
        color="dimgray",
    )


def tradeoff_curves(
    curves: Sequence[TradeoffCurve],
    *,
    title: str,
    path: str | Path,
    undefended: TradeoffCurve | None = None,
) -> Path:
    """Two panels — defender accuracy vs clone accuracy, mean L1 vs clone accuracy.

    One line per defense (solid: the soft-label thief's clone; dotted with × markers: the
    label-only thief's clone, when there is one). Good defenses reach low clone accuracy at
    high defender accuracy (left panel, bottom-right) and at little distortion (right panel,
    bottom-left). ``undefended`` is drawn as a black star in both panels.
    """
    fig, (ax_acc, ax_l1) = plt.subplots(1, 2, figsize=(13.5, 5.6), dpi=120)
    cmap = plt.get_cmap("tab20")
    colors = [cmap(i) for i in (*range(0, 20, 2), *range(1, 20, 2))]
    any_label_only = False
    for i, c in enumerate(curves):
        color = colors[i % len(colors)]
        for ax, xs in ((ax_acc, _pct(c.defender_acc)), (ax_l1, list(c.l1))):
            ax.plot(xs, _pct(c.clone_acc), "-o", color=color, lw=1.8, ms=5, label=c.name, zorder=3)
            if c.label_only_acc and any(v is not None for v in c.label_only_acc):
                any_label_only = True
                ax.plot(xs, _pct(c.label_only_acc), ":x", color=color, lw=1.2, ms=5, alpha=0.8)
    if undefended is not None:
        for ax, x in (
            (ax_acc, 100.0 * undefended.defender_acc[0]),
            (ax_l1, undefended.l1[0]),
        ):
            ys = [*_pct(undefended.clone_acc), *_pct(undefended.label_only_acc)]
            ax.scatter([x] * len(ys), ys, marker="*", s=160, color="black", zorder=4)
    handles, labels = ax_acc.get_legend_handles_labels()
    if undefended is not None:
        handles.append(Line2D([], [], marker="*", color="black", ls="", ms=12))
        labels.append("undefended")
    handles.append(Line2D([], [], color="black", ls="-", marker="o"))
    labels.append("soft-label thief")
    if any_label_only:
        handles.append(Line2D([], [], color="black", ls=":", marker="x"))
        labels.append("label-only thief")
    ax_acc.set_xlabel("defender accuracy on its test set (%)  →  better for the defender")
    ax_l1.set_xlabel("mean L1 distortion of the answers the thief received")
    for ax in (ax_acc, ax_l1):
        ax.set_ylabel("clone accuracy on the victim's test set (%)")
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=9)
    _zoom_accuracy_axis(ax_acc, curves, undefended)
    ax_acc.set_title("accuracy cost vs theft", fontsize=10)
    ax_l1.set_title("distortion vs theft", fontsize=10)
    fig.suptitle(title, fontsize=11)
    fig.legend(handles, labels, loc="center right", fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 0.84, 0.95))
    p = Path(path)
    fig.savefig(p)
    plt.close(fig)
    return p


def worst_case_curves(
    curves: Sequence[TradeoffCurve],
    *,
    title: str,
    path: str | Path,
    undefended: TradeoffCurve | None = None,
    thieves: Sequence[Sequence[str]] = (),
) -> Path:
    """Defender accuracy against the *strongest* thief's clone accuracy, one line per defense.

    ``thieves[i][j]`` (optional) names the strongest thief at point j of curve i; points where
    it changes from the previous point are annotated, so the plot shows who wins where.
    """
    fig, ax = plt.subplots(figsize=(10.0, 5.8), dpi=120)
    cmap = plt.get_cmap("tab20")
    colors = [cmap(i) for i in (*range(0, 20, 2), *range(1, 20, 2))]
    for i, c in enumerate(curves):
        xs, ys = _pct(c.defender_acc), _pct(c.clone_acc)
        ax.plot(xs, ys, "-o", color=colors[i % len(colors)], lw=1.8, ms=5, label=c.name, zorder=3)
        names = thieves[i] if i < len(thieves) else []
        for j, name in enumerate(names):
            if j == 0 or name != names[j - 1]:
                ax.annotate(name, (xs[j], ys[j]), fontsize=6, alpha=0.7, xytext=(-4, 4),
                            textcoords="offset points", ha="right")  # fmt: skip
    if undefended is not None:
        ax.scatter(
            _pct(undefended.defender_acc), _pct(undefended.clone_acc), marker="*", s=160,
            color="black", zorder=4, label="undefended",
        )  # fmt: skip
    _zoom_accuracy_axis(ax, curves, undefended)
    ax.set_xlabel("defender accuracy on its test set (%)  →  better for the defender")
    ax.set_ylabel("strongest thief's clone accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    p = Path(path)
    fig.savefig(p)
    plt.close(fig)
    return p

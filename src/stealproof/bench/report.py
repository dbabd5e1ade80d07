"""``report.md``, ``results.csv`` and ``tradeoff_*.png`` from result rows only.

Rows are grouped by (scenario, attack, budget). For each group and each defense, the thief's
error (100 − clone accuracy, in %) is interpolated on the defense's sweep
(:func:`stealproof.metrics.thief_error_at_defender_cost` and
:func:`~stealproof.metrics.thief_error_at_distortion`) at +1/+2/+5 points of defender error and
at mean L1 0.1/0.2/0.5 of the thief's answers. Each seed's sweep starts at that seed's undefended
(``none``) point; the table shows the mean over the seeds whose sweep reaches the point, and "–"
where none does.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stealproof import metrics
from stealproof.bench.config import attack_label
from stealproof.bench.store import CSV_NAME, ResultStore, write_csv, write_text_atomic
from stealproof.fingerprint import canonical_json

Row = Mapping[str, Any]

COST_POINTS: tuple[float, ...] = (1.0, 2.0, 5.0)
L1_POINTS: tuple[float, ...] = (0.1, 0.2, 0.5)
REPORT = "report.md"


@dataclass(frozen=True)
class Group:
    """One table of the report (and one plot)."""

    scenario: str
    attack: str
    budget: int
    rows: tuple[Row, ...]

    @property
    def defenses(self) -> list[str]:
        """Defense names, ``none`` first, then in the order they appear."""
        names = list(dict.fromkeys(r["defense"] for r in self.rows))
        return sorted(names, key=lambda n: n != "none")

    def of(self, defense: str) -> list[Row]:
        return [r for r in self.rows if r["defense"] == defense]

    @property
    def seeds(self) -> list[int]:
        return sorted({int(r["seed"]) for r in self.rows})


def group_rows(rows: Iterable[Row]) -> list[Group]:
    """Rows by (scenario, attack label, budget), in order of first appearance."""
    groups: dict[tuple[str, str, int], list[Row]] = {}
    for r in rows:
        key = (str(r["scenario"]), attack_label(r["attack"], r["attack_params"]), int(r["budget"]))
        groups.setdefault(key, []).append(r)
    return [Group(s, a, b, tuple(rs)) for (s, a, b), rs in groups.items()]


# --------------------------------------------------------------------------- numbers


def _finite(values: Iterable[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def mean(values: Iterable[float | None]) -> float:
    """Mean of the finite values; NaN when there are none."""
    v = _finite(values)
    return math.fsum(v) / len(v) if v else math.nan


def setting_key(params: Mapping[str, Any]) -> str:
    return canonical_json(dict(params))


def setting_text(params: Mapping[str, Any]) -> str:
    """``beta=0.3, gamma=0.2`` (``–`` for no parameters)."""
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "–"


def _sortable(v: Any) -> tuple[int, float, str]:
    if isinstance(v, bool) or v is None:
        return (0, float(bool(v)), "")
    if isinstance(v, int | float):
        return (1, float(v), "")
    return (2, 0.0, json.dumps(v, sort_keys=True))


def knob_order(settings: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Settings sorted by the parameters that vary between them (the knob), in key order."""
    keys = list(dict.fromkeys(k for s in settings for k in s))
    varying = [k for k in keys if len({canonical_json(s.get(k)) for s in settings}) > 1]
    return sorted(settings, key=lambda s: [_sortable(s.get(k)) for k in varying])


def thief_errors(group: Group, defense: str, field: str) -> dict[str, float]:
    """Thief error (%) at the cost and L1 points for one defense, mean over seeds."""
    per_point: dict[str, list[float]] = {}
    for seed in group.seeds:
        mine = [r for r in group.of(defense) if r["seed"] == seed and r.get(field) is not None]
        if not mine:
            continue
        base = [r for r in group.of("none") if r["seed"] == seed and r.get(field) is not None]
        undefended = float(base[0]["defender_acc"]) if base else float(mine[0]["victim_acc"])
        points = ([base[0]] if base and defense != "none" else []) + mine
        accs = [float(r[field]) for r in points]
        at_cost = metrics.thief_error_at_defender_cost(
            [float(r["defender_acc"]) for r in points], accs, undefended, COST_POINTS
        )
        at_l1 = metrics.thief_error_at_distortion(
            [float(r["l1_queries"]) for r in points], accs, L1_POINTS
        )
        for p, v in at_cost.items():
            per_point.setdefault(f"+{p:g} pt", []).append(v)
        for p, v in at_l1.items():
            per_point.setdefault(f"L1 {p:g}", []).append(v)
    names = [f"+{p:g} pt" for p in COST_POINTS] + [f"L1 {p:g}" for p in L1_POINTS]
    return {n: mean(per_point.get(n, [])) for n in names}


@dataclass(frozen=True)
class SettingMean:
    """One setting of one defense, averaged over its seeds."""

    params: Mapping[str, Any]
    defender_acc: float
    l1: float
    kl: float
    clone_acc: float
    fidelity: float
    label_only_acc: float
    seeds: int


def setting_means(group: Group, defense: str) -> list[SettingMean]:
    """The defense's settings in knob order, each averaged over seeds."""
    by_key: dict[str, list[Row]] = {}
    params: dict[str, Mapping[str, Any]] = {}
    for r in group.of(defense):
        k = setting_key(r["params"])
        by_key.setdefault(k, []).append(r)
        params[k] = r["params"]
    out = []
    for p in knob_order(list(params.values())):
        rs = by_key[setting_key(p)]
        out.append(
            SettingMean(
                params=p,
                defender_acc=mean(r["defender_acc"] for r in rs),
                l1=mean(r["l1_queries"] for r in rs),
                kl=mean(r["kl_queries"] for r in rs),
                clone_acc=mean(r.get("clone_acc") for r in rs),
                fidelity=mean(r.get("clone_fidelity") for r in rs),
                label_only_acc=mean(r.get("label_only_clone_acc") for r in rs),
                seeds=len({r["seed"] for r in rs}),
            )
        )
    return out


# --------------------------------------------------------------------------- markdown


def _pct(v: float) -> str:
    return "–" if math.isnan(v) else f"{100 * v:.1f}%"


def _num(v: float, digits: int = 1) -> str:
    return "–" if math.isnan(v) else f"{v:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> list[str]:
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|")
    lines.extend("| " + " | ".join(r) + " |" for r in rows)
    return lines


def _has(group: Group, field: str) -> bool:
    return any(r.get(field) is not None for r in group.rows)


def _thief_table(group: Group, field: str, with_strongest: bool) -> list[str]:
    header = ["defense", "settings"]
    header += [f"at +{p:g} pt" for p in COST_POINTS] + [f"at L1 {p:g}" for p in L1_POINTS]
    if with_strongest:
        header += ["strongest setting", "clone acc", "label-only clone acc"]
    body = []
    for d in group.defenses:
        errs = thief_errors(group, d, field)
        means = setting_means(group, d)
        line = [f"`{d}`", str(len(means)), *(_num(v) for v in errs.values())]
        if with_strongest:
            strongest = max(means, key=lambda m: -1.0 if math.isnan(m.l1) else m.l1)
            line += [
                setting_text(strongest.params),
                _pct(strongest.clone_acc),
                _pct(strongest.label_only_acc),
            ]
        body.append(line)
    align = "ll" + "r" * (len(header) - 2)
    if with_strongest:
        align = "ll" + "r" * 6 + "lrr"
    return _table(header, body, align)


def plot_name(group: Group, groups: Sequence[Group]) -> str:
    """``tradeoff_<scenario>_<attack>.png`` (plus ``_<budget>q`` when budgets differ)."""

    def slug(s: str) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", s).strip("-") or "x"

    budgets = {g.budget for g in groups if (g.scenario, g.attack) == (group.scenario, group.attack)}
    suffix = f"_{group.budget}q" if len(budgets) > 1 else ""
    return f"tradeoff_{slug(group.scenario)}_{slug(group.attack)}{suffix}.png"


def render_markdown(rows: Sequence[Row]) -> str:
    """The whole report as markdown (plots are referenced by file name)."""
    groups = group_rows(rows)
    versions = sorted({str(r.get("version")) for r in rows})
    lines = [
        "# Benchmark report",
        "",
        f"Built from `results.jsonl`: {len(rows)} cells, stealproof {', '.join(versions) or '?'}.",
        "",
        "How to read it: the *thief error* is 100 − the clone's accuracy on the victim's test set "
        "(%), so higher is better for the defender. *at +N pt* interpolates it on each "
        "defense's sweep where the defender has lost N points of accuracy against the "
        "undefended victim; *at L1 x* where the thief's answers are distorted by a mean L1 of x. "
        "Every sweep starts at the undefended (`none`) point of the same seed; values are means "
        "over seeds, and – means the sweep does not reach that point. The *strongest setting* "
        "is the one with the largest mean L1 distortion.",
    ]
    if not rows:
        lines += ["", "No results yet."]
    scenario = None
    for g in groups:
        if g.scenario != scenario:
            scenario = g.scenario
            r0 = g.rows[0]
            lines += ["", f"## {g.scenario} ({r0['model']} on {r0['dataset']}, pool {r0['pool']})"]
        victim = mean(r["victim_acc"] for r in g.rows)
        seeds = ", ".join(str(s) for s in g.seeds)
        lines += [
            "",
            f"### {g.attack}, {g.budget} queries",
            "",
            f"Victim accuracy {_pct(victim)} (mean over seeds: {seeds}).",
        ]
        if _has(g, "clone_acc"):
            lines += ["", "Soft-label thief — thief error (%):", ""]
            lines += _thief_table(g, "clone_acc", with_strongest=True)
        if _has(g, "label_only_clone_acc"):
            lines += ["", "Label-only thief (the counter-attack) — thief error (%):", ""]
            lines += _thief_table(g, "label_only_clone_acc", with_strongest=False)
        body = []
        for d in g.defenses:
            for m in setting_means(g, d):
                body.append(
                    [
                        f"`{d}`",
                        setting_text(m.params),
                        _pct(m.defender_acc),
                        _num(m.l1, 3),
                        _num(m.kl, 3),
                        _pct(m.clone_acc),
                        _pct(m.fidelity),
                        _pct(m.label_only_acc),
                        str(m.seeds),
                    ]
                )
        lines += ["", "Every setting (means over seeds):", ""]
        lines += _table(
            [
                "defense",
                "setting",
                "defender acc",
                "mean L1",
                "mean KL",
                "clone acc",
                "fidelity",
                "label-only clone acc",
                "seeds",
            ],
            body,
            "llrrrrrrr",
        )
        lines += ["", f"![trade-offs: {g.scenario}, {g.attack}]({plot_name(g, groups)})"]
    return "\n".join(lines) + "\n"


def write_plots(rows: Sequence[Row], out_dir: str | Path) -> list[Path]:
    """One ``tradeoff_*.png`` per group; returns the paths written."""
    from stealproof.plots import TradeoffCurve, tradeoff_curves

    out = Path(out_dir)
    groups = group_rows(rows)
    paths = []
    for g in groups:
        none = setting_means(g, "none")
        start = none[0] if none else None
        curves = []
        for d in g.defenses:
            if d == "none":
                continue
            ms = ([start] if start is not None else []) + setting_means(g, d)
            curves.append(
                TradeoffCurve(
                    name=d,
                    defender_acc=[m.defender_acc for m in ms],
                    l1=[m.l1 for m in ms],
                    clone_acc=[None if math.isnan(m.clone_acc) else m.clone_acc for m in ms],
                    label_only_acc=[
                        None if math.isnan(m.label_only_acc) else m.label_only_acc for m in ms
                    ],
                )
            )
        undefended = None
        if start is not None:
            undefended = TradeoffCurve(
                name="none",
                defender_acc=[start.defender_acc],
                l1=[start.l1],
                clone_acc=[None if math.isnan(start.clone_acc) else start.clone_acc],
                label_only_acc=[None if math.isnan(start.label_only_acc) else start.label_only_acc],
            )
        r0 = g.rows[0]
        title = (
            f"{g.scenario} ({r0['model']} on {r0['dataset']}): {g.attack}, {g.budget} queries "
            f"from {r0['pool']}, seed{'s' if len(g.seeds) > 1 else ''} "
            f"{', '.join(str(s) for s in g.seeds)}"
        )
        paths.append(
            tradeoff_curves(
                curves, title=title, path=out / plot_name(g, groups), undefended=undefended
            )
        )
    return paths


@dataclass(frozen=True)
class Outputs:
    """Files written by :func:`write_outputs`."""

    csv: Path
    report: Path
    plots: list[Path]
    rows: int


def write_outputs(out_dir: str | Path) -> Outputs:
    """Rebuild ``results.csv``, ``report.md`` and the plots from ``results.jsonl`` alone."""
    out = Path(out_dir)
    store = ResultStore(out)
    if not store.path.is_file():
        raise FileNotFoundError(f"{store.path}: no results here (run `stealproof bench run`)")
    rows = store.rows()
    csv_path = write_csv(rows, out / CSV_NAME)
    report = write_text_atomic(out / REPORT, render_markdown(rows))
    plots = write_plots(rows, out)
    return Outputs(csv=csv_path, report=report, plots=plots, rows=len(rows))

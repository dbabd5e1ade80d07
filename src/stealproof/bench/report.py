"""``report.md``, ``results.csv`` and ``tradeoff_*.png`` from result rows only.

Rows are grouped by (scenario, attack, budget). A defense's settings split into *knob paths*
(:func:`knob_paths`): the knob is the first numeric parameter that varies, and every fixed
combination of the other varying parameters is its own curve — GRAD²'s ``target=all_ones`` and
``target=min_ip, preserve_argmax=True`` sweeps are two curves, never one. Along each curve the
thief's error (100 − clone accuracy, in %) is interpolated
(:func:`stealproof.metrics.thief_error_at_defender_cost` and
:func:`~stealproof.metrics.thief_error_at_distortion`) at +1/+2/+5 points of defender error and
at mean L1 0.1/0.2/0.5 of the thief's answers. Each seed's curve starts at that seed's undefended
(``none``) point; the table shows the mean over the seeds whose curve reaches the point, and "–"
where none does. The *strongest setting* of a curve is the one with the highest thief error
among the settings that cost the defender at most the largest cost column (+5 points).
A metric recorded as null (not measured, or not finite) is left out of every mean.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stealproof import metrics
from stealproof._io import atomic_target, check_output_dir, write_text_atomic
from stealproof.bench.config import attack_label
from stealproof.bench.curves import (
    Curve,
    _is_number,
    defense_of,
    knob_paths,
    setting_key,
    setting_text,
)
from stealproof.bench.store import CSV_NAME, ResultsFileError, ResultStore, write_csv
from stealproof.bench.worst_case import WorstCurve, WorstPoint, strongest_within, worst_curves

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
        names = list(dict.fromkeys(defense_of(r) for r in self.rows))
        return sorted(names, key=lambda n: n != "none")

    def of(self, defense: str) -> list[Row]:
        return [r for r in self.rows if defense_of(r) == defense]

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


def _usable(r: Row, *fields: str) -> bool:
    """True when each field is a finite number (null = not measured or not finite)."""
    for f in fields:
        v = r.get(f)
        if v is None or not _is_number(v) or not math.isfinite(float(v)):
            return False
    return True


def thief_errors(
    group: Group, defense: str, field: str, curve: Curve | None = None
) -> dict[str, float]:
    """Thief error (%) at the cost and L1 points along one curve, mean over seeds.

    ``curve`` defaults to the defense's only curve; a defense with several curves needs one.
    """
    if curve is None:
        curves = knob_paths(group.rows, defense)
        if len(curves) > 1:
            raise ValueError(f"thief_errors: {defense} has {len(curves)} knob paths; pick one")
        curve = curves[0] if curves else Curve(defense, None, {}, ())
    per_point: dict[str, list[float]] = {}
    for seed in group.seeds:
        mine = [
            r
            for r in group.of(defense)
            if r["seed"] == seed and curve.holds(r) and _usable(r, field, "defender_acc")
        ]
        if not mine:
            continue
        base = [
            r
            for r in group.of("none")
            if r["seed"] == seed and _usable(r, field, "defender_acc", "l1_queries")
        ]
        if base:
            undefended = float(base[0]["defender_acc"])
        elif _usable(mine[0], "victim_acc"):
            undefended = float(mine[0]["victim_acc"])
        else:
            continue
        points = ([base[0]] if base and defense != "none" else []) + mine
        accs = [float(r[field]) for r in points]
        at_cost = metrics.thief_error_at_defender_cost(
            [float(r["defender_acc"]) for r in points], accs, undefended, COST_POINTS
        )
        with_l1 = [r for r in points if _usable(r, "l1_queries")]
        at_l1 = metrics.thief_error_at_distortion(
            [float(r["l1_queries"]) for r in with_l1],
            [float(r[field]) for r in with_l1],
            L1_POINTS,
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


def setting_means(group: Group, defense: str, curve: Curve | None = None) -> list[SettingMean]:
    """The settings of one curve (default: every curve in turn) in knob order, seed means."""
    by_key: dict[str, list[Row]] = {}
    for r in group.of(defense):
        by_key.setdefault(setting_key(r["params"]), []).append(r)
    curves = [curve] if curve is not None else knob_paths(group.rows, defense)
    out = []
    for p in (s for c in curves for s in c.settings):
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


def undefended_acc(group: Group) -> float:
    """The defender's undefended accuracy: mean over the ``none`` rows (else the victim's)."""
    none = mean(r.get("defender_acc") for r in group.of("none"))
    return none if not math.isnan(none) else mean(r.get("victim_acc") for r in group.rows)


def strongest_setting(
    group: Group, curve: Curve, max_cost: float = COST_POINTS[-1]
) -> SettingMean | None:
    """The curve's setting with the lowest clone accuracy among those within ``max_cost``.

    ``max_cost`` is in points of defender accuracy lost against :func:`undefended_acc`; a
    setting that costs more (MAD past its accuracy cliff) is never the strongest. None when no
    setting qualifies.
    """
    base = undefended_acc(group)
    if math.isnan(base):
        return None
    ok = [
        m
        for m in setting_means(group, curve.defense, curve)
        if not math.isnan(m.defender_acc)
        and not math.isnan(m.clone_acc)
        and 100.0 * (base - m.defender_acc) <= max_cost + 1e-9
    ]
    if not ok:
        return None
    return min(ok, key=lambda m: (m.clone_acc, base - m.defender_acc))


def _thief_table(group: Group, field: str, with_strongest: bool) -> list[str]:
    header = ["defense", "knob path", "settings"]
    header += [f"at +{p:g} pt" for p in COST_POINTS] + [f"at L1 {p:g}" for p in L1_POINTS]
    cost = COST_POINTS[-1]
    if with_strongest:
        header += [f"strongest within +{cost:g} pt", "clone acc", "label-only clone acc"]
    body = []
    for d in group.defenses:
        for curve in knob_paths(group.rows, d):
            errs = thief_errors(group, d, field, curve)
            knob = f"{curve.knob} ({curve.label})" if curve.knob and curve.fixed else curve.knob
            line = [
                f"`{d}`",
                knob or curve.label,
                str(len(curve.settings)),
                *(_num(v) for v in errs.values()),
            ]
            if with_strongest:
                best = strongest_setting(group, curve, cost)
                line += (
                    [setting_text(best.params), _pct(best.clone_acc), _pct(best.label_only_acc)]
                    if best is not None
                    else ["–", "–", "–"]
                )
            body.append(line)
    align = "lll" + "r" * (len(header) - 3)
    if with_strongest:
        align = "lll" + "r" * 6 + "lrr"
    return _table(header, body, align)


def _slug(s: str) -> str:
    """A file-name-safe form of a scenario or attack label."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", s).strip("-") or "x"


def plot_name(group: Group, groups: Sequence[Group]) -> str:
    """``tradeoff_<scenario>_<attack>.png`` (plus ``_<budget>q`` when budgets differ)."""

    budgets = {g.budget for g in groups if (g.scenario, g.attack) == (group.scenario, group.attack)}
    suffix = f"_{group.budget}q" if len(budgets) > 1 else ""
    return f"tradeoff_{_slug(group.scenario)}_{_slug(group.attack)}{suffix}.png"


def worst_case_groups(rows: Sequence[Row]) -> list[tuple[str, int, list[Row]]]:
    """(scenario, budget, rows of every attack) where more than one thief was measured."""
    from stealproof.bench.worst_case import thief_accuracies

    by: dict[tuple[str, int], list[Row]] = {}
    for r in rows:
        by.setdefault((str(r["scenario"]), int(r["budget"])), []).append(r)
    out = []
    for (scenario, budget), rs in by.items():
        thieves = {t for r in rs for t in thief_accuracies(r)}
        if len(thieves) > 1:
            out.append((scenario, budget, rs))
    return out


def worst_case_name(scenario: str, budget: int, groups: Sequence[tuple[str, int, Any]]) -> str:
    """``worstcase_<scenario>.png`` (plus ``_<budget>q`` when the scenario has several)."""
    several = sum(1 for s, _, _ in groups if s == scenario) > 1
    return f"worstcase_{_slug(scenario)}{f'_{budget}q' if several else ''}.png"


def _worst_case_section(scenario: str, budget: int, rows: Sequence[Row], plot: str) -> list[str]:
    base, curves = worst_curves(rows, COST_POINTS)
    thieves = sorted({t for c in curves for p in c.points for t in p.per_thief})
    if base is not None:
        thieves = sorted({*thieves, *base.per_thief})
    cost = COST_POINTS[-1]
    lines = [
        "",
        f"### Worst case over {len(thieves)} thieves, {budget} queries",
        "",
        "For each setting, the strongest thief is the one whose clone is most accurate (means "
        "over seeds); the worst-case thief error is interpolated along each knob path from the "
        f"undefended worst case. Thieves: {', '.join(thieves)}.",
        "",
    ]
    header = ["defense", "knob path", "settings"]
    header += [f"worst case at +{p:g} pt" for p in COST_POINTS]
    header += [f"strongest within +{cost:g} pt", "defender acc", "worst clone acc", "by"]
    body = []
    if base is not None:
        body.append(["`none`", "–", "1", *("–" for _ in COST_POINTS),
                     "–", _pct(base.defender_acc), _pct(base.clone_acc), base.thief])  # fmt: skip
    undefended = base.defender_acc if base is not None else math.nan
    for c in curves:
        best = strongest_within(c, undefended, cost) if not math.isnan(undefended) else None
        line = [
            f"`{c.defense}`",
            c.label,
            str(len(c.points)),
            *(_num(v) for v in c.errors.values()),
        ]
        if best is None:
            line += ["–", "–", "–", "–"]
        else:
            line += [setting_text(best.params), _pct(best.defender_acc), _pct(best.clone_acc),
                     best.thief]  # fmt: skip
        body.append(line)
    lines += _table(header, body, "lll" + "r" * len(COST_POINTS) + "lrrl")
    every = []
    for p in ([base] if base is not None else []) + [p for c in curves for p in c.points]:
        every.append([f"`{p.defense}`", setting_text(p.params), _pct(p.defender_acc),
                      _pct(p.clone_acc), p.thief if p.per_thief else "–",
                      str(len(p.per_thief))])  # fmt: skip
    lines += ["", "Every setting under its strongest thief:", ""]
    lines += _table(
        ["defense", "setting", "defender acc", "worst clone acc", "strongest thief", "thieves"],
        every,
        "llrrlr",
    )
    lines += ["", f"![worst case: {scenario}, {budget} queries]({plot})"]
    return lines


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
        "(%), so higher is better for the defender. Each defense's settings form one curve per "
        "*knob path* (the knob swept, the other parameters fixed). *at +N pt* interpolates the "
        "thief error along a curve where the defender has lost N points of accuracy against "
        "the undefended victim; *at L1 x* where the thief's answers are distorted by a mean L1 "
        "of x. Every curve starts at the undefended (`none`) point of the same seed; values are "
        "means over seeds, and – means the curve does not reach that point. The *strongest "
        f"setting* is the one with the highest thief error among the settings that cost the "
        f"defender at most {COST_POINTS[-1]:g} points (– when none does). Null metrics (not "
        "measured, or not finite) are left out of the means. Where several thieves (attacks, "
        "and the label-only counter-attack) were measured, each scenario opens with the *worst "
        "case*: every defense setting scored against its strongest thief.",
    ]
    if not rows:
        lines += ["", "No results yet."]
    scenario = None
    worst = worst_case_groups(rows)
    for g in groups:
        if g.scenario != scenario:
            scenario = g.scenario
            r0 = g.rows[0]
            lines += ["", f"## {g.scenario} ({r0['model']} on {r0['dataset']}, pool {r0['pool']})"]
            for s, budget, rs in worst:
                if s == scenario:
                    plot = worst_case_name(s, budget, worst)
                    lines += _worst_case_section(s, budget, rs, plot)
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
            paths_d = knob_paths(g.rows, d)
            for curve in paths_d:
                ms = ([start] if start is not None else []) + setting_means(g, d, curve)
                name = d if len(paths_d) == 1 else f"{d} ({curve.label})"
                curves.append(_tradeoff_curve(TradeoffCurve, name, ms))
        undefended = None
        if start is not None:
            undefended = _tradeoff_curve(TradeoffCurve, "none", [start])
        r0 = g.rows[0]
        title = (
            f"{g.scenario} ({r0['model']} on {r0['dataset']}): {g.attack}, {g.budget} queries "
            f"from {r0['pool']}, seed{'s' if len(g.seeds) > 1 else ''} "
            f"{', '.join(str(s) for s in g.seeds)}"
        )
        target = out / plot_name(g, groups)
        with atomic_target(target) as tmp:
            tradeoff_curves(curves, title=title, path=tmp, undefended=undefended)
        paths.append(target)
    worst = worst_case_groups(rows)
    for scenario, budget, rs in worst:
        paths.append(
            _write_worst_plot(scenario, budget, rs, out / worst_case_name(scenario, budget, worst))
        )
    return paths


def _write_worst_plot(scenario: str, budget: int, rows: Sequence[Row], target: Path) -> Path:
    """Defender accuracy against the strongest thief's clone, one line per knob path."""
    from stealproof.plots import TradeoffCurve, worst_case_curves

    base, curves = worst_curves(rows, COST_POINTS)
    per_defense = {c.defense: sum(1 for o in curves if o.defense == c.defense) for c in curves}

    def line(name: str, points: Sequence[WorstPoint]) -> TradeoffCurve:
        pts = [p for p in points if p.per_thief and not math.isnan(p.defender_acc)]
        return TradeoffCurve(name, [p.defender_acc for p in pts], [math.nan] * len(pts),
                             [p.clone_acc for p in pts])  # fmt: skip

    def chain(c: WorstCurve) -> list[WorstPoint]:
        return ([base] if base is not None else []) + list(c.points)

    names = [
        c.defense if per_defense[c.defense] == 1 else f"{c.defense} ({c.label})" for c in curves
    ]
    plotted = [line(n, chain(c)) for n, c in zip(names, curves, strict=True)]
    thieves = [[p.thief for p in chain(c) if p.per_thief and not math.isnan(p.defender_acc)]
               for c in curves]  # fmt: skip
    undefended = line("none", [base]) if base is not None else None
    seeds = sorted({int(r["seed"]) for r in rows})
    title = (f"{scenario}: worst case over thieves, {budget} queries, "
             f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}")  # fmt: skip
    with atomic_target(target) as tmp:
        worst_case_curves(plotted, title=title, path=tmp, undefended=undefended, thieves=thieves)
    return target


def _tradeoff_curve(cls: Any, name: str, ms: Sequence[SettingMean]) -> Any:
    """A plot curve from setting means (NaN becomes a gap)."""

    def opt(v: float) -> float | None:
        return None if math.isnan(v) else v

    return cls(
        name=name,
        defender_acc=[m.defender_acc for m in ms],
        l1=[m.l1 for m in ms],
        clone_acc=[opt(m.clone_acc) for m in ms],
        label_only_acc=[opt(m.label_only_acc) for m in ms],
    )


@dataclass(frozen=True)
class Outputs:
    """Files written by :func:`write_outputs`."""

    csv: Path
    report: Path
    plots: list[Path]
    rows: int


def write_outputs(out_dir: str | Path) -> Outputs:
    """Rebuild ``results.csv``, ``report.md`` and the plots from ``results.jsonl`` alone.

    Refuses (``ResultsFileError``) a missing or empty results file and a file with a line
    that is not a result row, before writing anything. Every file goes through a rename.
    """
    out = Path(out_dir)
    store = ResultStore(out)
    if not store.path.is_file():
        raise ResultsFileError(f"{store.path}: no results here (run `stealproof bench run`)")
    rows = store.rows()
    if not rows:
        raise ResultsFileError(
            f"{store.path}: holds no result rows (run `stealproof bench run` into {out})"
        )
    check_output_dir(out, "DIR")
    csv_path = write_csv(rows, out / CSV_NAME)
    report = write_text_atomic(out / REPORT, render_markdown(rows))
    plots = write_plots(rows, out)
    return Outputs(csv=csv_path, report=report, plots=plots, rows=len(rows))

"""The strongest thief per defense setting: the worst case a defender must plan for.

A *thief* is one attack setting (its label, e.g. ``knockoff-random``) with one way of training
its clone — on the soft answers (``clone_acc``) or on their top-1 labels only
(``label_only_clone_acc``, the counter-attack). For every defense setting of one
(scenario, budget), each thief's clone accuracy is averaged over seeds, and the *worst case*
is the highest of those means, with the thief's name. Along each knob path of a defense
(:func:`stealproof.bench.curves.knob_paths`) the worst-case thief error (100 − clone accuracy)
is interpolated at +1/+2/+5 points of defender error, starting from the undefended setting's
worst case. A setting that some thief did not face is still scored over the thieves that did
(the report says how many).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stealproof import metrics
from stealproof.bench.config import attack_label
from stealproof.bench.curves import defense_of, knob_paths, setting_key

Row = Mapping[str, Any]

#: Clone-accuracy fields of a row and the suffix of the thief they belong to.
CLONE_FIELDS: tuple[tuple[str, str], ...] = (
    ("clone_acc", ""),
    ("label_only_clone_acc", " (label-only)"),
)


def _finite(v: Any) -> float | None:
    if v is None or isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(float(v)) else None


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else math.nan


def thief_accuracies(row: Row) -> dict[str, float]:
    """``{thief name: clone accuracy}`` of one result row (unmeasured clones left out)."""
    label = attack_label(row["attack"], row.get("attack_params") or {})
    out = {}
    for name, suffix in CLONE_FIELDS:
        v = _finite(row.get(name))
        if v is not None:
            out[label + suffix] = v
    return out


@dataclass(frozen=True)
class WorstPoint:
    """One defense setting against every thief that faced it (means over seeds)."""

    defense: str
    params: Mapping[str, Any]
    defender_acc: float
    per_thief: Mapping[str, float]

    @property
    def thief(self) -> str:
        """The strongest thief (highest clone accuracy; ties: the first name in sort order)."""
        return min(self.per_thief, key=lambda t: (-self.per_thief[t], t))

    @property
    def clone_acc(self) -> float:
        return self.per_thief[self.thief] if self.per_thief else math.nan


@dataclass(frozen=True)
class WorstCurve:
    """One knob path of a defense under its strongest thieves."""

    defense: str
    label: str
    points: tuple[WorstPoint, ...]
    errors: Mapping[str, float] = field(default_factory=dict)


def worst_points(rows: Sequence[Row]) -> dict[tuple[str, str], WorstPoint]:
    """Every (defense, setting key) of ``rows`` (one scenario and budget) → its worst case."""
    accs: dict[tuple[str, str], dict[str, dict[int, float]]] = {}
    defender: dict[tuple[str, str], list[float]] = {}
    params: dict[tuple[str, str], Mapping[str, Any]] = {}
    for r in rows:
        key = (defense_of(r), setting_key(r["params"]))
        params.setdefault(key, r["params"])
        d = _finite(r.get("defender_acc"))
        if d is not None:
            defender.setdefault(key, []).append(d)
        for thief, acc in thief_accuracies(r).items():
            accs.setdefault(key, {}).setdefault(thief, {})[int(r["seed"])] = acc
    out = {}
    for key, p in params.items():
        per_thief = {t: _mean(list(s.values())) for t, s in accs.get(key, {}).items()}
        out[key] = WorstPoint(key[0], p, _mean(defender.get(key, [])), per_thief)
    return out


def worst_curves(
    rows: Sequence[Row], cost_points: Sequence[float]
) -> tuple[WorstPoint | None, list[WorstCurve]]:
    """The undefended worst case and, per defense knob path, its worst-case curve with the
    thief error (%) interpolated at ``cost_points`` (NaN where the curve does not reach)."""
    points = worst_points(rows)
    nones = [p for (d, _), p in points.items() if d == "none" and p.per_thief]
    base = nones[0] if nones else None
    defenses = list(dict.fromkeys(d for r in rows if (d := defense_of(r)) != "none"))
    curves = []
    for d in defenses:
        for path in knob_paths(rows, d):
            pts = tuple(points[(d, setting_key(s))] for s in path.settings)
            usable = [p for p in pts if p.per_thief and not math.isnan(p.defender_acc)]
            errors = {f"+{c:g} pt": math.nan for c in cost_points}
            if base is not None and not math.isnan(base.defender_acc) and usable:
                chain = [base, *usable]
                at = metrics.thief_error_at_defender_cost(
                    [p.defender_acc for p in chain],
                    [p.clone_acc for p in chain],
                    base.defender_acc,
                    cost_points,
                )
                errors = {f"+{c:g} pt": v for c, v in at.items()}
            curves.append(WorstCurve(d, path.label, pts, errors))
    return base, curves


def strongest_within(
    curve: WorstCurve, undefended_acc: float, max_cost: float
) -> WorstPoint | None:
    """The curve's setting whose worst-case clone is weakest among those costing the defender
    at most ``max_cost`` points; None when none qualifies."""
    ok = [
        p
        for p in curve.points
        if p.per_thief
        and not math.isnan(p.defender_acc)
        and 100.0 * (undefended_acc - p.defender_acc) <= max_cost + 1e-9
    ]
    return min(ok, key=lambda p: (p.clone_acc, undefended_acc - p.defender_acc)) if ok else None

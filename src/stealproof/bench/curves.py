"""Knob paths: a defense's settings split into curves along the one parameter that is swept.

The knob is the first numeric parameter that varies; every fixed combination of the other
varying parameters is its own curve — GRAD²'s ``target=all_ones`` and ``target=min_ip,
preserve_argmax=True`` sweeps are two curves, never one. Used by the report's per-attack tables
and by the worst case over thieves.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stealproof.fingerprint import canonical_json

Row = Mapping[str, Any]


def defense_of(row: Row) -> str:
    """The defense a row measured, as the report names it: its output defense after the victim
    (when not the scenario's plain one) and the detection policy (when there is one) —
    ``ini+prada(max_flagged=40)+mad``; ``ini`` with no output defense — so each combination is
    its own curve."""
    layers = [str(row[k]) for k in ("victim", "policy") if row.get(k)]
    if row["defense"] != "none" or not layers:
        layers.append(str(row["defense"]))
    return "+".join(layers)


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


#: Keys of a defense config that never define a curve (the cell's seed follows the row's seed).
_NOT_A_KNOB = frozenset({"seed"})


def effective_setting(row: Row) -> dict[str, Any]:
    """The row's setting with defaults filled in (its ``defense_config`` less the seed).

    ``{eps: 1.0}`` and ``{eps: 2.0, preserve_argmax: true}`` then differ in ``preserve_argmax``
    even though the first does not name it. Rows without a config fall back to ``params``.
    """
    cfg = row.get("defense_config")
    if not isinstance(cfg, Mapping):
        return dict(row["params"])
    out = {k: v for k, v in cfg.items() if k not in _NOT_A_KNOB}
    out.update({k: v for k, v in row["params"].items() if k in _NOT_A_KNOB})
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


@dataclass(frozen=True)
class Curve:
    """One knob path of a defense: its settings in knob order, the other parameters fixed."""

    defense: str
    knob: str | None
    fixed: Mapping[str, Any]
    settings: tuple[Mapping[str, Any], ...]

    @property
    def label(self) -> str:
        """``target=min_ip, preserve_argmax=True`` (``–`` when the defense has one curve)."""
        return setting_text(self.fixed)

    def holds(self, row: Row) -> bool:
        """True when the row's setting is one of this curve's."""
        key = setting_key(row["params"])
        return any(setting_key(s) == key for s in self.settings)


def knob_paths(rows: Sequence[Row], defense: str) -> list[Curve]:
    """The defense's settings split into curves along one knob (see the module doc).

    The knob is the first numeric parameter (in the order the settings name them) whose value
    varies; each combination of the other varying parameters is one curve, in order of first
    appearance. A defense with no numeric knob gets one single-point curve per setting.
    """
    params: dict[str, Mapping[str, Any]] = {}
    effective: dict[str, dict[str, Any]] = {}
    for r in rows:
        if defense_of(r) != defense:
            continue
        k = setting_key(r["params"])
        if k not in params:
            params[k] = r["params"]
            effective[k] = effective_setting(r)
    if not params:
        return []
    order = list(dict.fromkeys([*(k for p in params.values() for k in p)]))
    order += [k for e in effective.values() for k in e if k not in order]
    missing = object()
    varying = [
        k
        for k in order
        if len({canonical_json(e.get(k)) if k in e else "\0" for e in effective.values()}) > 1
    ]
    numeric = [k for k in varying if all(_is_number(e.get(k, missing)) for e in effective.values())]
    knob = numeric[0] if numeric else None
    curves: dict[str, tuple[dict[str, Any], list[str]]] = {}
    for k, e in effective.items():
        if knob is None:
            fixed = {v: e.get(v) for v in varying}
        else:
            fixed = {v: e.get(v) for v in varying if v != knob}
        curves.setdefault(canonical_json(fixed), (fixed, []))[1].append(k)
    out = []
    for fixed, keys in curves.values():
        settings = sorted(
            (params[k] for k in keys),
            key=lambda p: _sortable(effective[setting_key(p)].get(knob)) if knob else (0, 0.0, ""),
        )
        out.append(Curve(defense, knob, fixed, tuple(settings)))
    return out

"""``stealproof list``: the defenses, attacks, detectors and policy with their parameters."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from stealproof.cli._shared import JsonOpt, console, dumps_strict, friendly_errors
from stealproof.errors import ConfigError

app = typer.Typer()  # merged into the root app (stealproof.cli)


def attack_configs() -> dict[str, type[Any]]:
    """Each attack's config class (its parameters), by the name ``--attack`` takes."""
    from stealproof.attacks import (
        DaSTConfig,
        DFMEConfig,
        JBDAConfig,
        JBTop3Config,
        KnockoffConfig,
        MAZEConfig,
    )

    return {
        "knockoff": KnockoffConfig,
        "knockoff-labels": KnockoffConfig,
        "jbda": JBDAConfig,
        "jb-self": JBDAConfig,
        "jb-top3": JBTop3Config,
        "dfme": DFMEConfig,
        "maze": MAZEConfig,
        "dast": DaSTConfig,
    }


def _first_line(doc: str | None) -> str:
    lines = (doc or "").strip().splitlines()
    return lines[0] if lines else ""


def _catalogue() -> dict[str, dict[str, tuple[str, type[Any] | None]]]:
    """Every listable thing: section → name → (one-line description, config class or None)."""
    from stealproof import defenses, detectors
    from stealproof.attacks import ATTACKS
    from stealproof.data import available_datasets, available_pools
    from stealproof.integrations import ART_ATTACKS
    from stealproof.models import available_models

    configs = attack_configs()
    return {
        "datasets": {n: (d, None) for n, d in available_datasets().items()},
        "pools": {n: (d, None) for n, d in available_pools().items()},
        "models": {m: ("", None) for m in available_models()},
        "defenses": {
            n: (
                _first_line(defenses.get_defense_class(n).__doc__),
                defenses.get_defense_class(n).Config,
            )
            for n in defenses.available()
        },
        "attacks": {
            **{n: (d, configs.get(n)) for n, d in ATTACKS.items()},
            **{n: (d, None) for n, d in ART_ATTACKS.items()},  # no ART import just to list
        },
        "detectors": {n: (d, c) for n, (d, c) in detectors.available().items()},
    }


def _param_rows(config: type[Any]) -> list[tuple[str, str, str, str]]:
    """(name, type, default, description) of each field of a pydantic config class."""
    from stealproof._names import describe_fields

    rows = []
    for (name, f), text in zip(config.model_fields.items(), describe_fields(config), strict=True):
        kind = text.split(": ", 1)[1].split(" = ", 1)[0]
        default = text.split(" = ", 1)[1] if " = " in text else "required"
        rows.append((name, kind, default, f.description or ""))
    return rows


@app.command("list")
@friendly_errors
def list_cmd(
    what: Annotated[
        str | None,
        typer.Argument(
            help="datasets, pools, models, defenses, attacks or detectors (default: all)."
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Argument(help="One defense, attack or detector: show its parameters in full."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """List what is available, with each defense's, attack's and detector's parameters."""
    from rich.markup import escape

    from stealproof._names import describe_fields, unknown_name_message

    sections = _catalogue()
    if what is not None and what not in sections:
        raise ConfigError(f"list: expected one of {', '.join(sections)}, got {what!r}")
    if name is not None:
        assert what is not None
        entries = sections[what]
        if name not in entries:
            kind = what[:-1]
            raise ConfigError(f"list {what}: {unknown_name_message(kind, name, list(entries))}")
        desc, config = entries[name]
        rows = _param_rows(config) if config is not None else []
        if as_json:
            print(
                dumps_strict(
                    {
                        "name": name,
                        "description": desc,
                        "params": [
                            {"name": n, "type": t, "default": d, "description": x}
                            for n, t, d, x in rows
                        ],
                    },
                    indent=2,
                )
            )
            return
        table = Table(title=f"{what[:-1]} {name}: {escape(desc)}", title_justify="left")
        for col in ("parameter", "type", "default", "description"):
            table.add_column(col)
        for n, t, d, x in rows:
            table.add_row(escape(n), escape(t), escape(d), escape(x))
        console.print(table if rows else f"{what[:-1]} {name}: {escape(desc)} (no parameters)")
        return
    chosen = {what: sections[what]} if what else sections
    if as_json:
        print(
            dumps_strict(
                {
                    k: {
                        n: {
                            "description": d,
                            "params": describe_fields(c) if c is not None else [],
                        }
                        for n, (d, c) in v.items()
                    }
                    for k, v in chosen.items()
                },
                indent=2,
            )
        )
        return
    for section, entries in chosen.items():
        table = Table(title=section, show_header=False, title_justify="left")
        table.add_column("name", style="bold")
        table.add_column("description")
        with_params = any(c is not None for _, c in entries.values())
        if with_params:
            table.add_column("parameters (name: type = default)")
        for n, (desc, config) in entries.items():
            cells = [escape(n), escape(desc)]
            if with_params:
                cells.append(escape(", ".join(describe_fields(config))) if config else "")
            table.add_row(*cells)
        console.print(table)
    console.print(
        "`stealproof list defenses NAME` (or attacks / detectors) shows one entry's parameters",
        highlight=False,
    )

"""``stealproof demo``: the main job on built-in data."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from stealproof.cli._shared import (
    DeviceOpt,
    JsonOpt,
    QuietOpt,
    SeedOpt,
    ThreadsOpt,
    _setup,
    console,
    dumps_strict,
    friendly_errors,
    progress_bar,
)

app = typer.Typer()  # merged into the root app (stealproof.cli)


@app.command()
@friendly_errors
def demo(
    quick: Annotated[
        bool, typer.Option("--quick", help="digits + MLP instead of mnist5k + LeNet (≤ 60 s).")
    ] = False,
    out: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path("demo-out"),
    budget: Annotated[int, typer.Option("--budget", min=10, help="Thief queries (rows).")] = 5000,
    pool: Annotated[
        str | None, typer.Option("--pool", help="Thief pool (default: the scenario's).")
    ] = None,
    seed: SeedOpt = 0,
    threads: ThreadsOpt = 0,
    device: DeviceOpt = "cpu",
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Train a victim, attack it behind every registered defense, print the trade-offs."""
    from stealproof import defenses
    from stealproof._io import check_output_dir
    from stealproof.demo import run_demo, write_demo_outputs

    check_output_dir(out)
    dev = _setup(threads, quiet or as_json, device)
    with progress_bar(quiet or as_json) as p:
        report = run_demo(quick=quick, budget=budget, pool=pool, seed=seed, device=dev, progress=p)
    results, png = write_demo_outputs(report, out)
    if as_json:
        print(dumps_strict([asdict(r) for r in report.rows], indent=2))
        return
    if quiet:
        return
    table = Table(
        title=(
            f"KnockoffNets vs defenses on {report.scenario} "
            f"(victim accuracy {100 * report.victim_acc:.1f}%, {report.budget} queries "
            f"from {report.pool})"
        )
    )
    for col in (
        "defense",
        "setting",
        "defender acc",
        "mean L1",
        "clone acc",
        "fidelity",
        "label-only clone acc",
    ):
        table.add_column(col, justify="left" if col in ("defense", "setting") else "right")
    for r in report.rows:
        knobs = defenses.get_defense_class(r.defense).demo_params  # the full params are in JSON
        setting = ", ".join(f"{k}={v}" for k, v in r.params.items() if k in knobs) or "-"
        table.add_row(
            r.defense,
            setting,
            f"{100 * r.defender_acc:.1f}%",
            f"{r.l1_mean:.3f}",
            f"{100 * r.clone_acc:.1f}%",
            f"{100 * r.clone_fidelity:.1f}%",
            f"{100 * r.label_only_clone_acc:.1f}%",
        )
    console.print(table)
    console.print(f"wrote {results} and {png} in {report.seconds:.0f} s")

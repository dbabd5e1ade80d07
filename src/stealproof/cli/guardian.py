"""``stealproof guardian train``: build and save Model-Guardian's DFMS detector (a sub-app)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from stealproof.cli._shared import _setup, console, friendly_errors, progress_bar

app = typer.Typer(
    name="guardian",
    help="Model-Guardian's DFMS detector: flag queries that look synthetic.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _group() -> None:
    """Model-Guardian's DFMS detector: flag queries that look synthetic."""


@app.command("train")
@friendly_errors
def train_cmd(
    out: Annotated[Path, typer.Option("--out", help="Bundle file to write.")] = Path("guardian.pt"),
    scenario: Annotated[
        str, typer.Option("--scenario", help="Built-in scenario: digits or mnist5k.")
    ] = "digits",
    victim: Annotated[
        Path | None,
        typer.Option(
            "--victim",
            help="Victim checkpoint (train-victim); default: train the scenario's victim.",
        ),
    ] = None,
    target_fpr: Annotated[
        float,
        typer.Option("--target-fpr", min=0.0, max=1.0, help="Benign false-positive rate target."),
    ] = 0.01,
    sources: Annotated[
        str, typer.Option("--sources", help="Comma-separated synthetic sources: dfme,gan,ddpm.")
    ] = "dfme,gan,ddpm",
    seed: Annotated[int, typer.Option("--seed", help="Seed for every random choice.")] = 0,
    threads: Annotated[
        int, typer.Option("--threads", min=0, help="CPU threads for torch (0 = default).")
    ] = 0,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:1, ...")] = "cpu",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print results as JSON.")] = False,
) -> None:
    """Train the detector on the scenario's defender data, calibrate, measure, save the bundle.

    The defender's data is the victim's training split (fit / train / eval / calibration
    parts); the benign false-positive rate is measured on the test split, which no step uses.
    """
    from pydantic import ValidationError

    from stealproof._io import check_output_file
    from stealproof.data import load_dataset
    from stealproof.defenses.base import format_validation_error
    from stealproof.detectors.guardian import (
        GuardianConfig,
        GuardianDetector,
        benign_fpr,
        guardian_config,
        train_guardian,
    )
    from stealproof.errors import ConfigError, InputValidationError
    from stealproof.experiment import SCENARIOS, train_victim
    from stealproof.models import load_checkpoint

    # every check a user can fail runs before any work: output, device, scenario, config
    check_output_file(out, "--out")
    dev = _setup(threads, quiet or as_json, device)
    if scenario not in SCENARIOS:
        raise ConfigError(f"--scenario: expected one of {sorted(SCENARIOS)}, got {scenario!r}")
    names = tuple(s.strip() for s in sources.split(",") if s.strip())
    try:
        cfg = guardian_config(scenario, seed=seed, target_fpr=target_fpr, sources=names)
    except ValidationError as e:
        raise ConfigError(format_validation_error("guardian", e, GuardianConfig)) from None
    sc = SCENARIOS[scenario]
    ds = load_dataset(sc.dataset)
    model = None
    if victim is not None:
        model, _ = load_checkpoint(victim, map_location=dev)
        if tuple(model.input_shape) != tuple(ds.input_shape):
            raise InputValidationError(
                f"--victim: {victim} expects {tuple(model.input_shape)} images, scenario "
                f"{scenario} has {tuple(ds.input_shape)}"
            )
    with progress_bar(quiet or as_json) as p:
        if model is None:
            model, _ = train_victim(
                ds, sc.model, sc.victim_training, seed=seed, device=dev, progress=p
            )
        bundle, report = train_guardian(model, ds.train.images, cfg, device=dev, progress=p)
    fpr = benign_fpr(GuardianDetector(bundle), ds.test.images.to(dev))
    bundle.meta["benign_fpr"] = fpr
    bundle.meta["benign_rows"] = int(ds.test.images.shape[0])
    bundle.meta["scenario"] = scenario
    path = bundle.to("cpu").save(out)
    result = {"bundle": str(path), "scenario": scenario, "benign_fpr": fpr, **asdict(report)}
    if as_json:
        print(json.dumps(result, indent=2))
        return
    if quiet:
        return
    from rich.table import Table

    table = Table(title=f"Model-Guardian detector on {scenario} (held-out data)")
    for col in ("source", "sub-detector AUC", "fused AUC", "leave-one-out AUC", "TPR"):
        table.add_column(col, justify="left" if col == "source" else "right")
    for src in report.source_auc:
        loo = report.loo_auc.get(src)
        table.add_row(
            src,
            f"{report.source_auc[src]:.3f}",
            f"{report.fused_auc[src]:.3f}",
            "-" if loo is None else f"{loo:.3f}",
            f"{100 * report.tpr[src]:.1f}%",
        )
    console.print(table)
    console.print(
        f"threshold {report.threshold:.4g} (target FPR {100 * cfg.target_fpr:.1f}%); benign FPR "
        f"{100 * fpr:.2f}% on {ds.test.images.shape[0]} test images; wrote {path} in "
        f"{report.seconds['total']:.0f} s"
    )

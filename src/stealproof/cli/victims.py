"""``stealproof train-victim``: train and save a victim model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from stealproof.cli._shared import (
    DeviceOpt,
    JsonOpt,
    QuietOpt,
    SeedOpt,
    SplitTestOpt,
    ThreadsOpt,
    _setup,
    _split_kwargs,
    console,
    dumps_strict,
    friendly_errors,
    parse_params,
    progress_bar,
)
from stealproof.errors import ConfigError

app = typer.Typer()  # merged into the root app (stealproof.cli)


@app.command("train-victim")
@friendly_errors
def train_victim_cmd(
    out: Annotated[Path, typer.Option("--out", help="Checkpoint file to write.")] = Path(
        "victim.pt"
    ),
    dataset: Annotated[str, typer.Option("--dataset", help="See `stealproof list datasets`.")] = (
        "mnist5k"
    ),
    model: Annotated[str, typer.Option("--model", help="See `stealproof list models`.")] = "lenet",
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Directory with dataset files.")
    ] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1)] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Learning rate (> 0).")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1)] = None,
    augment: Annotated[bool | None, typer.Option("--augment/--no-augment")] = None,
    defense: Annotated[
        str,
        typer.Option(
            "--defense",
            help="Training-time defense: none, or ini (Isolation and Induction; see README).",
        ),
    ] = "none",
    ini_ood: Annotated[
        str, typer.Option("--ini-ood", help="InI: OOD proxy pool (`stealproof list pools`).")
    ] = "shapes",
    ini_engine: Annotated[
        str, typer.Option("--ini-engine", help="InI: fast (JVP/VJP) or reference (2nd order).")
    ] = "fast",
    ini_epochs: Annotated[
        int | None,
        typer.Option("--ini-epochs", min=1, help="InI epochs (default 50 MNIST-like, else 150)."),
    ] = None,
    ini_params: Annotated[
        list[str] | None,
        typer.Option("--ini-param", help="InI config KEY=VALUE (gamma, delta, eps, pcgrad, ...)."),
    ] = None,
    split_test: SplitTestOpt = None,
    seed: SeedOpt = 0,
    threads: ThreadsOpt = 0,
    device: DeviceOpt = "cpu",
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Train a victim classifier and save it as a checkpoint with its config."""
    from stealproof._io import check_output_file
    from stealproof.data import load_dataset
    from stealproof.experiment import scenario_for, train_victim
    from stealproof.models import save_checkpoint

    check_output_file(out)
    if defense not in ("none", "ini"):
        raise ConfigError(f"--defense: expected none or ini, got {defense!r}")
    if lr is not None and not lr > 0:
        raise ConfigError(f"--lr: expected a positive learning rate, got {lr}")
    dev = _setup(threads, quiet or as_json, device)
    ds = load_dataset(dataset, data_dir, **_split_kwargs(split_test))
    if defense == "ini":
        from stealproof.ini import IniConfig, train_ini_victim

        ini_updates = {"epochs": ini_epochs or epochs, "lr": lr, "batch_size": batch_size}
        try:
            ini_cfg = IniConfig(
                **{
                    **parse_params(ini_params),
                    "engine": ini_engine,
                    **{k: v for k, v in ini_updates.items() if v is not None},
                }
            )
        except ValidationError as e:
            from stealproof._cli_errors import validation_message

            raise ConfigError(validation_message(e, prefix="InI config: ")) from None
        with progress_bar(quiet or as_json) as p:
            victim, acc, res = train_ini_victim(
                ds, model, ini_cfg, ini_ood, seed=seed, data_dir=data_dir, device=dev, progress=p
            )
        meta = {
            "dataset": dataset,
            "test_acc": acc,
            "seed": seed,
            "defense": "ini",
            "ini_ood": ini_ood,
            "training": res.config.model_dump(),
        }
        path = save_checkpoint(victim.cpu(), out, meta)
        if as_json:
            print(dumps_strict({"checkpoint": str(path), **meta}))
        elif not quiet:
            console.print(f"{model} on {dataset} (InI): test accuracy {100 * acc:.2f}% → {path}")
        return
    base = scenario_for(dataset).victim_training
    updates = {
        k: v
        for k, v in {
            "epochs": epochs,
            "lr": lr,
            "batch_size": batch_size,
            "augment": augment,
        }.items()
        if v is not None
    }
    cfg = base.model_copy(update=updates)
    with progress_bar(quiet or as_json) as p:
        victim, acc = train_victim(ds, model, cfg, seed=seed, device=dev, progress=p)
    meta = {"dataset": dataset, "test_acc": acc, "seed": seed, "training": cfg.model_dump()}
    if split_test is not None:
        meta["split_test"] = split_test
    path = save_checkpoint(victim.cpu(), out, meta)
    if as_json:
        print(dumps_strict({"checkpoint": str(path), **meta}))
    elif not quiet:
        console.print(f"{model} on {dataset}: test accuracy {100 * acc:.2f}% → {path}")

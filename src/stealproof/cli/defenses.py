"""``stealproof prepare-defense`` and ``stealproof surrogate``: build what a defense needs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from stealproof.cli._shared import (
    QuietOpt,
    SeedOpt,
    SplitTestOpt,
    ThreadsOpt,
    _setup,
    _split_kwargs,
    check_victim_data,
    console,
    dumps_strict,
    friendly_errors,
    parse_params,
    progress_bar,
    resolve_dataset,
    sample_pool,
)
from stealproof.defense_models import MANIFEST, defense_stamp
from stealproof.errors import ConfigError

app = typer.Typer()  # merged into the root app (stealproof.cli)


@app.command("prepare-defense")
@friendly_errors
def prepare_defense_cmd(
    victim: Annotated[Path, typer.Option("--victim", help="Victim checkpoint.")],
    defense: Annotated[str, typer.Option("--defense", help="See `stealproof list defenses`.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for the defense's models.")],
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset",
            help="Defender data the models are trained on (default: the victim's dataset).",
        ),
    ] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="Defense parameter KEY=VALUE.")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None,
    split_test: SplitTestOpt = None,
    query_sample: Annotated[
        str | None,
        typer.Option(
            "--query-sample",
            help="Pool standing in for the defender's log of past queries (GRAD² distils on it).",
        ),
    ] = None,
    seed: SeedOpt = 0,
    threads: ThreadsOpt = 0,
    quiet: QuietOpt = False,
) -> None:
    """Build and save the models a defense needs (surrogates, misinformation model, ...)."""
    from stealproof import defenses
    from stealproof._io import check_output_dir, write_text_atomic
    from stealproof.data import load_dataset
    from stealproof.models import load_checkpoint, save_checkpoint

    check_output_dir(out)
    cls = defenses.get_defense_class(defense)
    params = parse_params(param)
    cls.make_config(**params)  # a bad parameter fails before any work
    _setup(threads, quiet)
    model, meta = load_checkpoint(victim)
    dataset = resolve_dataset(dataset, meta, victim)
    ds = load_dataset(dataset, data_dir, **_split_kwargs(split_test, meta))
    check_victim_data(model, ds.input_shape, f"--dataset {dataset}")
    log_images = sample_pool(query_sample, model, seed, data_dir)
    d = cls.prepare(model, ds.train.images, query_sample=log_images, **params)
    saved: dict[str, str] = {}
    for key, value in d.models().items():
        if value is None:
            continue
        if not isinstance(value, torch.nn.Module):
            raise ConfigError(f"{defense}: model {key!r} is not an nn.Module and cannot be saved")
        save_checkpoint(value, out / f"{key}.pt", {"defense": defense, "role": key})  # type: ignore[arg-type]
        saved[key] = f"{key}.pt"
    manifest = {
        "defense": defense,
        "params": d.params,
        "models": saved,
        "stamp": defense_stamp(cls, d.params, model),
        "victim": str(victim),
        "dataset": dataset,
        "query_sample": query_sample,
        "seed": seed,
    }
    write_text_atomic(out / MANIFEST, dumps_strict(manifest, indent=2) + "\n")
    if not quiet:
        console.print(f"{defense}: saved {', '.join(saved) or 'no models'} to {out}")


@app.command()
@friendly_errors
def surrogate(
    victim: Annotated[Path, typer.Option("--victim", help="Victim checkpoint.")],
    out: Annotated[Path, typer.Option("--out", help="Surrogate checkpoint to write.")],
    kind: Annotated[
        str, typer.Option("--kind", help="random (MAD) or distilled (GRAD²).")
    ] = "distilled",
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset",
            help="Defender data (used when no --pool is given; default: the victim's dataset).",
        ),
    ] = None,
    pool: Annotated[
        str | None,
        typer.Option("--pool", help="Distil on this query distribution instead of --dataset."),
    ] = None,
    size: Annotated[int, typer.Option("--size", min=1, help="Images drawn from --pool.")] = 5000,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Epochs trained.")] = 10,
    schedule_epochs: Annotated[
        int, typer.Option("--schedule-epochs", min=1, help="Length of the LR schedule.")
    ] = 50,
    data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None,
    seed: SeedOpt = 0,
    threads: ThreadsOpt = 0,
    quiet: QuietOpt = False,
) -> None:
    """Build a surrogate of the thief: random init (MAD) or distilled, stopped early (GRAD²)."""
    from stealproof._io import check_output_file
    from stealproof.data import load_dataset, load_pool
    from stealproof.models import load_checkpoint
    from stealproof.surrogate import distill_surrogate, random_surrogate, save_surrogate

    check_output_file(out)
    if kind not in ("random", "distilled"):
        raise ConfigError(f"--kind: expected random or distilled, got {kind!r}")
    if epochs > schedule_epochs:
        raise ConfigError(
            f"--epochs: {epochs} is more than --schedule-epochs {schedule_epochs}; the surrogate "
            "stops early within its schedule"
        )
    _setup(threads, quiet)
    model, meta = load_checkpoint(victim)
    if kind == "random":
        sur = random_surrogate(model, seed=seed)
        info: dict[str, Any] = {"kind": "random", "seed": seed}
    else:
        if pool is not None:
            c, h, w = model.input_shape
            p = load_pool(pool, channels=c, image_size=(h, w), seed=seed, data_dir=data_dir)
            images, _ = p.draw(size, torch.Generator().manual_seed(seed))
        else:
            dataset = resolve_dataset(dataset, meta, victim)
            ds = load_dataset(dataset, data_dir, **_split_kwargs(None, meta))
            check_victim_data(model, ds.input_shape, f"--dataset {dataset}")
            images = ds.train.images
        with progress_bar(quiet) as bar:
            sur = distill_surrogate(
                model,
                images,
                epochs=epochs,
                schedule_epochs=schedule_epochs,
                seed=seed,
                progress=bar,
            )
        info = {
            "kind": "distilled",
            "data": pool or dataset,
            "epochs": epochs,
            "schedule_epochs": schedule_epochs,
            "seed": seed,
        }
    from stealproof.fingerprint import model_fingerprint

    info["victim_fingerprint"] = model_fingerprint(model)
    path = save_surrogate(sur, out, info)
    if not quiet:
        console.print(f"{kind} surrogate → {path}")

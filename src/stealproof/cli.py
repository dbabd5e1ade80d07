"""The ``stealproof`` command line: demo, train-victim, attack, list.

Errors a user can cause (bad input, missing files, unknown names, spent budgets) print one line
and exit with status 2; no traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, TypeVar

import torch
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from stealproof import __version__
from stealproof._cli_errors import err_console, friendly_errors

app = typer.Typer(
    name="stealproof",
    help="Defenses against model stealing, the attacks to test them, and measurements.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# piped output gets a fixed, wide layout instead of rich's 80-column default
console = Console(width=None if sys.stdout.isatty() else 132)
F = TypeVar("F", bound=Callable[..., Any])

SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for every random choice.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or tables.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print results as JSON on stdout.")]
ThreadsOpt = Annotated[
    int,
    typer.Option(
        "--threads",
        help="CPU threads for torch (0 = torch's default). Use 1 on a busy machine.",
        min=0,
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:1, ...")]


@contextmanager
def progress_bar(quiet: bool) -> Iterator[Progress | None]:
    """A rich progress display on stderr, or None when quiet."""
    if quiet:
        yield None
        return
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as p:
        yield p


def _setup(threads: int, quiet: bool) -> None:
    if threads > 0:
        torch.set_num_threads(threads)
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` items; values are read as JSON when they parse, else as strings."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--param: expected KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def _print_version(value: bool) -> None:
    if value:
        console.print(f"stealproof {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", callback=_print_version, is_eager=True
        ),
    ] = False,
) -> None:
    """Defenses against model stealing, the attacks to test them, and measurements."""


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
    from stealproof.demo import run_demo, write_demo_outputs

    _setup(threads, quiet or as_json)
    with progress_bar(quiet or as_json) as p:
        report = run_demo(
            quick=quick, budget=budget, pool=pool, seed=seed, device=device, progress=p
        )
    results, png = write_demo_outputs(report, out)
    if as_json:
        print(json.dumps([asdict(r) for r in report.rows], indent=2))
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
    lr: Annotated[float | None, typer.Option("--lr", min=0.0)] = None,
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
    seed: SeedOpt = 0,
    threads: ThreadsOpt = 0,
    device: DeviceOpt = "cpu",
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Train a victim classifier and save it as a checkpoint with its config."""
    from stealproof.data import load_dataset
    from stealproof.experiment import SCENARIOS, train_victim
    from stealproof.models import save_checkpoint
    from stealproof.train import TrainConfig

    _setup(threads, quiet or as_json)
    if defense not in ("none", "ini"):
        raise ValueError(f"--defense: expected none or ini, got {defense!r}")
    ds = load_dataset(dataset, data_dir)
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
            err = e.errors()[0]
            where = ".".join(str(part) for part in err["loc"])
            raise ValueError(f"InI config: {where}: {err['msg']}") from None
        with progress_bar(quiet or as_json) as p:
            victim, acc, res = train_ini_victim(
                ds, model, ini_cfg, ini_ood, seed=seed, data_dir=data_dir, device=device, progress=p
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
            print(json.dumps({"checkpoint": str(path), **meta}))
        elif not quiet:
            console.print(f"{model} on {dataset} (InI): test accuracy {100 * acc:.2f}% → {path}")
        return
    base = SCENARIOS[dataset].victim_training if dataset in SCENARIOS else TrainConfig()
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
        victim, acc = train_victim(ds, model, cfg, seed=seed, device=device, progress=p)
    meta = {"dataset": dataset, "test_acc": acc, "seed": seed, "training": cfg.model_dump()}
    path = save_checkpoint(victim.cpu(), out, meta)
    if as_json:
        print(json.dumps({"checkpoint": str(path), **meta}))
    elif not quiet:
        console.print(f"{model} on {dataset}: test accuracy {100 * acc:.2f}% → {path}")


@app.command()
@friendly_errors
def attack(
    victim: Annotated[Path, typer.Option("--victim", help="Victim checkpoint (train-victim).")],
    dataset: Annotated[
        str, typer.Option("--dataset", help="Dataset whose test split scores the clone.")
    ] = "mnist5k",
    defense: Annotated[str, typer.Option("--defense", help="See `stealproof list defenses`.")] = (
        "none"
    ),
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="Defense parameter KEY=VALUE (repeatable)."),
    ] = None,
    name: Annotated[
        str,
        typer.Option(
            "--attack",
            help="See `stealproof list attacks`. The data-free ones (dfme, maze, dast) use no "
            "pool and need large budgets (10^5 rows and more).",
        ),
    ] = "knockoff",
    budget: Annotated[int, typer.Option("--budget", min=10, help="Queries (rows).")] = 5000,
    pool: Annotated[
        str | None,
        typer.Option(
            "--pool",
            help="See `stealproof list pools` (default: digits28 for knockoff; for the jbda "
            "family, <dataset>-unlabeled, whose first 150 images in a seeded order are the seeds).",
        ),
    ] = None,
    policy: Annotated[str, typer.Option("--policy", help="random or adaptive.")] = "random",
    label_only: Annotated[
        bool, typer.Option("--label-only", help="Train the clone on argmax of the answers.")
    ] = False,
    rounds: Annotated[
        int | None,
        typer.Option("--rounds", min=0, help="jbda family: augmentation rounds at most."),
    ] = None,
    average: Annotated[
        int,
        typer.Option(
            "--average",
            min=1,
            help="Query averaging: each row is sent as N augmented copies (costs N rows each).",
        ),
    ] = 1,
    output: Annotated[str, typer.Option("--output", help="API output: probs, topk, label.")] = (
        "probs"
    ),
    clone_model: Annotated[
        str | None, typer.Option("--clone-model", help="Clone architecture (default: victim's).")
    ] = None,
    models_dir: Annotated[
        Path | None,
        typer.Option(
            "--models",
            help="Directory of the defense's models (from `prepare-defense`); default: build them.",
        ),
    ] = None,
    query_sample: Annotated[
        str | None,
        typer.Option(
            "--query-sample",
            help="Pool standing in for the defender's log of past queries (GRAD² distils on it).",
        ),
    ] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="Clone epochs.")] = None,
    guardian: Annotated[
        Path | None,
        typer.Option(
            "--guardian",
            help="Model-Guardian bundle (`stealproof guardian train`): flagged rows get "
            "deceptive answers, the thief is blocked after --max-flagged flagged rows.",
        ),
    ] = None,
    max_flagged: Annotated[
        int, typer.Option("--max-flagged", min=0, help="With --guardian; 0: never block.")
    ] = 1000,
    data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Directory for result.json.")] = None,
    seed: SeedOpt = 0,
    threads: ThreadsOpt = 0,
    device: DeviceOpt = "cpu",
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Attack a saved victim behind a defense and report clone accuracy and fidelity."""
    from stealproof import metrics
    from stealproof.attacks import (
        DATA_FREE_ATTACKS,
        JACOBIAN_ATTACKS,
        AveragingBlackBox,
        BlackBoxLike,
        KnockoffNets,
        clone_factory_like,
        create_jacobian_attack,
    )
    from stealproof.data import load_dataset, load_pool
    from stealproof.experiment import defense_cost
    from stealproof.models import load_checkpoint
    from stealproof.oracle import BlackBox
    from stealproof.train import TrainConfig

    _setup(threads, quiet or as_json)
    known = ["knockoff", "knockoff-labels", *JACOBIAN_ATTACKS, *DATA_FREE_ATTACKS]
    if name not in known:
        from stealproof._names import unknown_name_message

        raise ValueError(unknown_name_message("attack", name, known))
    jacobian = name in JACOBIAN_ATTACKS
    data_free = name in DATA_FREE_ATTACKS
    label_only = label_only or name == "knockoff-labels"
    if output not in ("probs", "topk", "label"):
        raise ValueError(f"--output: expected probs, topk or label, got {output!r}")
    model, meta = load_checkpoint(victim, map_location=device)
    ds = load_dataset(dataset, data_dir)
    log_images = sample_pool(query_sample, model, seed, data_dir)
    d = build_defense(defense, parse_params(param), model, ds.train.images, models_dir, log_images)
    if tuple(ds.input_shape) != tuple(model.input_shape):
        raise ValueError(
            f"--dataset: {dataset} images are {ds.input_shape}, the victim expects "
            f"{tuple(model.input_shape)}"
        )
    c, h, w = ds.input_shape
    pool = None if data_free else pool or (f"{dataset}-unlabeled" if jacobian else "digits28")
    thief_pool = (
        None
        if pool is None
        else load_pool(pool, channels=c, image_size=(h, w), seed=seed, data_dir=data_dir)
    )
    train_cfg = TrainConfig(epochs=epochs or 10, batch_size=128, lr=1e-3)
    if guardian is None:
        box = BlackBox(model, d, budget=budget, output=output)  # type: ignore[arg-type]
    else:
        from stealproof.detectors.guardian import GuardianDetector
        from stealproof.policy import DetectionPolicy

        detector = GuardianDetector.load(guardian, map_location=device)
        guard = DetectionPolicy([detector], defense=d, max_flagged=max_flagged or None)
        box = BlackBox(
            model,
            policy=guard,
            budget=budget,
            output=output,  # type: ignore[arg-type]
            client_id="thief",
        )
    thief_box: BlackBoxLike = box
    if average > 1:
        thief_box = AveragingBlackBox(box, copies=average, seed=seed)
    thief_budget = budget // average
    if thief_budget < 1:
        raise ValueError(f"--average: {average} copies per row leave no row of --budget {budget}")
    make_clone = clone_factory_like(model, clone_model)
    if jacobian:
        jb = create_jacobian_attack(
            name, rounds=rounds, label_only=label_only, seed=seed, train=train_cfg
        )
        assert thief_pool is not None
        g = torch.Generator().manual_seed(seed)
        seed_images = thief_pool.images[torch.randperm(len(thief_pool), generator=g)[:150]]
        with progress_bar(quiet or as_json) as p:
            result = jb.run(
                thief_box,
                seed_images,
                thief_budget,
                make_clone,
                eval_data=(ds.test.images, ds.test.labels),
                device=device,
                progress=p,
            )
    elif data_free:
        data_free_attack = DATA_FREE_ATTACKS[name](label_only=label_only, seed=seed)
        with progress_bar(quiet or as_json) as p:
            result = data_free_attack.run(
                thief_box,
                thief_budget,
                make_clone,
                eval_data=(ds.test.images, ds.test.labels),
                device=device,
                progress=p,
            )
    else:
        assert thief_pool is not None
        try:
            knockoff = KnockoffNets(
                policy=policy, label_only=label_only, seed=seed, train=train_cfg
            )
        except ValidationError as e:
            raise ValueError(f"--policy: {e.errors()[0]['msg']}") from None
        with progress_bar(quiet or as_json) as p:
            result = knockoff.run(
                thief_box, thief_pool, thief_budget, make_clone, device=device, progress=p
            )
    cost = defense_cost(model, d, ds.test.images, ds.test.labels)
    attack_name = name if jacobian or data_free else "knockoff-labels" if label_only else "knockoff"
    row = {
        "attack": attack_name,
        "policy": None if jacobian or data_free else policy,
        "label_only": label_only,
        "average": average,
        "defense": defense,
        "params": d.params,
        "budget": budget,
        "queries_used": result.queries_used,
        "rows_charged": box.queries_used,
        "pool": pool,
        "victim_acc": meta.get("test_acc"),
        "defender_acc": cost.defender_acc,
        "l1_mean": box.meter().mean_l1,
        "kl_mean": box.meter().mean_kl,
        "clone_acc": metrics.clone_accuracy(result.clone, ds.test.images, ds.test.labels),
        "clone_fidelity": metrics.clone_fidelity(result.clone, model, ds.test.images),
        "seed": seed,
    }
    if guardian is not None:
        status = box.policy_status()
        row["guardian"] = str(guardian)
        row["flagged_rows"] = box.flagged_rows
        row["blocked_at"] = None if status is None else status.blocked_at
        row["stopped"] = getattr(result, "stopped", None)
    if jacobian or data_free:
        row["trace"] = [[t.queries, t.clone_acc] for t in result.trace]
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "result.json").write_text(json.dumps(row, indent=2) + "\n")
    if as_json:
        print(json.dumps(row))
    elif not quiet:
        source = "a generator" if data_free else pool
        table = Table(title=f"{row['attack']} vs {defense} ({budget} queries from {source})")
        for k in ("defender_acc", "l1_mean", "clone_acc", "clone_fidelity"):
            table.add_column(k, justify="right")
        table.add_row(
            f"{100 * cost.defender_acc:.1f}%",
            f"{row['l1_mean']:.3f}",
            f"{100 * row['clone_acc']:.1f}%",
            f"{100 * row['clone_fidelity']:.1f}%",
        )
        console.print(table)


QUERY_SAMPLE_SIZE = 2000


def sample_pool(pool: str | None, victim: Any, seed: int, data_dir: Path | None) -> Any:
    """2,000 images from ``pool`` shaped for ``victim`` (None when no pool is named)."""
    if pool is None:
        return None
    from stealproof.data import load_pool

    c, h, w = victim.input_shape
    p = load_pool(pool, channels=c, image_size=(h, w), seed=seed + 1, data_dir=data_dir)
    images, _ = p.draw(QUERY_SAMPLE_SIZE, torch.Generator().manual_seed(seed + 1))
    return images


def build_defense(
    name: str,
    params: dict[str, Any],
    victim: Any,
    images: Any,
    models_dir: Path | None,
    query_sample: Any = None,
) -> Any:
    """A defense from saved models when ``models_dir`` is given, else ``prepare()``-d afresh."""
    from stealproof import defenses
    from stealproof.models import load_checkpoint
    from stealproof.surrogate import freeze

    cls = defenses.get_defense_class(name)
    if models_dir is None:
        return cls.prepare(victim, images, query_sample=query_sample, **params)
    if not models_dir.is_dir():
        raise FileNotFoundError(f"--models: {models_dir} is not a directory")
    manifest = models_dir / "defense.json"
    if manifest.is_file():
        saved = json.loads(manifest.read_text())
        if saved.get("defense") != name:
            raise ValueError(
                f"--models: {models_dir} holds models for {saved.get('defense')!r}, not {name!r}"
            )
        params = {**saved.get("params", {}), **params}
    loaded = {p.stem: freeze(load_checkpoint(p)[0]) for p in sorted(models_dir.glob("*.pt"))}
    return cls(**params, **loaded)


@app.command("prepare-defense")
@friendly_errors
def prepare_defense_cmd(
    victim: Annotated[Path, typer.Option("--victim", help="Victim checkpoint.")],
    defense: Annotated[str, typer.Option("--defense", help="See `stealproof list defenses`.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for the defense's models.")],
    dataset: Annotated[
        str, typer.Option("--dataset", help="Defender data the models are trained on.")
    ] = "mnist5k",
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="Defense parameter KEY=VALUE.")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None,
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
    from stealproof.data import load_dataset
    from stealproof.models import load_checkpoint, save_checkpoint

    _setup(threads, quiet)
    model, _ = load_checkpoint(victim)
    ds = load_dataset(dataset, data_dir)
    cls = defenses.get_defense_class(defense)
    log_images = sample_pool(query_sample, model, seed, data_dir)
    d = cls.prepare(model, ds.train.images, query_sample=log_images, **parse_params(param))
    out.mkdir(parents=True, exist_ok=True)
    saved = []
    for key, value in d.models().items():
        if value is None:
            continue
        if not isinstance(value, torch.nn.Module):
            raise ValueError(f"{defense}: model {key!r} is not an nn.Module and cannot be saved")
        save_checkpoint(value, out / f"{key}.pt", {"defense": defense, "role": key})  # type: ignore[arg-type]
        saved.append(key)
    (out / "defense.json").write_text(json.dumps({"defense": defense, "params": d.params}) + "\n")
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
        str, typer.Option("--dataset", help="Defender data (used when no --pool is given).")
    ] = "mnist5k",
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
    from stealproof.data import load_dataset, load_pool
    from stealproof.models import load_checkpoint
    from stealproof.surrogate import distill_surrogate, random_surrogate, save_surrogate

    _setup(threads, quiet)
    model, _ = load_checkpoint(victim)
    if kind == "random":
        sur = random_surrogate(model, seed=seed)
        meta: dict[str, Any] = {"kind": "random", "seed": seed}
    elif kind == "distilled":
        if pool is not None:
            c, h, w = model.input_shape
            p = load_pool(pool, channels=c, image_size=(h, w), seed=seed, data_dir=data_dir)
            images, _ = p.draw(size, torch.Generator().manual_seed(seed))
        else:
            images = load_dataset(dataset, data_dir).train.images
        with progress_bar(quiet) as bar:
            sur = distill_surrogate(
                model,
                images,
                epochs=epochs,
                schedule_epochs=schedule_epochs,
                seed=seed,
                progress=bar,
            )
        meta = {
            "kind": "distilled",
            "data": pool or dataset,
            "epochs": epochs,
            "schedule_epochs": schedule_epochs,
            "seed": seed,
        }
    else:
        raise ValueError(f"--kind: expected random or distilled, got {kind!r}")
    path = save_surrogate(sur, out, meta)
    if not quiet:
        console.print(f"{kind} surrogate → {path}")


@app.command("list")
@friendly_errors
def list_cmd(
    what: Annotated[
        str | None,
        typer.Argument(help="datasets, pools, models, defenses or attacks (default: all)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """List what is available: datasets, pools, models, defenses, attacks."""
    from stealproof import defenses
    from stealproof.attacks import ATTACKS
    from stealproof.data import available_datasets, available_pools
    from stealproof.models import available_models

    def defense_doc(n: str) -> str:
        cls = defenses.get_defense_class(n)
        doc = (cls.__doc__ or "").strip().splitlines()
        fields = ", ".join(cls.Config.model_fields)
        return (doc[0] if doc else "") + (f" [params: {fields}]" if fields else "")

    sections: dict[str, dict[str, str]] = {
        "datasets": available_datasets(),
        "pools": available_pools(),
        "models": {m: "" for m in available_models()},
        "defenses": {n: defense_doc(n) for n in defenses.available()},
        "attacks": dict(ATTACKS),
    }
    if what is not None and what not in sections:
        raise ValueError(f"list: expected one of {', '.join(sections)}, got {what!r}")
    chosen = {what: sections[what]} if what else sections
    if as_json:
        print(json.dumps({k: sorted(v) for k, v in chosen.items()}, indent=2))
        return
    for section, entries in chosen.items():
        table = Table(title=section, show_header=False, title_justify="left")
        table.add_column("name", style="bold")
        table.add_column("description")
        for n, desc in entries.items():
            table.add_row(n, desc)
        console.print(table)


from stealproof.bench.cli import bench_app  # noqa: E402
from stealproof.guardian_cli import app as guardian_app  # noqa: E402

app.add_typer(bench_app, name="bench")
app.add_typer(guardian_app, name="guardian")


def main() -> None:
    """Entry point of the ``stealproof`` script."""
    app()

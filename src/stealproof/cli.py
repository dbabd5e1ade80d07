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
from stealproof.defense_models import MANIFEST, build_defense, defense_stamp
from stealproof.errors import ConfigError

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
        help="CPU threads for torch (0 = auto: the cores not busy with other work when the "
        "command starts, at least 1).",
        min=0,
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:1, ...")]
SplitTestOpt = Annotated[
    float | None,
    typer.Option(
        "--split-test",
        help="For a file dataset with one labelled split: hold out this fraction (seeded, "
        "stratified) as the test split.",
    ),
]


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


def auto_threads() -> int:
    """Torch threads that do not oversubscribe: usable cores less the current load, ≥ 1.

    torch's own default takes every core even when other processes hold them, and small models
    then spend more time synchronising threads than computing (measured: the quick demo took
    300 s+ instead of 49 s next to one busy process on 2 cores).
    """
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    return max(1, min(cores, int(cores - busy + 0.5)))


def _setup(threads: int, quiet: bool, device: str | None = None) -> torch.device:
    """Threads, logging and the device (checked before any work); returns the device."""
    from stealproof._device import resolve_device

    dev = resolve_device(device or "cpu")
    torch.set_num_threads(threads if threads > 0 else auto_threads())
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "httpcore"):  # one INFO line per HTTP request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return dev


def dumps_strict(obj: Any, **kwargs: Any) -> str:
    """JSON text that is strict JSON: non-finite floats (NaN, ±inf) become ``null``."""
    import math

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(obj), allow_nan=False, **kwargs)


def check_victim_data(model: Any, data_shape: tuple[int, ...], what: str) -> None:
    """Refuse data whose image shape is not the victim's, before any defense is built."""
    want = tuple(getattr(model, "input_shape", ()) or ())
    if want and tuple(data_shape) != want:
        raise ConfigError(
            f"{what}: images are {tuple(data_shape)} (C, H, W), the victim expects {want}"
        )


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` items; values are read as JSON when they parse, else as strings."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--param: expected KEY=VALUE, got {item!r}")
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


def _split_kwargs(split_test: float | None, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Keyword arguments of ``load_dataset`` for ``--split-test`` (none when not given).

    With a victim's checkpoint ``meta``, the split it was trained with is the default, and
    another one is refused: its test split would overlap the victim's training data.
    """
    trained = meta.get("split_test") if isinstance(meta, dict) else None
    if trained is not None:
        if split_test is None:
            split_test = float(trained)
        elif split_test != trained:
            raise ConfigError(
                f"--split-test: the victim was trained with --split-test {trained}; another "
                "split would score it on its own training images (omit --split-test)"
            )
    if split_test is None:
        return {}
    if not 0 < split_test < 1:
        raise ConfigError(f"--split-test: expected a fraction in (0, 1), got {split_test}")
    return {"split_test": split_test}


@app.command()
@friendly_errors
def attack(
    victim: Annotated[
        Path | None,
        typer.Option(
            "--victim",
            help="Victim checkpoint (train-victim). With --target: optional, only to score the "
            "clone's fidelity.",
        ),
    ] = None,
    target: Annotated[
        str | None,
        typer.Option(
            "--target",
            help="Attack a live gateway (`stealproof serve`) at this URL instead of a local "
            "victim; the gateway applies its own defense and policy.",
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="STEALPROOF_API_KEY",
            help="With --target: the client's API key (or $STEALPROOF_API_KEY).",
            show_envvar=False,
        ),
    ] = None,
    api_key_file: Annotated[
        Path | None,
        typer.Option("--api-key-file", help="With --target: a file holding the API key."),
    ] = None,
    served_model: Annotated[
        str | None,
        typer.Option("--model", help="With --target: the served model's name."),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset",
            help="Dataset whose test split scores the clone (default: the one the victim's "
            "checkpoint was trained on).",
        ),
    ] = None,
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
            help="See `stealproof list pools` (default: the dataset's scenario pool for knockoff, "
            "e.g. digits28 for mnist5k; for the jbda family, <dataset>-unlabeled, whose first 150 "
            "images in a seeded order are the seeds).",
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
    split_test: SplitTestOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="Directory for result.json.")] = None,
    seed: SeedOpt = 0,
    threads: ThreadsOpt = 0,
    device: DeviceOpt = "cpu",
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Attack a saved victim behind a defense and report clone accuracy and fidelity."""
    from stealproof import metrics
    from stealproof._io import check_output_dir, write_text_atomic
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
    from stealproof.experiment import defense_cost, scenario_for
    from stealproof.models import load_checkpoint
    from stealproof.oracle import BlackBox
    from stealproof.train import describe_training

    known = ["knockoff", "knockoff-labels", *JACOBIAN_ATTACKS, *DATA_FREE_ATTACKS]
    if name not in known:
        from stealproof._names import unknown_name_message

        raise ConfigError(unknown_name_message("attack", name, known))
    if output not in ("probs", "topk", "label"):
        raise ConfigError(f"--output: expected probs, topk or label, got {output!r}")
    if policy not in ("random", "adaptive"):
        raise ConfigError(f"--policy: expected random or adaptive, got {policy!r}")
    thief_budget = budget // average
    if thief_budget < 1:
        raise ConfigError(f"--average: {average} copies per row leave no row of --budget {budget}")
    remote = _remote_options(
        target,
        api_key,
        api_key_file,
        served_model,
        victim,
        dataset,
        defense=defense,
        param=param,
        models_dir=models_dir,
        guardian=guardian,
        query_sample=query_sample,
        output=output,
    )
    if out is not None:
        check_output_dir(out)
    dev = _setup(threads, quiet or as_json, device)
    jacobian = name in JACOBIAN_ATTACKS
    data_free = name in DATA_FREE_ATTACKS
    label_only = label_only or name == "knockoff-labels"
    model: Any = None
    meta: dict[str, Any] = {}
    if victim is not None:
        model, meta = load_checkpoint(victim, map_location=dev)
        dataset = resolve_dataset(dataset, meta, victim)
    assert dataset is not None  # _remote_options requires it without a victim
    ds = load_dataset(dataset, data_dir, **_split_kwargs(split_test, meta))
    if model is not None:
        check_victim_data(model, ds.input_shape, f"--dataset {dataset}")
    c, h, w = ds.input_shape
    default_pool = f"{dataset}-unlabeled" if jacobian else scenario_for(dataset).pool
    pool = None if data_free else pool or default_pool
    thief_pool = (
        None
        if pool is None
        else load_pool(pool, channels=c, image_size=(h, w), seed=seed, data_dir=data_dir)
    )
    detector = None
    if guardian is not None:
        from stealproof.detectors.guardian import GuardianDetector

        detector = GuardianDetector.load(guardian, map_location=dev, victim=model)
    d = None
    if remote is None:
        log_images = sample_pool(query_sample, model, seed, data_dir)
        d = build_defense(
            defense, parse_params(param), model, ds.train.images, models_dir, log_images
        )
    train_cfg = scenario_for(dataset).clone_training
    if epochs is not None:
        train_cfg = train_cfg.model_copy(update={"epochs": epochs, "min_steps": None})
    box: Any
    if remote is not None:
        from stealproof.http_box import HTTPBlackBox

        box = HTTPBlackBox(remote[0], remote[1], remote[2], budget=budget, client_id="thief")
        if box.input_shape != ds.input_shape:
            raise ConfigError(
                f"--dataset {dataset}: images are {tuple(ds.input_shape)} but model "
                f"{remote[2]!r} at {remote[0]} takes {box.input_shape}"
            )
    elif detector is None:
        box = BlackBox(model, d, budget=budget, output=output)  # type: ignore[arg-type]
    else:
        from stealproof.policy import DetectionPolicy

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
    if model is not None:
        make_clone = clone_factory_like(model, clone_model)
    else:
        make_clone = _remote_clone_factory(
            clone_model or scenario_for(dataset).model, ds.input_shape, box.num_classes
        )
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
                device=dev,
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
                device=dev,
                progress=p,
            )
    else:
        assert thief_pool is not None
        knockoff = KnockoffNets(policy=policy, label_only=label_only, seed=seed, train=train_cfg)
        with progress_bar(quiet or as_json) as p:
            result = knockoff.run(
                thief_box, thief_pool, thief_budget, make_clone, device=dev, progress=p
            )
    cost = None if d is None else defense_cost(model, d, ds.test.images, ds.test.labels)
    meter = box.meter() if remote is None else None
    attack_name = name if jacobian or data_free else "knockoff-labels" if label_only else "knockoff"
    row: dict[str, Any] = {
        "attack": attack_name,
        "policy": None if jacobian or data_free else policy,
        "label_only": label_only,
        "average": average,
        "dataset": dataset,
        "defense": defense if remote is None else None,
        "params": d.params if d is not None else None,
        "target": None if remote is None else f"{remote[0]} model {remote[2]}",
        "budget": budget,
        "queries_used": result.queries_used,
        "rows_charged": box.queries_used,
        "pool": pool,
        "victim_acc": meta.get("test_acc"),
        "defender_acc": None if cost is None else cost.defender_acc,
        "l1_mean": None if meter is None else meter.mean_l1,
        "kl_mean": None if meter is None else meter.mean_kl,
        "clone_acc": metrics.clone_accuracy(result.clone, ds.test.images, ds.test.labels),
        "clone_fidelity": None
        if model is None
        else metrics.clone_fidelity(result.clone, model, ds.test.images),
        "clone_training": train_cfg.model_dump(mode="json"),
        "stopped": result.stopped,
        "blocked_at": result.blocked_at,
        "stop_message": result.stop_message,
        "seed": seed,
    }
    if not data_free:
        row["clone_steps"] = describe_training(train_cfg, max(1, result.queries_used))
    if guardian is not None:
        row["guardian"] = str(guardian)
        row["flagged_rows"] = box.flagged_rows
    if jacobian or data_free:
        row["trace"] = [[t.queries, t.clone_acc] for t in result.trace]
    text = dumps_strict(row, indent=2)
    if out is not None:
        write_text_atomic(out / "result.json", text + "\n")
    if as_json:
        print(dumps_strict(row))
    elif not quiet:
        source = "a generator" if data_free else pool
        against = defense if remote is None else row["target"]
        table = Table(title=f"{row['attack']} vs {against} ({budget} queries from {source})")
        for k in table_keys():
            table.add_column(k, justify="right")
        table.add_row(*(_cell(row[k], k != "l1_mean") for k in table_keys()))
        console.print(table)
        if row["stopped"] == "blocked":
            console.print(
                f"the thief was blocked after {row['blocked_at']} rows "
                f"({row.get('flagged_rows', 0)} flagged); the clone was trained on what it had",
                highlight=False,
            )
        elif row["stopped"] == "budget":
            console.print(
                f"the black box's budget ran out after {row['queries_used']} rows; "
                "the clone was trained on what it had",
                highlight=False,
            )
        if "clone_steps" in row:
            console.print(f"clone training: {row['clone_steps']}", highlight=False)


def table_keys() -> tuple[str, ...]:
    """The columns of ``attack``'s table."""
    return ("defender_acc", "l1_mean", "clone_acc", "clone_fidelity")


def _cell(value: float | None, percent: bool) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" if percent else f"{value:.3f}"


def _remote_options(
    target: str | None,
    api_key: str | None,
    api_key_file: Path | None,
    served_model: str | None,
    victim: Path | None,
    dataset: str | None,
    **local: Any,
) -> tuple[str, str, str] | None:
    """(url, key, model) for ``attack --target``, checked before any work; None without it."""
    if target is None:
        if victim is None:
            raise ConfigError("attack: pass --victim CHECKPOINT, or --target URL for a gateway")
        given = {"--api-key": api_key, "--api-key-file": api_key_file, "--model": served_model}
        for opt, value in given.items():
            if value is not None:
                raise ConfigError(f"{opt}: only with --target URL")
        return None
    if not target.startswith(("http://", "https://")):
        raise ConfigError(f"--target: expected an http:// or https:// URL, got {target!r}")
    flags = {
        "defense": ("--defense", "none"),
        "param": ("--param", None),
        "models_dir": ("--models", None),
        "guardian": ("--guardian", None),
        "query_sample": ("--query-sample", None),
        "output": ("--output", "probs"),
    }
    for key, value in local.items():
        flag, default = flags[key]
        if value != default and value != []:
            raise ConfigError(
                f"{flag}: not with --target (the gateway applies its own defense, policy "
                "and output mode)"
            )
    if served_model is None:
        raise ConfigError("--model: name the served model to attack (see GET /v2/models/NAME)")
    if dataset is None and victim is None:
        raise ConfigError("--dataset: with --target, name the dataset that scores the clone")
    if api_key_file is not None:
        if api_key is not None:
            raise ConfigError("--api-key, --api-key-file: pass one of them")
        try:
            api_key = api_key_file.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(
                f"--api-key-file: cannot read {api_key_file} ({e.strerror})"
            ) from None
    if not api_key:
        raise ConfigError("--api-key: with --target, pass the client's key (or --api-key-file)")
    return target.rstrip("/"), api_key, served_model


def _remote_clone_factory(architecture: str, shape: tuple[int, ...], classes: int | None) -> Any:
    """Fresh clones of ``architecture`` for a gateway's input shape and class count."""
    from stealproof.models import available_models, create_model

    if architecture not in available_models():
        from stealproof._names import unknown_name_message

        raise ConfigError(
            "--clone-model: "
            + unknown_name_message("model", architecture, sorted(available_models()))
        )
    c, h, w = shape

    def make() -> Any:
        return create_model(architecture, in_channels=c, image_size=(h, w), num_classes=classes)

    return make


def resolve_dataset(dataset: str | None, meta: dict[str, Any], victim: Path) -> str:
    """The dataset to score on: ``--dataset`` or the checkpoint's; refuse a mismatch."""
    trained_on = meta.get("dataset") if isinstance(meta, dict) else None
    if dataset is None:
        return str(trained_on) if trained_on else "mnist5k"
    if trained_on and dataset != trained_on:
        raise ConfigError(
            f"--dataset: the victim {victim} was trained on {trained_on!r}, not {dataset!r}; "
            f"omit --dataset to use {trained_on!r}"
        )
    return dataset


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
        "attacks": {n: (d, configs.get(n)) for n, d in ATTACKS.items()},
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


from stealproof.bench.cli import bench_app  # noqa: E402
from stealproof.guardian_cli import app as guardian_app  # noqa: E402
from stealproof.serve_cli import register as register_gateway  # noqa: E402

app.add_typer(bench_app, name="bench")
app.add_typer(guardian_app, name="guardian")
register_gateway(app)


def main() -> None:
    """Entry point of the ``stealproof`` script."""
    app()

"""``stealproof attack``: steal a victim (a checkpoint, or a gateway by URL) and score the clone."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.table import Table

from stealproof.cli._shared import (
    DeviceOpt,
    JsonOpt,
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
    resolve_api_key,
    resolve_dataset,
    sample_pool,
)
from stealproof.defense_models import build_defense
from stealproof.errors import ConfigError

app = typer.Typer()  # merged into the root app (stealproof.cli)


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
            "pool and need large budgets (10^5 rows and more). art:knockoffnets and art:copycat "
            "run ART's attacks (needs stealproof[art]).",
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
    from stealproof.integrations import ART_ATTACKS
    from stealproof.models import load_checkpoint
    from stealproof.oracle import BlackBox
    from stealproof.train import describe_training

    known = ["knockoff", "knockoff-labels", *JACOBIAN_ATTACKS, *DATA_FREE_ATTACKS, *ART_ATTACKS]
    if name not in known:
        from stealproof._names import unknown_name_message

        raise ConfigError(unknown_name_message("attack", name, known))
    if output not in ("probs", "topk", "label"):
        raise ConfigError(f"--output: expected probs, topk or label, got {output!r}")
    if policy not in ("random", "adaptive"):
        raise ConfigError(f"--policy: expected random or adaptive, got {policy!r}")
    from_art = name in ART_ATTACKS
    if policy == "adaptive" and name not in ("knockoff", "knockoff-labels", "art:knockoffnets"):
        raise ConfigError(f"--policy adaptive: only with knockoff or art:knockoffnets, not {name}")
    if from_art:  # fails here, before any work, without the stealproof[art] extra
        from stealproof.integrations.art import art_attack
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
    if from_art:  # ART's fit: no schedule, augmentation, early stop or selection split
        train_cfg = train_cfg.model_copy(
            update={"schedule": "none", "augment": False, "stop_after": None, "val_fraction": 0.0}
        )
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
    elif from_art:
        assert thief_pool is not None
        art = art_attack(name, policy=policy, label_only=label_only, seed=seed, train=train_cfg)
        with progress_bar(quiet or as_json) as p:
            result = art.run(
                thief_box, thief_pool, thief_budget, make_clone, device=dev, progress=p
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
    attack_name = (
        name
        if jacobian or data_free or from_art
        else "knockoff-labels"
        if label_only
        else "knockoff"
    )
    row: dict[str, Any] = {
        "attack": attack_name,
        "policy": None if jacobian or data_free or name == "art:copycat" else policy,
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
    key = resolve_api_key(
        api_key,
        api_key_file,
        api_key_given=api_key is not None,
        missing="--api-key: with --target, pass the client's key (or --api-key-file)",
    )
    return target.rstrip("/"), key, served_model


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

"""``stealproof verify``: prove that a suspect model was derived from a watermarked one.

``keygen`` makes the secret grouped key set (for the ``watermark`` defense), ``collect`` the key
set of the ``label_watermark`` defense from its records, ``check`` (or
``verify --key ... --suspect ...`` directly) tests a suspect checkpoint or gateway URL against
it with an exact test over the secret label draw, and ``calibrate`` scores the owner's own
independently trained reference models on the key: context shown next to a verdict, never a
change to its p-value.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from stealproof.cli._shared import (
    _setup,
    console,
    dumps_strict,
    err_console,
    friendly_errors,
    resolve_api_key,
)
from stealproof.errors import ConfigError

if TYPE_CHECKING:
    from stealproof.ownership import KeySet

verify_app = typer.Typer(
    name="verify",
    help="Ownership verification: secret key sets, calibration, and the check of a suspect.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

KeyOpt = Annotated[Path | None, typer.Option("--key", help="The secret key file (keygen).")]
SuspectOpt = Annotated[
    str | None,
    typer.Option(
        "--suspect", help="The suspect: a checkpoint, or a gateway URL (with --api-key, --model)."
    ),
]
ApiKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="STEALPROOF_API_KEY",
        help="With a URL suspect: the API key (or $STEALPROOF_API_KEY).",
        show_envvar=False,
    ),
]
ApiKeyFileOpt = Annotated[
    Path | None, typer.Option("--api-key-file", help="With a URL suspect: a file holding the key.")
]
ModelOpt = Annotated[
    str | None, typer.Option("--model", help="With a URL suspect: the served model's name.")
]
CalibrationOpt = Annotated[
    Path | None,
    typer.Option(
        "--calibration",
        help="Calibration file (calibrate); default: KEY.calibration.json when it exists.",
    ),
]
AlphaOpt = Annotated[
    float, typer.Option("--alpha", help="Significance level of the decision, in (0, 1).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]


@verify_app.callback(invoke_without_command=True)
@friendly_errors
def _group(
    ctx: typer.Context,
    key: KeyOpt = None,
    suspect: SuspectOpt = None,
    api_key: ApiKeyOpt = None,
    api_key_file: ApiKeyFileOpt = None,
    served_model: ModelOpt = None,
    calibration: CalibrationOpt = None,
    alpha: AlphaOpt = 1e-3,
    as_json: JsonOpt = False,
) -> None:
    """Ownership verification: `verify --key KEY --suspect S` is `verify check`."""
    if ctx.invoked_subcommand is not None:
        if key is not None or suspect is not None:
            raise ConfigError(f"--key/--suspect: give them after `verify {ctx.invoked_subcommand}`")
        return
    if key is None and suspect is None:
        console.print(ctx.get_help(), highlight=False)
        raise typer.Exit(0)
    _check(ctx, key, suspect, api_key, api_key_file, served_model, calibration, alpha, as_json)


def _parse_shape(text: str) -> tuple[int, int, int]:
    parts = [p.strip() for p in text.replace("x", ",").split(",")]
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) != 3 or any(d < 1 for d in dims):
        raise ConfigError(
            f"--shape: expected C,H,W (three positive integers, e.g. 1,28,28), got {text!r}"
        )
    return (dims[0], dims[1], dims[2])


def _check_new_key_file(out: Path, force: bool) -> None:
    """``--out`` must be writable, and an existing key file is replaced only with ``--force``."""
    from stealproof._io import check_output_file

    check_output_file(out, "--out")
    if out.exists() and not force:
        raise ConfigError(
            f"--out: {out} exists; a key file is the owner's evidence, so it is not "
            "overwritten (pass --force to replace it)"
        )


def _key_summary(key: KeySet, out: Path, **extra: Any) -> dict[str, Any]:
    """What ``keygen`` and ``collect`` report of the key file they wrote (``--json``)."""
    return {
        "key": str(out),
        "fingerprint": key.fingerprint,
        "n": key.n,
        "groups": key.num_groups,
        "shape": list(key.input_shape),
        "classes": key.num_classes,
        **extra,
        "min_p": key.min_p,
    }


@verify_app.command("keygen")
@friendly_errors
def keygen_cmd(
    out: Annotated[Path, typer.Option("--out", help="Key file to write (kept secret).")],
    n: Annotated[int, typer.Option("--n", help="Number of key inputs.")] = 100,
    shape: Annotated[
        str | None,
        typer.Option("--shape", help="Image shape C,H,W (default: the victim's, else 1,28,28)."),
    ] = None,
    classes: Annotated[
        int | None,
        typer.Option("--classes", help="Number of classes (default: the victim's, else 10)."),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed", help="Secret seed (default: a fresh random one, stored only in the key file)."
        ),
    ] = None,
    groups: Annotated[
        int,
        typer.Option(
            "--groups",
            help="Groups of keys sharing one secret label (more groups: a lower floor of the "
            "p-value).",
        ),
    ] = 6,
    kind: Annotated[
        str,
        typer.Option(
            "--kind",
            help="Key images: blobs (a noisy smooth prototype per group), shapes, noise or mixed.",
        ),
    ] = "blobs",
    victim: Annotated[
        Path | None,
        typer.Option(
            "--victim",
            help="Victim checkpoint: draw each group's label among the classes other than the "
            "victim's majority answer on that group.",
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing key file.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Make a secret key set: out-of-distribution images in groups, one secret label each."""
    from stealproof.models import load_checkpoint
    from stealproof.ownership import generate_key_set, save_key_set
    from stealproof.ownership.keys import GENERATORS

    _check_new_key_file(out, force)
    if n < 1:
        raise ConfigError(f"--n: expected a positive number of key inputs, got {n}")
    if kind not in GENERATORS:
        raise ConfigError(f"--kind: expected one of {', '.join(GENERATORS)}, got {kind!r}")
    if not 1 <= groups <= n:
        raise ConfigError(f"--groups: expected 1 to --n = {n} groups, got {groups}")
    if seed is not None and not 0 <= seed < 2**63:
        raise ConfigError(f"--seed: expected an integer in [0, 2^63), got {seed}")
    _setup(1, True)
    model = None
    if victim is not None:
        model, _ = load_checkpoint(victim)
    vshape = tuple(getattr(model, "input_shape", ()) or ())
    dims = _parse_shape(shape) if shape is not None else None
    if dims is None:
        dims = (int(vshape[0]), int(vshape[1]), int(vshape[2])) if vshape else (1, 28, 28)
    elif vshape and dims != vshape:
        raise ConfigError(f"--shape: {dims} differs from the victim's input shape {vshape}")
    vk = getattr(model, "num_classes", None)
    k = classes if classes is not None else (int(vk) if vk is not None else 10)
    if k < 2:
        raise ConfigError(f"--classes: expected at least 2, got {k}")
    if vk is not None and k != int(vk):
        raise ConfigError(f"--classes: {k} differs from the victim's {int(vk)} classes")
    key = generate_key_set(
        n,
        dims,
        k,
        secrets.randbits(63) if seed is None else seed,
        groups=groups,
        kind=kind,
        victim=model,
    )
    save_key_set(key, out)
    result = _key_summary(key, out, kind=kind, avoids_victim_top1=model is not None)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    c, h, w = key.input_shape
    console.print(
        f"wrote {out}: key {key.fingerprint}, {key.n} {kind} inputs {c}x{h}x{w} in "
        f"{key.num_groups} groups, {key.num_classes} classes"
        + (", labels avoid the victim's majority answers" if model is not None else "")
        + f"; smallest possible p-value {key.min_p:.3g}",
        highlight=False,
    )
    if key.min_p >= 1e-3:
        console.print(
            f"note: {key.num_groups} groups cannot show theft at the default alpha = 0.001 "
            "(even a perfect clone gets p ≥ the value above): use more --groups",
            highlight=False,
        )
    console.print(
        "keep this file secret and safe (mode 0600): it is the evidence of ownership and "
        "cannot be re-made without its seed",
        highlight=False,
    )


@verify_app.command("collect")
@friendly_errors
def collect_cmd(
    records: Annotated[
        Path,
        typer.Option(
            "--records",
            help="The record_dir the label_watermark defense wrote the relabelled queries to.",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Key file to write (kept secret).")],
    max_keys: Annotated[
        int | None, typer.Option("--max-keys", help="Keep at most this many keys.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing key file.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Make the key set of a label watermark: every query it relabelled, with the label given."""
    from stealproof.ownership import key_set_from_records, save_key_set

    _check_new_key_file(out, force)
    if max_keys is not None and max_keys < 1:
        raise ConfigError(f"--max-keys: expected a positive number, got {max_keys}")
    _setup(1, True)
    key = key_set_from_records(records, max_keys=max_keys)
    save_key_set(key, out)
    result = _key_summary(key, out, record_files=key.metadata.get("files"))
    if as_json:
        print(json.dumps(result, indent=2))
        return
    c, h, w = key.input_shape
    console.print(
        f"wrote {out}: key {key.fingerprint}, {key.n} relabelled queries {c}x{h}x{w} from "
        f"{result['record_files']} record files, {key.num_groups} groups (victim classes), "
        f"{key.num_classes} classes; smallest possible p-value {key.min_p:.3g}",
        highlight=False,
    )
    console.print(
        "keep this file and the records secret (they hold the class map): they are the "
        "evidence of ownership",
        highlight=False,
    )


@verify_app.command("calibrate")
@friendly_errors
def calibrate_cmd(
    key: Annotated[Path, typer.Option("--key", help="The secret key file.")],
    reference: Annotated[
        list[Path] | None,
        typer.Option(
            "--reference",
            help="Checkpoint of a model trained independently of the watermarked one (repeatable).",
        ),
    ] = None,
    train: Annotated[
        int | None,
        typer.Option(
            "--train",
            help="Also train N reference models (seeds 1..N) on --dataset with the victim's "
            "default architecture and training.",
        ),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option("--dataset", help="With --train: the owner's dataset (`list datasets`)."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", help="With --train: the architecture (default: the dataset's)."),
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="With --train: directory with dataset files.")
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option("--epochs", help="With --train: epochs (default: the dataset's victim's)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Calibration file (default: KEY.calibration.json)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Score independent reference models on the key (context for `check`, not its p-value)."""
    from stealproof._io import check_output_file
    from stealproof.models import load_checkpoint
    from stealproof.ownership import (
        calibrate,
        default_calibration_path,
        load_key_set,
        save_calibration,
    )
    from stealproof.ownership.stats import DEFAULT_CONFIDENCE, fmt_p

    if train is None:
        extra = [
            name
            for name, v in (
                ("--dataset", dataset),
                ("--model", model),
                ("--data-dir", data_dir),
                ("--epochs", epochs),
            )
            if v is not None
        ]
        if extra:
            raise ConfigError(f"{', '.join(extra)}: only with --train N")
        if not reference:
            raise ConfigError(
                "--reference/--train: give reference checkpoints, or --train N --dataset NAME "
                "to train N reference models"
            )
    else:
        if train < 1:
            raise ConfigError(f"--train: expected at least 1 reference model, got {train}")
        if dataset is None:
            raise ConfigError("--dataset: --train needs the owner's dataset to train on")
        if epochs is not None and epochs < 1:
            raise ConfigError(f"--epochs: expected at least 1, got {epochs}")
    target = out if out is not None else default_calibration_path(key)
    check_output_file(target, "--out")
    k = load_key_set(key)
    _setup(1, True)
    models: dict[str, Any] = {str(p): load_checkpoint(p)[0] for p in reference or []}
    if train is not None:
        assert dataset is not None
        models.update(_train_references(k, train, dataset, model, data_dir, epochs))
    cal = calibrate(k, models)
    save_calibration(cal, target)
    upper = cal.upper(DEFAULT_CONFIDENCE)
    if as_json:
        doc = {**cal.as_dict(), "file": str(target), "rate": cal.rate, "upper": upper}
        print(dumps_strict(doc, indent=2))
        return
    for name, m, p in zip(cal.names, cal.matches, cal.p_values, strict=True):
        console.print(
            f"  {name}: {m} of {cal.n} key matches ({100 * m / cal.n:.1f}%), p = {fmt_p(p)}",
            highlight=False,
        )
    console.print(
        f"wrote {target}: key {cal.key_fingerprint}, {len(cal.names)} reference models, "
        f"{cal.total_matches} of {cal.total_trials} matches ({100 * cal.rate:.1f}%); shown as "
        "context by `verify check` (the p-value of a suspect is exact without it)",
        highlight=False,
    )


def _train_references(
    k: KeySet,
    count: int,
    dataset: str,
    model: str | None,
    data_dir: Path | None,
    epochs: int | None,
) -> dict[str, Any]:
    """Train ``count`` reference models (seeds 1..count) after checking the data fits the key."""
    from stealproof.data import load_dataset
    from stealproof.experiment import scenario_for
    from stealproof.ownership import train_reference_models

    ds = load_dataset(dataset, data_dir)
    if ds.input_shape != k.input_shape or ds.num_classes != k.num_classes:
        raise ConfigError(
            f"--dataset: {dataset} has {ds.input_shape} images and {ds.num_classes} classes, "
            f"the key {k.input_shape} and {k.num_classes}"
        )
    scenario = scenario_for(ds.name)
    config = scenario.victim_training
    if epochs is not None:
        config = config.model_copy(update={"epochs": epochs})
    arch = model or scenario.model
    err_console.print(
        f"training {count} reference model{'s' if count > 1 else ''} ({arch} on {dataset}, "
        f"{config.epochs} epochs, seeds 1..{count})",
        highlight=False,
    )
    done = [0]

    def report(seed: int, acc: float) -> None:
        done[0] += 1
        err_console.print(
            f"  reference {done[0]}/{count} (seed {seed}): test accuracy {100 * acc:.2f}%",
            highlight=False,
        )

    nets = train_reference_models(
        ds, arch, list(range(1, count + 1)), train_config=config, on_trained=report
    )
    seeds = range(1, count + 1)
    return {f"{arch}-{dataset}-seed{s}": net for s, net in zip(seeds, nets, strict=True)}


@verify_app.command("check")
@friendly_errors
def check_cmd(
    ctx: typer.Context,
    key: KeyOpt = None,
    suspect: SuspectOpt = None,
    api_key: ApiKeyOpt = None,
    api_key_file: ApiKeyFileOpt = None,
    served_model: ModelOpt = None,
    calibration: CalibrationOpt = None,
    alpha: AlphaOpt = 1e-3,
    as_json: JsonOpt = False,
) -> None:
    """Test a suspect against the key: matches per group, the exact p-value and the decision.

    The p-value is exact for any model that never saw the owner's answers; a calibration
    (found next to the key, or --calibration) only adds reference models' scores as context.
    """
    _check(ctx, key, suspect, api_key, api_key_file, served_model, calibration, alpha, as_json)


def _api_key(
    ctx: typer.Context, url: bool, api_key: str | None, api_key_file: Path | None
) -> str | None:
    """The API key for a URL suspect; refused for a checkpoint (an env var is ignored then)."""
    # typer ships its own click: compare the source by name, not by enum identity
    explicit = getattr(ctx.get_parameter_source("api_key"), "name", None) == "COMMANDLINE"
    if not url:
        if explicit or api_key_file is not None:
            raise ConfigError("--api-key/--api-key-file: only for a suspect given as a URL")
        return None
    return resolve_api_key(
        api_key,
        api_key_file,
        api_key_given=explicit,
        missing="--api-key: a URL suspect needs the client's key (or --api-key-file)",
    )


def _check(
    ctx: typer.Context,
    key: Path | None,
    suspect: str | None,
    api_key: str | None,
    api_key_file: Path | None,
    served_model: str | None,
    calibration: Path | None,
    alpha: float,
    as_json: bool,
) -> None:
    from stealproof.ownership import (
        default_calibration_path,
        load_calibration,
        load_key_set,
        load_suspect,
        verify,
    )
    from stealproof.ownership.stats import DEFAULT_CONFIDENCE, check_alpha

    if key is None:
        raise ConfigError("--key: name the secret key file (made by `stealproof verify keygen`)")
    if suspect is None:
        raise ConfigError("--suspect: name a checkpoint or a gateway URL")
    check_alpha(alpha)
    url = suspect.startswith(("http://", "https://"))
    token = _api_key(ctx, url, api_key, api_key_file)
    if not url and served_model is not None:
        raise ConfigError("--model: only for a suspect given as a URL")
    k = load_key_set(key)
    cal_path, found = calibration, False
    if cal_path is None and default_calibration_path(key).is_file():
        cal_path, found = default_calibration_path(key), True
    cal = load_calibration(cal_path, k) if cal_path is not None else None
    _setup(1, True)
    box = load_suspect(suspect, api_key=token, model=served_model)
    try:
        verdict = verify(box, k, cal, alpha, confidence=DEFAULT_CONFIDENCE)
        rows = int(getattr(box, "queries_used", 0)) if url else None
    finally:
        close = getattr(box, "close", None)
        if url and callable(close):
            close()
    result: dict[str, Any] = {
        "key": str(key),
        "key_fingerprint": k.fingerprint,
        "suspect": suspect,
        "calibration": None if cal_path is None else str(cal_path),
        **verdict.as_dict(),
        "rows_sent": rows,
    }
    if as_json:
        print(dumps_strict(result, indent=2))
        return
    _print_check(k, suspect, cal_path, found, verdict.as_dict(), rows)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _print_check(
    k: KeySet,
    suspect: str,
    cal_path: Path | None,
    found: bool,
    v: dict[str, Any],
    rows: int | None,
) -> None:
    from stealproof.ownership.stats import fmt_p

    c, h, w = k.input_shape
    lines = [
        (
            "key",
            f"{k.fingerprint} ({k.n} inputs {c}x{h}x{w} in {k.num_groups} groups, "
            f"{k.num_classes} classes, {k.kind})",
        ),
        ("suspect", suspect),
        (
            "matches",
            f"T = {v['matches']} of {v['n']} key inputs ({_pct(v['match_rate'])}); secret label "
            f"= the suspect's majority answer in {v['groups_matched']} of {v['groups']} groups",
        ),
        ("chance", f"{_pct(v['chance'])} expected for a model that never saw the owner's answers"),
        ("p-value", f"{fmt_p(v['p_value'])} (exact test over the secret label draw)"),
        ("floor", f"{fmt_p(v['min_p'])} (the smallest p-value {k.num_groups} groups can give)"),
    ]
    if v["reference_names"] is None:
        lines.append(("references", "none (optional context, see `verify calibrate`)"))
    else:
        where = f"{cal_path}{' (found next to the key)' if found else ''}"
        lines.append(
            (
                "references",
                f"{len(v['reference_names'])} independent models ({where}); context only, "
                "they do not change the p-value:",
            )
        )
        for name, rate, p in zip(
            v["reference_names"], v["reference_match_rates"], v["reference_p_values"], strict=True
        ):
            lines.append(("", f"{name}: match rate {_pct(rate)}, p = {fmt_p(p)}"))
    if rows is not None:
        lines.append(("rows sent", f"{rows} (the key inputs only)"))
    lines.append(("decision", v["text"]))
    for label, text in lines:
        console.print(f"{label:<12} {text}", highlight=False, markup=False)

"""``stealproof bench run`` and ``stealproof bench report`` (a typer sub-app)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from stealproof.cli._shared import _setup, console, friendly_errors, progress_bar

bench_app = typer.Typer(
    name="bench",
    help="Benchmark grids: defenses × attacks × strengths × seeds → tables, plots, a report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@bench_app.command("run")
@friendly_errors
def run_cmd(
    config: Annotated[
        str,
        typer.Argument(
            metavar="CONFIG_OR_SUITE",
            help="A YAML/TOML/JSON config file, or a built-in suite: smoke, mnist5k, smoke-full, "
            "mnist5k-full, paper-mnist, paper-fashionmnist, paper-cifar10 (the paper suites "
            "need --data-dir).",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Output directory (results, cache, report).")],
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Where file datasets are read (MNIST/, FashionMNIST/, KMNIST/ IDX files, "
            "cifar-10-batches-py/, cifar-100-python/); replaces the config's data_dir.",
        ),
    ] = None,
    backend: Annotated[
        str, typer.Option("--backend", help="serial (this process) or ray (one task per cell).")
    ] = "serial",
    address: Annotated[
        str | None,
        typer.Option(
            "--address",
            help="Ray cluster to join: auto, ray://HOST:10001, HOST:6379 (default: start a "
            "local Ray).",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers", min=1, help="Ray: CPUs of the local Ray, and the most tasks in flight."
        ),
    ] = None,
    threads: Annotated[
        int,
        typer.Option(
            "--threads",
            min=0,
            help="torch threads of the serial process or of each Ray task. The default 1 makes "
            "rows identical across backends (float reductions depend on the thread count); "
            "more threads can speed up a serial run at the cost of that.",
        ),
    ] = 1,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:1, ...")] = "cpu",
    rerun_stale: Annotated[
        bool,
        typer.Option(
            "--rerun-stale",
            help="Re-run the finished cells whose rows another stealproof version made (the "
            "new rows supersede them); by default they are reused, with a warning.",
        ),
    ] = False,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit",
            min=1,
            help="Run at most this many of the cells still to do (in grid order): a first look "
            "at a large suite; the same command without it finishes the rest.",
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON summary on stdout.")
    ] = False,
) -> None:
    """Run a benchmark grid; a re-run into the same --out finishes only the missing cells.

    Everything is checked before any work: the backend, --device, --out (a writable
    directory), the config and every dataset and pool it names. Ctrl-C stops the run; the
    finished cells are kept and the same command resumes from them.
    """
    from stealproof import __version__
    from stealproof._cli_errors import err_console
    from stealproof._device import resolve_device
    from stealproof._io import check_output_dir
    from stealproof.bench.config import load_config
    from stealproof.bench.report import write_outputs
    from stealproof.bench.runner import BenchBackendError, execute, plan_run

    if backend not in ("serial", "ray"):
        raise BenchBackendError(f"--backend: expected serial or ray, got {backend!r}")
    if backend == "ray":
        from stealproof.bench.ray_backend import import_ray

        import_ray()  # fail before any work when Ray is missing
    dev = resolve_device(device, "--device")
    check_output_dir(out, "--out")
    cfg = load_config(config, data_dir=data_dir)  # validates everything before any work
    _setup(threads if backend == "serial" else 0, quiet or as_json)  # Ray tasks set their own
    plan = plan_run(cfg, out, rerun_stale=rerun_stale)
    skipped, left = plan.skipped, len(plan.pending)
    if limit is not None:
        plan.pending = plan.pending[:limit]
    talk = not (quiet or as_json)
    if plan.stale:
        versions = ", ".join(plan.versions)
        what = (
            "re-running them (--rerun-stale)"
            if rerun_stale
            else "reusing them; pass --rerun-stale to re-run them"
        )
        err_console.print(
            f"warning: {len(plan.stale)} finished cells in {out} have rows made by stealproof "
            f"{versions} (this is {__version__}); {what}",
            highlight=False,
            soft_wrap=True,
        )
    if talk:
        msg = f"{cfg.name}: {len(plan.cells)} cells"
        if skipped:
            msg += f", skipping {skipped} finished cells"
        if limit is not None and left > len(plan.pending):
            msg += f", running {len(plan.pending)} of the {left} left (--limit)"
        err_console.print(msg + f" ({backend})", highlight=False)
    ran: list[str] = []
    try:
        with progress_bar(quiet or as_json) as p:
            summary = execute(
                plan,
                backend="ray" if backend == "ray" else "serial",
                address=address,
                workers=workers,
                threads=threads or 1,
                device=dev,
                progress=p,
                on_row=lambda row: ran.append(str(row.get("config_hash"))),
            )
    except KeyboardInterrupt:
        done = skipped + len(ran)
        try:  # what the file holds: a row written just before the signal counts too
            from stealproof.bench.store import ResultStore

            kept = ResultStore(out).index()
            done = max(done, sum(1 for c in plan.cells if c.cell_hash() in kept))
        except Exception:  # the file being unreadable must not hide the message
            pass
        err_console.print(
            f"interrupted: {done} of {len(plan.cells)} cells finished "
            f"({max(len(ran), done - skipped)} in this run) "
            f"and are kept in {out / 'results.jsonl'}; re-run the same command (same --out) to "
            "resume with the missing cells",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(130) from None
    outputs = write_outputs(out)
    if as_json:
        print(
            json.dumps(
                {
                    "cells": summary.total,
                    "skipped": skipped,
                    "ran": summary.ran,
                    "left": left - summary.ran,
                    "seconds": round(summary.seconds, 1),
                    "backend": summary.backend,
                    "results": str(out / "results.jsonl"),
                    "csv": str(outputs.csv),
                    "report": str(outputs.report),
                    "plots": [str(p) for p in outputs.plots],
                }
            )
        )
    elif talk:
        rest = left - summary.ran
        console.print(
            f"ran {summary.ran} cells in {summary.seconds:.0f} s; wrote {out / 'results.jsonl'}, "
            f"{outputs.csv.name}, {outputs.report.name} and {len(outputs.plots)} plot(s)"
            + (f"; {rest} cells left (run again without --limit)" if rest else ""),
            highlight=False,
        )


@bench_app.command("report")
@friendly_errors
def report_cmd(
    out: Annotated[Path, typer.Argument(metavar="DIR", help="A directory of `bench run`.")],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing.")] = False,
) -> None:
    """Rebuild report.md, results.csv and the trade-off plots from results.jsonl alone."""
    from stealproof.bench.report import write_outputs

    outputs = write_outputs(out)
    if not quiet:
        console.print(
            f"{outputs.rows} rows → {outputs.report}, {outputs.csv.name} and "
            f"{len(outputs.plots)} plot(s)",
            highlight=False,
        )

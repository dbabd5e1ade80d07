"""Training cost of InI against plain training: seconds per epoch and peak memory.

mnist5k, LeNet, batch 128, SGD (lr 0.1, momentum 0.5, wd 1e-3), no augmentation; InI with its
default weights (γ=0.3, δ=1, ε=1000), forward KL and the ``shapes`` OOD pool (batch 128).
Rows: ``plain`` (cross-entropy only), ``ini_reference`` (second-order autograd) and
``ini_fast`` (VJP/JVP engine, same gradients), both with PCGrad (the default);
``--engines`` can add ``ini_reference_summed`` / ``ini_fast_summed`` (summed losses).
``plain`` runs the same loop (optimiser, batches, gradient clipping) with the InI weights set
to zero: cross-entropy only.

- *time*: all engines train in this one process, interleaved: ``--rounds`` rounds, each
  training every engine for ``--epochs`` epochs from a fresh model (so a slow spell of a
  shared machine hits every engine alike). Per round an engine's time is the mean of epochs
  2..E (epoch 1 carries one-off warm-up costs, reported as ``s_first_epoch``; epoch 1 is used
  when ``--epochs 1``); ``s_per_epoch`` is the median over rounds.
- *memory*: each engine in a fresh subprocess, so that one engine's allocations never
  flatter or burden another's. With glibc's mmap threshold fixed at 64 KiB
  (``MALLOC_MMAP_THRESHOLD_``, so freed tensors go back to the OS instead of staying in the
  heap), warms up on two batches, resets the kernel's peak-RSS mark
  (``/proc/self/clear_refs``; falls back to ``getrusage`` maxrss), trains one epoch and
  reports ``peak_mem_mb`` = peak RSS − RSS just before training: the extra memory one
  training step needs (activations, autograd graphs, optimiser state). On a GPU device the
  CUDA peak allocation above the pre-training allocation is reported instead.

    python benchmarks/training_cost.py --out training_cost.json              # full: 3 epochs
    python benchmarks/training_cost.py --epochs 1 --limit 256 --out x.json   # quick check

Output: a JSON list of ``{engine, s_per_epoch, peak_mem_mb, ratio_to_plain, ...}`` rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from _output import emit

ENGINES = ("plain", "ini_reference", "ini_fast")
#: extra rows on request (``--engines``): the engines with summed losses instead of PCGrad
EXTRA_ENGINES = ("ini_reference_summed", "ini_fast_summed")


def _rss_mb() -> float:
    """Current resident set size (MB)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (Linux ≥ 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_mb(reset_ok: bool) -> float:
    if reset_ok:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


class _Setup:
    """mnist5k data, the OOD pool and a trainer for one engine (fresh models per call)."""

    def __init__(self, limit: int | None, threads: int, device: str) -> None:
        import torch

        from stealproof.data import load_dataset, load_pool

        if threads > 0:
            torch.set_num_threads(threads)
        ds = load_dataset("mnist5k")
        self.x, self.y = ds.train.images, ds.train.labels
        if limit is not None:
            self.x, self.y = self.x[:limit], self.y[:limit]
        self.pool = load_pool("shapes", channels=1, image_size=(28, 28), seed=0)
        c, h, w = ds.input_shape
        self.kwargs = {"in_channels": c, "image_size": (h, w), "num_classes": ds.num_classes}
        self.device = device

    @staticmethod
    def config(engine: str) -> Any:
        from stealproof.ini import IniConfig

        fast = engine.startswith("ini_fast")
        ini = IniConfig(
            engine="fast" if fast else "reference",
            pcgrad=not engine.endswith("_summed"),
            seed=0,
        )
        if engine == "plain":
            ini = ini.model_copy(update={"gamma": 0.0, "delta": 0.0, "eps": 0.0, "beta": 0.0})
        return ini

    def run(self, engine: str, n_epochs: int, n_rows: int) -> list[float]:
        """Seconds of each epoch of a fresh victim trained with ``engine``."""
        import torch

        from stealproof.ini import train_ini
        from stealproof.models import create_model

        torch.manual_seed(0)
        victim = create_model("lenet", **self.kwargs)
        torch.manual_seed(1)
        clone = create_model("lenet", **self.kwargs)
        cfg = self.config(engine).model_copy(update={"epochs": n_epochs})
        x, y = self.x[:n_rows], self.y[:n_rows]
        result = train_ini(victim, clone, x, y, self.pool, cfg, device=self.device)
        return [row["seconds"] for row in result.history]

    def describe(self, epochs: int) -> dict[str, Any]:
        import torch

        return {
            "epochs": epochs,
            "n_train": int(self.x.shape[0]),
            "batch_size": self.config("plain").batch_size,
            "threads": torch.get_num_threads(),
            "device": self.device,
            "torch": torch.__version__,
        }


def time_engines(
    engines: list[str], epochs: int, rounds: int, limit: int | None, threads: int, device: str
) -> list[dict[str, Any]]:
    """Time every engine in this process, interleaved over ``rounds`` (see the module doc)."""
    setup = _Setup(limit, threads, device)
    per_round: dict[str, list[float]] = {e: [] for e in engines}
    first: dict[str, list[float]] = {e: [] for e in engines}
    for r in range(rounds):
        for engine in engines:
            seconds = setup.run(engine, epochs, int(setup.x.shape[0]))
            timed = seconds[1:] if len(seconds) > 1 else seconds
            per_round[engine].append(sum(timed) / len(timed))
            first[engine].append(seconds[0])
            print(f"round {r + 1} {engine}: {per_round[engine][-1]:.3f} s/epoch", file=sys.stderr)
    return [
        {
            "engine": e,
            "s_per_epoch": statistics.median(per_round[e]),
            "s_per_epoch_rounds": per_round[e],
            "s_first_epoch": statistics.median(first[e]),
            "rounds": rounds,
            **setup.describe(epochs),
        }
        for e in engines
    ]


def memory_worker(engine: str, limit: int | None, threads: int, device: str) -> dict[str, Any]:
    """Extra memory one training epoch of ``engine`` needs (run in a fresh process)."""
    import torch

    setup = _Setup(limit, threads, device)
    setup.run(engine, 1, 2 * setup.config(engine).batch_size)  # warm-up: kernels, lazy imports
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    reset_ok = _reset_peak()
    rss_before = _rss_mb()
    setup.run(engine, 1, int(setup.x.shape[0]))
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20 - base
        method = "cuda_max_allocated"
    else:
        peak = _peak_mb(reset_ok) - rss_before
        method = "VmHWM" if reset_ok else "ru_maxrss"
    return {"peak_mem_mb": peak, "rss_before_mb": rss_before, "peak_method": method}


def _spawn_memory(engine: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-worker", engine]
    cmd += ["--threads", str(args.threads), "--device", args.device]
    if args.limit is not None:
        cmd += ["--limit", str(args.limit)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(done.returncode)
    row: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="write the JSON list here as well")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per engine per round")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved timing rounds")
    ap.add_argument("--limit", type=int, default=None, help="train on the first N images only")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--engines", default=",".join(ENGINES), help="comma-separated subset")
    ap.add_argument("--memory-worker", choices=ENGINES + EXTRA_ENGINES, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.epochs < 1 or args.rounds < 1 or (args.limit is not None and args.limit < 1):
        ap.error("--epochs, --rounds and --limit must be ≥ 1")
    if args.memory_worker:
        print(json.dumps(memory_worker(args.memory_worker, args.limit, args.threads, args.device)))
        return 0
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = set(engines) - set(ENGINES + EXTRA_ENGINES)
    if unknown:
        known = ", ".join(ENGINES + EXTRA_ENGINES)
        ap.error(f"--engines: unknown {sorted(unknown)}; expected {known}")
    rows = time_engines(engines, args.epochs, args.rounds, args.limit, args.threads, args.device)
    for row in rows:
        row.update(_spawn_memory(row["engine"], args))
        row["machine"] = platform.machine()
        print(
            f"{row['engine']}: {row['s_per_epoch']:.3f} s/epoch, peak +{row['peak_mem_mb']:.1f} MB",
            file=sys.stderr,
        )
    plain = next((r for r in rows if r["engine"] == "plain"), None)
    ref = next((r for r in rows if r["engine"] == "ini_reference"), None)
    for r in rows:
        if plain is not None:
            r["ratio_to_plain"] = r["s_per_epoch"] / plain["s_per_epoch"]
        if ref is not None and r["engine"].startswith("ini_fast"):
            r["speedup_over_reference"] = ref["s_per_epoch"] / r["s_per_epoch"]
            r["memory_ratio_to_reference"] = r["peak_mem_mb"] / max(ref["peak_mem_mb"], 1e-9)
    emit(rows, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

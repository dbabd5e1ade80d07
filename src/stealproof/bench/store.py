"""The result store: append-only JSON lines, one row per finished cell, plus a CSV copy.

Each row is written with one ``write`` followed by ``flush`` and ``fsync``, so a run killed at
any moment leaves whole rows behind (at worst a torn last line, which :meth:`ResultStore.open`
cuts off). Rows are keyed by the cell's ``config_hash``; a re-run skips the hashes it finds.
When a cell has several rows (``bench run --rerun-stale`` re-ran a cell whose row another
package version made), the row appended last supersedes the earlier ones; the file keeps them.

Rows are strict JSON: a metric that came out NaN or ±infinity is written as ``null`` (as is a
metric the cell does not measure, e.g. the label-only clone when only the soft-label clone was
trained), with a logged warning naming the field. Every row records the package ``version``
that made it. A line that is not a result row (hand-edited, another file) is refused with a
:class:`ResultsFileError` naming the line: results are never dropped or kept silently.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from stealproof._io import write_atomic
from stealproof._io import write_text_atomic as _write_text_atomic
from stealproof.errors import DataFileError

log = logging.getLogger(__name__)

RESULTS = "results.jsonl"
CSV_NAME = "results.csv"

#: Row fields in display order (CSV columns). Dict-valued fields are JSON text in the CSV.
ROW_FIELDS: tuple[str, ...] = (
    "scenario",
    "dataset",
    "model",
    "pool",
    "attack",
    "attack_params",
    "defense",
    "params",
    "seed",
    "budget",
    "queries_used",
    "victim_acc",
    "defender_acc",
    "l1_queries",
    "kl_queries",
    "l1_test",
    "kl_test",
    "clone_acc",
    "clone_fidelity",
    "label_only_clone_acc",
    "label_only_clone_fidelity",
    "defense_config",
    "wall_time",
    "host",
    "version",
    "config_hash",
)

#: Fields that legitimately differ between two runs of the same cell (timing, machine).
VOLATILE_FIELDS: frozenset[str] = frozenset({"wall_time", "host"})

#: Fields every row must have, with their JSON types (what the report and a re-run read).
REQUIRED_FIELDS: dict[str, tuple[type, ...]] = {
    "config_hash": (str,),
    "scenario": (str,),
    "attack": (str,),
    "attack_params": (dict,),
    "defense": (str,),
    "params": (dict,),
    "seed": (int,),
    "budget": (int,),
}

#: Numeric fields: a number or null (null: not measured, or not finite when it was computed).
METRIC_FIELDS: tuple[str, ...] = (
    "queries_used",
    "victim_acc",
    "defender_acc",
    "l1_queries",
    "kl_queries",
    "l1_test",
    "kl_test",
    "clone_acc",
    "clone_fidelity",
    "label_only_clone_acc",
    "label_only_clone_fidelity",
    "wall_time",
)

FIX_HINT = "delete or fix that line, or move the file away to start over"


class ResultsFileError(DataFileError):
    """``results.jsonl`` holds something that is not a result row; the message names the line."""


def row_version(row: Mapping[str, Any]) -> str:
    """The package version that made a row (``unknown`` for rows that do not say)."""
    v = row.get("version")
    return v if isinstance(v, str) and v else "unknown"


def _strict(value: Any, where: str, bad: list[str]) -> Any:
    """``value`` with every non-finite float replaced by None (their keys collected in bad)."""
    if isinstance(value, float) and not math.isfinite(value):
        bad.append(where)
        return None
    if isinstance(value, dict):
        return {k: _strict(v, f"{where}.{k}" if where else str(k), bad) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(v, f"{where}[{i}]", bad) for i, v in enumerate(value)]
    return value


def strict_row(row: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The row as strict JSON data (NaN/±inf → None) and the keys that were not finite."""
    bad: list[str] = []
    clean = _strict(dict(row), "", bad)
    assert isinstance(clean, dict)
    return clean, bad


def row_problem(row: Any) -> str | None:
    """Why ``row`` is not a result row (missing or ill-typed fields), or None."""
    if not isinstance(row, dict):
        return f"a JSON {type(row).__name__}, not an object"
    missing = [k for k in REQUIRED_FIELDS if k not in row]
    if missing:
        return f"missing {', '.join(missing)}"
    for k, types in REQUIRED_FIELDS.items():
        v = row[k]
        if not isinstance(v, types) or isinstance(v, bool):
            return f"{k}: expected {types[0].__name__}, got {v!r}"
    for k in METRIC_FIELDS:
        v = row.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
            return f"{k}: expected a number or null, got {v!r}"
    return None


def stable_view(row: Mapping[str, Any]) -> dict[str, Any]:
    """The row without its :data:`VOLATILE_FIELDS` (what must be identical across backends)."""
    return {k: v for k, v in row.items() if k not in VOLATILE_FIELDS}


class ResultStore:
    """``DIR/results.jsonl``: read rows, list finished cells, append rows durably."""

    def __init__(self, out_dir: str | Path) -> None:
        self.dir = Path(out_dir)
        self.path = self.dir / RESULTS

    def open(self) -> ResultStore:
        """Create the directory and cut off a torn last line left by a killed run."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            data = self.path.read_bytes()
            if data and not data.endswith(b"\n"):
                keep = data.rfind(b"\n") + 1
                with self.path.open("r+b") as f:
                    f.truncate(keep)
                    f.flush()
                    os.fsync(f.fileno())
        return self

    def rows(self) -> list[dict[str, Any]]:
        """One row per ``config_hash`` (the last one appended), in order of first appearance.

        Raises :class:`ResultsFileError` naming the first line that is not a result row. An
        unterminated last line (a run killed while writing it) is left out with a warning; the
        next run cuts it off and runs that cell again.
        """
        return list(self.index().values())

    def index(self) -> dict[str, dict[str, Any]]:
        """The rows of :meth:`rows` by ``config_hash``."""
        if not self.path.exists():
            return {}
        out: dict[str, dict[str, Any]] = {}
        try:
            f = self.path.open(encoding="utf-8", newline="")
            with f:
                for n, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    if not line.endswith("\n"):
                        log.warning(
                            "%s: line %d is incomplete (a run killed while writing it); "
                            "ignored, the next run re-runs that cell",
                            self.path,
                            n,
                        )
                        continue
                    row = self._parse(line, n)
                    out[row["config_hash"]] = row
        except UnicodeDecodeError:
            raise ResultsFileError(
                f"{self.path}: not a text file of result rows (invalid UTF-8); {FIX_HINT}"
            ) from None
        return out

    def _parse(self, line: str, n: int) -> dict[str, Any]:
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as e:
            why = e.msg if isinstance(e, json.JSONDecodeError) else "nested too deeply"
            raise ResultsFileError(
                f"{self.path}: line {n} is not a result row (not JSON: {why}); {FIX_HINT}"
            ) from None
        problem = row_problem(row)
        if problem is not None:
            raise ResultsFileError(
                f"{self.path}: line {n} is not a result row ({problem}); {FIX_HINT}"
            )
        clean, _ = strict_row(row)  # rows written before strict JSON may hold NaN
        return clean

    def finished(self) -> set[str]:
        """Hashes of the cells that have a row."""
        return set(self.index())

    def append(self, row: Mapping[str, Any]) -> None:
        """Append one row (strict JSON) and force it to disk before returning."""
        clean, bad = strict_row(row)
        if bad:
            log.warning(
                "cell %s: %s not finite; recorded as null",
                clean.get("config_hash"),
                ", ".join(bad),
            )
        line = json.dumps(clean, allow_nan=False) + "\n"
        self.dir.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


def _csv_value(value: Any) -> Any:
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, sort_keys=True)
    return "" if value is None else value


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write rows as CSV (known fields first, then any others), atomically."""
    p = Path(path)
    extra: list[str] = []
    for r in rows:
        extra.extend(k for k in r if k not in ROW_FIELDS and k not in extra)
    fields = [*ROW_FIELDS, *extra]

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            for r in rows:
                writer.writerow({k: _csv_value(r.get(k)) for k in fields})

    return write_atomic(p, write)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    return _write_text_atomic(path, text)


def index_rows(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Rows by ``config_hash``."""
    return {str(r["config_hash"]): dict(r) for r in rows}

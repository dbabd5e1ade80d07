"""benchmarks/gateway_load.py: its arguments, statistics and targets on fake runs, its request
encoding, and a ``--quick`` smoke run on digits with a handful of requests (about 20 s)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from stealproof.serve import protocol

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gateway_load.py"


@pytest.fixture(scope="module")
def gl() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("gateway_load_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_arguments_defaults_quick_and_refusals(gl: ModuleType) -> None:
    a = gl.parse_args([])
    assert (a.requests, a.warmup, a.history, a.concurrency) == (2000, 50, [100, 20000], [1, 16])
    assert a.cases == list(gl.CASES) and a.encoding == "binary" and a.threads == 1
    assert a.batching_wait_ms == 2.0
    q = gl.parse_args(["--quick", "--cases", "bare, history", "--concurrency", "4,1"])
    assert (q.requests, q.warmup, q.history) == (48, 8, [100, 600])
    assert q.cases == ["bare", "history"] and q.concurrency == [1, 4]
    assert gl.parse_args(["--quick", "--requests", "500"]).requests == 500
    assert gl.requests_at(2000, 16) == 2000 and gl.requests_at(2000, 1) == 500
    for bad in (
        ["--cases", "bare,turbo"],
        ["--concurrency", "0"],
        ["--concurrency", "x"],
        ["--requests", "2"],
        ["--batching-wait-ms", "-1"],
        ["--encoding", "xml"],
    ):
        with pytest.raises(SystemExit):
            gl.parse_args(bad)


def test_percentiles_and_a_row_from_a_fake_run(gl: ModuleType) -> None:
    assert gl.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert gl.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert gl.percentile(list(range(101)), 99) == 99.0
    assert gl.percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        gl.percentile([], 50)
    lat = [0.001 * (i + 1) for i in range(100)]  # 1 .. 100 ms
    statuses = [200] * 97 + [403, 403, -1]
    row = gl.summarize("full_sqlite", 16, gl.LoadResult(lat, statuses, 2.0), clients=16)
    assert row["case"] == "full_sqlite" and row["concurrency"] == 16 and row["requests"] == 100
    assert row["rps"] == 50.0
    assert row["p50_ms"] == pytest.approx(50.5) and row["p99_ms"] == pytest.approx(99.01)
    assert row["mean_ms"] == pytest.approx(50.5) and row["clients"] == 16
    assert row["non_200"] == 3 and row["statuses"] == {"-1": 1, "403": 2}
    clean = gl.summarize("bare", 1, gl.LoadResult([0.002] * 4, [200] * 4, 0.01))
    assert clean["rps"] == 400.0 and "statuses" not in clean


def _row(case: str, c: int, rps: float | None, p50: float, **kw: Any) -> dict[str, Any]:
    return {"case": case, "concurrency": c, "rps": rps, "p50_ms": p50, "p99_ms": p50, **kw}


def test_targets_are_computed_from_the_rows_and_missing_ones_stay_open(gl: ModuleType) -> None:
    rows = [
        _row("bare", 1, 500.0, 2.0),
        _row("bare", 16, 1000.0, 16.0),
        _row("full_sqlite", 1, 200.0, 4.5),
        _row("full_sqlite", 16, 600.0, 26.0),
        _row("full_sqlite_nobatch", 16, 300.0, 50.0),
        {"case": "full_postgres_2w", "skipped": "PostgreSQL does not answer"},
        _row("mad_sqlite", 16, 350.0, 45.0),
        _row("history", 1, None, 5.0, history_rows=100),
        _row("history", 1, None, 8.0, history_rows=20000),
    ]
    t = gl.targets(rows, 16)
    assert t["full_sqlite_over_bare_rps_c16"]["value"] == 0.6
    assert t["full_sqlite_over_bare_rps_c16"]["met"] is True
    assert t["full_sqlite_minus_bare_p50_ms_c1"]["value"] == 2.5
    assert t["full_sqlite_minus_bare_p50_ms_c1"]["met"] is True
    assert t["postgres_2w_over_sqlite_rps_c16"] == {
        "value": None,
        "op": ">=",
        "target": 1.0,
        "met": None,
        "what": "full_postgres_2w requests/s at concurrency 16 / full_sqlite's",
    }
    assert t["mad_over_bare_rps_c16"]["value"] == 0.35
    assert t["mad_over_bare_rps_c16"]["met"] is False
    assert t["history_p50_ratio_20000_over_100"]["value"] == 1.6
    assert t["history_p50_ratio_20000_over_100"]["met"] is False
    assert t["batching_gain_rps_c16"]["value"] == 2.0
    assert t["batching_gain_rps_c16"]["met"] is None
    assert gl.targets([], 16)["history_p50_ratio"]["met"] is None


@pytest.mark.parametrize("encoding", ["binary", "json"])
def test_requests_decode_with_the_gateway_codec(gl: ModuleType, encoding: str) -> None:
    pool = torch.rand(5, 1, 8, 8)
    x = gl.image_stream(pool, 12, 3)
    assert x.shape == (12, 1, 8, 8) and float(x.min()) >= 0 and float(x.max()) <= 1
    assert torch.equal(x[0], pool[3]) and torch.equal(x[1], pool[4])
    assert len({tuple(r.flatten().tolist()) for r in x}) == 12  # later cycles are perturbed
    body, headers = gl.encode_request(x[:2], encoding)
    parsed = protocol.parse_infer_request(
        body,
        headers.get(protocol.HEADER_LENGTH),
        protocol.InputSpec("input", (1, 8, 8)),
        max_rows=256,
        available_outputs=(protocol.OUTPUT_PROBS,),
    )
    assert torch.equal(parsed.x, x[:2])
    assert parsed.binary_output is (encoding == "binary")


def test_quick_smoke_run_on_digits(tmp_path: Path) -> None:
    out = tmp_path / "res" / "load.json"
    cmd = [sys.executable, str(SCRIPT), "--quick", "--workdir", str(tmp_path / "work")]
    cmd += ["--cases", "bare,full_sqlite,history", "--concurrency", "1,4", "--requests", "8"]
    cmd += ["--warmup", "2", "--history", "10,300", "--out", str(out)]
    start = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert time.monotonic() - start < 90
    doc = json.loads(done.stdout)
    assert json.loads(out.read_text()) == doc
    assert not list(out.parent.glob(".*tmp*"))  # written through a rename
    assert doc["victim"]["dataset"] == "digits" and doc["config"]["encoding"] == "binary"
    assert len(doc["machine"]["loadavg_start"]) == 3
    got = [(r["case"], r["concurrency"], r["requests"], r.get("history_rows")) for r in doc["rows"]]
    assert got == [
        ("bare", 1, 2, None),
        ("bare", 4, 8, None),
        ("full_sqlite", 1, 2, None),
        ("full_sqlite", 4, 8, None),
        ("history", 1, 2, 10),
        ("history", 1, 2, 300),
    ]
    for r in doc["rows"]:
        assert r["non_200"] == 0 and r["p99_ms"] >= r["p50_ms"] > 0
    t = doc["targets"]
    assert isinstance(t["full_sqlite_over_bare_rps_c4"]["met"], bool)
    assert isinstance(t["full_sqlite_minus_bare_p50_ms_c1"]["met"], bool)
    assert isinstance(t["history_p50_ratio_300_over_10"]["met"], bool)
    assert t["mad_over_bare_rps_c4"]["met"] is None  # not run
    assert not (tmp_path / "work" / "cases").exists()  # databases removed afterwards
    assert (tmp_path / "work" / "digits-mlp.pt").is_file()  # the victim stays cached

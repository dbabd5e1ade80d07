"""Shared test setup."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _single_thread() -> Iterator[None]:
    """Small models run far faster on one thread, and timings do not swing with machine load."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _back_to_one_thread() -> Iterator[None]:
    """CLI commands pick their own thread count; put torch back on one thread after each test."""
    yield
    torch.set_num_threads(1)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say which databases the gateway tests ran on (SQLite always, PostgreSQL when reachable)."""
    ran: dict[str, int] = {}
    skipped: dict[str, int] = {}
    for outcome, bucket in (("passed", ran), ("failed", ran), ("skipped", skipped)):
        for report in terminalreporter.stats.get(outcome, []):
            nodeid = getattr(report, "nodeid", "")
            for kind in ("sqlite", "postgresql"):
                if f"[{kind}" in nodeid or f"-{kind}]" in nodeid or f"-{kind}-" in nodeid:
                    bucket[kind] = bucket.get(kind, 0) + 1
    if ran or skipped:
        parts = [f"{kind}: {ran.get(kind, 0)} ran, {skipped.get(kind, 0)} skipped"
                 for kind in ("sqlite", "postgresql")]  # fmt: skip
        terminalreporter.write_line("gateway databases — " + "; ".join(parts))

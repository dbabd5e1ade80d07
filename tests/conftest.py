"""Shared test setup."""

from __future__ import annotations

from collections.abc import Iterator

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

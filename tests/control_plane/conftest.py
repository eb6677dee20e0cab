"""Fixture: an in-process control plane (real aiohttp over TLS on loopback)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cp_harness import RunningControlPlane, start_control_plane


@pytest.fixture
async def control_plane(tmp_path: Path) -> AsyncIterator[RunningControlPlane]:
    async with start_control_plane(tmp_path) as cp:
        yield cp

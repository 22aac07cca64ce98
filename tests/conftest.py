"""Fixtures shared by every test area. Area-specific fixtures live in tests/<area>/conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from edb_local.net import free_loopback_address
from edb_local.stack_ca import StackCA


@pytest.fixture(scope="session")
def stack_ca(tmp_path_factory: pytest.TempPathFactory) -> StackCA:
    """A local-stack CA for TLS servers under test (one per test session / xdist worker)."""
    return StackCA.load_or_create(tmp_path_factory.mktemp("stack-ca"))


@pytest.fixture
def loopback_address() -> str:
    """A fresh 127.x.y.z whose 8883/443/8443 ports are free, so servers never collide."""
    return free_loopback_address()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    d = tmp_path / "edb-state"
    d.mkdir()
    return d

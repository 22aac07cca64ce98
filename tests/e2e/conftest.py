"""End-to-end fixtures: one trained model per session, one whole local stack per test."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_stack import E2EStack


@pytest.fixture(scope="session")
def digits_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edb_cloud.train import train_digits

    path = tmp_path_factory.mktemp("model") / "digits.onnx"
    path.write_bytes(train_digits("v1").onnx)
    return path


@pytest.fixture
def stack_dir() -> Iterator[Path]:
    """A state directory whose stack is always stopped at the end, whatever the test did.

    Short and under /tmp: Unix socket paths (the TEE's, the workload API's) are limited to 108 bytes.
    """
    state = Path(tempfile.mkdtemp(prefix="edb-e2e-", dir="/tmp"))
    try:
        yield state
    finally:
        E2EStack(state).down()
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def e2e(stack_dir: Path, digits_model: Path) -> E2EStack:
    """A running stack with v1, v2, v3 published (security versions 1, 2, 3), the suite deployed, v1 serving."""
    from edb.schemas import PackageState

    stack = E2EStack(stack_dir)
    stack.start(digits_model, (("1.0.0", 1), ("2.0.0", 2), ("3.0.0", 3)))
    stack.rollout(stack.releases["1.0.0"])
    stack.wait_state("1.0.0", PackageState.INSTALLED)
    stack.wait_serving("1.0.0")
    return stack

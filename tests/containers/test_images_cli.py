"""`edb images build` against the real engine, where no image is built: a base that is not present
is refused with its code, and nothing is pulled (Docker Hub is never tried)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_official_base_not_present_is_refused_and_never_pulled(docker_client: Any) -> None:
    official = "python:3.11-slim-bookworm"
    if docker_client.api.images(name=official):
        pytest.skip(f"NOT RUN: {official} is present here, so the refusal cannot be shown")
    out = subprocess.run([sys.executable, "-m", "edb.cli.main", "images", "build", "--base", "official",
                          "--module", "tee_service"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         check=False)
    assert out.returncode != 0
    assert "IMAGES_BASE_MISSING" in out.stderr + out.stdout and official in out.stderr + out.stdout
    assert docker_client.api.images(name=official) == []  # not pulled (nor tried: no registry is reachable)


def test_with_docker_uses_a_running_engine_and_leaves_it_running(docker_client: Any) -> None:
    """tools/with-docker (the make targets' and .ci/run's wrapper) runs the command against the
    engine that answers, passes its exit code through, and stops only a dockerd it started itself."""
    ok = subprocess.run([str(ROOT / "tools" / "with-docker"), "docker", "info", "--format", "{{.ServerVersion}}"],
                        capture_output=True, text=True, timeout=300, check=False)
    assert ok.returncode == 0 and ok.stdout.strip() == docker_client.version()["Version"], ok.stderr
    failing = subprocess.run([str(ROOT / "tools" / "with-docker"), "sh", "-c", "exit 7"], capture_output=True,
                             timeout=300, check=False)
    assert failing.returncode == 7
    assert docker_client.ping()  # the engine it found is still there
    usage = subprocess.run([str(ROOT / "tools" / "with-docker")], capture_output=True, text=True, timeout=60,
                           check=False)
    assert usage.returncode == 2 and "usage" in usage.stderr
